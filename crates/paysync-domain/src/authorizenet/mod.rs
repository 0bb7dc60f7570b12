//! Authorize.Net webhooks: the signature scheme and the event envelope.
//!
//! Header `X-ANET-Signature: sha512=<hex>`: HMAC-SHA512 over the raw body, keyed with the
//! Signature Key's 128 characters as text (not hex-decoded: that rule belongs to the older
//! transaction hash). Authorize.Net sends uppercase hex; we decode either case and compare
//! bytes in constant time. No timestamp is signed: replays are stopped by the
//! `notificationId` dedupe. The body has no mode marker: the endpoint's key decides.

use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha512;

use crate::json::Loose;
use crate::stripe::short_token;
use crate::timestamp::parse_rfc3339_ms;
use crate::webhook::{Envelope, Mode, Provider, VerifiedWebhook};

/// The header Authorize.Net signs with.
pub const SIGNATURE_HEADER: &str = "X-ANET-Signature";

/// Why an Authorize.Net webhook was refused. Each maps to a 400 with its `Display` text; none
/// carries the key, the expected signature or the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorizeNetWebhookError {
    /// No `X-ANET-Signature` header.
    #[error("missing X-ANET-Signature header")]
    MissingSignature,
    /// Not `sha512=` followed by 128 hex digits.
    #[error("malformed X-ANET-Signature header (expected sha512=<128 hex digits>)")]
    MalformedSignature,
    /// The signature matches no configured key.
    #[error("signature does not match the body")]
    Mismatch,
    /// The body is not a JSON object.
    #[error("malformed JSON body")]
    MalformedJson,
    /// A required envelope field is absent or of the wrong type.
    #[error("event is missing a valid `{0}`")]
    MissingField(&'static str),
}

impl AuthorizeNetWebhookError {
    /// A closed label for metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::MissingSignature => "missing_signature",
            Self::MalformedSignature | Self::Mismatch => "bad_signature",
            Self::MalformedJson | Self::MissingField(_) => "malformed",
        }
    }
}

/// Verifies Authorize.Net webhooks for one merchant account: its signature keys (two while
/// one is being regenerated) and the mode the account is in.
#[derive(Clone)]
pub struct AuthorizeNetVerifier {
    keys: Vec<String>,
    mode: Mode,
}

impl std::fmt::Debug for AuthorizeNetVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorizeNetVerifier")
            .field("keys", &format_args!("[{} redacted]", self.keys.len()))
            .field("mode", &self.mode)
            .finish()
    }
}

impl AuthorizeNetVerifier {
    /// A verifier accepting signatures under any of `keys`.
    pub fn new(keys: Vec<String>, mode: Mode) -> Self {
        Self { keys, mode }
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
    ) -> Result<VerifiedWebhook, AuthorizeNetWebhookError> {
        let header = signature.ok_or(AuthorizeNetWebhookError::MissingSignature)?;
        verify_signature(&self.keys, header, &body)?;
        let envelope = parse_envelope(&body)?;
        Ok(VerifiedWebhook::new(
            envelope.into_meta(Provider::AuthorizeNet, self.mode, received_at_ms),
            body,
        ))
    }
}

fn mac(key: &str, body: &[u8]) -> [u8; 64] {
    let mut m = <Hmac<Sha512> as Mac>::new_from_slice(key.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    m.update(body);
    m.finalize().into_bytes().into()
}

/// The header value Authorize.Net would send for `body` under `key` (uppercase hex).
pub fn sign(key: &str, body: &[u8]) -> String {
    format!("sha512={}", hex::encode_upper(mac(key, body)))
}

/// Checks `header` against every key.
pub fn verify_signature<K: AsRef<str>>(
    keys: &[K],
    header: &str,
    body: &[u8],
) -> Result<(), AuthorizeNetWebhookError> {
    let digits = header
        .trim()
        .strip_prefix("sha512=")
        .ok_or(AuthorizeNetWebhookError::MalformedSignature)?;
    let given = hex::decode(digits)
        .ok()
        .filter(|d| d.len() == 64)
        .ok_or(AuthorizeNetWebhookError::MalformedSignature)?;
    if crate::verify::any_key_matches(keys, &given, |key| mac(key, body)) {
        Ok(())
    } else {
        Err(AuthorizeNetWebhookError::Mismatch)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEnvelope<'a> {
    #[serde(borrow, default)]
    notification_id: Loose<'a>,
    #[serde(borrow, default)]
    event_type: Loose<'a>,
    #[serde(borrow, default)]
    event_date: Loose<'a>,
    #[serde(borrow, default)]
    webhook_id: Loose<'a>,
    #[serde(borrow, default)]
    payload: Loose<'a>,
}

/// Parses the envelope of an Authorize.Net notification: `notificationId` (kept in lowercase:
/// the docs write GUIDs in uppercase, deliveries in lowercase), `eventType`, `eventDate` (0–7
/// fractional digits; unparsable is 0), `webhookId` and an object `payload`.
pub fn parse_envelope(body: &[u8]) -> Result<Envelope, AuthorizeNetWebhookError> {
    if !crate::json::is_object(body) {
        return Err(AuthorizeNetWebhookError::MalformedJson);
    }
    let raw: RawEnvelope<'_> =
        serde_json::from_slice(body).map_err(|_| AuthorizeNetWebhookError::MalformedJson)?;
    let id = short_token(&raw.notification_id)
        .ok_or(AuthorizeNetWebhookError::MissingField("notificationId"))?
        .to_ascii_lowercase();
    let event_type =
        short_token(&raw.event_type).ok_or(AuthorizeNetWebhookError::MissingField("eventType"))?;
    short_token(&raw.webhook_id).ok_or(AuthorizeNetWebhookError::MissingField("webhookId"))?;
    if raw.payload != Loose::Compound {
        return Err(AuthorizeNetWebhookError::MissingField("payload"));
    }
    let date = raw
        .event_date
        .as_str()
        .ok_or(AuthorizeNetWebhookError::MissingField("eventDate"))?;
    Ok(Envelope {
        id,
        event_type,
        created: parse_rfc3339_ms(date).map_or(0, |ms| ms.div_euclid(1000)),
        livemode: None,
        api_version: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = r#"{"notificationId":"ABC-1","eventType":"net.authorize.payment.authcapture.created","eventDate":"2017-04-15T21:13:43.2977159Z","webhookId":"w","payload":{"id":"1","authAmount":10.00}}"#;

    #[test]
    fn signature_in_either_case_verifies_under_either_key() {
        let v = AuthorizeNetVerifier::new(vec!["k1".into(), "k2".into()], Mode::Test);
        for key in ["k1", "k2"] {
            let upper = sign(key, BODY.as_bytes());
            for header in [
                upper.clone(),
                format!("sha512={}", upper[7..].to_ascii_lowercase()),
            ] {
                let hook = v
                    .verify(Some(&header), Bytes::from_static(BODY.as_bytes()), 0)
                    .unwrap();
                assert_eq!(hook.meta().event_id, "abc-1");
                assert_eq!(hook.meta().created, 1_492_290_823);
                assert_eq!(hook.meta().provider, Provider::AuthorizeNet);
            }
        }
    }

    #[test]
    fn refusals_name_their_reason() {
        let v = AuthorizeNetVerifier::new(vec!["k1".into()], Mode::Test);
        let good = sign("k1", BODY.as_bytes());
        let cases = [
            (None, AuthorizeNetWebhookError::MissingSignature),
            (
                Some(good.replace("sha512=", "sha256=")),
                AuthorizeNetWebhookError::MalformedSignature,
            ),
            (
                Some(good[..good.len() - 2].to_owned()),
                AuthorizeNetWebhookError::MalformedSignature,
            ),
            (
                Some(sign("k2", BODY.as_bytes())),
                AuthorizeNetWebhookError::Mismatch,
            ),
        ];
        for (header, want) in cases {
            let got = v
                .verify(header.as_deref(), Bytes::from_static(BODY.as_bytes()), 0)
                .unwrap_err();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn envelope_fields_are_required() {
        for (body, field) in [
            (
                r#"{"eventType":"t","eventDate":"2017-01-01T00:00:00Z","webhookId":"w","payload":{}}"#,
                "notificationId",
            ),
            (
                r#"{"notificationId":"n","eventDate":"2017-01-01T00:00:00Z","webhookId":"w","payload":{}}"#,
                "eventType",
            ),
            (
                r#"{"notificationId":"n","eventType":"t","eventDate":"2017-01-01T00:00:00Z","payload":{}}"#,
                "webhookId",
            ),
            (
                r#"{"notificationId":"n","eventType":"t","eventDate":"2017-01-01T00:00:00Z","webhookId":"w","payload":3}"#,
                "payload",
            ),
            (
                r#"{"notificationId":"n","eventType":"t","webhookId":"w","payload":{}}"#,
                "eventDate",
            ),
        ] {
            assert_eq!(
                parse_envelope(body.as_bytes()),
                Err(AuthorizeNetWebhookError::MissingField(field)),
                "{body}"
            );
        }
    }
}
