//! Connection and publisher settings, and the rules they must meet.
//!
//! Rule of thumb: whoever builds an [`AmqpSettings`] (the CLI from the environment, a test, the
//! bench) gets the same verdict from [`AmqpSettings::validate`]; errors name the field, never
//! the variable that set it.

use std::fmt;
use std::time::Duration;

/// How to reach the broker and how the publisher behaves.
#[derive(Clone)]
pub struct AmqpSettings {
    /// `amqp://user:password@host:port/vhost`. Holds a password: never logged.
    pub url: String,
    /// Prefix of every exchange and queue we declare, so several deployments (or tests) can
    /// share one broker: 1 to [`MAX_PREFIX_LEN`] characters of `[A-Za-z0-9._-]`.
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

/// The longest accepted [`AmqpSettings::prefix`], in characters.
pub const MAX_PREFIX_LEN: usize = 100;

/// An [`AmqpSettings`] field holding a value the services refuse; each variant names the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AmqpSettingsError {
    /// `url` asks for TLS (`amqps://`), which this build cannot speak.
    #[error(
        "AMQP url: amqps:// (TLS) is not supported by this build; use amqp:// on a trusted network or a TLS sidecar"
    )]
    UrlTls,
    /// `url` does not start with `amqp://`.
    #[error("AMQP url: must start with amqp://")]
    UrlScheme,
    /// `prefix` is empty, too long or has a character outside `[A-Za-z0-9._-]`.
    #[error("AMQP prefix: use 1-{MAX_PREFIX_LEN} characters of [A-Za-z0-9._-]")]
    Prefix,
    /// `publisher_channels` is zero.
    #[error("AMQP publisher_channels: must be greater than zero")]
    PublisherChannels,
    /// `max_in_flight` is zero.
    #[error("AMQP max_in_flight: must be greater than zero")]
    MaxInFlight,
    /// `confirm_timeout` is zero.
    #[error("AMQP confirm_timeout: must be greater than zero")]
    ConfirmTimeout,
    /// `connect_timeout` is zero.
    #[error("AMQP connect_timeout: must be greater than zero")]
    ConnectTimeout,
    /// `delivery_limit` is zero.
    #[error("AMQP delivery_limit: must be greater than zero")]
    DeliveryLimit,
}

impl AmqpSettings {
    /// Checks every field, in declaration order; the first refused one is the error.
    pub fn validate(&self) -> Result<(), AmqpSettingsError> {
        if self.url.starts_with("amqps://") {
            return Err(AmqpSettingsError::UrlTls);
        }
        if !self.url.starts_with("amqp://") {
            return Err(AmqpSettingsError::UrlScheme);
        }
        if !valid_prefix(&self.prefix) {
            return Err(AmqpSettingsError::Prefix);
        }
        if self.publisher_channels == 0 {
            return Err(AmqpSettingsError::PublisherChannels);
        }
        if self.max_in_flight == 0 {
            return Err(AmqpSettingsError::MaxInFlight);
        }
        if self.confirm_timeout.is_zero() {
            return Err(AmqpSettingsError::ConfirmTimeout);
        }
        if self.connect_timeout.is_zero() {
            return Err(AmqpSettingsError::ConnectTimeout);
        }
        if self.delivery_limit == 0 {
            return Err(AmqpSettingsError::DeliveryLimit);
        }
        Ok(())
    }
}

/// Whether `prefix` can start every exchange and queue name: 1 to [`MAX_PREFIX_LEN`] characters
/// of `[A-Za-z0-9._-]`.
fn valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.len() <= MAX_PREFIX_LEN
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
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

    #[test]
    fn default_settings_are_valid() {
        assert_eq!(AmqpSettings::default().validate(), Ok(()));
    }

    #[test]
    fn invalid_settings_are_refused_naming_the_field() {
        let ok = AmqpSettings::default;
        let cases: [(AmqpSettings, AmqpSettingsError); 9] = [
            (
                AmqpSettings {
                    url: "amqps://guest:pw@h/%2f".into(),
                    ..ok()
                },
                AmqpSettingsError::UrlTls,
            ),
            (
                AmqpSettings {
                    url: "http://x".into(),
                    ..ok()
                },
                AmqpSettingsError::UrlScheme,
            ),
            (
                AmqpSettings {
                    prefix: "bad prefix".into(),
                    ..ok()
                },
                AmqpSettingsError::Prefix,
            ),
            (
                AmqpSettings {
                    prefix: String::new(),
                    ..ok()
                },
                AmqpSettingsError::Prefix,
            ),
            (
                AmqpSettings {
                    publisher_channels: 0,
                    ..ok()
                },
                AmqpSettingsError::PublisherChannels,
            ),
            (
                AmqpSettings {
                    max_in_flight: 0,
                    ..ok()
                },
                AmqpSettingsError::MaxInFlight,
            ),
            (
                AmqpSettings {
                    confirm_timeout: Duration::ZERO,
                    ..ok()
                },
                AmqpSettingsError::ConfirmTimeout,
            ),
            (
                AmqpSettings {
                    connect_timeout: Duration::ZERO,
                    ..ok()
                },
                AmqpSettingsError::ConnectTimeout,
            ),
            (
                AmqpSettings {
                    delivery_limit: 0,
                    ..ok()
                },
                AmqpSettingsError::DeliveryLimit,
            ),
        ];
        for (settings, expected) in cases {
            assert_eq!(settings.validate(), Err(expected), "{settings:?}");
        }
    }

    #[test]
    fn prefixes_are_1_to_100_plain_characters() {
        for good in ["paysync", "paysync-test-1a2b", "a.b_C-9", &"p".repeat(100)] {
            assert!(valid_prefix(good), "{good}");
        }
        for bad in ["", "bad prefix", "a/b", "é", "a*", &"p".repeat(101)] {
            assert!(!valid_prefix(bad), "{bad}");
        }
    }

    #[test]
    fn errors_name_the_field_and_never_the_url() {
        let s = AmqpSettings {
            url: "amqps://guest:s3cret@h/%2f".into(),
            ..AmqpSettings::default()
        };
        let shown = s.validate().unwrap_err().to_string();
        assert!(
            shown.contains("url") && !shown.contains("s3cret"),
            "{shown}"
        );
        assert!(!shown.contains("PAYSYNC_"), "{shown}");
    }
}
