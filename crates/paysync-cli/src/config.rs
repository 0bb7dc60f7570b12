//! The one place that reads the environment: one reader per section (common, AMQP, Stripe
//! endpoint and HTTP, database, retry, admin, worker), run once at start-up.
//!
//! Rule of thumb: a reader parses its variables into the section's settings type and asks that
//! type to validate itself (the rules live beside the type, so a test or the bench building the
//! same settings gets the same verdict); this module only maps a refused field to the variable
//! that set it, so every error names the variable. Secret values never appear in errors or logs.
//!
//! A secret variable `X` may instead be given as a file path in `X_FILE` (Docker/systemd
//! credentials style); the file's content, trimmed, is used.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use paysync_amqp::{
    AmqpSettings, AmqpSettingsError, AmqpTls, ClientIdentity, MAX_DELAY_SECS, MAX_PREFIX_LEN,
};
use paysync_domain::Mode;
use paysync_domain::retry::{RetryPolicy, RetryPolicyError};
use paysync_receiver::{
    ListenError, STRIPE_SECRET_PREFIX, Settings as ReceiverSettings,
    SettingsError as ReceiverSettingsError,
};
use paysync_store::{StoreSettings, StoreSettingsError};
use paysync_telemetry::LogFormat;
use paysync_worker::{
    MIN_ADMIN_TOKEN_LEN, Settings as WorkerSettings, SettingsError as WorkerSettingsError,
};
use secrecy::SecretString;

/// The development-only signing secret `paysync up` and `paysync send` fall back to when
/// `PAYSYNC_STRIPE_WEBHOOK_SECRET` is unset. Public by design: never use it for a real endpoint.
pub const DEV_WEBHOOK_SECRET: &str = "whsec_paysync_local_development_only";

type Lookup<'a> = Box<dyn Fn(&str) -> Option<String> + 'a>;

/// Reads variables; a function so tests can supply their own environment.
pub struct Env<'a> {
    get: Lookup<'a>,
}

impl Env<'static> {
    /// The process environment.
    pub fn process() -> Self {
        Self {
            get: Box::new(|name| std::env::var(name).ok()),
        }
    }
}

impl<'a> Env<'a> {
    /// An environment backed by `get` (tests supply their own).
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn from_fn(get: impl Fn(&str) -> Option<String> + 'a) -> Self {
        Self { get: Box::new(get) }
    }

    pub(crate) fn raw(&self, name: &str) -> Option<String> {
        (self.get)(name).filter(|v| !v.trim().is_empty())
    }

    pub(crate) fn parse<T: FromStr>(&self, name: &str, default: T) -> anyhow::Result<T>
    where
        T::Err: std::fmt::Display,
    {
        match self.raw(name) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse()
                .map_err(|e| anyhow::anyhow!("{name}: invalid value {:?}: {e}", v.trim())),
        }
    }

    /// A decimal number of seconds (`1.5`): it becomes a [`Duration`] only if it is positive,
    /// finite and at most 10^9.
    pub(crate) fn seconds(&self, name: &str, default: Duration) -> anyhow::Result<Duration> {
        let v: f64 = self.parse(name, default.as_secs_f64())?;
        if v <= 0.0 {
            bail!("{name}: {POSITIVE}");
        }
        if !v.is_finite() || v > 1e9 {
            bail!("{name}: must be a finite number of seconds");
        }
        Ok(Duration::from_secs_f64(v))
    }

    /// A secret from `name` or the file named by `name_FILE`; errors never show the value.
    pub(crate) fn secret(&self, name: &str) -> anyhow::Result<Option<String>> {
        let file_var = format!("{name}_FILE");
        if let Some(path) = self.raw(&file_var) {
            let content = std::fs::read_to_string(path.trim())
                .with_context(|| format!("{file_var}: cannot read {}", path.trim()))?;
            let content = content.trim().to_owned();
            if content.is_empty() {
                bail!("{file_var}: file {} is empty", path.trim());
            }
            return Ok(Some(content));
        }
        Ok(self.raw(name))
    }
}

/// What a variable says when its value is zero and must not be.
const POSITIVE: &str = "must be greater than zero";

/// `PAYSYNC_<VAR>: <what is wrong>`, the form of every configuration error.
pub(crate) fn refused(var: &str, what: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("{var}: {what}")
}

// --- common ---

/// Settings common to every process.
#[derive(Debug)]
pub struct Common {
    /// `PAYSYNC_LOG_FORMAT`: `human` (default) or `json`.
    pub log_format: LogFormat,
}

/// Reads the settings every process shares.
pub fn common(env: &Env<'_>) -> anyhow::Result<Common> {
    let log_format = match env.raw("PAYSYNC_LOG_FORMAT").as_deref().map(str::trim) {
        None | Some("human") => LogFormat::Human,
        Some("json") => LogFormat::Json,
        Some(other) => bail!("PAYSYNC_LOG_FORMAT: expected `human` or `json`, got {other:?}"),
    };
    Ok(Common { log_format })
}

// --- AMQP ---

/// Broker settings from `PAYSYNC_AMQP_*`; `role` names the connection (`<prefix>-<role>`).
pub fn amqp(env: &Env<'_>, role: &str) -> anyhow::Result<AmqpSettings> {
    let d = AmqpSettings::default();
    let url = env.secret("PAYSYNC_AMQP_URL")?.unwrap_or(d.url.clone());
    let prefix = env
        .raw("PAYSYNC_AMQP_PREFIX")
        .map(|p| p.trim().to_owned())
        .unwrap_or(d.prefix.clone());
    let s = AmqpSettings {
        connection_name: format!("{prefix}-{role}"),
        url,
        prefix,
        publisher_channels: env.parse("PAYSYNC_AMQP_PUBLISHER_CHANNELS", d.publisher_channels)?,
        max_in_flight: env.parse("PAYSYNC_AMQP_MAX_IN_FLIGHT", d.max_in_flight)?,
        confirm_timeout: Duration::from_millis(env.parse(
            "PAYSYNC_AMQP_CONFIRM_TIMEOUT_MS",
            d.confirm_timeout.as_millis() as u64,
        )?),
        connect_timeout: Duration::from_millis(env.parse(
            "PAYSYNC_AMQP_CONNECT_TIMEOUT_MS",
            d.connect_timeout.as_millis() as u64,
        )?),
        delivery_limit: env.parse("PAYSYNC_AMQP_DELIVERY_LIMIT", d.delivery_limit)?,
        tls: amqp_tls(env)?,
        ..d
    };
    s.validate().map_err(amqp_refused)?;
    Ok(s)
}

/// TLS material for `amqps://` nodes: `PAYSYNC_AMQP_CA_FILE` (extra trusted roots, PEM) and a
/// client certificate from `PAYSYNC_AMQP_CLIENT_CERT_FILE` with its key in
/// `PAYSYNC_AMQP_CLIENT_KEY` (or `_FILE`), both or neither.
fn amqp_tls(env: &Env<'_>) -> anyhow::Result<AmqpTls> {
    let ca_pem = match env.raw("PAYSYNC_AMQP_CA_FILE") {
        Some(path) => Some(
            std::fs::read_to_string(path.trim())
                .with_context(|| format!("PAYSYNC_AMQP_CA_FILE: cannot read {}", path.trim()))?,
        ),
        None => None,
    };
    let cert = match env.raw("PAYSYNC_AMQP_CLIENT_CERT_FILE") {
        Some(path) => Some(std::fs::read(path.trim()).with_context(|| {
            format!("PAYSYNC_AMQP_CLIENT_CERT_FILE: cannot read {}", path.trim())
        })?),
        None => None,
    };
    let key = env.secret("PAYSYNC_AMQP_CLIENT_KEY")?;
    let client = match (cert, key) {
        (Some(cert_pem), Some(key)) => Some(ClientIdentity {
            cert_pem,
            key_pem: key.into_bytes(),
        }),
        (None, None) => None,
        _ => bail!(
            "PAYSYNC_AMQP_CLIENT_CERT_FILE and PAYSYNC_AMQP_CLIENT_KEY (or _FILE): set both or neither"
        ),
    };
    Ok(AmqpTls { ca_pem, client })
}

/// Names the variable behind a refused [`AmqpSettings`] field.
fn amqp_refused(err: AmqpSettingsError) -> anyhow::Error {
    use AmqpSettingsError as E;
    match err {
        E::UrlScheme => refused(
            "PAYSYNC_AMQP_URL",
            "every comma-separated node must start with amqp:// or amqps://",
        ),
        E::TlsCa => refused("PAYSYNC_AMQP_CA_FILE", "no PEM certificate in the file"),
        E::TlsClient => refused(
            "PAYSYNC_AMQP_CLIENT_CERT_FILE / PAYSYNC_AMQP_CLIENT_KEY",
            "needs a PEM certificate and its PEM private key",
        ),
        E::Prefix => refused(
            "PAYSYNC_AMQP_PREFIX",
            format!("use 1-{MAX_PREFIX_LEN} characters of [A-Za-z0-9._-]"),
        ),
        E::PublisherChannels => refused("PAYSYNC_AMQP_PUBLISHER_CHANNELS", POSITIVE),
        E::MaxInFlight => refused("PAYSYNC_AMQP_MAX_IN_FLIGHT", POSITIVE),
        E::ConfirmTimeout => refused("PAYSYNC_AMQP_CONFIRM_TIMEOUT_MS", POSITIVE),
        E::ConnectTimeout => refused("PAYSYNC_AMQP_CONNECT_TIMEOUT_MS", POSITIVE),
        E::DeliveryLimit => refused("PAYSYNC_AMQP_DELIVERY_LIMIT", POSITIVE),
    }
}

// --- Stripe endpoint and HTTP (the receiver) ---

/// The Stripe signing secrets: comma-separated in `PAYSYNC_STRIPE_WEBHOOK_SECRET` (or its
/// `_FILE`), several while rotating. `None` when unset. Also used by `paysync send`.
pub fn stripe_secrets(env: &Env<'_>) -> anyhow::Result<Option<Vec<String>>> {
    let Some(raw) = env.secret("PAYSYNC_STRIPE_WEBHOOK_SECRET")? else {
        return Ok(None);
    };
    let secrets: Vec<String> = raw
        .split([',', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if secrets.is_empty() {
        bail!("PAYSYNC_STRIPE_WEBHOOK_SECRET: no secret in the value");
    }
    if let Some(i) = secrets
        .iter()
        .position(|s| !paysync_receiver::valid_stripe_secret(s))
    {
        return Err(receiver_refused(
            ReceiverSettingsError::StripeSecretPrefix { position: i + 1 },
        ));
    }
    Ok(Some(secrets))
}

/// Whether the development secret may stand in for a missing signing secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretPolicy {
    /// Production: the secret is required.
    Required,
    /// Local all-in-one: fall back to [`DEV_WEBHOOK_SECRET`] with a warning.
    DevFallback,
}

/// Receiver settings: the Stripe endpoint, `PAYSYNC_HTTP_*`, the listeners and the broker.
pub fn receiver(env: &Env<'_>, policy: SecretPolicy) -> anyhow::Result<ReceiverSettings> {
    let square = square(env, policy)?;
    let authorizenet = authorizenet(env, policy)?;
    let paypal = paypal(env, policy)?;
    let others = square.is_some() || authorizenet.is_some() || paypal.is_some();
    let secrets = match (stripe_secrets(env)?, policy) {
        (Some(s), _) => Some(s),
        (None, SecretPolicy::DevFallback) => {
            tracing::warn!(
                "PAYSYNC_STRIPE_WEBHOOK_SECRET is not set: using the public development secret; \
                 never expose this receiver"
            );
            Some(vec![DEV_WEBHOOK_SECRET.to_owned()])
        }
        (None, SecretPolicy::Required) if others => None,
        (None, SecretPolicy::Required) => bail!(
            "no provider is configured: set PAYSYNC_STRIPE_WEBHOOK_SECRET (the endpoint's \
             signing secret, whsec_…; comma-separated during rotation, or a file path in \
             PAYSYNC_STRIPE_WEBHOOK_SECRET_FILE), PAYSYNC_SQUARE_SIGNATURE_KEY, \
             PAYSYNC_AUTHORIZENET_SIGNATURE_KEY or PAYSYNC_PAYPAL_WEBHOOK_ID"
        ),
    };
    let mut s = ReceiverSettings::local(Vec::new());
    s.stripe = secrets.map(|secrets| paysync_receiver::StripeSettings {
        secrets: secrets.into_iter().map(SecretString::from).collect(),
        mode: Mode::Test,
        tolerance_secs: paysync_domain::stripe::DEFAULT_TOLERANCE_SECS,
    });
    s.square = square;
    s.authorizenet = authorizenet;
    s.paypal = paypal;
    s.http_addr = env.parse::<SocketAddr>("PAYSYNC_HTTP_ADDR", s.http_addr)?;
    s.metrics_addr = env.parse::<SocketAddr>("PAYSYNC_METRICS_ADDR", s.metrics_addr)?;
    s.body_limit = env.parse("PAYSYNC_BODY_LIMIT_BYTES", s.body_limit)?;
    s.request_timeout = Duration::from_secs(env.parse(
        "PAYSYNC_HTTP_REQUEST_TIMEOUT_SECS",
        s.request_timeout.as_secs(),
    )?);
    s.header_timeout = Duration::from_secs(env.parse(
        "PAYSYNC_HTTP_HEADER_TIMEOUT_SECS",
        s.header_timeout.as_secs(),
    )?);
    if let Some(stripe) = s.stripe.as_mut() {
        stripe.mode = env.parse::<Mode>("PAYSYNC_STRIPE_MODE", stripe.mode)?;
        stripe.tolerance_secs =
            env.parse("PAYSYNC_STRIPE_TOLERANCE_SECS", stripe.tolerance_secs)?;
    }
    s.amqp = amqp(env, "receiver")?;
    s.validate().map_err(receiver_refused)?;
    Ok(s)
}

/// Comma- or newline-separated secrets of `var` (or its `_FILE`); `None` when unset.
fn secret_list(env: &Env<'_>, var: &str) -> anyhow::Result<Option<Vec<SecretString>>> {
    let Some(raw) = env.secret(var)? else {
        return Ok(None);
    };
    let keys: Vec<SecretString> = raw
        .split([',', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| SecretString::from(s.to_owned()))
        .collect();
    if keys.is_empty() {
        bail!("{var}: no key in the value");
    }
    Ok(Some(keys))
}

/// The public development keys `paysync up` falls back to (never for a receiver that is
/// exposed: `paysync receiver` requires real ones).
pub mod dev {
    /// Square's development signature key.
    pub const SQUARE_KEY: &str = "paysync-dev-square-signature-key";
    /// The notification URL `paysync up` registers for Square.
    pub const SQUARE_URL: &str = "http://127.0.0.1:8080/webhooks/square";
    /// Authorize.Net's development signature key (128 hex characters, as the real ones).
    pub const AUTHORIZENET_KEY: &str = "0DE5A5EC0DE5A5EC0DE5A5EC0DE5A5EC0DE5A5EC0DE5A5EC0DE5A5EC0DE5A5EC0DE5A5EC0DE5A5EC0DE5A5EC0DE5A5EC0DE5A5EC0DE5A5EC0DE5A5EC0DE5A5EC";
    /// PayPal's development webhook id (the one PayPal's simulator signs with).
    pub const PAYPAL_WEBHOOK_ID: &str = "WEBHOOK_ID";
    /// The local test CA `paysync send --provider paypal` signs under (fixtures/paypal-local).
    pub const PAYPAL_CA: &[u8] = include_bytes!("../../../fixtures/paypal-local/ca.pem");
    /// Where `paysync send --provider paypal` serves its test certificate.
    pub const PAYPAL_CERT_HOST: &str = "127.0.0.1:8089";
}

/// The Square endpoint from `PAYSYNC_SQUARE_*`; `None` when no key is set (and no
/// development fallback applies).
fn square(
    env: &Env<'_>,
    policy: SecretPolicy,
) -> anyhow::Result<Option<paysync_receiver::SquareSettings>> {
    let keys = match (secret_list(env, "PAYSYNC_SQUARE_SIGNATURE_KEY")?, policy) {
        (Some(k), _) => k,
        (None, SecretPolicy::DevFallback) => vec![SecretString::from(dev::SQUARE_KEY.to_owned())],
        (None, SecretPolicy::Required) => return Ok(None),
    };
    let url = match (env.raw("PAYSYNC_SQUARE_NOTIFICATION_URL"), policy) {
        (Some(u), _) => u.trim().to_owned(),
        (None, SecretPolicy::DevFallback) => dev::SQUARE_URL.to_owned(),
        (None, SecretPolicy::Required) => bail!(
            "PAYSYNC_SQUARE_NOTIFICATION_URL is not set (the URL exactly as registered on the \
             Square webhook subscription: Square signs it)"
        ),
    };
    Ok(Some(paysync_receiver::SquareSettings {
        notification_url: url,
        keys,
        mode: env.parse::<Mode>("PAYSYNC_SQUARE_MODE", Mode::Test)?,
    }))
}

/// The Authorize.Net endpoint from `PAYSYNC_AUTHORIZENET_*`.
fn authorizenet(
    env: &Env<'_>,
    policy: SecretPolicy,
) -> anyhow::Result<Option<paysync_receiver::AuthorizeNetSettings>> {
    let keys = match (
        secret_list(env, "PAYSYNC_AUTHORIZENET_SIGNATURE_KEY")?,
        policy,
    ) {
        (Some(k), _) => k,
        (None, SecretPolicy::DevFallback) => {
            vec![SecretString::from(dev::AUTHORIZENET_KEY.to_owned())]
        }
        (None, SecretPolicy::Required) => return Ok(None),
    };
    Ok(Some(paysync_receiver::AuthorizeNetSettings {
        keys,
        mode: env.parse::<Mode>("PAYSYNC_AUTHORIZENET_MODE", Mode::Test)?,
    }))
}

/// The PayPal endpoint from `PAYSYNC_PAYPAL_*`.
fn paypal(
    env: &Env<'_>,
    policy: SecretPolicy,
) -> anyhow::Result<Option<paysync_receiver::PaypalSettings>> {
    let (webhook_id, dev_mode) = match (env.raw("PAYSYNC_PAYPAL_WEBHOOK_ID"), policy) {
        (Some(id), _) => (id.trim().to_owned(), false),
        (None, SecretPolicy::DevFallback) => (dev::PAYPAL_WEBHOOK_ID.to_owned(), true),
        (None, SecretPolicy::Required) => return Ok(None),
    };
    let mode = env.parse::<Mode>("PAYSYNC_PAYPAL_MODE", Mode::Test)?;
    let mut p = paysync_receiver::PaypalSettings::new(webhook_id, mode);
    if let Some(hosts) = env.raw("PAYSYNC_PAYPAL_CERT_HOSTS") {
        p.cert_hosts = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
            .collect();
    } else if dev_mode {
        p.cert_hosts.push(dev::PAYPAL_CERT_HOST.to_owned());
    }
    if let Some(path) = env.raw("PAYSYNC_PAYPAL_CA_FILE") {
        let pem = std::fs::read(path.trim())
            .with_context(|| format!("PAYSYNC_PAYPAL_CA_FILE: cannot read {}", path.trim()))?;
        p.extra_roots.push(pem);
    } else if dev_mode {
        p.extra_roots.push(dev::PAYPAL_CA.to_vec());
    }
    p.tolerance_secs = env.parse("PAYSYNC_PAYPAL_TOLERANCE_SECS", p.tolerance_secs)?;
    Ok(Some(p))
}

/// Authorize.Net's transaction-details API, when `PAYSYNC_AUTHORIZENET_API_LOGIN_ID` and
/// `PAYSYNC_AUTHORIZENET_TRANSACTION_KEY` (or their `_FILE`s) are set; one without the other is
/// an error.
pub fn authorizenet_api(
    env: &Env<'_>,
) -> anyhow::Result<Option<paysync_worker::enrich::AuthorizeNetApiSettings>> {
    let login = env.secret("PAYSYNC_AUTHORIZENET_API_LOGIN_ID")?;
    let key = env.secret("PAYSYNC_AUTHORIZENET_TRANSACTION_KEY")?;
    let (login, key) = match (login, key) {
        (None, None) => return Ok(None),
        (Some(l), Some(k)) => (l, k),
        (Some(_), None) => bail!(
            "PAYSYNC_AUTHORIZENET_TRANSACTION_KEY is not set (PAYSYNC_AUTHORIZENET_API_LOGIN_ID is)"
        ),
        (None, Some(_)) => bail!(
            "PAYSYNC_AUTHORIZENET_API_LOGIN_ID is not set (PAYSYNC_AUTHORIZENET_TRANSACTION_KEY is)"
        ),
    };
    let mut s = paysync_worker::enrich::AuthorizeNetApiSettings::new(
        SecretString::from(login),
        SecretString::from(key),
    );
    if let Some(url) = env.raw("PAYSYNC_AUTHORIZENET_API_URL") {
        let url = url.trim().to_owned();
        let loopback = url.starts_with("http://127.0.0.1") || url.starts_with("http://localhost");
        if !(url.starts_with("https://") || loopback) {
            bail!("PAYSYNC_AUTHORIZENET_API_URL: must be an https URL (loopback http for tests)");
        }
        s.url = url;
    }
    Ok(Some(s))
}

/// An API base URL from `var`, else `default`: https, or loopback http (tests, local fakes).
fn api_base(env: &Env<'_>, var: &str, default: &str) -> anyhow::Result<String> {
    let Some(url) = env.raw(var) else {
        return Ok(default.to_owned());
    };
    let url = url.trim().trim_end_matches('/').to_owned();
    let loopback = url.starts_with("http://127.0.0.1") || url.starts_with("http://localhost");
    if !(url.starts_with("https://") || loopback) {
        bail!("{var}: must be an https URL (loopback http for tests)");
    }
    Ok(url)
}

/// A duration variable: `<n>s|m|h|d`, or a bare number of seconds; positive.
fn duration(env: &Env<'_>, var: &str, default: Duration) -> anyhow::Result<Duration> {
    let Some(raw) = env.raw(var) else {
        return Ok(default);
    };
    let raw = raw.trim();
    let secs = match raw.parse::<u64>() {
        Ok(n) => i64::try_from(n).unwrap_or(i64::MAX),
        Err(_) => crate::dlq::parse_duration_for(raw, var)?,
    };
    if secs <= 0 {
        bail!("{var}: {POSITIVE}");
    }
    Ok(Duration::from_secs(secs.unsigned_abs()))
}

/// The settings of a provider API client at `base` with `token`: the rate from
/// `PAYSYNC_PROVIDER_API_RATE` (requests a second to each provider, default 20).
fn api_settings(
    env: &Env<'_>,
    base: String,
    token: SecretString,
) -> anyhow::Result<paysync_worker::reconcile::ApiSettings> {
    let mut s = paysync_worker::reconcile::ApiSettings::new(base, token);
    s.per_second = env.parse("PAYSYNC_PROVIDER_API_RATE", s.per_second)?;
    if s.per_second == 0 {
        bail!("PAYSYNC_PROVIDER_API_RATE: {POSITIVE}");
    }
    Ok(s)
}

/// Events a page when listing a provider's events (`PAYSYNC_RECONCILE_PAGE_SIZE`, 1–100).
fn page_size(env: &Env<'_>) -> anyhow::Result<u32> {
    let n: u32 = env.parse("PAYSYNC_RECONCILE_PAGE_SIZE", 100)?;
    if !(1..=100).contains(&n) {
        bail!("PAYSYNC_RECONCILE_PAGE_SIZE: must be between 1 and 100 (the providers' limit)");
    }
    Ok(n)
}

/// Stripe's API, when `PAYSYNC_STRIPE_API_KEY` (or its `_FILE`) is set: a restricted key with
/// read access to Events (and, for thin events, to the objects they name) is enough. Its mode
/// comes from the key's prefix (`sk_test_`, `rk_live_`, …), else from `PAYSYNC_STRIPE_MODE`.
pub fn stripe_api(
    env: &Env<'_>,
) -> anyhow::Result<Option<std::sync::Arc<paysync_worker::reconcile::stripe::StripeApi>>> {
    use paysync_worker::reconcile::stripe;
    let Some(key) = env.secret("PAYSYNC_STRIPE_API_KEY")? else {
        return Ok(None);
    };
    let configured = env.parse::<Mode>("PAYSYNC_STRIPE_MODE", Mode::Test)?;
    let mode = if key.starts_with("sk_test_") || key.starts_with("rk_test_") {
        Mode::Test
    } else if key.starts_with("sk_live_") || key.starts_with("rk_live_") {
        Mode::Live
    } else {
        configured
    };
    // A test key on a live deployment (or the reverse) would list the other mode's events.
    if env.raw("PAYSYNC_STRIPE_MODE").is_some() && mode != configured {
        bail!(
            "PAYSYNC_STRIPE_API_KEY is a {mode} key but PAYSYNC_STRIPE_MODE is {configured}: \
             use the key of the account this deployment receives webhooks for"
        );
    }
    let base = api_base(env, "PAYSYNC_STRIPE_API_BASE", stripe::STRIPE_API_BASE)?;
    let settings = api_settings(env, base, SecretString::from(key))?;
    Ok(Some(std::sync::Arc::new(stripe::StripeApi::new(
        settings,
        mode,
        page_size(env)?,
    ))))
}

/// Square's Events API, when `PAYSYNC_SQUARE_ACCESS_TOKEN` (or its `_FILE`) is set: a personal
/// access token (Square lists events for no other kind). Its mode is `PAYSYNC_SQUARE_MODE`;
/// the base defaults to Square's production or sandbox host accordingly.
pub fn square_api(
    env: &Env<'_>,
) -> anyhow::Result<Option<std::sync::Arc<paysync_worker::reconcile::square::SquareApi>>> {
    use paysync_worker::reconcile::square;
    let Some(token) = env.secret("PAYSYNC_SQUARE_ACCESS_TOKEN")? else {
        return Ok(None);
    };
    let mode = env.parse::<Mode>("PAYSYNC_SQUARE_MODE", Mode::Test)?;
    let default = match mode {
        Mode::Live => square::SQUARE_API_BASE,
        Mode::Test => square::SQUARE_SANDBOX_API_BASE,
    };
    let base = api_base(env, "PAYSYNC_SQUARE_API_BASE", default)?;
    let settings = api_settings(env, base, SecretString::from(token))?;
    Ok(Some(std::sync::Arc::new(square::SquareApi::new(
        settings,
        mode,
        page_size(env)?,
    ))))
}

/// PayPal's event notifications, when `PAYSYNC_PAYPAL_CLIENT_ID` and
/// `PAYSYNC_PAYPAL_CLIENT_SECRET` (or their `_FILE`s) are set: the REST app's credentials, for
/// an OAuth token with the webhooks scope. Its mode is `PAYSYNC_PAYPAL_MODE`; the base defaults
/// to PayPal's live or sandbox host accordingly.
pub fn paypal_api(
    env: &Env<'_>,
) -> anyhow::Result<Option<std::sync::Arc<paysync_worker::reconcile::paypal::PaypalApi>>> {
    use paysync_worker::reconcile::paypal;
    let id = env.secret("PAYSYNC_PAYPAL_CLIENT_ID")?;
    let secret = env.secret("PAYSYNC_PAYPAL_CLIENT_SECRET")?;
    let (id, secret) = match (id, secret) {
        (None, None) => return Ok(None),
        (Some(i), Some(s)) => (i, s),
        (Some(_), None) => {
            bail!("PAYSYNC_PAYPAL_CLIENT_SECRET is not set (PAYSYNC_PAYPAL_CLIENT_ID is)")
        }
        (None, Some(_)) => {
            bail!("PAYSYNC_PAYPAL_CLIENT_ID is not set (PAYSYNC_PAYPAL_CLIENT_SECRET is)")
        }
    };
    let mode = env.parse::<Mode>("PAYSYNC_PAYPAL_MODE", Mode::Test)?;
    let default = match mode {
        Mode::Live => paypal::PAYPAL_API_BASE,
        Mode::Test => paypal::PAYPAL_SANDBOX_API_BASE,
    };
    let base = api_base(env, "PAYSYNC_PAYPAL_API_BASE", default)?;
    // The app's credentials go in the OAuth call; the listing uses the token they obtain.
    let settings = api_settings(env, base, SecretString::from(String::new()))?;
    Ok(Some(std::sync::Arc::new(paypal::PaypalApi::new(
        settings,
        SecretString::from(id),
        SecretString::from(secret),
        mode,
        page_size(env)?,
    ))))
}

/// Authorize.Net's notification history, when its API credentials are set (the same
/// `PAYSYNC_AUTHORIZENET_API_LOGIN_ID` and `PAYSYNC_AUTHORIZENET_TRANSACTION_KEY` as the
/// transaction-details lookup). Its mode is `PAYSYNC_AUTHORIZENET_MODE`; the base
/// (`PAYSYNC_AUTHORIZENET_REST_BASE`) defaults to the production or sandbox REST host.
pub fn authorizenet_history(
    env: &Env<'_>,
) -> anyhow::Result<
    Option<std::sync::Arc<paysync_worker::reconcile::authorizenet::AuthorizeNetHistory>>,
> {
    use paysync_worker::reconcile::authorizenet as anet;
    let Some(credentials) = authorizenet_api(env)? else {
        return Ok(None);
    };
    let mode = env.parse::<Mode>("PAYSYNC_AUTHORIZENET_MODE", Mode::Test)?;
    let default = match mode {
        Mode::Live => anet::AUTHORIZENET_REST_BASE,
        Mode::Test => anet::AUTHORIZENET_SANDBOX_REST_BASE,
    };
    let base = api_base(env, "PAYSYNC_AUTHORIZENET_REST_BASE", default)?;
    let settings = api_settings(env, base, SecretString::from(String::new()))?;
    Ok(Some(std::sync::Arc::new(anet::AuthorizeNetHistory::new(
        settings,
        credentials.login_id,
        credentials.transaction_key,
        mode,
        page_size(env)?,
    ))))
}

/// The provider APIs a worker uses, each client built once (one rate limit and breaker per
/// provider and process): the billing handlers' lookups and the reconciler's event lists.
pub struct ProviderClients {
    /// For the billing handlers (Authorize.Net transactions, Stripe thin-event objects).
    pub apis: paysync_worker::billing::ProviderApis,
    /// Every provider whose event list can be read.
    pub sources: Vec<std::sync::Arc<dyn paysync_worker::reconcile::EventSource>>,
}

/// The provider API clients whose credentials are set.
pub fn provider_clients(env: &Env<'_>) -> anyhow::Result<ProviderClients> {
    use std::sync::Arc;
    let mut sources: Vec<Arc<dyn paysync_worker::reconcile::EventSource>> = Vec::new();
    let stripe = stripe_api(env)?;
    if let Some(s) = &stripe {
        sources.push(s.clone());
    }
    if let Some(s) = square_api(env)? {
        sources.push(s);
    }
    if let Some(s) = authorizenet_history(env)? {
        sources.push(s);
    }
    if let Some(s) = paypal_api(env)? {
        sources.push(s);
    }
    let authorizenet = authorizenet_api(env)?.map(|s| {
        Arc::new(paysync_worker::enrich::AuthorizeNetApi::new(s))
            as Arc<dyn paysync_worker::billing::TransactionSource>
    });
    Ok(ProviderClients {
        apis: paysync_worker::billing::ProviderApis {
            authorizenet,
            stripe: stripe.map(|s| s as Arc<dyn paysync_worker::billing::ObjectSource>),
        },
        sources,
    })
}

/// The scheduled reconciler's timing: `PAYSYNC_RECONCILE_INTERVAL` (15m),
/// `PAYSYNC_RECONCILE_LOOKBACK` (24h), `PAYSYNC_RECONCILE_SETTLE` (5m).
fn reconcile_schedule(
    env: &Env<'_>,
) -> anyhow::Result<paysync_worker::reconcile::ReconcileSchedule> {
    let d = paysync_worker::reconcile::ReconcileSchedule::default();
    let settle = match env
        .raw("PAYSYNC_RECONCILE_SETTLE")
        .as_deref()
        .map(str::trim)
    {
        Some("0") => Duration::ZERO,
        _ => duration(env, "PAYSYNC_RECONCILE_SETTLE", d.settle)?,
    };
    Ok(paysync_worker::reconcile::ReconcileSchedule {
        interval: duration(env, "PAYSYNC_RECONCILE_INTERVAL", d.interval)?,
        lookback: duration(env, "PAYSYNC_RECONCILE_LOOKBACK", d.lookback)?,
        settle,
    })
}

/// Names the variable behind a refused receiver field.
fn receiver_refused(err: ReceiverSettingsError) -> anyhow::Error {
    use ReceiverSettingsError as E;
    match err {
        E::MetricsAddr => refused(
            "PAYSYNC_METRICS_ADDR",
            "must differ from PAYSYNC_HTTP_ADDR (metrics stay off the public port)",
        ),
        E::BodyLimit => refused("PAYSYNC_BODY_LIMIT_BYTES", POSITIVE),
        E::RequestTimeout => refused("PAYSYNC_HTTP_REQUEST_TIMEOUT_SECS", POSITIVE),
        E::HeaderTimeout => refused("PAYSYNC_HTTP_HEADER_TIMEOUT_SECS", POSITIVE),
        E::NoProvider => refused("PAYSYNC_STRIPE_WEBHOOK_SECRET", "no provider is configured"),
        E::SquareUrl => refused(
            "PAYSYNC_SQUARE_NOTIFICATION_URL",
            "must be the https URL registered on the subscription",
        ),
        E::SquareKeyMissing => refused("PAYSYNC_SQUARE_SIGNATURE_KEY", "no key in the value"),
        E::AuthorizeNetKey => refused(
            "PAYSYNC_AUTHORIZENET_SIGNATURE_KEY",
            "each key is the 128-character hex Signature Key from the Merchant Interface",
        ),
        E::PaypalWebhookId => refused("PAYSYNC_PAYPAL_WEBHOOK_ID", "must not be empty"),
        E::Paypal(what) => refused("PAYSYNC_PAYPAL_CERT_HOSTS / PAYSYNC_PAYPAL_CA_FILE", what),
        E::PaypalTolerance => refused(
            "PAYSYNC_PAYPAL_TOLERANCE_SECS",
            "must be ≥ 0 (0 disables the check)",
        ),
        E::StripeSecretMissing => {
            refused("PAYSYNC_STRIPE_WEBHOOK_SECRET", "no secret in the value")
        }
        E::StripeSecretPrefix { position } => refused(
            "PAYSYNC_STRIPE_WEBHOOK_SECRET",
            format!(
                "secret #{position} does not start with `{STRIPE_SECRET_PREFIX}` \
                 (use the endpoint's signing secret, not an API key)"
            ),
        ),
        E::StripeTolerance => refused(
            "PAYSYNC_STRIPE_TOLERANCE_SECS",
            "must be ≥ 0 (0 disables the age check)",
        ),
        E::Amqp(e) => amqp_refused(e),
    }
}

/// Names the variable behind a receiver listener that could not be bound
/// ([`paysync_receiver::ListenError`]); any other error passes through unchanged.
pub fn receiver_listen_refused(err: anyhow::Error) -> anyhow::Error {
    match err.downcast::<ListenError>() {
        Ok(ListenError {
            field,
            addr,
            source,
        }) => {
            let var = match field {
                "http_addr" => "PAYSYNC_HTTP_ADDR",
                "metrics_addr" => "PAYSYNC_METRICS_ADDR",
                other => other,
            };
            anyhow::Error::new(source).context(format!("cannot listen on {addr} ({var})"))
        }
        Err(other) => other,
    }
}

// --- database ---

/// Database settings from `PAYSYNC_DATABASE_*`.
pub fn database(env: &Env<'_>) -> anyhow::Result<StoreSettings> {
    let d = StoreSettings::default();
    let s = StoreSettings {
        url: env.secret("PAYSYNC_DATABASE_URL")?.unwrap_or(d.url.clone()),
        schema: env
            .raw("PAYSYNC_DATABASE_SCHEMA")
            .map(|s| s.trim().to_owned())
            .unwrap_or(d.schema.clone()),
        max_connections: env.parse("PAYSYNC_DATABASE_MAX_CONNECTIONS", d.max_connections)?,
        statement_timeout: Duration::from_millis(env.parse(
            "PAYSYNC_DATABASE_STATEMENT_TIMEOUT_MS",
            d.statement_timeout.as_millis() as u64,
        )?),
        ..d
    };
    s.validate().map_err(store_refused)?;
    Ok(s)
}

/// Names the variable behind a refused [`StoreSettings`] field.
fn store_refused(err: StoreSettingsError) -> anyhow::Error {
    use StoreSettingsError as E;
    match err {
        E::UrlScheme => refused(
            "PAYSYNC_DATABASE_URL",
            "must start with postgres:// or postgresql://",
        ),
        E::UrlUnparsable => refused(
            "PAYSYNC_DATABASE_URL",
            "invalid database settings: database URL cannot be parsed",
        ),
        E::Tls(tls) => refused("PAYSYNC_DATABASE_URL", tls),
        E::Schema => refused(
            "PAYSYNC_DATABASE_SCHEMA",
            "use 1-63 characters of [a-z0-9_], not starting with a digit",
        ),
        E::MaxConnections => refused("PAYSYNC_DATABASE_MAX_CONNECTIONS", POSITIVE),
        E::StatementTimeout => refused("PAYSYNC_DATABASE_STATEMENT_TIMEOUT_MS", POSITIVE),
    }
}

// --- retry ---

/// The retry schedule from `PAYSYNC_RETRY_*`. Whether it fits the broker's delay levels is
/// checked with the rest of the worker's settings ([`worker`]).
pub fn retry(env: &Env<'_>) -> anyhow::Result<RetryPolicy> {
    let d = RetryPolicy::default();
    let p = RetryPolicy {
        base: env.seconds("PAYSYNC_RETRY_BASE_SECS", d.base)?,
        factor: env.parse("PAYSYNC_RETRY_FACTOR", d.factor)?,
        max_delay: env.seconds("PAYSYNC_RETRY_MAX_DELAY_SECS", d.max_delay)?,
        jitter: env.parse("PAYSYNC_RETRY_JITTER", d.jitter)?,
        max_attempts: env.parse("PAYSYNC_RETRY_MAX_ATTEMPTS", d.max_attempts)?,
    };
    p.validate().map_err(retry_refused)?;
    Ok(p)
}

/// Names the variable behind a refused [`RetryPolicy`] field.
fn retry_refused(err: RetryPolicyError) -> anyhow::Error {
    use RetryPolicyError as E;
    match err {
        E::Base => refused(
            "PAYSYNC_RETRY_BASE_SECS",
            "must be positive and at most PAYSYNC_RETRY_MAX_DELAY_SECS",
        ),
        E::Factor => refused("PAYSYNC_RETRY_FACTOR", "must be a finite number ≥ 1"),
        E::Jitter => refused("PAYSYNC_RETRY_JITTER", "must be in [0, 1)"),
        E::MaxAttempts => refused("PAYSYNC_RETRY_MAX_ATTEMPTS", "must be at least 1"),
    }
}

// --- admin ---

/// Who an operator action is recorded as: `cli:<login name>` (`$USER`).
pub fn actor(env: &Env<'_>) -> String {
    format!(
        "cli:{}",
        env.raw("USER").unwrap_or_else(|| "unknown".into())
    )
}

/// The admin API token (`PAYSYNC_ADMIN_TOKEN` or its `_FILE`); `None` keeps the API off. Its
/// length is checked with the rest of the worker's settings ([`worker`]).
pub fn admin_token(env: &Env<'_>) -> anyhow::Result<Option<SecretString>> {
    Ok(env.secret("PAYSYNC_ADMIN_TOKEN")?.map(SecretString::from))
}

// --- worker ---

/// Worker settings: `PAYSYNC_WORKER_*`, the database, the retry schedule, the broker and the
/// admin token; `metrics_var` names the listener's variable (`PAYSYNC_METRICS_ADDR` for
/// `paysync worker`, `PAYSYNC_WORKER_METRICS_ADDR` in `paysync up`).
pub fn worker(
    env: &Env<'_>,
    metrics_var: &str,
    metrics_default: SocketAddr,
) -> anyhow::Result<WorkerSettings> {
    let d = WorkerSettings::default();
    let store = database(env)?;
    // Each lane holds a connection while it applies a batch: never more lanes by default than
    // the pool has connections.
    let concurrency = env.parse(
        "PAYSYNC_WORKER_CONCURRENCY",
        d.concurrency.min(store.max_connections),
    )?;
    let s = WorkerSettings {
        metrics_addr: env.parse::<SocketAddr>(metrics_var, metrics_default)?,
        prefetch: env.parse("PAYSYNC_WORKER_PREFETCH", d.prefetch)?,
        concurrency,
        batch_size: env.parse("PAYSYNC_WORKER_BATCH_SIZE", d.batch_size)?,
        retry: retry(env)?,
        shutdown_grace: Duration::from_secs(env.parse(
            "PAYSYNC_WORKER_SHUTDOWN_GRACE_SECS",
            d.shutdown_grace.as_secs(),
        )?),
        monitor_interval: Duration::from_secs(env.parse(
            "PAYSYNC_WORKER_MONITOR_INTERVAL_SECS",
            d.monitor_interval.as_secs(),
        )?),
        kpi_interval: Duration::from_secs(
            env.parse("PAYSYNC_WORKER_KPI_INTERVAL_SECS", d.kpi_interval.as_secs())?,
        ),
        amqp: amqp(env, "worker")?,
        store,
        admin_token: admin_token(env)?,
        reconcile: reconcile_schedule(env)?,
    };
    s.validate().map_err(worker_refused)?;
    Ok(s)
}

/// Names the variable behind a refused worker field.
fn worker_refused(err: WorkerSettingsError) -> anyhow::Error {
    use WorkerSettingsError as E;
    match err {
        E::Prefetch => refused("PAYSYNC_WORKER_PREFETCH", POSITIVE),
        E::Concurrency => refused("PAYSYNC_WORKER_CONCURRENCY", POSITIVE),
        E::BatchSize => refused("PAYSYNC_WORKER_BATCH_SIZE", POSITIVE),
        E::Retry(e) => retry_refused(e),
        E::RetryBeyondDelayLevels => refused(
            "PAYSYNC_RETRY_MAX_DELAY_SECS",
            format!(
                "with the jitter the longest delay must stay within {MAX_DELAY_SECS} s \
                 (what the broker delay levels express)"
            ),
        ),
        E::ShutdownGrace => refused("PAYSYNC_WORKER_SHUTDOWN_GRACE_SECS", POSITIVE),
        E::MonitorInterval => refused("PAYSYNC_WORKER_MONITOR_INTERVAL_SECS", POSITIVE),
        E::KpiInterval => refused("PAYSYNC_WORKER_KPI_INTERVAL_SECS", POSITIVE),
        E::ReconcileInterval => refused("PAYSYNC_RECONCILE_INTERVAL", POSITIVE),
        E::Amqp(e) => amqp_refused(e),
        E::Store(e) => store_refused(e),
        E::AdminToken => refused(
            "PAYSYNC_ADMIN_TOKEN",
            format!("use at least {MIN_ADMIN_TOKEN_LEN} characters"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> HashMap<String, String> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn with<'a>(map: &'a HashMap<String, String>) -> Env<'a> {
        Env::from_fn(move |k| map.get(k).cloned())
    }

    #[test]
    fn defaults_match_the_documented_contract() {
        let vars = env(&[("PAYSYNC_STRIPE_WEBHOOK_SECRET", "whsec_a")]);
        let s = receiver(&with(&vars), SecretPolicy::Required).unwrap();
        assert_eq!(s.http_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(s.metrics_addr.to_string(), "127.0.0.1:9464");
        let stripe = s.stripe.as_ref().expect("Stripe is configured");
        assert_eq!(stripe.mode, Mode::Test);
        assert_eq!(stripe.tolerance_secs, 300);
        assert_eq!(s.body_limit, 1024 * 1024);
        assert_eq!(s.amqp.url, "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(s.amqp.prefix, "paysync");
        assert_eq!(s.amqp.connection_name, "paysync-receiver");
        assert_eq!(s.amqp.confirm_timeout, Duration::from_secs(5));
    }

    #[test]
    fn reconciliation_settings_default_and_refuse_what_cannot_work() {
        let none = env(&[]);
        let clients = provider_clients(&with(&none)).unwrap();
        assert!(clients.sources.is_empty() && clients.apis.stripe.is_none());
        let s = reconcile_schedule(&with(&none)).unwrap();
        assert_eq!(
            (s.interval, s.lookback, s.settle),
            (
                Duration::from_secs(900),
                Duration::from_secs(86_400),
                Duration::from_secs(300)
            )
        );
        let vars = env(&[
            ("PAYSYNC_RECONCILE_INTERVAL", "2m"),
            ("PAYSYNC_RECONCILE_SETTLE", "0"),
            ("PAYSYNC_RECONCILE_LOOKBACK", "3600"),
        ]);
        let s = reconcile_schedule(&with(&vars)).unwrap();
        assert_eq!(
            (s.interval, s.lookback, s.settle),
            (
                Duration::from_secs(120),
                Duration::from_secs(3600),
                Duration::ZERO
            )
        );
        for (var, value, expected) in [
            (
                "PAYSYNC_RECONCILE_INTERVAL",
                "0",
                "PAYSYNC_RECONCILE_INTERVAL",
            ),
            (
                "PAYSYNC_RECONCILE_INTERVAL",
                "soon",
                "PAYSYNC_RECONCILE_INTERVAL",
            ),
            ("PAYSYNC_RECONCILE_PAGE_SIZE", "500", "between 1 and 100"),
            (
                "PAYSYNC_PROVIDER_API_RATE",
                "0",
                "PAYSYNC_PROVIDER_API_RATE",
            ),
        ] {
            let vars = env(&[(var, value), ("PAYSYNC_STRIPE_API_KEY", "sk_test_k")]);
            let err = reconcile_schedule(&with(&vars))
                .map(|_| ())
                .and_then(|()| provider_clients(&with(&vars)).map(|_| ()))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{var}={value}: {err}");
        }
        // Every provider with credentials is a source; Stripe also completes thin events.
        let vars = env(&[
            ("PAYSYNC_STRIPE_API_KEY", "rk_live_key"),
            ("PAYSYNC_STRIPE_MODE", "live"),
            ("PAYSYNC_SQUARE_ACCESS_TOKEN", "EAAA"),
            ("PAYSYNC_PAYPAL_CLIENT_ID", "id"),
            ("PAYSYNC_PAYPAL_CLIENT_SECRET", "secret"),
            ("PAYSYNC_AUTHORIZENET_API_LOGIN_ID", "login"),
            ("PAYSYNC_AUTHORIZENET_TRANSACTION_KEY", "key"),
        ]);
        let clients = provider_clients(&with(&vars)).unwrap();
        let providers: Vec<_> = clients.sources.iter().map(|s| s.provider()).collect();
        assert_eq!(
            providers,
            [
                paysync_domain::Provider::Stripe,
                paysync_domain::Provider::Square,
                paysync_domain::Provider::AuthorizeNet,
                paysync_domain::Provider::Paypal
            ]
        );
        assert_eq!(clients.sources[0].mode(), Mode::Live);
        assert!(clients.apis.stripe.is_some());
        // A test key on a live deployment lists the wrong events: refused, key not shown.
        let vars = env(&[
            ("PAYSYNC_STRIPE_API_KEY", "sk_test_secretvalue"),
            ("PAYSYNC_STRIPE_MODE", "live"),
        ]);
        let err = provider_clients(&with(&vars)).err().unwrap().to_string();
        assert!(
            err.contains("test key") && !err.contains("secretvalue"),
            "{err}"
        );
        let vars = env(&[("PAYSYNC_PAYPAL_CLIENT_ID", "id")]);
        let err = provider_clients(&with(&vars)).err().unwrap().to_string();
        assert!(err.contains("PAYSYNC_PAYPAL_CLIENT_SECRET"), "{err}");
        let vars = env(&[
            ("PAYSYNC_SQUARE_ACCESS_TOKEN", "EAAA"),
            ("PAYSYNC_SQUARE_API_BASE", "http://squareup.example"),
        ]);
        let err = provider_clients(&with(&vars)).err().unwrap().to_string();
        assert!(err.contains("PAYSYNC_SQUARE_API_BASE"), "{err}");
    }

    #[test]
    fn rotation_secrets_are_comma_separated() {
        let vars = env(&[("PAYSYNC_STRIPE_WEBHOOK_SECRET", " whsec_old , whsec_new ")]);
        let secrets = stripe_secrets(&with(&vars)).unwrap().unwrap();
        assert_eq!(secrets, ["whsec_old", "whsec_new"]);
    }

    #[test]
    fn missing_secret_is_an_error_naming_the_variable_unless_dev_fallback() {
        let vars = env(&[]);
        let err = receiver(&with(&vars), SecretPolicy::Required)
            .unwrap_err()
            .to_string();
        assert!(err.contains("PAYSYNC_STRIPE_WEBHOOK_SECRET"), "{err}");
        assert!(receiver(&with(&vars), SecretPolicy::DevFallback).is_ok());
    }

    #[test]
    fn invalid_values_name_their_variable_and_never_echo_secrets() {
        for (var, value) in [
            ("PAYSYNC_HTTP_ADDR", "localhost"),
            ("PAYSYNC_METRICS_ADDR", "1.2.3.4"),
            ("PAYSYNC_STRIPE_MODE", "prod"),
            ("PAYSYNC_STRIPE_TOLERANCE_SECS", "-1"),
            ("PAYSYNC_BODY_LIMIT_BYTES", "0"),
            ("PAYSYNC_AMQP_URL", "http://x"),
            ("PAYSYNC_AMQP_URL", "amqps://guest:topsecret@h/%2f,ftp://x"),
            ("PAYSYNC_AMQP_CA_FILE", "/nonexistent/ca.pem"),
            ("PAYSYNC_AMQP_CLIENT_KEY", "topsecret-key"),
            ("PAYSYNC_AMQP_PREFIX", "bad prefix"),
            ("PAYSYNC_AMQP_CONFIRM_TIMEOUT_MS", "soon"),
        ] {
            let vars = env(&[
                ("PAYSYNC_STRIPE_WEBHOOK_SECRET", "whsec_topsecret"),
                (var, value),
            ]);
            let err = format!(
                "{:#}",
                receiver(&with(&vars), SecretPolicy::Required).unwrap_err()
            );
            assert!(err.contains(var), "{var}: {err}");
            assert!(!err.contains("topsecret"), "{var}: {err}");
        }
        let vars = env(&[("PAYSYNC_STRIPE_WEBHOOK_SECRET", "sk_live_abc123")]);
        let err = receiver(&with(&vars), SecretPolicy::Required)
            .unwrap_err()
            .to_string();
        assert!(err.contains("whsec_") && !err.contains("abc123"), "{err}");
    }

    #[test]
    fn secrets_can_come_from_files() {
        let dir = std::env::temp_dir().join(format!("paysync-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        std::fs::write(&path, "whsec_from_file\n").unwrap();
        let vars = env(&[("PAYSYNC_STRIPE_WEBHOOK_SECRET_FILE", path.to_str().unwrap())]);
        assert_eq!(
            stripe_secrets(&with(&vars)).unwrap().unwrap(),
            ["whsec_from_file"]
        );
        let vars = env(&[("PAYSYNC_STRIPE_WEBHOOK_SECRET_FILE", "/nonexistent/paysync")]);
        let err = stripe_secrets(&with(&vars)).unwrap_err().to_string();
        assert!(err.contains("PAYSYNC_STRIPE_WEBHOOK_SECRET_FILE"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn worker_defaults_match_the_documented_contract() {
        let vars = env(&[]);
        let w = worker(
            &with(&vars),
            "PAYSYNC_METRICS_ADDR",
            "127.0.0.1:9464".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(w.store.url, "postgres://postgres@127.0.0.1:5432/paysync");
        assert_eq!(w.store.schema, "public");
        assert_eq!(w.retry, RetryPolicy::default());
        assert_eq!(w.concurrency, 2);
        assert_eq!(w.prefetch, 1024);
        assert_eq!(w.batch_size, 256);
        assert_eq!(w.amqp.connection_name, "paysync-worker");
    }

    #[test]
    fn retry_and_database_errors_name_their_variable() {
        for (var, value) in [
            ("PAYSYNC_RETRY_BASE_SECS", "0"),
            ("PAYSYNC_RETRY_BASE_SECS", "inf"),
            ("PAYSYNC_RETRY_MAX_DELAY_SECS", "NaN"),
            ("PAYSYNC_RETRY_FACTOR", "0.5"),
            ("PAYSYNC_RETRY_JITTER", "1.5"),
            ("PAYSYNC_RETRY_MAX_ATTEMPTS", "0"),
            ("PAYSYNC_RETRY_MAX_DELAY_SECS", "40000"),
            ("PAYSYNC_DATABASE_URL", "mysql://x"),
            ("PAYSYNC_DATABASE_SCHEMA", "Bad-Schema"),
            ("PAYSYNC_WORKER_PREFETCH", "0"),
            ("PAYSYNC_AMQP_URL", "amqp://guest:pw@host/%2f,ftp://x"),
        ] {
            let vars = env(&[(var, value)]);
            let err = format!(
                "{:#}",
                worker(
                    &with(&vars),
                    "PAYSYNC_METRICS_ADDR",
                    "127.0.0.1:9464".parse().unwrap()
                )
                .unwrap_err()
            );
            assert!(err.contains(var), "{var}: {err}");
        }
    }

    #[test]
    fn every_variable_that_must_be_positive_names_itself_when_zero() {
        let metrics: SocketAddr = "127.0.0.1:9464".parse().unwrap();
        for var in [
            "PAYSYNC_AMQP_PUBLISHER_CHANNELS",
            "PAYSYNC_AMQP_MAX_IN_FLIGHT",
            "PAYSYNC_AMQP_CONFIRM_TIMEOUT_MS",
            "PAYSYNC_AMQP_CONNECT_TIMEOUT_MS",
            "PAYSYNC_AMQP_DELIVERY_LIMIT",
            "PAYSYNC_DATABASE_MAX_CONNECTIONS",
            "PAYSYNC_DATABASE_STATEMENT_TIMEOUT_MS",
            "PAYSYNC_WORKER_PREFETCH",
            "PAYSYNC_WORKER_CONCURRENCY",
            "PAYSYNC_WORKER_BATCH_SIZE",
            "PAYSYNC_WORKER_SHUTDOWN_GRACE_SECS",
            "PAYSYNC_WORKER_MONITOR_INTERVAL_SECS",
            "PAYSYNC_WORKER_KPI_INTERVAL_SECS",
            "PAYSYNC_RETRY_BASE_SECS",
            "PAYSYNC_RETRY_MAX_DELAY_SECS",
        ] {
            let vars = env(&[(var, "0")]);
            let err = worker(&with(&vars), "PAYSYNC_METRICS_ADDR", metrics)
                .unwrap_err()
                .to_string();
            assert_eq!(err, format!("{var}: must be greater than zero"));
        }
        for var in [
            "PAYSYNC_BODY_LIMIT_BYTES",
            "PAYSYNC_HTTP_REQUEST_TIMEOUT_SECS",
            "PAYSYNC_HTTP_HEADER_TIMEOUT_SECS",
        ] {
            let vars = env(&[("PAYSYNC_STRIPE_WEBHOOK_SECRET", "whsec_a"), (var, "0")]);
            let err = receiver(&with(&vars), SecretPolicy::Required)
                .unwrap_err()
                .to_string();
            assert_eq!(err, format!("{var}: must be greater than zero"));
        }
    }

    #[test]
    fn refused_fields_keep_the_documented_messages() {
        let metrics: SocketAddr = "127.0.0.1:9464".parse().unwrap();
        let worker_err = |vars: &[(&str, &str)]| {
            let vars = env(vars);
            worker(&with(&vars), "PAYSYNC_METRICS_ADDR", metrics)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            worker_err(&[("PAYSYNC_AMQP_URL", "amqp://guest:pw@a/%2f,http://b")]),
            "PAYSYNC_AMQP_URL: every comma-separated node must start with amqp:// or amqps://"
        );
        let not_pem = std::env::temp_dir().join(format!("paysync-not-pem-{}", std::process::id()));
        std::fs::write(&not_pem, "hello").unwrap();
        assert_eq!(
            worker_err(&[("PAYSYNC_AMQP_CA_FILE", not_pem.to_str().unwrap())]),
            "PAYSYNC_AMQP_CA_FILE: no PEM certificate in the file"
        );
        std::fs::remove_file(&not_pem).unwrap();
        assert_eq!(
            worker_err(&[("PAYSYNC_AMQP_CLIENT_KEY", "k")]),
            "PAYSYNC_AMQP_CLIENT_CERT_FILE and PAYSYNC_AMQP_CLIENT_KEY (or _FILE): set both or neither"
        );
        let amqps = env(&[(
            "PAYSYNC_AMQP_URL",
            "amqps://guest:pw@a:5671/%2f, amqps://guest:pw@b:5671/%2f",
        )]);
        let w = worker(&with(&amqps), "PAYSYNC_METRICS_ADDR", metrics).unwrap();
        assert_eq!(w.amqp.nodes().len(), 2);
        assert_eq!(
            worker_err(&[("PAYSYNC_AMQP_PREFIX", "bad prefix")]),
            "PAYSYNC_AMQP_PREFIX: use 1-100 characters of [A-Za-z0-9._-]"
        );
        assert_eq!(
            worker_err(&[("PAYSYNC_ADMIN_TOKEN", "short-token")]),
            "PAYSYNC_ADMIN_TOKEN: use at least 16 characters"
        );
        assert_eq!(
            worker_err(&[("PAYSYNC_DATABASE_URL", "postgres://h:notaport/db")]),
            "PAYSYNC_DATABASE_URL: invalid database settings: database URL cannot be parsed"
        );
        assert_eq!(
            worker_err(&[("PAYSYNC_RETRY_MAX_DELAY_SECS", "30000")]),
            "PAYSYNC_RETRY_MAX_DELAY_SECS: with the jitter the longest delay must stay within \
             32767 s (what the broker delay levels express)"
        );
        assert_eq!(
            worker_err(&[("PAYSYNC_RETRY_BASE_SECS", "inf")]),
            "PAYSYNC_RETRY_BASE_SECS: must be a finite number of seconds"
        );
        let vars = env(&[
            ("PAYSYNC_STRIPE_WEBHOOK_SECRET", "whsec_a"),
            ("PAYSYNC_HTTP_ADDR", "127.0.0.1:7000"),
            ("PAYSYNC_METRICS_ADDR", "127.0.0.1:7000"),
        ]);
        assert_eq!(
            receiver(&with(&vars), SecretPolicy::Required)
                .unwrap_err()
                .to_string(),
            "PAYSYNC_METRICS_ADDR: must differ from PAYSYNC_HTTP_ADDR (metrics stay off the \
             public port)"
        );
        let vars = env(&[("PAYSYNC_STRIPE_WEBHOOK_SECRET", "whsec_a,sk_live_abc123")]);
        assert_eq!(
            stripe_secrets(&with(&vars)).unwrap_err().to_string(),
            "PAYSYNC_STRIPE_WEBHOOK_SECRET: secret #2 does not start with `whsec_` (use the \
             endpoint's signing secret, not an API key)"
        );
        let vars = env(&[("PAYSYNC_STRIPE_WEBHOOK_SECRET", " , ")]);
        assert_eq!(
            stripe_secrets(&with(&vars)).unwrap_err().to_string(),
            "PAYSYNC_STRIPE_WEBHOOK_SECRET: no secret in the value"
        );
    }

    #[test]
    fn a_receiver_listener_that_cannot_be_bound_names_its_variable() {
        for (field, var) in [
            ("http_addr", "PAYSYNC_HTTP_ADDR"),
            ("metrics_addr", "PAYSYNC_METRICS_ADDR"),
        ] {
            let err = anyhow::Error::new(ListenError {
                field,
                addr: "127.0.0.1:8080".parse().unwrap(),
                source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
            });
            let shown = format!("{:#}", receiver_listen_refused(err));
            assert!(
                shown.starts_with(&format!("cannot listen on 127.0.0.1:8080 ({var}): ")),
                "{shown}"
            );
        }
        let other = receiver_listen_refused(anyhow!("registering metrics"));
        assert_eq!(other.to_string(), "registering metrics");
    }

    #[test]
    fn log_format_is_human_or_json() {
        assert_eq!(
            common(&with(&env(&[]))).unwrap().log_format,
            LogFormat::Human
        );
        let vars = env(&[("PAYSYNC_LOG_FORMAT", "json")]);
        assert_eq!(common(&with(&vars)).unwrap().log_format, LogFormat::Json);
        let vars = env(&[("PAYSYNC_LOG_FORMAT", "xml")]);
        assert!(
            common(&with(&vars))
                .unwrap_err()
                .to_string()
                .contains("PAYSYNC_LOG_FORMAT")
        );
    }
}
