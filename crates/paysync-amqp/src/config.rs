//! Connection and publisher settings, and the rules they must meet.
//!
//! Rule of thumb: whoever builds an [`AmqpSettings`] (the CLI from the environment, a test, the
//! bench) gets the same verdict from [`AmqpSettings::validate`]; errors name the field, never
//! the variable that set it.

use std::fmt;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::connect::NodeCursor;

/// How to reach the broker and how the publisher behaves.
#[derive(Clone)]
pub struct AmqpSettings {
    /// `amqp://user:password@host:port/vhost` (`amqps://` for TLS), or several such URLs
    /// separated by commas: the nodes of one cluster, tried in turn (see [`Self::nodes`]).
    /// Holds a password: never logged.
    pub url: String,
    /// Trust and identity for `amqps://` nodes.
    pub tls: AmqpTls,
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
    /// Which node the next connection attempt starts at: the last one that answered. Clones
    /// share it, so the publisher, consumers and monitor of one process move together; leave
    /// it at its default.
    pub cursor: NodeCursor,
}

/// TLS material for `amqps://` nodes. The server's certificate must chain to one of the
/// webpki (Mozilla) roots or to a certificate in `ca_pem`, and name the URL's host.
#[derive(Clone, Default)]
pub struct AmqpTls {
    /// Extra trusted roots, PEM: the private CA of a managed broker.
    pub ca_pem: Option<String>,
    /// A client certificate with its key, for brokers that ask for one.
    pub client: Option<ClientIdentity>,
}

/// A client certificate chain and its private key, both PEM. The key is a secret: never logged.
#[derive(Clone)]
pub struct ClientIdentity {
    /// The certificate chain, leaf first.
    pub cert_pem: Vec<u8>,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: Vec<u8>,
}

impl fmt::Debug for AmqpTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpTls")
            .field(
                "ca_certificates",
                &self
                    .ca_pem
                    .as_deref()
                    .map(|p| pem_certificates(p.as_bytes())),
            )
            .field("client_certificate", &self.client.is_some())
            .finish()
    }
}

/// How many certificates `pem` holds; 0 when it holds none or is not PEM.
fn pem_certificates(pem: &[u8]) -> usize {
    CertificateDer::pem_slice_iter(pem)
        .take_while(Result::is_ok)
        .count()
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
            tls: AmqpTls::default(),
            cursor: NodeCursor::default(),
        }
    }
}

/// The longest accepted [`AmqpSettings::prefix`], in characters.
pub const MAX_PREFIX_LEN: usize = 100;

/// An [`AmqpSettings`] field holding a value the services refuse; each variant names the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AmqpSettingsError {
    /// `url` names no node, or one that does not start with `amqp://` or `amqps://`.
    #[error("AMQP url: every comma-separated node must start with amqp:// or amqps://")]
    UrlScheme,
    /// `tls.ca_pem` holds no PEM certificate.
    #[error("AMQP tls ca: no PEM certificate in it")]
    TlsCa,
    /// `tls.client` has no PEM certificate or no PEM private key.
    #[error("AMQP tls client: needs a PEM certificate and its PEM private key")]
    TlsClient,
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
        let nodes = self.nodes();
        if nodes.is_empty()
            || !nodes
                .iter()
                .all(|n| n.starts_with("amqp://") || n.starts_with("amqps://"))
        {
            return Err(AmqpSettingsError::UrlScheme);
        }
        if let Some(ca) = &self.tls.ca_pem
            && pem_certificates(ca.as_bytes()) == 0
        {
            return Err(AmqpSettingsError::TlsCa);
        }
        if let Some(client) = &self.tls.client
            && (pem_certificates(&client.cert_pem) == 0
                || PrivateKeyDer::from_pem_slice(&client.key_pem).is_err())
        {
            return Err(AmqpSettingsError::TlsClient);
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

    /// How long one whole connection attempt may take: the connect timeout for each node.
    pub(crate) fn attempt_timeout(&self) -> Duration {
        self.connect_timeout * self.nodes().len().max(1) as u32
    }

    /// The broker nodes of [`Self::url`], in the order given: comma-separated, blanks dropped.
    pub fn nodes(&self) -> Vec<&str> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .collect()
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
            .field("tls", &self.tls)
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

/// The URL (or comma-separated URLs) with any password replaced by `***`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    if url.contains(',') {
        return url
            .split(',')
            .map(str::trim)
            .filter(|node| !node.is_empty())
            .map(redact_url)
            .collect::<Vec<_>>()
            .join(",");
    }
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
        let cases: [(AmqpSettings, AmqpSettingsError); 12] = [
            (
                AmqpSettings {
                    url: "http://x".into(),
                    ..ok()
                },
                AmqpSettingsError::UrlScheme,
            ),
            (
                AmqpSettings {
                    url: " , ".into(),
                    ..ok()
                },
                AmqpSettingsError::UrlScheme,
            ),
            (
                AmqpSettings {
                    url: "amqp://a:5672,http://b".into(),
                    ..ok()
                },
                AmqpSettingsError::UrlScheme,
            ),
            (
                AmqpSettings {
                    tls: AmqpTls {
                        ca_pem: Some("not a certificate".into()),
                        client: None,
                    },
                    ..ok()
                },
                AmqpSettingsError::TlsCa,
            ),
            (
                AmqpSettings {
                    tls: AmqpTls {
                        ca_pem: None,
                        client: Some(ClientIdentity {
                            cert_pem: b"no".to_vec(),
                            key_pem: b"no".to_vec(),
                        }),
                    },
                    ..ok()
                },
                AmqpSettingsError::TlsClient,
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
    fn several_nodes_plain_or_tls_are_accepted_in_their_order() {
        let s = AmqpSettings {
            url: "amqp://g:pw1@a:5672/%2f, amqps://g:pw2@b:5671/%2f,,amqp://c".into(),
            ..AmqpSettings::default()
        };
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(
            s.nodes(),
            [
                "amqp://g:pw1@a:5672/%2f",
                "amqps://g:pw2@b:5671/%2f",
                "amqp://c"
            ]
        );
        let shown = format!("{s:?}");
        assert!(!shown.contains("pw1") && !shown.contains("pw2"), "{shown}");
        assert_eq!(
            redact_url(&s.url),
            "amqp://g:***@a:5672/%2f,amqps://g:***@b:5671/%2f,amqp://c"
        );
    }

    #[test]
    fn errors_name_the_field_and_never_the_url() {
        let s = AmqpSettings {
            url: "amqps://guest:s3cret@h/%2f,http://x".into(),
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
