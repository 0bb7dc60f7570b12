//! Square webhooks: the signature scheme and the event envelope.
//!
//! Header `x-square-hmacsha256-signature`: the padded standard base64 of HMAC-SHA256, keyed with
//! the subscription's signature key, over the notification URL exactly as registered followed
//! by the raw body. The URL is configuration, never taken from the request: Square signs the
//! URL it posted to, and nothing about it is normalised. No timestamp is signed, so replays are
//! stopped by the `event_id` dedupe alone. Square's events carry no mode flag; a live endpoint
//! still refuses a body that shows a sandbox marker (a `sandbox-` application id or a
//! `squareupsandbox.com` link).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::json::Loose;
use crate::stripe::short_token;
use crate::timestamp::parse_rfc3339_ms;
use crate::webhook::{Envelope, Mode, Provider, VerifiedWebhook};

/// The header Square signs with.
pub const SIGNATURE_HEADER: &str = "x-square-hmacsha256-signature";

/// Why a Square webhook was refused. Each maps to a 400 with its `Display` text; none carries
/// a key, the expected signature or the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SquareWebhookError {
    /// No `x-square-hmacsha256-signature` header.
    #[error("missing x-square-hmacsha256-signature header")]
    MissingSignature,
    /// The header is not base64 of 32 bytes.
    #[error("malformed x-square-hmacsha256-signature header")]
    MalformedSignature,
    /// The signature matches no configured key (or the body is empty).
    #[error("signature does not match the notification URL and body")]
    Mismatch,
    /// The body is not a JSON object.
    #[error("malformed JSON body")]
    MalformedJson,
    /// A required envelope field is absent or of the wrong type.
    #[error("event is missing a valid `{0}`")]
    MissingField(&'static str),
    /// A sandbox event on a live endpoint.
    #[error("event is from Square's sandbox but this endpoint accepts live events only")]
    WrongMode,
}

impl SquareWebhookError {
    /// A closed label for metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::MissingSignature => "missing_signature",
            Self::MalformedSignature | Self::Mismatch => "bad_signature",
            Self::MalformedJson | Self::MissingField(_) => "malformed",
            Self::WrongMode => "wrong_mode",
        }
    }
}

/// Verifies Square webhooks for one subscription: its notification URL and signature keys
/// (several while rotating).
#[derive(Clone)]
pub struct SquareVerifier {
    url: String,
    keys: Vec<String>,
    mode: Mode,
}

impl std::fmt::Debug for SquareVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SquareVerifier")
            .field("url", &self.url)
            .field("keys", &format_args!("[{} redacted]", self.keys.len()))
            .field("mode", &self.mode)
            .finish()
    }
}

impl SquareVerifier {
    /// A verifier for the subscription registered at `url`, signing with any of `keys`.
    pub fn new(url: impl Into<String>, keys: Vec<String>, mode: Mode) -> Self {
        Self {
            url: url.into(),
            keys,
            mode,
        }
    }

    /// The configured mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Checks a raw request: `signature` is the header (if any), `body` the exact bytes.
    pub fn verify(
        &self,
        signature: Option<&str>,
        body: Bytes,
        received_at_ms: i64,
    ) -> Result<VerifiedWebhook, SquareWebhookError> {
        let header = signature.ok_or(SquareWebhookError::MissingSignature)?;
        verify_signature(&self.keys, &self.url, header, &body)?;
        let envelope = parse_envelope(&body)?;
        if self.mode == Mode::Live && sandbox_marker(&body) {
            return Err(SquareWebhookError::WrongMode);
        }
        Ok(VerifiedWebhook::new(
            envelope.into_meta(Provider::Square, self.mode, received_at_ms),
            body,
        ))
    }
}

/// HMAC-SHA256 of `url` then `body` under `key`.
fn mac(key: &str, url: &str, body: &[u8]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    m.update(url.as_bytes());
    m.update(body);
    m.finalize().into_bytes().into()
}

/// The header value Square would send for `body` posted to `url` under `key`.
pub fn sign(key: &str, url: &str, body: &[u8]) -> String {
    STANDARD.encode(mac(key, url, body))
}

/// Checks `header` against every key: decoded from base64, compared as bytes in constant time.
/// An empty body never verifies (Square's python helper refuses it).
pub fn verify_signature<K: AsRef<str>>(
    keys: &[K],
    url: &str,
    header: &str,
    body: &[u8],
) -> Result<(), SquareWebhookError> {
    let given = STANDARD
        .decode(header.trim())
        .ok()
        .filter(|d| d.len() == 32)
        .ok_or(SquareWebhookError::MalformedSignature)?;
    if body.is_empty() || url.is_empty() {
        return Err(SquareWebhookError::Mismatch);
    }
    if crate::verify::any_key_matches(keys, &given, |key| mac(key, url, body)) {
        Ok(())
    } else {
        Err(SquareWebhookError::Mismatch)
    }
}

/// Whether the body shows Square's sandbox: an application id `sandbox-…` or a link on
/// `squareupsandbox.com`.
fn sandbox_marker(body: &[u8]) -> bool {
    let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    has(b"\"sandbox-sq0") || has(b"squareupsandbox.com")
}

#[derive(Deserialize)]
struct RawEnvelope<'a> {
    #[serde(borrow, default)]
    event_id: Loose<'a>,
    #[serde(rename = "type", borrow, default)]
    event_type: Loose<'a>,
    #[serde(borrow, default)]
    created_at: Loose<'a>,
    #[serde(borrow, default)]
    merchant_id: Loose<'a>,
}

/// Parses the envelope of a Square event body: `event_id`, `type`, `created_at` (any RFC 3339
/// precision; unparsable is 0) and `merchant_id` must be present.
pub fn parse_envelope(body: &[u8]) -> Result<Envelope, SquareWebhookError> {
    if !crate::json::is_object(body) {
        return Err(SquareWebhookError::MalformedJson);
    }
    let raw: RawEnvelope<'_> =
        serde_json::from_slice(body).map_err(|_| SquareWebhookError::MalformedJson)?;
    let id = short_token(&raw.event_id).ok_or(SquareWebhookError::MissingField("event_id"))?;
    let event_type =
        short_token(&raw.event_type).ok_or(SquareWebhookError::MissingField("type"))?;
    short_token(&raw.merchant_id).ok_or(SquareWebhookError::MissingField("merchant_id"))?;
    let created_at = raw
        .created_at
        .as_str()
        .ok_or(SquareWebhookError::MissingField("created_at"))?;
    Ok(Envelope {
        id,
        event_type,
        created: parse_rfc3339_ms(created_at).map_or(0, |ms| ms.div_euclid(1000)),
        livemode: None,
        api_version: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "https://hooks.example.com/webhooks/square";
    const BODY: &str = r#"{"merchant_id":"M1","type":"payment.updated","event_id":"e-1","created_at":"2024-01-02T03:04:05.5Z","data":{}}"#;

    fn verifier(mode: Mode) -> SquareVerifier {
        SquareVerifier::new(URL, vec!["old".into(), "new".into()], mode)
    }

    #[test]
    fn either_rotated_key_verifies_and_the_envelope_is_read() {
        for key in ["old", "new"] {
            let sig = sign(key, URL, BODY.as_bytes());
            let hook = verifier(Mode::Test)
                .verify(Some(&sig), Bytes::from_static(BODY.as_bytes()), 9)
                .unwrap();
            let meta = hook.meta();
            assert_eq!(
                (
                    meta.event_id.as_str(),
                    meta.event_type.as_str(),
                    meta.created
                ),
                ("e-1", "payment.updated", 1_704_164_645)
            );
            assert!(!meta.livemode);
            assert_eq!(meta.provider, Provider::Square);
        }
    }

    #[test]
    fn refusals_name_their_reason() {
        let v = verifier(Mode::Test);
        let body = || Bytes::from_static(BODY.as_bytes());
        let other_url = sign(
            "new",
            "https://hooks.example.com/webhooks/square/",
            BODY.as_bytes(),
        );
        let cases: [(Option<&str>, SquareWebhookError); 4] = [
            (None, SquareWebhookError::MissingSignature),
            (Some("not base64!"), SquareWebhookError::MalformedSignature),
            (Some("AAAA"), SquareWebhookError::MalformedSignature),
            (Some(&other_url), SquareWebhookError::Mismatch),
        ];
        for (header, want) in cases {
            assert_eq!(v.verify(header, body(), 0).unwrap_err(), want);
        }
        let sig = sign("new", URL, b"");
        assert_eq!(
            v.verify(Some(&sig), Bytes::new(), 0).unwrap_err(),
            SquareWebhookError::Mismatch,
            "an empty body never verifies"
        );
    }

    #[test]
    fn a_sandbox_body_on_a_live_endpoint_is_refused() {
        let body = r#"{"merchant_id":"M1","type":"payment.created","event_id":"e-2","created_at":"2024-01-02T03:04:05Z","data":{"object":{"payment":{"application_details":{"application_id":"sandbox-sq0idb-x"}}}}}"#;
        let sig = sign("new", URL, body.as_bytes());
        let b = Bytes::copy_from_slice(body.as_bytes());
        assert_eq!(
            verifier(Mode::Live)
                .verify(Some(&sig), b.clone(), 0)
                .unwrap_err(),
            SquareWebhookError::WrongMode
        );
        assert!(verifier(Mode::Test).verify(Some(&sig), b, 0).is_ok());
    }

    #[test]
    fn envelope_fields_are_required() {
        for (body, field) in [
            (
                r#"{"type":"t","created_at":"2024-01-01T00:00:00Z","merchant_id":"m"}"#,
                "event_id",
            ),
            (
                r#"{"event_id":"e","created_at":"2024-01-01T00:00:00Z","merchant_id":"m"}"#,
                "type",
            ),
            (
                r#"{"event_id":"e","type":"t","merchant_id":"m"}"#,
                "created_at",
            ),
            (
                r#"{"event_id":"e","type":"t","created_at":"x"}"#,
                "merchant_id",
            ),
        ] {
            assert_eq!(
                parse_envelope(body.as_bytes()),
                Err(SquareWebhookError::MissingField(field))
            );
        }
        assert_eq!(
            parse_envelope(b"[1]"),
            Err(SquareWebhookError::MalformedJson)
        );
        let bad_clock = r#"{"event_id":"e","type":"t","created_at":"soon","merchant_id":"m"}"#;
        assert_eq!(parse_envelope(bad_clock.as_bytes()).unwrap().created, 0);
    }
}
