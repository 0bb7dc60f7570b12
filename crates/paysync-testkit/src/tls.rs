//! The local test CA that `deploy/local/services.sh` makes (see `deploy/local/tls.sh`): the local
//! RabbitMQ listens for `amqps://` on 127.0.0.1:5671 and PostgreSQL serves TLS, both with a
//! certificate for `localhost` and `127.0.0.1` signed by it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Where the test CA and certificates live (`PAYSYNC_LOCAL_TLS_DIR` overrides, as in the script).
pub fn dir() -> PathBuf {
    std::env::var_os("PAYSYNC_LOCAL_TLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/paysync-local-tls"))
}

/// The test CA's certificate (PEM): the right CA for the local servers.
pub fn ca_file() -> PathBuf {
    dir().join("ca.pem")
}

/// A CA that signed neither server's certificate (PEM): the wrong CA.
pub fn other_ca_file() -> PathBuf {
    dir().join("other-ca.pem")
}

/// A client certificate (PEM) signed by the test CA, with its key.
pub fn client_cert_files() -> (PathBuf, PathBuf) {
    (dir().join("client.pem"), dir().join("client.key"))
}

/// A client certificate (PEM) signed by the other CA, with its key: one to refuse.
pub fn unknown_client_cert_files() -> (PathBuf, PathBuf) {
    (
        dir().join("other-client.pem"),
        dir().join("other-client.key"),
    )
}

/// The local broker's TLS listener (`PAYSYNC_TEST_AMQPS_URL` overrides).
pub fn amqps_url() -> String {
    std::env::var("PAYSYNC_TEST_AMQPS_URL")
        .unwrap_or_else(|_| "amqps://guest:guest@localhost:5671/%2f".into())
}

/// HTTPS in front of a plain TCP listener, as a load balancer terminating TLS does: the local
/// test CA's server certificate (for `localhost` and `127.0.0.1`), each connection copied both
/// ways to `upstream`. Stops when dropped.
pub struct TlsProxy {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl TlsProxy {
    /// Listens on an ephemeral loopback port.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let certs = CertificateDer::pem_file_iter(dir().join("server.pem"))
            .context("server.pem (run deploy/local/services.sh)")?
            .collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(dir().join("server.key"))
            .context("server.key (run deploy/local/services.sh)")?;
        // ring, as everywhere in the tree (rustls deprecates it for lacking post-quantum key
        // exchange; irrelevant for a loopback test proxy).
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    if let Ok(mut plain) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                    }
                });
            }
        });
        Ok(Self { port, task })
    }

    /// The port it listens on (127.0.0.1; the certificate also names `localhost`).
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
