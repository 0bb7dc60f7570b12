//! The receiver's settings: plain data, validated by whoever builds them (the CLI reads the
//! environment; tests build them directly).

use std::net::SocketAddr;
use std::time::Duration;

use paysync_amqp::AmqpSettings;
use paysync_domain::Mode;
use secrecy::SecretString;

/// Everything the receiver needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Public listener for webhooks (`PAYSYNC_HTTP_ADDR`).
    pub http_addr: SocketAddr,
    /// Metrics and health listener (`PAYSYNC_METRICS_ADDR`), never exposed publicly.
    pub metrics_addr: SocketAddr,
    /// Largest accepted request body in bytes; larger gets 413. Stripe events are a few KB.
    pub body_limit: usize,
    /// Deadline for the body and the answer once the headers are in (408 after it).
    pub request_timeout: Duration,
    /// Deadline for a client to send its whole request head; the connection is closed after
    /// it (slowloris).
    pub header_timeout: Duration,
    /// What `Retry-After` says on a 503, in seconds.
    pub retry_after_secs: u32,
    /// Stripe endpoint settings.
    pub stripe: StripeSettings,
    /// Broker settings.
    pub amqp: AmqpSettings,
}

/// One Stripe webhook endpoint.
#[derive(Debug, Clone)]
pub struct StripeSettings {
    /// Signing secrets (`whsec_…`); several while rotating. Must not be empty.
    pub secrets: Vec<SecretString>,
    /// The only mode accepted.
    pub mode: Mode,
    /// Maximum signature age in seconds (Stripe's default 300).
    pub tolerance_secs: i64,
}

impl Settings {
    /// Local defaults for the given secrets: loopback listeners, 1 MiB bodies, test mode.
    pub fn local(secrets: Vec<SecretString>) -> Self {
        Self {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9464)),
            body_limit: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            retry_after_secs: 5,
            stripe: StripeSettings {
                secrets,
                mode: Mode::Test,
                tolerance_secs: paysync_domain::stripe::DEFAULT_TOLERANCE_SECS,
            },
            amqp: AmqpSettings::default(),
        }
    }
}
