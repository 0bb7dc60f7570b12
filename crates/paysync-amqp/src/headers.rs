//! Our message contract in AMQP terms: properties plus a header table.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use paysync_domain::EventMeta;
use paysync_domain::message::{self, HeaderValue, ReadError, ReadMessage};

/// AMQP delivery mode 2: the broker writes the message to disk.
const PERSISTENT: u8 = 2;

/// The properties of an event message (format 2): persistent, JSON, `message_id` = provider
/// event id, `type` = `<provider>.<event type>`, `timestamp` = receive time (seconds), and the
/// contract headers for `attempt`.
pub fn event_properties(meta: &EventMeta, attempt: u32) -> BasicProperties {
    let mut table = FieldTable::default();
    for (name, value) in message::headers(meta, attempt) {
        table.insert(ShortString::from(name), to_amqp(value));
    }
    BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_content_type(message::CONTENT_TYPE.into())
        .with_message_id(meta.event_id.as_str().into())
        .with_type(message::message_type(meta).into())
        .with_timestamp(u64::try_from(meta.received_at_ms / 1000).unwrap_or_default())
        .with_headers(table)
}

/// Reads an event message of either format back from its properties and body.
pub fn read_event<'b>(
    props: &BasicProperties,
    body: &'b [u8],
) -> Result<ReadMessage<'b>, ReadError> {
    let empty = FieldTable::default();
    let table = props.headers().as_ref().unwrap_or(&empty);
    let values: Vec<(&str, HeaderValue)> = table
        .inner()
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("paysync-"))
        .filter_map(|(k, v)| from_amqp(v).map(|v| (k.as_str(), v)))
        .collect();
    let id = props.message_id().as_ref().map(|s| s.as_str());
    let kind = props.kind().as_ref().map(|s| s.as_str());
    message::read_message(
        id,
        kind,
        |name| values.iter().find(|(k, _)| *k == name).map(|(_, v)| v),
        body,
    )
}

fn to_amqp(value: HeaderValue) -> AMQPValue {
    match value {
        HeaderValue::Str(s) => AMQPValue::LongString(LongString::from(s)),
        HeaderValue::Int(i) => AMQPValue::LongLongInt(i),
        HeaderValue::Bool(b) => AMQPValue::Boolean(b),
    }
}

fn from_amqp(value: &AMQPValue) -> Option<HeaderValue> {
    Some(match value {
        AMQPValue::LongString(s) => HeaderValue::Str(String::from_utf8_lossy(s.as_bytes()).into()),
        AMQPValue::ShortString(s) => HeaderValue::Str(s.as_str().to_owned()),
        AMQPValue::LongLongInt(i) => HeaderValue::Int(*i),
        AMQPValue::LongInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::ShortInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::ShortShortInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::LongUInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::Boolean(b) => HeaderValue::Bool(*b),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use paysync_domain::Provider;

    fn meta(api_version: Option<&str>) -> EventMeta {
        EventMeta {
            provider: Provider::Stripe,
            event_id: "evt_42".into(),
            event_type: "charge.refunded".into(),
            created: 1_619_701_111,
            livemode: false,
            api_version: api_version.map(str::to_owned),
            received_at_ms: 1_700_000_000_999,
        }
    }

    #[test]
    fn event_properties_round_trip_through_amqp_types() {
        let meta = meta(Some("2020-03-02"));
        let props = event_properties(&meta, 4);
        assert_eq!(props.delivery_mode(), &Some(2));
        assert_eq!(props.timestamp(), &Some(1_700_000_000));
        assert_eq!(
            props.kind().as_ref().map(|k| k.as_str()),
            Some("stripe.charge.refunded")
        );
        let body = br#"{"id":"evt_42","object":"event","type":"charge.refunded","created":1619701111,"livemode":false,"api_version":"2020-03-02","data":{}}"#;
        let read = read_event(&props, body).unwrap();
        assert_eq!((read.meta, read.attempt), (meta, 4));
        assert_eq!(read.body.as_bytes(), body);
    }

    #[test]
    fn a_first_attempt_carries_the_receive_time_as_its_only_header() {
        let props = event_properties(&meta(None), 1);
        let table = props.headers().clone().unwrap();
        let names: Vec<&str> = table.inner().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["paysync-received-at-ms"]);
    }
}
