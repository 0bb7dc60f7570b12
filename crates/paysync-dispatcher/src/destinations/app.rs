//! The business's own application, through signed webhooks (Standard Webhooks,
//! `paysync_domain::standard_webhooks`; docs/app-webhooks.md).
//!
//! One `POST` per job of the event's stored body, byte for byte, with `webhook-id` (the event
//! id, stable across retries, for the receiver to deduplicate), `webhook-timestamp` (this
//! attempt's unix seconds) and `webhook-signature` (one `v1,` entry per secret: two during a
//! rotation). The URL may carry a token, so it is a secret like the signing secrets: neither
//! is logged, put in an error, or shown by [`AppSettings`]'s `Debug`. An account's events go
//! one after another: the lane's claim keeps their order (`Destination::keeps_account_order`).

use std::fmt;
use std::time::Duration;

use futures::future::BoxFuture;
use paysync_domain::outbound::{Destination, Operation};
use paysync_domain::standard_webhooks::{self, MAX_SIGNATURES, Secret};
use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;

use super::http::{self, DETAIL_MAX};
use crate::job::{FailureKind, Job, SendError, Sender, Throttle, Verdict, excerpt};

/// The default per-request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The `user-agent` of every request.
pub const USER_AGENT: &str = "paysync";

/// Where and how to send the application's webhooks.
#[derive(Clone)]
pub struct AppSettings {
    /// The application's endpoint; may carry a token (path or query): a secret.
    pub url: SecretString,
    /// The signing secrets (`whsec_…`); each signs every request (one `v1` entry each), so
    /// the receiver can move from one to the next during a rotation.
    pub secrets: Vec<Secret>,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl fmt::Debug for AppSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppSettings")
            .field("url", &"[redacted]")
            .field(
                "secrets",
                &format_args!("[{} redacted]", self.secrets.len()),
            )
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Why app settings are unusable. Never contains the URL or a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppSettingsError {
    /// The URL does not parse.
    #[error("the app webhook URL is not a valid URL")]
    InvalidUrl,
    /// The URL is not `http` or `https`, or has no host.
    #[error("the app webhook URL must be an http(s) URL with a host")]
    NotHttp,
    /// No signing secret.
    #[error("the app webhooks need at least one signing secret")]
    NoSecret,
    /// More secrets than a receiver looks at.
    #[error("the app webhooks take at most {MAX_SIGNATURES} signing secrets at once")]
    TooManySecrets,
    /// The timeout is zero.
    #[error("the app webhook timeout must be more than zero")]
    ZeroTimeout,
    /// The HTTP client could not be built.
    #[error("cannot build the app webhook HTTP client: {0}")]
    Client(String),
}

impl AppSettings {
    /// Settings for `url` signed with `secrets`, with the default timeout.
    pub fn new(url: SecretString, secrets: Vec<Secret>) -> Self {
        Self {
            url,
            secrets,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Checks the URL, the secrets and the timeout.
    pub fn validate(&self) -> Result<(), AppSettingsError> {
        self.parsed_url().map(|_| ())
    }

    fn parsed_url(&self) -> Result<reqwest::Url, AppSettingsError> {
        if self.timeout.is_zero() {
            return Err(AppSettingsError::ZeroTimeout);
        }
        if self.secrets.is_empty() {
            return Err(AppSettingsError::NoSecret);
        }
        if self.secrets.len() > MAX_SIGNATURES {
            return Err(AppSettingsError::TooManySecrets);
        }
        http::web_url(self.url.expose_secret()).map_err(|p| match p {
            http::UrlProblem::Invalid => AppSettingsError::InvalidUrl,
            http::UrlProblem::NotHttp => AppSettingsError::NotHttp,
        })
    }
}

/// Sends application events to one endpoint.
pub struct AppSender {
    client: reqwest::Client,
    url: reqwest::Url,
    secrets: Vec<Secret>,
    timeout: Duration,
}

impl fmt::Debug for AppSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppSender")
            .field("url", &"[redacted]")
            .field(
                "secrets",
                &format_args!("[{} redacted]", self.secrets.len()),
            )
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl AppSender {
    /// A sender for `settings` (validated here).
    pub fn new(settings: &AppSettings) -> Result<Self, AppSettingsError> {
        let url = settings.parsed_url()?;
        let client = http::client(settings.timeout).map_err(AppSettingsError::Client)?;
        Ok(Self {
            client,
            url,
            secrets: settings.secrets.clone(),
            timeout: settings.timeout,
        })
    }

    async fn post(&self, job: &Job, throttle: &Throttle) -> Verdict {
        if job.operation != Operation::AppWebhook {
            return Verdict::Failed(SendError::new(
                FailureKind::Payload,
                None,
                "unsupported_operation",
                format!(
                    "the app destination does not perform {}",
                    job.operation.as_str()
                ),
            ));
        }
        let Some(body) = job.app_body.as_deref() else {
            return Verdict::Failed(SendError::new(
                FailureKind::Payload,
                None,
                "missing_body",
                format!("no stored body for the app event {}", job.source_id),
            ));
        };
        throttle.ready().await;
        // This attempt's time: a receiver refuses a timestamp too far from its clock, so a
        // retry is signed anew, never with the first attempt's time.
        let timestamp = OffsetDateTime::now_utc().unix_timestamp();
        let signature =
            standard_webhooks::sign(&self.secrets, &job.source_id, timestamp, body.as_bytes());
        let response = match self
            .client
            .post(self.url.clone())
            .timeout(self.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::USER_AGENT, USER_AGENT)
            .header(standard_webhooks::headers::ID, job.source_id.as_str())
            .header(standard_webhooks::headers::TIMESTAMP, timestamp.to_string())
            .header(standard_webhooks::headers::SIGNATURE, signature)
            .body(body.to_owned())
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return Verdict::Failed(http::transport_error(e)),
        };
        let status = response.status().as_u16();
        let retry_after = http::retry_after(response.headers(), OffsetDateTime::now_utc());
        // A body that breaks off still leaves the status to judge by.
        let text = response.text().await.unwrap_or_default();
        let verdict = classify(status, &self.redact(&text), retry_after);
        if let Verdict::Failed(e) = &verdict {
            tracing::debug!(
                delivery = job.id,
                event = %job.source_id,
                status,
                code = %e.code,
                "the app endpoint refused an event"
            );
        }
        verdict
    }

    /// `text` without the URL or the parts of it that may be a credential (belt and braces:
    /// the application's answer is shown to operators, and it might echo its own URL).
    fn redact(&self, text: &str) -> String {
        let mut out = http::redact(text, self.url.as_str());
        for part in [
            self.url.query().unwrap_or_default(),
            self.url.password().unwrap_or_default(),
            self.url.path().trim_matches('/'),
        ] {
            out = http::redact(&out, part);
        }
        out
    }
}

impl Sender for AppSender {
    fn destination(&self) -> Destination {
        Destination::App
    }

    fn send<'a>(&'a self, job: &'a Job, throttle: &'a Throttle) -> BoxFuture<'a, Verdict> {
        Box::pin(self.post(job, throttle))
    }
}

/// What the application's answer means.
///
/// - 2xx: sent.
/// - 429: rate limited, pause for `retry_after` (1 s when absent).
/// - 410 Gone: the endpoint asked us to stop sending: the destination is disabled until an
///   operator resumes it (Standard Webhooks senders disable such an endpoint).
/// - 401, 403, 404: our URL, token or secrets are wrong: disabled the same way.
/// - any other 4xx (400, 413, 422, …): this event is refused, dead.
/// - 5xx and anything else (3xx: redirects are not followed): transient.
///
/// The code is `http_<status>` (`gone` for 410, `rate_limited` for 429): the body is the
/// application's own, of any shape, and a fingerprint must stay low-cardinality.
pub fn classify(status: u16, body: &str, retry_after: Option<Duration>) -> Verdict {
    if (200..300).contains(&status) {
        return Verdict::Sent { external_ref: None };
    }
    let code = match status {
        410 => "gone".to_owned(),
        429 => "rate_limited".to_owned(),
        _ => format!("http_{status}"),
    };
    let kind = match status {
        429 => FailureKind::RateLimited {
            pause: retry_after.unwrap_or(Duration::from_secs(1)),
        },
        401 | 403 | 404 | 410 => FailureKind::Config,
        400..=499 => FailureKind::Payload,
        _ => FailureKind::Transient { ambiguous: false },
    };
    Verdict::Failed(
        SendError::new(kind, Some(status), code, excerpt(body.trim(), DETAIL_MAX))
            .retry_after(retry_after),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use paysync_domain::intent::{Intent, Notice};
    use paysync_domain::standard_webhooks::verify;
    use std::sync::{Arc, Mutex};

    fn failed(v: &Verdict) -> &SendError {
        match v {
            Verdict::Failed(e) => e,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn success_is_sent_without_a_ref() {
        for status in [200, 201, 202, 204, 299] {
            assert_eq!(
                classify(status, "anything", None),
                Verdict::Sent { external_ref: None },
                "{status}"
            );
        }
    }

    #[test]
    fn a_429_pauses_for_retry_after_or_a_second() {
        let v = classify(429, "slow down", Some(Duration::from_secs(30)));
        let e = failed(&v);
        assert_eq!(
            e.kind,
            FailureKind::RateLimited {
                pause: Duration::from_secs(30)
            }
        );
        assert_eq!(e.retry_after, Some(Duration::from_secs(30)));
        assert_eq!(e.code, "rate_limited");
        assert_eq!(e.status, Some(429));
        let v = classify(429, "", None);
        let e = failed(&v);
        assert_eq!(
            e.kind,
            FailureKind::RateLimited {
                pause: Duration::from_secs(1)
            }
        );
        assert_eq!(e.retry_after, None);
    }

    #[test]
    fn gone_and_refused_credentials_disable_the_destination() {
        for (status, code) in [
            (410, "gone"),
            (401, "http_401"),
            (403, "http_403"),
            (404, "http_404"),
        ] {
            let v = classify(status, "{\"error\":\"stop\"}", Some(Duration::from_secs(5)));
            let e = failed(&v);
            assert_eq!(e.kind, FailureKind::Config, "{status}");
            assert_eq!(e.code, code);
            assert_eq!(e.status, Some(status));
            assert_eq!(e.detail, "{\"error\":\"stop\"}");
        }
    }

    #[test]
    fn other_client_errors_refuse_the_event() {
        for status in [400, 405, 409, 413, 415, 422, 451, 499] {
            let v = classify(status, " invalid event \n", None);
            let e = failed(&v);
            assert_eq!(e.kind, FailureKind::Payload, "{status}");
            assert_eq!(e.code, format!("http_{status}"));
            assert_eq!(e.detail, "invalid event");
        }
    }

    #[test]
    fn server_errors_and_the_unexpected_are_transient() {
        for status in [500, 502, 503, 504, 599, 301, 302, 304, 100, 600, 0] {
            let v = classify(status, "<html>oops</html>", Some(Duration::from_secs(9)));
            let e = failed(&v);
            assert_eq!(
                e.kind,
                FailureKind::Transient { ambiguous: false },
                "{status}"
            );
            assert_eq!(e.code, format!("http_{status}"));
            assert_eq!(e.retry_after, Some(Duration::from_secs(9)));
        }
    }

    #[test]
    fn long_bodies_are_cut() {
        let body = "x".repeat(10_000);
        let e = failed(&classify(502, &body, None)).clone();
        assert!(e.detail.len() <= DETAIL_MAX + '…'.len_utf8());
    }

    const OLD: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn secrets() -> (String, Vec<Secret>) {
        let new = Secret::serialize(&[0x42; 32]);
        let both = vec![
            Secret::parse(OLD).expect("secret"),
            Secret::parse(&new).expect("secret"),
        ];
        (new, both)
    }

    fn settings(url: &str) -> AppSettings {
        AppSettings::new(SecretString::from(url.to_owned()), secrets().1)
    }

    #[test]
    fn debug_and_validation_errors_hide_the_url_and_the_secrets() {
        let s = settings("https://app.example.com/hooks/paysync?token=sekrit-token");
        let dbg = format!("{s:?}");
        for hidden in ["sekrit", "app.example.com", "MfKQ", "whsec_"] {
            assert!(!dbg.contains(hidden), "{dbg}");
        }
        assert!(dbg.contains("2 redacted"), "{dbg}");
        assert_eq!(s.validate(), Ok(()));
        let sender = AppSender::new(&s).expect("sender");
        let dbg = format!("{sender:?}");
        assert!(!dbg.contains("sekrit") && !dbg.contains("MfKQ"), "{dbg}");

        let cases = [
            (
                AppSettings {
                    url: SecretString::from("not a url sekrit".to_owned()),
                    ..s.clone()
                },
                AppSettingsError::InvalidUrl,
            ),
            (
                AppSettings {
                    url: SecretString::from("ftp://example.com/sekrit".to_owned()),
                    ..s.clone()
                },
                AppSettingsError::NotHttp,
            ),
            (
                AppSettings {
                    secrets: Vec::new(),
                    ..s.clone()
                },
                AppSettingsError::NoSecret,
            ),
            (
                AppSettings {
                    secrets: vec![Secret::parse(OLD).expect("secret"); MAX_SIGNATURES + 1],
                    ..s.clone()
                },
                AppSettingsError::TooManySecrets,
            ),
            (
                AppSettings {
                    timeout: Duration::ZERO,
                    ..s.clone()
                },
                AppSettingsError::ZeroTimeout,
            ),
        ];
        for (bad, want) in cases {
            let e = bad.validate().expect_err("refused");
            assert_eq!(e, want);
            let shown = format!("{e} {e:?}");
            assert!(
                !shown.contains("sekrit") && !shown.contains("MfKQ"),
                "{shown}"
            );
            assert!(AppSender::new(&bad).is_err());
        }
    }

    fn job(body: Option<&str>) -> Job {
        Job {
            id: 9,
            operation: Operation::AppWebhook,
            key: "app.webhook:evt_ps_7_3".into(),
            provider: "stripe".into(),
            intent: Intent::AppEvent,
            source_id: "evt_ps_7_3".into(),
            attempt: 1,
            created_at: OffsetDateTime::UNIX_EPOCH,
            notice: Notice::default(),
            account: None,
            due_at: None,
            app_body: body.map(str::to_owned),
        }
    }

    /// One request a local endpoint received: its head (lower-case header names) and body.
    #[derive(Debug, Clone, Default)]
    struct Seen {
        head: String,
        body: Vec<u8>,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<String> {
            self.head.lines().find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_owned())
            })
        }
    }

    /// A one-request HTTP/1.1 endpoint answering `answer`; what it received.
    async fn endpoint(answer: String) -> (String, Arc<Mutex<Option<Seen>>>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(None));
        let out = seen.clone();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.expect("accept");
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let (head, body_at, length) = loop {
                let n = sock.read(&mut chunk).await.expect("read");
                assert!(n > 0, "closed before the head ended");
                buf.extend_from_slice(&chunk[..n]);
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    let seen = Seen {
                        head: head.clone(),
                        body: Vec::new(),
                    };
                    let length: usize = seen
                        .header("content-length")
                        .and_then(|l| l.parse().ok())
                        .unwrap_or(0);
                    break (head, end + 4, length);
                }
            };
            while buf.len() < body_at + length {
                let n = sock.read(&mut chunk).await.expect("read body");
                assert!(n > 0, "closed before the body ended");
                buf.extend_from_slice(&chunk[..n]);
            }
            *out.lock().expect("seen") = Some(Seen {
                head,
                body: buf[body_at..body_at + length].to_vec(),
            });
            sock.write_all(answer.as_bytes()).await.expect("answer");
            sock.shutdown().await.ok();
        });
        (
            format!("http://{addr}/hooks/paysync?token=sekrit-token"),
            seen,
        )
    }

    #[tokio::test]
    async fn a_request_carries_the_stored_body_and_verifies_with_either_secret() {
        let (url, seen) =
            endpoint("HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n".to_owned()).await;
        let sender = AppSender::new(&settings(&url)).expect("sender");
        assert_eq!(sender.destination(), Destination::App);
        // Not canonical JSON on purpose: spacing, key order and escapes must survive as sent.
        let body =
            "{ \"type\":\"payment.succeeded\",\"id\":\"evt_ps_7_3\", \"n\": \"caf\\u00e9 é\" }";
        let before = OffsetDateTime::now_utc().unix_timestamp();
        let v = sender.send(&job(Some(body)), &Throttle::unlimited()).await;
        let after = OffsetDateTime::now_utc().unix_timestamp();
        assert_eq!(v, Verdict::Sent { external_ref: None });
        let got = seen.lock().expect("seen").clone().expect("a request");
        assert!(
            got.head
                .starts_with("POST /hooks/paysync?token=sekrit-token HTTP/1.1\r\n"),
            "{}",
            got.head
        );
        assert_eq!(got.body, body.as_bytes());
        assert_eq!(
            got.header("content-type").as_deref(),
            Some("application/json")
        );
        assert_eq!(got.header("user-agent").as_deref(), Some("paysync"));
        assert_eq!(got.header("webhook-id").as_deref(), Some("evt_ps_7_3"));
        let ts = got.header("webhook-timestamp").expect("timestamp");
        let ts_n: i64 = ts.parse().expect("integer seconds");
        assert!(
            (before..=after).contains(&ts_n),
            "{ts_n} not in {before}..={after}"
        );
        let sig = got.header("webhook-signature").expect("signature");
        assert_eq!(sig.split(' ').count(), 2, "{sig}");
        assert!(sig.split(' ').all(|e| e.starts_with("v1,")), "{sig}");
        let (new, _) = secrets();
        for one in [OLD, new.as_str()] {
            let secret = [Secret::parse(one).expect("secret")];
            assert_eq!(
                verify(&secret, "evt_ps_7_3", &ts, &sig, &got.body, ts_n, 300),
                Ok(()),
                "verifies with each secret of the rotation"
            );
        }
        let other = [Secret::parse(&Secret::serialize(&[1u8; 32])).expect("secret")];
        assert!(verify(&other, "evt_ps_7_3", &ts, &sig, &got.body, ts_n, 300).is_err());
        assert!(
            verify(
                &secrets().1,
                "evt_ps_7_3",
                &ts,
                &sig,
                b"{\"type\":\"payment.succeeded\"}",
                ts_n,
                300
            )
            .is_err(),
            "another body does not verify"
        );
    }

    #[tokio::test]
    async fn a_refusal_is_classified_without_the_url_or_token() {
        let echo = "gone: http://x/hooks/paysync?token=sekrit-token token=sekrit-token !!";
        let (url, _seen) = endpoint(format!(
            "HTTP/1.1 410 Gone\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{echo}",
            echo.len()
        ))
        .await;
        let sender = AppSender::new(&settings(&url)).expect("sender");
        let v = sender.send(&job(Some("{}")), &Throttle::unlimited()).await;
        let e = failed(&v);
        assert_eq!(e.kind, FailureKind::Config);
        assert_eq!(e.code, "gone");
        assert_eq!(e.status, Some(410));
        assert!(!e.detail.contains("sekrit"), "{}", e.detail);
        assert!(e.detail.starts_with("gone: "), "{}", e.detail);
    }

    #[tokio::test]
    async fn a_job_without_its_body_is_refused_before_any_request() {
        // Nothing listens here: a request would be a connection error, not this.
        let sender = AppSender::new(&settings("http://127.0.0.1:9/hooks")).expect("sender");
        let v = sender.send(&job(None), &Throttle::unlimited()).await;
        let e = failed(&v);
        assert_eq!(e.kind, FailureKind::Payload);
        assert_eq!(e.code, "missing_body");
        assert_eq!(e.status, None);
        let mut other = job(Some("{}"));
        other.operation = Operation::ChatChurn;
        let v = sender.send(&other, &Throttle::unlimited()).await;
        assert_eq!(failed(&v).code, "unsupported_operation");
    }
}
