//! The queue message contract between receiver and worker, defined once.
//!
//! The message body is the provider's raw request body, byte for byte (so it can be re-verified
//! and replayed). Two formats are read:
//!
//! - **Format 2** (written by this build): the event's own fields (type, `created`, mode, API
//!   version) are read from the body, which the worker parses anyway. The standard AMQP
//!   properties carry the event id (`message_id`) and the routing key `<provider>.<type>`
//!   (`type`); one header carries the receive time in milliseconds, and `paysync-attempt`
//!   appears from the second attempt on. A message of this format has no `paysync-format`
//!   header. Every header costs the broker CPU on every publish (RabbitMQ decodes the table),
//!   which is why the set is this small (docs/decisions.md, message format 2).
//! - **Format 1** (earlier releases): the same fields in `paysync-*` headers, marked by
//!   `paysync-format: 1`. Any other `paysync-format` is refused rather than guessed at.
//!
//! Attempts are counted in our own header, never from `x-death` (whose meaning changed across
//! RabbitMQ versions).

use crate::webhook::{EventMeta, Provider};

/// The `paysync-format` of the earlier, header-carrying format, which this build still reads.
/// This build writes format 2, which has no `paysync-format` header.
pub const FORMAT_VERSION: i64 = 1;

/// Content type of every event message (the raw provider JSON).
pub const CONTENT_TYPE: &str = "application/json";

/// Header names. None starts with `x-`: those belong to the broker.
pub mod header {
    /// Version of the header set; present on format 1 messages only.
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
    /// Set with [`REPLAY`]: the replay's own id, so that a second delivery of the same replay
    /// (the broker redelivers what was committed but not acknowledged) is not applied again.
    pub const REPLAY_ID: &str = "paysync-replay-id";
    /// Where an event came from when not from a webhook: [`super::SOURCE_RECONCILE`] for one
    /// that reconciliation found in the provider's own event list.
    pub const SOURCE: &str = "paysync-source";
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

/// The [`header::SOURCE`] of an event that reconciliation found at the provider's API and
/// our receiver never got.
pub const SOURCE_RECONCILE: &str = "reconcile";

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
    #[error(
        "message format version {0} is not supported (this build reads 1, and 2 without the header)"
    )]
    UnsupportedFormat(i64),
    /// The AMQP `type` property (and the routing-key header) is absent or not
    /// `<provider>.<event type>`.
    #[error("message has no `type` property of the form <provider>.<event type>")]
    MissingType,
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
    /// The body is not an event envelope of its provider.
    #[error("body is not a valid {provider} event: {reason}")]
    BadEnvelope {
        /// The provider the message names.
        provider: Provider,
        /// What is wrong with the envelope.
        reason: String,
    },
    /// The body's `type` is not the event type the message names.
    #[error("body type {body:?} does not match message type {message:?}")]
    TypeMismatch {
        /// The body's event type.
        body: String,
        /// The event type of the message's `type` property.
        message: String,
    },
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
fn check_body<'b>(body: &'b [u8], event_id: &str) -> Result<&'b str, BodyError> {
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

/// The AMQP `type` property of an event message (format 2): `<provider>.<event type>`, the
/// event's routing key.
pub fn message_type(meta: &EventMeta) -> String {
    meta.routing_key()
}

/// The headers of an event message (format 2) at `attempt` (1 for the first delivery): the
/// receive time, the mode for providers whose body has none, and the attempt from the second
/// one on. Everything else is in the body or in
/// standard properties ([`message_type`], `message_id`).
pub fn headers(meta: &EventMeta, attempt: u32) -> Vec<(&'static str, HeaderValue)> {
    let mut out = vec![(
        header::RECEIVED_AT_MS,
        HeaderValue::Int(meta.received_at_ms),
    )];
    if meta.provider != Provider::Stripe {
        // Stripe's body says its mode; the other providers' bodies do not.
        out.push((header::LIVEMODE, HeaderValue::Bool(meta.livemode)));
    }
    if attempt != 1 {
        out.push((header::ATTEMPT, HeaderValue::Int(i64::from(attempt))));
    }
    out
}

/// Why a message could not be read: its properties and headers, or its body.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Properties or headers are missing or wrong.
    #[error(transparent)]
    Message(#[from] MessageError),
    /// The body is not what the message claims.
    #[error(transparent)]
    Body(#[from] BodyError),
}

/// A message as read by the worker: its metadata, its attempt and its body as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadMessage<'b> {
    /// The event's metadata.
    pub meta: EventMeta,
    /// Which attempt this delivery is, starting at 1.
    pub attempt: u32,
    /// The body, checked to be the event the message names.
    pub body: &'b str,
}

/// Reads an event message of either format. `event_id` is the AMQP `message_id`, `kind` the
/// AMQP `type`, `get` looks up a header, `body` is the message body.
pub fn read_message<'a, 'b>(
    event_id: Option<&str>,
    kind: Option<&str>,
    get: impl Fn(&str) -> Option<&'a HeaderValue>,
    body: &'b [u8],
) -> Result<ReadMessage<'b>, ReadError> {
    if get(header::FORMAT).is_some() {
        let (meta, attempt) = read_headers(event_id, &get)?;
        let body = check_body(body, &meta.event_id)?;
        return Ok(ReadMessage {
            meta,
            attempt,
            body,
        });
    }
    let event_id = event_id
        .filter(|id| !id.is_empty())
        .ok_or(MessageError::MissingHeader("message_id"))?;
    // A redrive carries the key in a header (it has no `type`); a first publish in `type`.
    let key = match get(header::ROUTING_KEY) {
        Some(HeaderValue::Str(key)) => Some(key.as_str()),
        _ => kind,
    };
    let (provider, event_type) = key
        .and_then(|k| k.split_once('.'))
        .filter(|(p, t)| !p.is_empty() && !t.is_empty())
        .ok_or(MessageError::MissingType)?;
    let provider: Provider = provider.parse().map_err(MessageError::from)?;
    let received_at_ms = match get(header::RECEIVED_AT_MS) {
        Some(HeaderValue::Int(v)) => *v,
        _ => return Err(MessageError::MissingHeader(header::RECEIVED_AT_MS).into()),
    };
    let attempt = match get(header::ATTEMPT) {
        None => 1,
        Some(HeaderValue::Int(a)) => u32::try_from(*a)
            .ok()
            .filter(|a| *a >= 1)
            .ok_or(MessageError::MissingHeader(header::ATTEMPT))?,
        Some(_) => return Err(MessageError::MissingHeader(header::ATTEMPT).into()),
    };
    let text = std::str::from_utf8(body).map_err(|_| BodyError::NotUtf8)?;
    let envelope = parse_envelope(provider, body)
        .map_err(|reason| BodyError::BadEnvelope { provider, reason })?;
    if envelope.id != event_id {
        return Err(BodyError::IdMismatch {
            body: envelope.id.chars().take(80).collect(),
            message: event_id.to_owned(),
        }
        .into());
    }
    if envelope.event_type != event_type {
        return Err(BodyError::TypeMismatch {
            body: envelope.event_type.chars().take(80).collect(),
            message: event_type.chars().take(80).collect(),
        }
        .into());
    }
    // Only Stripe's body says its mode; the others' mode travels in a header.
    let mode = match (envelope.livemode, get(header::LIVEMODE)) {
        (Some(_), _) => crate::Mode::Test,
        (None, Some(HeaderValue::Bool(live))) => crate::Mode::from_livemode(*live),
        (None, _) => return Err(MessageError::MissingHeader(header::LIVEMODE).into()),
    };
    Ok(ReadMessage {
        meta: envelope.into_meta(provider, mode, received_at_ms),
        attempt,
        body: text,
    })
}

/// The envelope of `body` as `provider` writes it; the error is the parser's reason.
pub fn parse_envelope(provider: Provider, body: &[u8]) -> Result<crate::Envelope, String> {
    match provider {
        Provider::Stripe => crate::stripe::parse_envelope(body).map_err(|e| e.to_string()),
        Provider::Square => crate::square::parse_envelope(body).map_err(|e| e.to_string()),
        Provider::AuthorizeNet => {
            crate::authorizenet::parse_envelope(body).map_err(|e| e.to_string())
        }
        Provider::Paypal => {
            crate::paypal::envelope::parse_envelope(body).map_err(|e| e.to_string())
        }
    }
}

/// Reads [`EventMeta`] and the attempt back from a format 1 message: `event_id` comes from the
/// AMQP `message_id` property, the rest from headers looked up with `get`.
fn read_headers<'a>(
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

    /// A Stripe event body carrying `m`'s fields.
    fn body(m: &EventMeta) -> Vec<u8> {
        let api = m
            .api_version
            .as_ref()
            .map_or("null".to_owned(), |v| format!("\"{v}\""));
        format!(
            r#"{{"id":"{}","object":"event","type":"{}","created":{},"livemode":{},"api_version":{api},"data":{{"object":{{"id":"in_1","type":"not the event's"}}}}}}"#,
            m.event_id, m.event_type, m.created, m.livemode
        )
        .into_bytes()
    }

    /// The headers an earlier release wrote (format 1).
    fn v1_headers(m: &EventMeta, attempt: u32) -> HashMap<&'static str, HeaderValue> {
        let mut h = HashMap::from([
            (header::FORMAT, HeaderValue::Int(1)),
            (header::PROVIDER, HeaderValue::Str("stripe".into())),
            (header::EVENT_TYPE, HeaderValue::Str(m.event_type.clone())),
            (header::EVENT_CREATED, HeaderValue::Int(m.created)),
            (header::LIVEMODE, HeaderValue::Bool(m.livemode)),
            (header::RECEIVED_AT_MS, HeaderValue::Int(m.received_at_ms)),
            (header::ATTEMPT, HeaderValue::Int(i64::from(attempt))),
        ]);
        if let Some(v) = &m.api_version {
            h.insert(header::API_VERSION, HeaderValue::Str(v.clone()));
        }
        h
    }

    fn read<'b>(
        id: Option<&str>,
        kind: Option<&str>,
        map: &HashMap<&'static str, HeaderValue>,
        body: &'b [u8],
    ) -> Result<ReadMessage<'b>, ReadError> {
        read_message(id, kind, |k| map.get(k), body)
    }

    fn v2(m: &EventMeta, attempt: u32) -> HashMap<&'static str, HeaderValue> {
        headers(m, attempt).into_iter().collect()
    }

    #[test]
    fn format_2_round_trips_through_properties_headers_and_body() {
        for m in [meta(Some("2020-03-02")), meta(None)] {
            for attempt in [1, 3] {
                let b = body(&m);
                let read = read(Some("evt_1"), Some(&message_type(&m)), &v2(&m, attempt), &b);
                let read = read.unwrap();
                assert_eq!((&read.meta, read.attempt), (&m, attempt));
                assert_eq!(read.body.as_bytes(), &b[..]);
            }
        }
    }

    #[test]
    fn format_2_carries_one_header_on_a_first_attempt() {
        let names: Vec<&str> = headers(&meta(None), 1).iter().map(|(k, _)| *k).collect();
        assert_eq!(names, [header::RECEIVED_AT_MS]);
        let names: Vec<&str> = headers(&meta(None), 2).iter().map(|(k, _)| *k).collect();
        assert_eq!(names, [header::RECEIVED_AT_MS, header::ATTEMPT]);
        assert_eq!(message_type(&meta(None)), "stripe.invoice.paid");
    }

    #[test]
    fn a_redrive_names_its_event_in_the_routing_key_header() {
        let m = meta(None);
        let mut map = v2(&m, 1);
        map.insert(
            header::ROUTING_KEY,
            HeaderValue::Str("stripe.invoice.paid".into()),
        );
        let b = body(&m);
        assert_eq!(read(Some("evt_1"), None, &map, &b).unwrap().meta, m);
    }

    #[test]
    fn format_1_of_earlier_releases_is_still_read() {
        for m in [meta(Some("2020-03-02")), meta(None)] {
            let b = body(&m);
            // Its headers, not a `type` property, name the event.
            let read = read(Some("evt_1"), None, &v1_headers(&m, 4), &b).unwrap();
            assert_eq!((read.meta, read.attempt), (m, 4));
        }
    }

    #[test]
    fn unknown_format_version_is_refused() {
        let m = meta(None);
        let mut map = v1_headers(&m, 1);
        map.insert(header::FORMAT, HeaderValue::Int(3));
        let err = read(Some("evt_1"), Some("stripe.invoice.paid"), &map, &body(&m)).unwrap_err();
        assert!(
            matches!(err, ReadError::Message(MessageError::UnsupportedFormat(3))),
            "{err:?}"
        );
    }

    #[test]
    fn missing_or_wrong_properties_and_headers_are_refused() {
        let m = meta(None);
        let b = body(&m);
        let ok = v2(&m, 1);
        let kind = Some("stripe.invoice.paid");
        let message_err = |id, kind, map: &HashMap<_, _>| match read(id, kind, map, &b) {
            Err(ReadError::Message(e)) => e,
            other => panic!("expected a message error, got {other:?}"),
        };
        assert_eq!(
            message_err(None, kind, &ok),
            MessageError::MissingHeader("message_id")
        );
        for bad_kind in [None, Some("stripe"), Some(".invoice.paid"), Some("stripe.")] {
            assert_eq!(
                message_err(Some("evt_1"), bad_kind, &ok),
                MessageError::MissingType
            );
        }
        assert!(matches!(
            message_err(Some("evt_1"), Some("paddle.invoice.paid"), &ok),
            MessageError::UnknownProvider(_)
        ));
        let mut no_time = ok.clone();
        no_time.remove(header::RECEIVED_AT_MS);
        assert_eq!(
            message_err(Some("evt_1"), kind, &no_time),
            MessageError::MissingHeader(header::RECEIVED_AT_MS)
        );
        for bad_attempt in [HeaderValue::Int(0), HeaderValue::Str("2".into())] {
            let mut map = ok.clone();
            map.insert(header::ATTEMPT, bad_attempt);
            assert_eq!(
                message_err(Some("evt_1"), kind, &map),
                MessageError::MissingHeader(header::ATTEMPT)
            );
        }
        assert_eq!(
            message_err(None, None, &v1_headers(&m, 1)),
            MessageError::MissingHeader("message_id")
        );
        assert_eq!(
            message_err(Some("evt_1"), None, &v1_headers(&m, 0)),
            MessageError::MissingHeader(header::ATTEMPT)
        );
    }

    #[test]
    fn a_body_that_is_not_the_named_event_is_refused() {
        let m = meta(None);
        let map = v2(&m, 1);
        let other_type = body(&EventMeta {
            event_type: "invoice.voided".into(),
            ..m.clone()
        });
        for (b, expected) in [
            (
                &b"{not json"[..],
                "body is not a valid stripe event: malformed JSON",
            ),
            (b"\xff", "body is not UTF-8"),
            (
                br#"{"id":"evt_1","type":"invoice.paid","livemode":false}"#,
                "missing a valid `created`",
            ),
            (
                &body(&EventMeta {
                    event_id: "evt_2".into(),
                    ..m.clone()
                }),
                "body id \"evt_2\" does not match message id \"evt_1\"",
            ),
            (
                &other_type,
                "body type \"invoice.voided\" does not match message type \"invoice.paid\"",
            ),
        ] {
            match read(Some("evt_1"), Some("stripe.invoice.paid"), &map, b) {
                Err(ReadError::Body(e)) => {
                    let text = e.to_string();
                    assert!(text.contains(expected), "{text}");
                }
                other => panic!("expected a body error, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_format_1_body_is_json_with_the_message_id() {
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
}
