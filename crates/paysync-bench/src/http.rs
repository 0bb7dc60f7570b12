//! A bare HTTP/1.1 client connection (hyper's connection API over a `TcpStream` with
//! `TCP_NODELAY`): the load generator's transport, and the orchestrator's readiness probes.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Opens one keep-alive HTTP/1.1 connection to `addr`; its driver runs on a spawned task.
pub async fn connect<B>(addr: SocketAddr) -> anyhow::Result<SendRequest<B>>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true).context("setting TCP_NODELAY")?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1.1 handshake")?;
    tokio::spawn(async move {
        // Ends when the peer closes or the sender is dropped; errors surface on the sender.
        let _ = connection.await;
    });
    Ok(sender)
}

/// Where a URL points: the socket address, the `Host` header and the path.
#[derive(Debug, Clone)]
pub struct Target {
    /// Resolved address.
    pub addr: SocketAddr,
    /// `host:port`, for the `Host` header.
    pub authority: String,
    /// Path and query.
    pub path: String,
}

impl Target {
    /// Parses and resolves an `http://host:port/path` URL.
    pub async fn parse(url: &str) -> anyhow::Result<Self> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("invalid URL {url:?}"))?;
        anyhow::ensure!(
            uri.scheme_str() == Some("http"),
            "only http:// URLs are supported, got {url:?}"
        );
        let authority = uri
            .authority()
            .with_context(|| format!("no host in {url:?}"))?
            .to_string();
        let host_port = if uri.port().is_some() {
            authority.clone()
        } else {
            format!("{authority}:80")
        };
        let addr = tokio::net::lookup_host(&host_port)
            .await
            .with_context(|| format!("resolving {host_port}"))?
            .next()
            .with_context(|| format!("{host_port} resolves to no address"))?;
        let path = uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        Ok(Self {
            addr,
            authority,
            path,
        })
    }
}

/// `GET http://<addr><path>`: the status code, on a fresh connection, within `timeout`.
pub async fn get_status(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<u16> {
    tokio::time::timeout(timeout, async {
        let mut sender = connect::<Empty<Bytes>>(addr).await?;
        let request = Request::get(path)
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::new())
            .context("building a GET")?;
        let response = sender.send_request(request).await.context("GET")?;
        let status = response.status().as_u16();
        let _ = response.into_body().collect().await;
        Ok(status)
    })
    .await
    .with_context(|| format!("GET {addr}{path}: no answer within {timeout:?}"))?
}

/// The body type of the load generator's requests.
pub type Body = Full<Bytes>;
