//! The receiver's settings and the rules they must meet.
//!
//! Rule of thumb: plain data that checks itself. Whoever builds a [`Settings`] (the CLI from the
//! environment, a test, the bench) gets the same verdict from [`Settings::validate`], and
//! [`App::build`](crate::App::build) refuses what it refuses. Errors name the field, never the
//! variable that set it: mapping a field to its variable is the CLI's job.

use std::net::SocketAddr;
use std::time::Duration;

use paysync_amqp::{AmqpSettings, AmqpSettingsError};
use paysync_domain::Mode;
use secrecy::{ExposeSecret as _, SecretString};

/// How every Stripe endpoint signing secret starts; an API key (`sk_…`) does not.
pub const STRIPE_SECRET_PREFIX: &str = "whsec_";

/// Everything the receiver needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Public listener for webhooks (the CLI reads `PAYSYNC_HTTP_ADDR`).
    pub http_addr: SocketAddr,
    /// Metrics and health listener, never exposed publicly (the CLI reads
    /// `PAYSYNC_METRICS_ADDR`). Must differ from `http_addr` unless both use port 0.
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
    /// The Stripe endpoint, when Stripe is configured.
    pub stripe: Option<StripeSettings>,
    /// The Square endpoint, when Square is configured.
    pub square: Option<SquareSettings>,
    /// The Authorize.Net endpoint, when Authorize.Net is configured.
    pub authorizenet: Option<AuthorizeNetSettings>,
    /// The PayPal endpoint, when PayPal is configured.
    pub paypal: Option<PaypalSettings>,
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
    /// Maximum signature age in seconds (Stripe's default 300); 0 turns the age check off.
    pub tolerance_secs: i64,
}

/// One Square webhook subscription.
#[derive(Debug, Clone)]
pub struct SquareSettings {
    /// The notification URL exactly as registered on the subscription (Square signs it).
    pub notification_url: String,
    /// Signature keys; several while rotating. Must not be empty.
    pub keys: Vec<SecretString>,
    /// The only mode accepted (test = Square's sandbox).
    pub mode: Mode,
}

/// One Authorize.Net merchant account's webhooks.
#[derive(Debug, Clone)]
pub struct AuthorizeNetSettings {
    /// Signature keys (128 characters); two while one is regenerated. Must not be empty.
    pub keys: Vec<SecretString>,
    /// The only mode accepted (test = Authorize.Net's sandbox).
    pub mode: Mode,
}

/// One PayPal webhook.
#[derive(Debug, Clone)]
pub struct PaypalSettings {
    /// Our webhook id (never taken from the request).
    pub webhook_id: String,
    /// Hosts the certificate URL may name ([`DEFAULT_CERT_URL_HOSTS`] by default; a loopback
    /// `host:port` is fetched over plain http, for tests and offline sandboxes only).
    pub cert_hosts: Vec<String>,
    /// Extra trusted roots (PEM), for tests; PayPal's own chain is built in.
    pub extra_roots: Vec<Vec<u8>>,
    /// The only mode accepted (test = PayPal's sandbox, checked against the certificate).
    pub mode: Mode,
    /// Maximum age of `PAYPAL-TRANSMISSION-TIME` in seconds; 0 (the default) turns it off.
    pub tolerance_secs: i64,
    /// Timeout of one certificate download.
    pub cert_timeout: Duration,
}

pub use paysync_domain::paypal::signature::DEFAULT_CERT_URL_HOSTS;

impl PaypalSettings {
    /// A webhook with PayPal's default certificate hosts, no extra roots, no tolerance.
    pub fn new(webhook_id: impl Into<String>, mode: Mode) -> Self {
        Self {
            webhook_id: webhook_id.into(),
            cert_hosts: DEFAULT_CERT_URL_HOSTS
                .iter()
                .map(|h| (*h).to_owned())
                .collect(),
            extra_roots: Vec::new(),
            mode,
            tolerance_secs: 0,
            cert_timeout: Duration::from_secs(5),
        }
    }
}

/// A [`Settings`] field holding a value the receiver refuses; each variant names the field.
/// Messages never show a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// `metrics_addr` equals `http_addr` on a fixed port.
    #[error("metrics_addr: must differ from http_addr (metrics stay off the public port)")]
    MetricsAddr,
    /// `body_limit` is zero.
    #[error("body_limit: must be greater than zero")]
    BodyLimit,
    /// `request_timeout` is zero.
    #[error("request_timeout: must be greater than zero")]
    RequestTimeout,
    /// `header_timeout` is zero.
    #[error("header_timeout: must be greater than zero")]
    HeaderTimeout,
    /// No provider is configured.
    #[error("no provider is configured (give at least one provider's webhook secret)")]
    NoProvider,
    /// `square.notification_url` is not an https (or loopback http) URL.
    #[error("square.notification_url: must be the https URL registered on the subscription")]
    SquareUrl,
    /// `square.keys` is empty.
    #[error("at least one Square signature key is required")]
    SquareKeyMissing,
    /// `authorizenet.keys` is empty or a key is not 128 hex characters.
    #[error(
        "authorizenet.keys: each signature key is the 128-character hex text Authorize.Net shows"
    )]
    AuthorizeNetKey,
    /// `paypal.webhook_id` is empty.
    #[error("paypal.webhook_id: required (the id of our webhook, from PayPal's dashboard)")]
    PaypalWebhookId,
    /// `paypal.cert_hosts` is empty or an extra root is not a certificate.
    #[error("paypal: {0}")]
    Paypal(String),
    /// `paypal.tolerance_secs` is negative.
    #[error("paypal.tolerance_secs: must be ≥ 0 (0 disables the check)")]
    PaypalTolerance,
    /// `stripe.secrets` is empty.
    #[error("at least one Stripe webhook secret is required")]
    StripeSecretMissing,
    /// A `stripe.secrets` entry does not start with [`STRIPE_SECRET_PREFIX`].
    #[error(
        "stripe.secrets: secret #{position} does not start with `{STRIPE_SECRET_PREFIX}` \
         (use the endpoint's signing secret, not an API key)"
    )]
    StripeSecretPrefix {
        /// Its position in the list, from 1.
        position: usize,
    },
    /// `stripe.tolerance_secs` is negative.
    #[error("stripe.tolerance_secs: must be ≥ 0 (0 disables the age check)")]
    StripeTolerance,
    /// A field of `amqp`.
    #[error(transparent)]
    Amqp(#[from] AmqpSettingsError),
}

/// Whether `secret` looks like an endpoint signing secret (starts with
/// [`STRIPE_SECRET_PREFIX`]).
pub fn valid_stripe_secret(secret: &str) -> bool {
    secret.starts_with(STRIPE_SECRET_PREFIX)
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
            stripe: Some(StripeSettings {
                secrets,
                mode: Mode::Test,
                tolerance_secs: paysync_domain::stripe::DEFAULT_TOLERANCE_SECS,
            }),
            square: None,
            authorizenet: None,
            paypal: None,
            amqp: AmqpSettings::default(),
        }
    }

    /// Checks every field, then the broker settings; the first refused one is the error.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.http_addr == self.metrics_addr && self.http_addr.port() != 0 {
            return Err(SettingsError::MetricsAddr);
        }
        if self.body_limit == 0 {
            return Err(SettingsError::BodyLimit);
        }
        if self.request_timeout.is_zero() {
            return Err(SettingsError::RequestTimeout);
        }
        if self.header_timeout.is_zero() {
            return Err(SettingsError::HeaderTimeout);
        }
        if self.stripe.is_none()
            && self.square.is_none()
            && self.authorizenet.is_none()
            && self.paypal.is_none()
        {
            return Err(SettingsError::NoProvider);
        }
        if let Some(s) = &self.stripe {
            s.validate()?;
        }
        if let Some(s) = &self.square {
            let url = s.notification_url.as_str();
            let loopback =
                url.starts_with("http://127.0.0.1") || url.starts_with("http://localhost");
            if !(url.starts_with("https://") || loopback) || url.len() > 2048 {
                return Err(SettingsError::SquareUrl);
            }
            if s.keys.iter().all(|k| k.expose_secret().is_empty()) {
                return Err(SettingsError::SquareKeyMissing);
            }
        }
        if let Some(a) = &self.authorizenet {
            let valid = |k: &SecretString| {
                let k = k.expose_secret();
                k.len() == 128 && k.bytes().all(|b| b.is_ascii_hexdigit())
            };
            if a.keys.is_empty() || !a.keys.iter().all(valid) {
                return Err(SettingsError::AuthorizeNetKey);
            }
        }
        if let Some(p) = &self.paypal {
            if p.webhook_id.trim().is_empty() {
                return Err(SettingsError::PaypalWebhookId);
            }
            if p.cert_hosts.is_empty() {
                return Err(SettingsError::Paypal(
                    "cert_hosts: at least one host".into(),
                ));
            }
            if p.tolerance_secs < 0 {
                return Err(SettingsError::PaypalTolerance);
            }
            let mut trust = paysync_domain::paypal::signature::TrustStore::paypal();
            for root in &p.extra_roots {
                trust
                    .add_root_pem(root)
                    .map_err(|e| SettingsError::Paypal(format!("extra root: {e}")))?;
            }
        }
        self.amqp.validate()?;
        Ok(())
    }
}

impl StripeSettings {
    /// Checks the secrets and the tolerance.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.secrets.is_empty() {
            return Err(SettingsError::StripeSecretMissing);
        }
        if let Some(i) = self
            .secrets
            .iter()
            .position(|s| !valid_stripe_secret(s.expose_secret()))
        {
            return Err(SettingsError::StripeSecretPrefix { position: i + 1 });
        }
        if self.tolerance_secs < 0 {
            return Err(SettingsError::StripeTolerance);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> Settings {
        Settings::local(vec![SecretString::from("whsec_unit".to_owned())])
    }

    #[test]
    fn local_settings_are_valid() {
        assert_eq!(local().validate(), Ok(()));
        let mut s = local();
        s.http_addr = "127.0.0.1:0".parse().unwrap();
        s.metrics_addr = s.http_addr;
        assert_eq!(s.validate(), Ok(()), "two random ports never collide");
        stripe(&mut s).tolerance_secs = 0;
        assert_eq!(s.validate(), Ok(()), "0 turns the age check off");
        s.stripe = None;
        assert_eq!(s.validate(), Err(SettingsError::NoProvider));
    }

    fn stripe(s: &mut Settings) -> &mut StripeSettings {
        s.stripe.as_mut().expect("local settings configure Stripe")
    }

    /// Spoils one field of valid settings.
    type Spoil = fn(&mut Settings);

    #[test]
    fn invalid_settings_are_refused_naming_the_field() {
        let cases: [(Spoil, SettingsError); 9] = [
            (|s| s.metrics_addr = s.http_addr, SettingsError::MetricsAddr),
            (|s| s.body_limit = 0, SettingsError::BodyLimit),
            (
                |s| s.request_timeout = Duration::ZERO,
                SettingsError::RequestTimeout,
            ),
            (
                |s| s.header_timeout = Duration::ZERO,
                SettingsError::HeaderTimeout,
            ),
            (
                |s| stripe(s).secrets.clear(),
                SettingsError::StripeSecretMissing,
            ),
            (
                |s| {
                    stripe(s)
                        .secrets
                        .push(SecretString::from("sk_live_abc123".to_owned()))
                },
                SettingsError::StripeSecretPrefix { position: 2 },
            ),
            (
                |s| stripe(s).tolerance_secs = -1,
                SettingsError::StripeTolerance,
            ),
            (
                |s| s.amqp.prefix = "bad prefix".into(),
                SettingsError::Amqp(AmqpSettingsError::Prefix),
            ),
            (
                |s| s.amqp.url = "amqps://guest:topsecret@h/%2f,http://h".into(),
                SettingsError::Amqp(AmqpSettingsError::UrlScheme),
            ),
        ];
        for (break_it, expected) in cases {
            let mut s = local();
            break_it(&mut s);
            let err = s.validate().unwrap_err();
            assert_eq!(err, expected);
            let shown = err.to_string();
            assert!(
                !shown.contains("PAYSYNC_")
                    && !shown.contains("abc123")
                    && !shown.contains("topsecret"),
                "{shown}"
            );
        }
    }
}
