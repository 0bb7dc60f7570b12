//! Connection and publisher settings.

use std::fmt;
use std::time::Duration;

/// How to reach the broker and how the publisher behaves.
#[derive(Clone)]
pub struct AmqpSettings {
    /// `amqp://user:password@host:port/vhost`. Holds a password: never logged.
    pub url: String,
    /// Prefix of every exchange and queue we declare, so several deployments (or tests) can
    /// share one broker.
    pub prefix: String,
    /// Client-provided connection name (`connection_name` in `rabbitmqctl list_connections
    /// client_properties`), so an operator can tell our connections apart.
    pub connection_name: String,
    /// Confirm-mode channels the publisher spreads publishes over. A channel serializes its
    /// frames, so more than one lets confirms of one channel overlap sends on another.
    pub publisher_channels: usize,
    /// Publishes awaiting a confirm at once, across channels: backpressure on the callers.
    pub max_in_flight: usize,
    /// How long a publish may wait for its confirm before the caller is told to retry.
    pub confirm_timeout: Duration,
    /// How long one connection attempt (TCP + handshake + topology) may take.
    pub connect_timeout: Duration,
    /// `x-delivery-limit` on quorum queues: a backstop against poison loops (RabbitMQ 3.10
    /// has no default; 4.x defaults to 20).
    pub delivery_limit: u32,
}

impl Default for AmqpSettings {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            prefix: "paysync".into(),
            connection_name: "paysync".into(),
            publisher_channels: 2,
            max_in_flight: 4096,
            confirm_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            delivery_limit: 20,
        }
    }
}

impl fmt::Debug for AmqpSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpSettings")
            .field("url", &redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("connection_name", &self.connection_name)
            .field("publisher_channels", &self.publisher_channels)
            .field("max_in_flight", &self.max_in_flight)
            .field("confirm_timeout", &self.confirm_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("delivery_limit", &self.delivery_limit)
            .finish()
    }
}

/// The URL with any password replaced by `***`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<unparsable url>".into();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_password() {
        let s = AmqpSettings {
            url: "amqp://guest:s3cret@127.0.0.1:5672/%2f".into(),
            ..AmqpSettings::default()
        };
        let shown = format!("{s:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("amqp://guest:***@127.0.0.1:5672/%2f"),
            "{shown}"
        );
        assert_eq!(redact_url("amqp://h:5672"), "amqp://h:5672");
    }
}
