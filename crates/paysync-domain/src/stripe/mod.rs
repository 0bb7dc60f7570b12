//! Stripe webhooks: the signature scheme and the event envelope.
//!
//! [`StripeVerifier::verify`] is the only way to turn a raw Stripe request into a
//! [`VerifiedWebhook`]: signature first, then the envelope, then the mode. Nothing is parsed
//! as JSON before the signature holds.

pub mod signature;

use bytes::Bytes;
use serde::Deserialize;

use crate::json::Loose;
pub use crate::webhook::Envelope;
use crate::webhook::{Mode, Provider, VerifiedWebhook};
pub use signature::SignatureError;

/// The header Stripe signs with.
pub const SIGNATURE_HEADER: &str = "Stripe-Signature";

/// Stripe's own default tolerance for the signature timestamp, in seconds.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

/// Longest event id or type we accept. Stripe's are far shorter; the bound keeps them valid as
/// AMQP short strings (routing key and message id) with room for our prefix.
const MAX_ID_LEN: usize = 200;

/// Why a Stripe webhook was refused. Every variant maps to a 400 with its `Display` text as
/// the one-line body; none of them carries secret material or the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StripeWebhookError {
    /// The request had no `Stripe-Signature` header.
    #[error("missing Stripe-Signature header")]
    MissingSignature,
    /// The signature header is malformed or does not match.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The body is not a JSON object.
    #[error("malformed JSON body")]
    MalformedJson,
    /// A required envelope field is absent or of the wrong type.
    #[error("event is missing a valid `{0}`")]
    MissingField(&'static str),
    /// The event's `livemode` does not match the configured mode.
    #[error("event is in {got} mode but this endpoint accepts {expected} mode only")]
    WrongMode {
        /// The configured mode.
        expected: Mode,
        /// The event's mode.
        got: Mode,
    },
}

impl StripeWebhookError {
    /// A closed label for metrics (`paysync_webhooks_received_total{outcome}`).
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::MissingSignature => "missing_signature",
            Self::Signature(SignatureError::TimestampTooOld { .. }) => "stale_timestamp",
            Self::Signature(_) => "bad_signature",
            Self::MalformedJson | Self::MissingField(_) => "malformed",
            Self::WrongMode { .. } => "wrong_mode",
        }
    }
}

/// Verifies Stripe webhooks for one endpoint: its secrets (several while rotating), its mode
/// and its timestamp tolerance.
#[derive(Clone)]
pub struct StripeVerifier {
    secrets: Vec<String>,
    mode: Mode,
    tolerance_secs: i64,
}

impl std::fmt::Debug for StripeVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeVerifier")
            .field(
                "secrets",
                &format_args!("[{} redacted]", self.secrets.len()),
            )
            .field("mode", &self.mode)
            .field("tolerance_secs", &self.tolerance_secs)
            .finish()
    }
}

impl StripeVerifier {
    /// A verifier accepting signatures under any of `secrets`, events of `mode` only, and
    /// timestamps at most `tolerance_secs` old (0 disables the age check; Stripe's default is
    /// [`DEFAULT_TOLERANCE_SECS`]).
    pub fn new(secrets: Vec<String>, mode: Mode, tolerance_secs: i64) -> Self {
        Self {
            secrets,
            mode,
            tolerance_secs,
        }
    }

    /// The configured mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Checks a raw request: `signature` is the `Stripe-Signature` header (if any), `body` the
    /// exact bytes received, `now` the current unix time in seconds, `received_at_ms` the
    /// receive time to stamp on the event.
    pub fn verify(
        &self,
        signature: Option<&str>,
        body: Bytes,
        now: i64,
        received_at_ms: i64,
    ) -> Result<VerifiedWebhook, StripeWebhookError> {
        let header = signature.ok_or(StripeWebhookError::MissingSignature)?;
        signature::verify(&self.secrets, header, &body, now, self.tolerance_secs)?;
        let envelope = parse_envelope(&body)?;
        let got = Mode::from_livemode(envelope.livemode == Some(true));
        if got != self.mode {
            return Err(StripeWebhookError::WrongMode {
                expected: self.mode,
                got,
            });
        }
        Ok(VerifiedWebhook::new(
            envelope.into_meta(Provider::Stripe, self.mode, received_at_ms),
            body,
        ))
    }
}

#[derive(Deserialize)]
struct RawEnvelope<'a> {
    #[serde(borrow, default)]
    id: Loose<'a>,
    #[serde(rename = "type", borrow, default)]
    event_type: Loose<'a>,
    #[serde(borrow, default)]
    created: Loose<'a>,
    #[serde(borrow, default)]
    livemode: Loose<'a>,
    #[serde(borrow, default)]
    api_version: Loose<'a>,
    #[serde(borrow, default)]
    object: Loose<'a>,
}

/// The `object` of Stripe's thin events (event destinations with the "thin" payload): an id,
/// a type and a reference to the object, which the worker fetches from Stripe's API.
pub const THIN_OBJECT: &str = "v2.core.event";

/// Parses the envelope of a Stripe event body, snapshot or thin. The whole body must be valid JSON; only the
/// envelope fields are kept.
pub fn parse_envelope(body: &[u8]) -> Result<Envelope, StripeWebhookError> {
    // An object, not an array (which serde would also take for a struct, field by field).
    if !crate::json::is_object(body) {
        return Err(StripeWebhookError::MalformedJson);
    }
    let raw: RawEnvelope<'_> =
        serde_json::from_slice(body).map_err(|_| StripeWebhookError::MalformedJson)?;
    let thin = raw.object.as_str() == Some(THIN_OBJECT);
    let id = short_token(&raw.id).ok_or(StripeWebhookError::MissingField("id"))?;
    let event_type =
        short_token(&raw.event_type).ok_or(StripeWebhookError::MissingField("type"))?;
    // A snapshot event's `created` is unix seconds; a thin event's is RFC 3339.
    let created = match (&raw.created, thin) {
        (Loose::Int(created), false) => *created,
        (Loose::Str(at), true) => crate::timestamp::parse_rfc3339_ms(at)
            .map(|ms| ms.div_euclid(1000))
            .ok_or(StripeWebhookError::MissingField("created"))?,
        _ => return Err(StripeWebhookError::MissingField("created")),
    };
    let Loose::Bool(livemode) = raw.livemode else {
        return Err(StripeWebhookError::MissingField("livemode"));
    };
    let api_version = match raw.api_version {
        Loose::Nothing => None,
        Loose::Str(v) if v.len() <= MAX_ID_LEN => Some(v.into_owned()),
        _ => return Err(StripeWebhookError::MissingField("api_version")),
    };
    Ok(Envelope {
        id,
        event_type,
        created,
        livemode: Some(livemode),
        api_version,
    })
}

/// A non-empty string of printable ASCII without spaces, short enough for AMQP short strings.
pub(crate) fn short_token(value: &Loose<'_>) -> Option<String> {
    let s = value.as_str()?;
    let ok = !s.is_empty() && s.len() <= MAX_ID_LEN && s.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_unit";

    fn verifier(mode: Mode) -> StripeVerifier {
        StripeVerifier::new(vec![SECRET.into()], mode, 300)
    }

    fn signed(body: &str, t: i64) -> (String, Bytes) {
        (
            signature::sign_header(SECRET, t, body.as_bytes()),
            Bytes::copy_from_slice(body.as_bytes()),
        )
    }

    #[test]
    fn verified_webhook_keeps_the_raw_body_and_envelope() {
        let body = r#"{"id":"evt_1","object":"event","type":"invoice.paid","created":5,"livemode":false,"api_version":"2020-03-02","data":{}}"#;
        let (h, b) = signed(body, 100);
        let hook = verifier(Mode::Test).verify(Some(&h), b, 100, 7).unwrap();
        assert_eq!(hook.body().as_ref(), body.as_bytes());
        assert_eq!(hook.meta().event_id, "evt_1");
        assert_eq!(hook.meta().event_type, "invoice.paid");
        assert_eq!(hook.meta().created, 5);
        assert_eq!(hook.meta().api_version.as_deref(), Some("2020-03-02"));
        assert_eq!(hook.meta().received_at_ms, 7);
    }

    #[test]
    fn missing_signature_is_refused() {
        let err = verifier(Mode::Test)
            .verify(None, Bytes::from_static(b"{}"), 0, 0)
            .unwrap_err();
        assert_eq!(err, StripeWebhookError::MissingSignature);
        assert_eq!(err.outcome(), "missing_signature");
    }

    #[test]
    fn signed_garbage_is_malformed_json() {
        let (h, b) = signed("not json", 1);
        assert_eq!(
            verifier(Mode::Test).verify(Some(&h), b, 1, 0).unwrap_err(),
            StripeWebhookError::MalformedJson
        );
    }

    #[test]
    fn envelope_fields_are_required() {
        for (body, field) in [
            (r#"{"type":"a","created":1,"livemode":false}"#, "id"),
            (r#"{"id":"","type":"a","created":1,"livemode":false}"#, "id"),
            (
                r#"{"id":"evt 1","type":"a","created":1,"livemode":false}"#,
                "id",
            ),
            (r#"{"id":"evt_1","created":1,"livemode":false}"#, "type"),
            (
                r#"{"id":"evt_1","type":7,"created":1,"livemode":false}"#,
                "type",
            ),
            (r#"{"id":"evt_1","type":"a","livemode":false}"#, "created"),
            (r#"{"id":"evt_1","type":"a","created":1}"#, "livemode"),
            (
                r#"{"id":"evt_1","type":"a","created":1,"livemode":"no"}"#,
                "livemode",
            ),
        ] {
            assert_eq!(
                parse_envelope(body.as_bytes()),
                Err(StripeWebhookError::MissingField(field)),
                "{body}"
            );
        }
        assert_eq!(
            parse_envelope(b"[]"),
            Err(StripeWebhookError::MalformedJson)
        );
    }

    /// The envelope as a `serde_json::Value` reading (the parser before it borrowed its
    /// fields), the reference the borrowing parser must agree with.
    fn reference_envelope(body: &[u8]) -> Result<Envelope, StripeWebhookError> {
        let v: serde_json::Value =
            serde_json::from_slice(body).map_err(|_| StripeWebhookError::MalformedJson)?;
        let o = v.as_object().ok_or(StripeWebhookError::MalformedJson)?;
        let thin = o.get("object").and_then(|x| x.as_str()) == Some(THIN_OBJECT);
        let token = |k: &str| {
            o.get(k)
                .and_then(|x| x.as_str())
                .filter(|s| {
                    !s.is_empty()
                        && s.len() <= MAX_ID_LEN
                        && s.bytes().all(|b| b.is_ascii_graphic())
                })
                .map(str::to_owned)
        };
        let id = token("id").ok_or(StripeWebhookError::MissingField("id"))?;
        let event_type = token("type").ok_or(StripeWebhookError::MissingField("type"))?;
        let created = match (o.get("created"), thin) {
            (Some(serde_json::Value::String(at)), true) => {
                crate::timestamp::parse_rfc3339_ms(at).map(|ms| ms.div_euclid(1000))
            }
            (Some(c), false) => c.as_i64(),
            _ => None,
        }
        .ok_or(StripeWebhookError::MissingField("created"))?;
        let livemode = o
            .get("livemode")
            .and_then(|l| l.as_bool())
            .ok_or(StripeWebhookError::MissingField("livemode"))?;
        let api_version = match o.get("api_version") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(v)) if v.len() <= MAX_ID_LEN => Some(v.clone()),
            Some(_) => return Err(StripeWebhookError::MissingField("api_version")),
        };
        Ok(Envelope {
            id,
            event_type,
            created,
            livemode: Some(livemode),
            api_version,
        })
    }

    #[test]
    fn escaped_strings_nested_data_and_odd_types_are_read_like_a_full_parse() {
        for body in [
            r#"{"id":"evt_\u0031","type":"a\/b","created":1,"livemode":false,"data":{"id":[1,{"x":null}]}}"#,
            r#"{"id":"evt_1","type":"a","created":1.5,"livemode":false}"#,
            r#"{"id":"evt_1","type":"a","created":18446744073709551615,"livemode":false}"#,
            r#"{"id":"evt_1","type":"a","created":-3,"livemode":false,"api_version":{"v":1}}"#,
            r#"{"id":"evt_1","type":"a","created":1,"livemode":false,"api_version":[]}"#,
            r#"{"id":"evt_1","type":"a","created":1,"livemode":false,"api_version":null}"#,
            r#"{"id":["evt_1"],"type":"a","created":1,"livemode":false}"#,
            r#"{"id":"evt_1","id":"evt_2","type":"a","created":1,"livemode":false}"#,
            r#"  {"id":"evt_1","type":"a","created":1,"livemode":false}  "#,
            r#"{"id":"evt_1","type":"a","created":1,"livemode":false} trailing"#,
            r#"["evt_1","a",1,false]"#,
            r#""evt_1""#,
            "",
        ] {
            let got = parse_envelope(body.as_bytes());
            // Duplicate keys: the full parse keeps the last, the struct parse refuses them;
            // both are acceptable, a success must agree.
            if body.contains(r#""id":"evt_2""#) {
                assert_eq!(got, Err(StripeWebhookError::MalformedJson), "{body}");
                continue;
            }
            assert_eq!(got, reference_envelope(body.as_bytes()), "{body}");
        }
        let escaped =
            parse_envelope(br#"{"id":"evt_1","type":"a\/b","created":1,"livemode":false}"#)
                .unwrap();
        assert_eq!(
            (escaped.id.as_str(), escaped.event_type.as_str()),
            ("evt_1", "a/b")
        );
    }

    proptest::proptest! {
        /// Any object with the envelope keys at any JSON type is read as a full parse reads it.
        #[test]
        fn the_borrowing_parser_agrees_with_a_full_parse(
            fields in proptest::collection::vec(
                (
                    proptest::sample::select(vec!["id", "type", "created", "livemode", "api_version", "object", "data"]),
                    proptest::sample::select(vec![
                        r#""evt_1""#, r#""""#, r#""v2.core.event""#, r#""a b""#, "7", "-7", "7.5",
                        "true", "false", "null", "[]", r#"{"k":[1]}"#, r#""2020-03-02""#,
                        "18446744073709551615",
                    ]),
                ),
                0..8,
            )
        ) {
            let mut seen = std::collections::HashSet::new();
            let body = format!(
                "{{{}}}",
                fields
                    .iter()
                    .filter(|(k, _)| seen.insert(*k))
                    .map(|(k, v)| format!("\"{k}\":{v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            proptest::prop_assert_eq!(
                parse_envelope(body.as_bytes()),
                reference_envelope(body.as_bytes()),
                "{}",
                body
            );
        }
    }

    #[test]
    fn thin_events_are_read_with_their_rfc3339_time() {
        let body = br#"{"id":"evt_test_65R9","object":"v2.core.event","type":"v1.invoice.paid","livemode":false,"created":"2024-09-17T06:20:52.246Z","related_object":{"id":"in_1","type":"invoice","url":"/v1/invoices/in_1"}}"#;
        let e = parse_envelope(body).unwrap();
        assert_eq!(e.id, "evt_test_65R9");
        assert_eq!(e.event_type, "v1.invoice.paid");
        assert_eq!(e.created, 1_726_554_052);
        assert_eq!(e.livemode, Some(false));
        // A thin event's time is text; a number there (or text on a snapshot) is refused.
        let numeric =
            br#"{"id":"evt_1","object":"v2.core.event","type":"a","created":1,"livemode":false}"#;
        assert_eq!(
            parse_envelope(numeric),
            Err(StripeWebhookError::MissingField("created"))
        );
        let text = br#"{"id":"evt_1","object":"event","type":"a","created":"2024-09-17T06:20:52Z","livemode":false}"#;
        assert_eq!(
            parse_envelope(text),
            Err(StripeWebhookError::MissingField("created"))
        );
    }

    #[test]
    fn event_of_the_other_mode_is_refused() {
        let body = r#"{"id":"evt_1","type":"a","created":1,"livemode":true}"#;
        let (h, b) = signed(body, 1);
        let err = verifier(Mode::Test)
            .verify(Some(&h), b.clone(), 1, 0)
            .unwrap_err();
        assert_eq!(
            err,
            StripeWebhookError::WrongMode {
                expected: Mode::Test,
                got: Mode::Live
            }
        );
        assert_eq!(
            err.to_string(),
            "event is in live mode but this endpoint accepts test mode only"
        );
        assert!(verifier(Mode::Live).verify(Some(&h), b, 1, 0).is_ok());
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let shown = format!("{:?}", verifier(Mode::Test));
        assert!(!shown.contains(SECRET), "{shown}");
    }
}
