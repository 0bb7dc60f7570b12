//! The queue message contract between receiver and worker, defined once.
//!
//! The message body is the provider's raw request body, byte for byte (so it can be re-verified
//! and replayed); everything else travels in AMQP properties and in these headers. The header
//! set is versioned by [`header::FORMAT`]; a reader refuses a version it does not know rather
//! than guessing. Attempts are counted in our own header, never from `x-death` (whose meaning
//! changed across RabbitMQ versions).

use crate::webhook::{EventMeta, Provider};

/// The version of the header set written by this build.
pub const FORMAT_VERSION: i64 = 1;

/// Content type of every event message (the raw provider JSON).
pub const CONTENT_TYPE: &str = "application/json";

/// Header names. None starts with `x-`: those belong to the broker.
pub mod header {
    /// Version of this header set.
    pub const FORMAT: &str = "paysync-format";
    /// Provider name (`stripe`).
    pub const PROVIDER: &str = "paysync-provider";
    /// Provider event type.
    pub const EVENT_TYPE: &str = "paysync-event-type";
    /// Provider creation time, unix seconds.
    pub const EVENT_CREATED: &str = "paysync-event-created";
    /// Live or test mode.
    pub const LIVEMODE: &str = "paysync-livemode";
    /// Provider API version; absent when the provider sent none.
    pub const API_VERSION: &str = "paysync-api-version";
    /// When the receiver accepted the event, unix milliseconds.
    pub const RECEIVED_AT_MS: &str = "paysync-received-at-ms";
    /// Which attempt this delivery is, starting at 1.
    pub const ATTEMPT: &str = "paysync-attempt";
    /// The routing key the event was first published with (kept across delay hops).
    pub const ROUTING_KEY: &str = "paysync-routing-key";
    /// When the first attempt failed, unix milliseconds (set on the first retry).
    pub const FIRST_FAILURE_MS: &str = "paysync-first-failure-ms";
    /// How often an operator re-drove this event from the dead-letter queue.
    pub const REDRIVES: &str = "paysync-redrives";
    /// Set on an operator replay from the event log: the handler runs again although the
    /// event is already logged.
    pub const REPLAY: &str = "paysync-replay";
    /// Dead letters only: unique key of this dead-lettering (idempotent ingest).
    pub const DEAD_LETTER_KEY: &str = "paysync-dead-letter-key";
    /// Dead letters only: the error kind (closed set).
    pub const ERROR_KIND: &str = "paysync-error-kind";
    /// Dead letters only: the error and its causes, one per line.
    pub const ERROR_CHAIN: &str = "paysync-error-chain";
    /// Dead letters only: error kind + code site digest, for grouping.
    pub const FINGERPRINT: &str = "paysync-fingerprint";
    /// Dead letters only: when the last attempt failed, unix milliseconds.
    pub const LAST_FAILURE_MS: &str = "paysync-last-failure-ms";
}

/// A header value as the contract uses them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    /// Text.
    Str(String),
    /// A signed integer.
    Int(i64),
    /// A flag.
    Bool(bool),
}

/// Why a message's headers could not be read back into [`EventMeta`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// A required header is absent or has the wrong type.
    #[error("message header `{0}` is missing or has the wrong type")]
    MissingHeader(&'static str),
    /// The header set is of a version this build does not read.
    #[error("message format version {0} is not supported (this build reads {FORMAT_VERSION})")]
    UnsupportedFormat(i64),
    /// The provider header names no provider we know.
    #[error(transparent)]
    UnknownProvider(#[from] crate::webhook::UnknownProvider),
}

/// Why a message's body is not what its headers promise.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body is not UTF-8.
    #[error("body is not UTF-8")]
    NotUtf8,
    /// The body is not JSON.
    #[error("body is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// The body's `id` is not the message's event id.
    #[error("body id {body:?} does not match message id {message:?}")]
    IdMismatch {
        /// The body's `id` (at most 80 characters; empty when it has none).
        body: String,
        /// The message's event id.
        message: String,
    },
}

/// Checks that `body` is a JSON document whose `id` is `event_id`, and returns it as text. The
/// whole document is parsed, but only its `id` is kept (no tree is built).
pub fn check_body<'b>(body: &'b [u8], event_id: &str) -> Result<&'b str, BodyError> {
    #[derive(serde::Deserialize)]
    struct IdOnly<'a> {
        #[serde(borrow, default)]
        id: crate::json::Loose<'a>,
    }
    let text = std::str::from_utf8(body).map_err(|_| BodyError::NotUtf8)?;
    let id = if crate::json::is_object(body) {
        serde_json::from_str::<IdOnly<'_>>(text)
            .map_err(BodyError::NotJson)?
            .id
    } else {
        serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(BodyError::NotJson)?;
        crate::json::Loose::Nothing
    };
    let id = id.as_str().unwrap_or_default();
    if id != event_id {
        return Err(BodyError::IdMismatch {
            body: id.chars().take(80).collect(),
            message: event_id.to_owned(),
        });
    }
    Ok(text)
}

/// The headers for an event message at `attempt` (1 for the first delivery).
pub fn headers(meta: &EventMeta, attempt: u32) -> Vec<(&'static str, HeaderValue)> {
    let mut out = vec![
        (header::FORMAT, HeaderValue::Int(FORMAT_VERSION)),
        (
            header::PROVIDER,
            HeaderValue::Str(meta.provider.as_str().to_owned()),
        ),
        (
            header::EVENT_TYPE,
            HeaderValue::Str(meta.event_type.clone()),
        ),
        (header::EVENT_CREATED, HeaderValue::Int(meta.created)),
        (header::LIVEMODE, HeaderValue::Bool(meta.livemode)),
        (
            header::RECEIVED_AT_MS,
            HeaderValue::Int(meta.received_at_ms),
        ),
        (header::ATTEMPT, HeaderValue::Int(i64::from(attempt))),
    ];
    if let Some(v) = &meta.api_version {
        out.push((header::API_VERSION, HeaderValue::Str(v.clone())));
    }
    out
}

/// Reads [`EventMeta`] and the attempt back from a message: `event_id` comes from the AMQP
/// `message_id` property, the rest from headers looked up with `get`.
pub fn read_headers<'a>(
    event_id: Option<&str>,
    get: impl Fn(&str) -> Option<&'a HeaderValue>,
) -> Result<(EventMeta, u32), MessageError> {
    let int = |name: &'static str| match get(name) {
        Some(HeaderValue::Int(v)) => Ok(*v),
        _ => Err(MessageError::MissingHeader(name)),
    };
    let text = |name: &'static str| match get(name) {
        Some(HeaderValue::Str(v)) => Ok(v.clone()),
        _ => Err(MessageError::MissingHeader(name)),
    };
    let format = int(header::FORMAT)?;
    if format != FORMAT_VERSION {
        return Err(MessageError::UnsupportedFormat(format));
    }
    let provider: Provider = text(header::PROVIDER)?.parse()?;
    let livemode = match get(header::LIVEMODE) {
        Some(HeaderValue::Bool(v)) => *v,
        _ => return Err(MessageError::MissingHeader(header::LIVEMODE)),
    };
    let attempt = u32::try_from(int(header::ATTEMPT)?)
        .ok()
        .filter(|a| *a >= 1)
        .ok_or(MessageError::MissingHeader(header::ATTEMPT))?;
    let meta = EventMeta {
        provider,
        event_id: event_id
            .filter(|id| !id.is_empty())
            .ok_or(MessageError::MissingHeader("message_id"))?
            .to_owned(),
        event_type: text(header::EVENT_TYPE)?,
        created: int(header::EVENT_CREATED)?,
        livemode,
        api_version: text(header::API_VERSION).ok(),
        received_at_ms: int(header::RECEIVED_AT_MS)?,
    };
    Ok((meta, attempt))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn meta(api_version: Option<&str>) -> EventMeta {
        EventMeta {
            provider: Provider::Stripe,
            event_id: "evt_1".into(),
            event_type: "invoice.paid".into(),
            created: 1_600_000_000,
            livemode: false,
            api_version: api_version.map(str::to_owned),
            received_at_ms: 1_700_000_000_123,
        }
    }

    fn round_trip(m: &EventMeta, attempt: u32) -> Result<(EventMeta, u32), MessageError> {
        let map: HashMap<&str, HeaderValue> = headers(m, attempt).into_iter().collect();
        read_headers(Some(&m.event_id), |k| map.get(k))
    }

    #[test]
    fn headers_round_trip_with_and_without_api_version() {
        for m in [meta(Some("2020-03-02")), meta(None)] {
            assert_eq!(round_trip(&m, 3), Ok((m.clone(), 3)));
        }
    }

    #[test]
    fn a_body_is_json_with_the_message_id() {
        let ok = br#"{"object":"event","data":{"id":"obj_1"},"id":"evt_\u0031"}"#;
        assert_eq!(
            check_body(ok, "evt_1").unwrap(),
            std::str::from_utf8(ok).unwrap()
        );
        for (body, expected) in [
            (&b"{not json"[..], "not JSON"),
            (
                b"[1, 2]",
                "body id \"\" does not match message id \"evt_1\"",
            ),
            (br#"{"id": 7}"#, "body id \"\" does not match"),
            (br#"{"id": "evt_2"}"#, "body id \"evt_2\" does not match"),
            (br#"{"id": "evt_1"} trailing"#, "not JSON"),
            (b"\xff", "not UTF-8"),
        ] {
            let err = check_body(body, "evt_1").unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn unknown_format_version_is_refused() {
        let mut map: HashMap<&str, HeaderValue> = headers(&meta(None), 1).into_iter().collect();
        map.insert(header::FORMAT, HeaderValue::Int(2));
        assert_eq!(
            read_headers(Some("evt_1"), |k| map.get(k)),
            Err(MessageError::UnsupportedFormat(2))
        );
    }

    #[test]
    fn missing_message_id_or_attempt_zero_is_refused() {
        let map: HashMap<&str, HeaderValue> = headers(&meta(None), 1).into_iter().collect();
        assert_eq!(
            read_headers(None, |k| map.get(k)),
            Err(MessageError::MissingHeader("message_id"))
        );
        let map: HashMap<&str, HeaderValue> = headers(&meta(None), 0).into_iter().collect();
        assert_eq!(
            read_headers(Some("evt_1"), |k| map.get(k)),
            Err(MessageError::MissingHeader(header::ATTEMPT))
        );
    }
}
