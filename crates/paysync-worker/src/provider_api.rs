//! The HTTP client for the providers' own APIs (event lists, thin-event objects, Authorize.Net's
//! transaction details): credentials, a rate limit, a circuit breaker, and retries that honour
//! `Retry-After`.
//!
//! Rule of thumb: a 429 is the provider being healthy and busy. It neither opens the breaker
//! nor fails the call: the client waits as long as the provider asks (up to a cap) and tries
//! again. Connection failures, timeouts and 5xx count toward the breaker and are retried
//! with exponential backoff and jitter; any other 4xx is the request's fault and is returned
//! at once. Errors carry the provider's own message, never the token or the URL's query.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use backon::BackoffBuilder as _;
use bytes::Bytes;
use paysync_domain::breaker::{Admit, Breaker, BreakerPolicy, Outcome};
use secrecy::{ExposeSecret as _, SecretString};

/// How to reach one provider's API.
#[derive(Clone)]
pub struct ApiSettings {
    /// The provider's API base, e.g. `https://api.stripe.com` (loopback `http` in tests).
    pub base: String,
    /// The bearer token (an API key or access token).
    pub token: SecretString,
    /// Deadline of one request.
    pub timeout: Duration,
    /// Requests a second at most.
    pub per_second: u32,
    /// Attempts of one call on outages (connection, timeout, 5xx), the first included.
    pub attempts: u32,
    /// The longest `Retry-After` honoured; a longer one fails the call as unavailable.
    pub max_retry_after: Duration,
    /// When the breaker opens.
    pub breaker: BreakerPolicy,
}

impl std::fmt::Debug for ApiSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiSettings")
            .field("base", &self.base)
            .field("token", &"[redacted]")
            .field("timeout", &self.timeout)
            .field("per_second", &self.per_second)
            .field("attempts", &self.attempts)
            .finish()
    }
}

impl ApiSettings {
    /// Defaults for `base` and `token`: 10 s per request, 20 requests a second, 4 attempts,
    /// `Retry-After` honoured up to 120 s.
    pub fn new(base: impl Into<String>, token: SecretString) -> Self {
        Self {
            base: base.into().trim_end_matches('/').to_owned(),
            token,
            timeout: Duration::from_secs(10),
            per_second: 20,
            attempts: 4,
            max_retry_after: Duration::from_secs(120),
            breaker: BreakerPolicy::default(),
        }
    }
}

/// Why a call to a provider's API failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The API could not be reached, timed out, failed (5xx) or kept throttling.
    #[error("{provider} API unavailable: {detail}")]
    Unavailable {
        /// The provider's name.
        provider: &'static str,
        /// What happened on the last attempt.
        detail: String,
    },
    /// The breaker is open after repeated outages.
    #[error("{0} API breaker open after repeated failures; not calling it")]
    BreakerOpen(&'static str),
    /// The API refused the request (bad key, missing permission, bad parameter).
    #[error("{provider} API refused the request (HTTP {status}): {message}")]
    Refused {
        /// The provider's name.
        provider: &'static str,
        /// The HTTP status.
        status: u16,
        /// The provider's own error message.
        message: String,
    },
    /// The answer is not what the API documents.
    #[error("{provider} API answered something unreadable: {detail}")]
    Unreadable {
        /// The provider's name.
        provider: &'static str,
        /// What is wrong with it.
        detail: String,
    },
}

impl ApiError {
    /// Whether trying again later can succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::BreakerOpen(_))
    }
}

/// Reads a provider's error body into one line.
pub type ErrorMessage = fn(&[u8]) -> Option<String>;

/// One provider's API client, shared by everything in the process that calls it.
pub struct ApiClient {
    provider: &'static str,
    settings: ApiSettings,
    client: reqwest::Client,
    breaker: Mutex<Breaker>,
    epoch: Instant,
    limit: governor::DefaultDirectRateLimiter,
    error_message: ErrorMessage,
    outage_in_body: Option<ErrorMessage>,
}

impl ApiClient {
    /// A client of `provider`'s API; `error_message` reads its error bodies.
    pub fn new(provider: &'static str, settings: ApiSettings, error_message: ErrorMessage) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(settings.timeout / 2)
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        let per_second =
            std::num::NonZeroU32::new(settings.per_second).unwrap_or(std::num::NonZeroU32::MIN);
        Self {
            provider,
            breaker: Mutex::new(Breaker::new(settings.breaker.clone())),
            client,
            epoch: Instant::now(),
            limit: governor::RateLimiter::direct(governor::Quota::per_second(per_second)),
            error_message,
            outage_in_body: None,
            settings,
        }
    }

    /// Also treats a 2xx answer as an outage when `check` finds one in its body (an API that
    /// reports "try again later" inside a 200): it counts toward the breaker and is retried
    /// like a 5xx. `check` returns the provider's message.
    pub fn with_outage_in_body(mut self, check: ErrorMessage) -> Self {
        self.outage_in_body = Some(check);
        self
    }

    /// The API base URL.
    pub fn base(&self) -> &str {
        &self.settings.base
    }

    /// Sends the request `build` makes (given the client and the base URL) with the bearer
    /// token of the settings, and returns the body of a 2xx answer.
    pub async fn call(
        &self,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<Bytes, ApiError> {
        self.call_as(Auth::Bearer(self.settings.token.expose_secret()), build)
            .await
    }

    /// One attempt, for a caller that has a better place to wait than here (the worker's
    /// `prepare`, whose event goes through the broker's delay levels instead of holding its
    /// lane): a 429 or an outage is returned at once as [`ApiError::Unavailable`].
    pub async fn call_once(
        &self,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<Bytes, ApiError> {
        self.call_once_as(Auth::Bearer(self.settings.token.expose_secret()), build)
            .await
    }

    /// [`ApiClient::call_once`] with other credentials.
    pub async fn call_once_as(
        &self,
        auth: Auth<'_>,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<Bytes, ApiError> {
        let build = |c: &reqwest::Client, base: &str| auth.apply(build(c, base));
        match self.attempt(&build).await {
            Attempt::Done(result) => result,
            Attempt::Throttled(wait) => {
                Err(self.unavailable(format!("HTTP 429, asked to wait {} s", wait.as_secs())))
            }
            Attempt::Outage(err) => Err(err),
        }
    }

    /// [`ApiClient::call`] with other credentials: an OAuth access token, or the client
    /// credentials that obtain one.
    pub async fn call_as(
        &self,
        auth: Auth<'_>,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<Bytes, ApiError> {
        let build = |c: &reqwest::Client, base: &str| auth.apply(build(c, base));
        let mut backoff = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(250))
            .with_max_delay(Duration::from_secs(10))
            .with_jitter()
            .without_max_times()
            .build();
        let mut failures = 0;
        loop {
            match self.attempt(&build).await {
                Attempt::Done(result) => return result,
                Attempt::Throttled(wait) => {
                    if wait > self.settings.max_retry_after {
                        return Err(self.unavailable(format!(
                            "HTTP 429 asking to wait {} s, longer than the {} s this client waits",
                            wait.as_secs(),
                            self.settings.max_retry_after.as_secs()
                        )));
                    }
                    tracing::info!(
                        provider = self.provider,
                        wait_ms = wait.as_millis() as u64,
                        "provider API throttled us; waiting as asked"
                    );
                    tokio::time::sleep(wait).await;
                }
                Attempt::Outage(err) => {
                    failures += 1;
                    if failures >= self.settings.attempts.max(1) {
                        return Err(err);
                    }
                    let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                    tracing::info!(provider = self.provider, error = %err, delay_ms = delay.as_millis() as u64, "provider API call failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    fn unavailable(&self, detail: String) -> ApiError {
        ApiError::Unavailable {
            provider: self.provider,
            detail,
        }
    }

    async fn attempt(
        &self,
        build: &impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Attempt {
        let admit = {
            let mut b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
            b.admit(self.epoch.elapsed())
        };
        if let Admit::No { .. } = admit {
            return Attempt::Done(Err(ApiError::BreakerOpen(self.provider)));
        }
        self.limit.until_ready().await;
        let sent = build(&self.client, &self.settings.base).send().await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                self.record(Outcome::Failure);
                return Attempt::Outage(self.unavailable(describe(e)));
            }
        };
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let body = match response.bytes().await {
            Ok(b) => b,
            Err(e) => {
                self.record(Outcome::Failure);
                return Attempt::Outage(self.unavailable(describe(e)));
            }
        };
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            // Throttled: healthy, and it told us when to come back (else a second).
            self.record(Outcome::Success);
            return Attempt::Throttled(retry_after.unwrap_or(Duration::from_secs(1)));
        }
        if status.is_server_error() {
            self.record(Outcome::Failure);
            let message = (self.error_message)(&body).unwrap_or_default();
            return Attempt::Outage(self.unavailable(format!("HTTP {status} {message}")));
        }
        if let Some(detail) = self
            .outage_in_body
            .filter(|_| status.is_success())
            .and_then(|check| check(&body))
        {
            self.record(Outcome::Failure);
            return Attempt::Outage(self.unavailable(detail));
        }
        self.record(Outcome::Success);
        if !status.is_success() {
            return Attempt::Done(Err(ApiError::Refused {
                provider: self.provider,
                status: status.as_u16(),
                message: (self.error_message)(&body).unwrap_or_else(|| "no error message".into()),
            }));
        }
        Attempt::Done(Ok(body))
    }

    /// Every admitted attempt ends here, so a half-open probe always reports back.
    fn record(&self, outcome: Outcome) {
        let mut b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = b.record(self.epoch.elapsed(), outcome, rand::random::<f64>()) {
            tracing::warn!(
                provider = self.provider,
                from = t.from,
                to = t.to,
                "provider API breaker"
            );
        }
    }
}

/// How a request authenticates.
#[derive(Clone, Copy)]
pub enum Auth<'a> {
    /// `Authorization: Bearer <token>`.
    Bearer(&'a str),
    /// `Authorization: Basic <user:password>` (OAuth client credentials).
    Basic(&'a str, &'a str),
    /// No header: the credentials are in the request body (Authorize.Net's JSON API).
    InBody,
}

impl Auth<'_> {
    fn apply(self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Auth::Bearer(token) => request.bearer_auth(token),
            Auth::Basic(user, password) => request.basic_auth(user, Some(password)),
            Auth::InBody => request,
        }
    }
}

enum Attempt {
    Done(Result<Bytes, ApiError>),
    Throttled(Duration),
    Outage(ApiError),
}

/// A transport error with its causes ("error sending request: … Connection refused"), without
/// the URL.
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// `Retry-After` in seconds (the form the providers send); an HTTP date is not read.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}
