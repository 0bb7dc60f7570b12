//! Opening a connection: to the first broker node of [`AmqpSettings::url`] that answers, over
//! TLS for `amqps://` nodes.
//!
//! A cluster is given as several comma-separated URLs. Every attempt walks the list once,
//! starting at the node the last successful connection of these settings went to (a cursor
//! shared by every clone of the settings: the publisher, the consumers and the monitor of one
//! process move together), and gives each node the connect timeout. A dead node refuses at once
//! and the walk goes on to the next; a round that finds none fails, and the caller's jittered
//! backoff decides when to walk again.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::{Connection, ConnectionProperties, DefaultConnectionBuilder};

use crate::config::{AmqpSettings, redact_url};

/// Which node the next attempt starts at; shared by clones of one [`AmqpSettings`].
#[derive(Clone, Default, Debug)]
pub struct NodeCursor(Arc<AtomicUsize>);

impl NodeCursor {
    /// Makes the next walk start after `node` (unless another connection already moved it).
    pub(crate) fn skip(&self, node: usize) {
        let _ = self
            .0
            .compare_exchange(node, node + 1, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// A connection and the node (index into [`AmqpSettings::nodes`]) it went to.
pub(crate) struct Connected {
    pub connection: Connection,
    pub node: usize,
}

/// Connects to the first node that answers, each within the connect timeout, naming the
/// connection `name`. The error of the last node tried, with that node (password hidden).
pub(crate) async fn connect(settings: &AmqpSettings, name: &str) -> lapin::Result<Connected> {
    let nodes = settings.nodes();
    let start = settings.cursor.0.load(Ordering::Relaxed) % nodes.len().max(1);
    let mut last = None;
    for step in 0..nodes.len() {
        let node = (start + step) % nodes.len();
        let url = nodes[node];
        let props = ConnectionProperties::default().with_connection_name(name.into());
        let builder = DefaultConnectionBuilder::new()?
            .with_uri_str(url.to_owned())
            .with_properties(props)
            .with_tls_config(tls_config(settings));
        let attempt = tokio::time::timeout(settings.connect_timeout, builder.connect()).await;
        let err = match attempt {
            Ok(Ok(connection)) => {
                settings.cursor.0.store(node, Ordering::Relaxed);
                return Ok(Connected { connection, node });
            }
            Ok(Err(err)) => err,
            Err(_) => io_error(
                std::io::ErrorKind::TimedOut,
                "no AMQP handshake within the connect timeout".into(),
            ),
        };
        let err = explain(url, err);
        if nodes.len() > 1 {
            tracing::warn!(node = %redact_url(url), error = %err, "broker node did not answer; trying the next");
        }
        last = Some(err);
    }
    Err(last.unwrap_or_else(|| io_error(std::io::ErrorKind::InvalidInput, "no AMQP url".into())))
}

/// The CA certificates and client identity for `amqps://` nodes (ignored by `amqp://` ones).
fn tls_config(settings: &AmqpSettings) -> OwnedTLSConfig {
    OwnedTLSConfig {
        identity: settings.tls.client.as_ref().map(|c| OwnedIdentity::PKCS8 {
            pem: c.cert_pem.clone(),
            key: c.key_pem.clone(),
        }),
        cert_chain: settings.tls.ca_pem.clone(),
    }
}

/// The error with the node it came from, and for a TLS failure the settings that decide it.
fn explain(url: &str, err: lapin::Error) -> lapin::Error {
    let text = match err.kind() {
        lapin::ErrorKind::IOError(io) => io.to_string(),
        _ => err.to_string(),
    };
    let node = redact_url(url);
    if !url.starts_with("amqps://") {
        return io_error(std::io::ErrorKind::Other, format!("{node}: {text}"));
    }
    let hint = if text.contains("invalid peer certificate") {
        "the broker's certificate must chain to the AMQP CA file (PAYSYNC_AMQP_CA_FILE) or a public root, and name the host of the URL"
    } else if text.contains("fatal alert") {
        "the broker ended the handshake: check the client certificate (PAYSYNC_AMQP_CLIENT_CERT_FILE, PAYSYNC_AMQP_CLIENT_KEY) and that the port speaks TLS"
    } else {
        return io_error(std::io::ErrorKind::Other, format!("{node}: {text}"));
    };
    io_error(
        std::io::ErrorKind::InvalidData,
        format!("TLS with {node} failed: {text}; {hint}"),
    )
}

fn io_error(kind: std::io::ErrorKind, text: String) -> lapin::Error {
    lapin::ErrorKind::IOError(Arc::new(std::io::Error::new(kind, text))).into()
}
