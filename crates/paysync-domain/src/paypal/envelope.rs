//! PayPal's event envelope.

use serde::Deserialize;

use crate::json::Loose;
use crate::stripe::short_token;
use crate::timestamp::parse_rfc3339_ms;
use crate::webhook::Envelope;

/// Why a PayPal body is not an event envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The body is not a JSON object.
    #[error("malformed JSON body")]
    MalformedJson,
    /// A required envelope field is absent or of the wrong type.
    #[error("event is missing a valid `{0}`")]
    MissingField(&'static str),
}

#[derive(Deserialize)]
struct RawEnvelope<'a> {
    #[serde(borrow, default)]
    id: Loose<'a>,
    #[serde(borrow, default)]
    event_type: Loose<'a>,
    #[serde(borrow, default)]
    create_time: Loose<'a>,
    #[serde(borrow, default)]
    resource_version: Loose<'a>,
    #[serde(borrow, default)]
    resource: Loose<'a>,
}

/// Parses the envelope of a PayPal event: `id` (`WH-…`), `event_type` and an object
/// `resource` are required. `create_time` is read leniently (the simulator sends month 19;
/// unparsable is 0), and `resource_version` is kept as the API version.
pub fn parse_envelope(body: &[u8]) -> Result<Envelope, EnvelopeError> {
    if !crate::json::is_object(body) {
        return Err(EnvelopeError::MalformedJson);
    }
    let raw: RawEnvelope<'_> =
        serde_json::from_slice(body).map_err(|_| EnvelopeError::MalformedJson)?;
    let id = short_token(&raw.id).ok_or(EnvelopeError::MissingField("id"))?;
    let event_type =
        short_token(&raw.event_type).ok_or(EnvelopeError::MissingField("event_type"))?;
    if raw.resource != Loose::Compound {
        return Err(EnvelopeError::MissingField("resource"));
    }
    let created = raw
        .create_time
        .as_str()
        .and_then(parse_rfc3339_ms)
        .map_or(0, |ms| ms.div_euclid(1000));
    Ok(Envelope {
        id,
        event_type,
        created,
        livemode: None,
        api_version: short_token(&raw.resource_version),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_fields_and_a_lenient_clock() {
        let ok = br#"{"id":"WH-1","event_type":"PAYMENT.CAPTURE.COMPLETED","create_time":"2018-19-12T22:20:32.000Z","resource":{"id":"c"}}"#;
        let e = parse_envelope(ok).unwrap();
        assert_eq!((e.id.as_str(), e.created), ("WH-1", 0));
        for (body, field) in [
            (&br#"{"event_type":"X","resource":{}}"#[..], "id"),
            (br#"{"id":"WH-1","resource":{}}"#, "event_type"),
            (
                br#"{"id":"WH-1","event_type":"X","resource":"r"}"#,
                "resource",
            ),
        ] {
            assert_eq!(
                parse_envelope(body),
                Err(EnvelopeError::MissingField(field))
            );
        }
        assert_eq!(parse_envelope(b"null"), Err(EnvelopeError::MalformedJson));
    }
}
