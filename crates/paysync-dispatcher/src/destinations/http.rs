//! What the HTTP destinations share: the client, transport-error classification, redaction.

use std::error::Error as _;
use std::time::Duration;

use time::OffsetDateTime;

use crate::job::{FailureKind, SendError, excerpt, parse_retry_after};

/// At most this much of a response body goes into a [`SendError::detail`].
pub(crate) const DETAIL_MAX: usize = 512;

/// A client for one destination. Connecting may take at most half the request timeout, so a
/// timeout while connecting is reported as a connection error (nothing was sent), not as an
/// ambiguous timeout.
pub(crate) fn client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout((timeout / 2).max(Duration::from_millis(1)))
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(describe)
}

/// A transport failure as a transient [`SendError`]. A connection error never reached the
/// destination; a timeout (or a broken body) after the request went may have been acted on,
/// so it is `ambiguous`. The detail never holds the URL.
pub(crate) fn transport_error(e: reqwest::Error) -> SendError {
    let (code, ambiguous) = if e.is_connect() {
        ("connect", false)
    } else if e.is_timeout() {
        ("timeout", true)
    } else if e.is_builder() || e.is_request() && !e.is_body() {
        ("request", false)
    } else {
        ("network", true)
    };
    SendError::new(
        FailureKind::Transient { ambiguous },
        None,
        code,
        describe(e),
    )
}

/// An error and its causes, without the request's URL.
pub(crate) fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    excerpt(&out, DETAIL_MAX)
}

/// Why a destination's URL is unusable (the caller names it in its own error, without the URL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UrlProblem {
    /// It does not parse.
    Invalid,
    /// It is not `http` or `https`, or has no host.
    NotHttp,
}

/// `text` (trimmed) as an `http(s)` URL with a host.
pub(crate) fn web_url(text: &str) -> Result<reqwest::Url, UrlProblem> {
    let url = reqwest::Url::parse(text.trim()).map_err(|_| UrlProblem::Invalid)?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(UrlProblem::NotHttp);
    }
    Ok(url)
}

/// The `Retry-After` header of `response`, as a delay from `now`.
pub(crate) fn retry_after(
    headers: &reqwest::header::HeaderMap,
    now: OffsetDateTime,
) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, now))
}

/// `text` with every occurrence of `secret` replaced (belt and braces: no vendor is known to
/// echo a credential, but a detail is shown to operators).
pub(crate) fn redact(text: &str, secret: &str) -> String {
    if secret.len() < 4 {
        return text.to_owned();
    }
    text.replace(secret, "[redacted]")
}

/// Whether `s` is a short vendor code (`no_service`, `VALIDATION_ERROR`): fit for a
/// low-cardinality fingerprint.
pub(crate) fn is_code(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

/// `s` with `&`, `<` and `>` escaped, as Slack's mrkdwn and HubSpot's rich text need.
pub(crate) fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_the_three_control_characters_only() {
        assert_eq!(
            escape_html("a & b <@U123> > c \"d\" *e*"),
            "a &amp; b &lt;@U123&gt; &gt; c \"d\" *e*"
        );
        assert_eq!(escape_html("&amp;"), "&amp;amp;");
    }

    #[test]
    fn codes_are_short_tokens() {
        assert!(is_code("no_service"));
        assert!(is_code("VALIDATION_ERROR"));
        assert!(!is_code(""));
        assert!(!is_code("<html>bad gateway</html>"));
        assert!(!is_code(&"a".repeat(65)));
    }

    #[test]
    fn redacts_secrets_of_any_useful_length() {
        assert_eq!(
            redact("token pat-na1-abc refused", "pat-na1-abc"),
            "token [redacted] refused"
        );
        assert_eq!(redact("abc", ""), "abc");
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_clean_transient_without_the_url() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let c = client(Duration::from_secs(2)).expect("client");
        let url = format!("http://{addr}/services/T000/B000/secretpart");
        let e = c.post(&url).send().await.expect_err("nothing listens");
        let err = transport_error(e);
        assert_eq!(err.kind, FailureKind::Transient { ambiguous: false });
        assert_eq!(err.code, "connect");
        assert!(!err.detail.contains("secretpart"), "{}", err.detail);
    }

    #[tokio::test]
    async fn a_timeout_after_sending_is_ambiguous() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        // Accepts and reads, never answers.
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 4096];
            loop {
                match tokio::io::AsyncReadExt::read(&mut sock, &mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        });
        let c = client(Duration::from_millis(300)).expect("client");
        let url = format!("http://{addr}/services/T000/B000/secretpart");
        let e = c.post(&url).body("x").send().await.expect_err("no answer");
        let err = transport_error(e);
        assert_eq!(err.kind, FailureKind::Transient { ambiguous: true });
        assert_eq!(err.code, "timeout");
        assert!(!err.detail.contains("secretpart"), "{}", err.detail);
        server.abort();
    }
}
