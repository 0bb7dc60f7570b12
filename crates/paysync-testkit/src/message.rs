//! Messages a test puts on or takes off the broker, in our own terms: lapin stays inside
//! `paysync-amqp` and this crate's private code, and no test names a lapin type.
//!
//! Rule of thumb: add an accessor here when a test needs another property; do not hand out
//! the AMQP properties themselves.

use paysync_amqp::lapin::BasicProperties;
use paysync_amqp::lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use paysync_domain::message::{HeaderValue, ReadError, ReadMessage};

/// A message taken (and acked) from a queue by [`crate::TestBroker::take_messages`].
#[derive(Debug, Clone)]
pub struct TakenMessage {
    /// The body, byte for byte.
    pub body: Vec<u8>,
    /// The routing key it was last published or dead-lettered with.
    pub routing_key: String,
    props: BasicProperties,
}

impl TakenMessage {
    pub(crate) fn new(body: Vec<u8>, routing_key: String, props: BasicProperties) -> Self {
        Self {
            body,
            routing_key,
            props,
        }
    }

    /// The `message_id` property.
    pub fn message_id(&self) -> Option<&str> {
        self.props.message_id().as_ref().map(|s| s.as_str())
    }

    /// The `type` property.
    pub fn kind(&self) -> Option<&str> {
        self.props.kind().as_ref().map(|s| s.as_str())
    }

    /// The `content_type` property.
    pub fn content_type(&self) -> Option<&str> {
        self.props.content_type().as_ref().map(|s| s.as_str())
    }

    /// The `delivery_mode` property (2: persistent).
    pub fn delivery_mode(&self) -> Option<u8> {
        *self.props.delivery_mode()
    }

    /// The `timestamp` property, unix seconds.
    pub fn timestamp(&self) -> Option<u64> {
        *self.props.timestamp()
    }

    /// The names of the headers, in the table's order.
    pub fn header_names(&self) -> Vec<&str> {
        self.props
            .headers()
            .as_ref()
            .map(|t| t.inner().keys().map(|k| k.as_str()).collect())
            .unwrap_or_default()
    }

    /// The header `name` when it is a 64-bit integer.
    pub fn header_i64(&self, name: &str) -> Option<i64> {
        match self.props.headers().as_ref()?.inner().get(name)? {
            AMQPValue::LongLongInt(i) => Some(*i),
            _ => None,
        }
    }

    /// The event our consumer would read from this message.
    pub fn read_event(&self) -> Result<ReadMessage<'_>, ReadError> {
        paysync_amqp::read_event(&self.props, &self.body)
    }
}

/// The properties of a message a test publishes raw with [`crate::TestBroker::publish_raw`]:
/// what an earlier release or a broken publisher might have sent.
#[derive(Debug, Clone, Default)]
pub struct RawProperties {
    /// Persistent (delivery mode 2) or not set.
    pub persistent: bool,
    /// The `message_id` property.
    pub message_id: Option<String>,
    /// The `type` property.
    pub kind: Option<String>,
    /// Headers, in this order; `None` for no header table at all.
    pub headers: Option<Vec<(String, HeaderValue)>>,
}

impl RawProperties {
    pub(crate) fn to_amqp(&self) -> BasicProperties {
        let mut props = BasicProperties::default();
        if self.persistent {
            props = props.with_delivery_mode(2);
        }
        if let Some(id) = &self.message_id {
            props = props.with_message_id(id.as_str().into());
        }
        if let Some(kind) = &self.kind {
            props = props.with_type(kind.as_str().into());
        }
        if let Some(headers) = &self.headers {
            let mut table = FieldTable::default();
            for (name, value) in headers {
                let value = match value {
                    HeaderValue::Str(s) => AMQPValue::LongString(LongString::from(s.as_str())),
                    HeaderValue::Int(i) => AMQPValue::LongLongInt(*i),
                    HeaderValue::Bool(b) => AMQPValue::Boolean(*b),
                };
                table.insert(ShortString::from(name.as_str()), value);
            }
            props = props.with_headers(table);
        }
        props
    }
}
