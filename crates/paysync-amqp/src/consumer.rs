//! Consuming: a connection and channel with a bounded prefetch, manual acks, and deliveries
//! wrapped so nobody outside this crate handles lapin types.
//!
//! Rule of thumb: every delivery is acked on its own (never `multiple`), because deliveries
//! are processed concurrently and `multiple` would ack work still in progress.

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use paysync_domain::EventMeta;
use paysync_domain::message::{MessageError, header};

use crate::AmqpSettings;
use crate::headers::read_event_properties;
use crate::topology::{Topology, declare_topology};

/// One delivery from a queue.
pub struct Incoming {
    delivery: Delivery,
}

impl Incoming {
    /// The body, exactly as published.
    pub fn body(&self) -> &[u8] {
        &self.delivery.data
    }

    /// The routing key it arrived with (for retries: the delay key).
    pub fn routing_key(&self) -> &str {
        self.delivery.routing_key.as_str()
    }

    /// The AMQP `message_id` (the provider event id).
    pub fn message_id(&self) -> Option<&str> {
        self.delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str())
    }

    /// Whether the broker delivered it before (to this or another consumer).
    pub fn redelivered(&self) -> bool {
        self.delivery.redelivered
    }

    /// The event metadata and attempt from our headers.
    pub fn event(&self) -> Result<(EventMeta, u32), MessageError> {
        read_event_properties(&self.delivery.properties)
    }

    pub(crate) fn properties(&self) -> &BasicProperties {
        &self.delivery.properties
    }

    fn header(&self, name: &str) -> Option<&AMQPValue> {
        self.delivery
            .properties
            .headers()
            .as_ref()?
            .inner()
            .get(name)
    }

    /// An integer header.
    pub fn header_i64(&self, name: &str) -> Option<i64> {
        match self.header(name)? {
            AMQPValue::LongLongInt(v) => Some(*v),
            AMQPValue::LongInt(v) => Some(i64::from(*v)),
            AMQPValue::LongUInt(v) => Some(i64::from(*v)),
            AMQPValue::Timestamp(v) => i64::try_from(*v).ok(),
            _ => None,
        }
    }

    /// A text header.
    pub fn header_str(&self, name: &str) -> Option<String> {
        match self.header(name)? {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
            _ => None,
        }
    }

    /// A boolean header (false when absent).
    pub fn header_bool(&self, name: &str) -> bool {
        matches!(self.header(name), Some(AMQPValue::Boolean(true)))
    }

    /// The attempt this delivery claims to be (1 when the header is missing or unreadable).
    pub fn attempt_hint(&self) -> u32 {
        self.header_i64(header::ATTEMPT)
            .and_then(|a| u32::try_from(a).ok())
            .filter(|a| *a >= 1)
            .unwrap_or(1)
    }

    /// The routing key it was first published with (kept in a header across delay hops).
    pub fn original_routing_key(&self) -> String {
        self.header_str(header::ROUTING_KEY)
            .unwrap_or_else(|| self.routing_key().to_owned())
    }

    /// Why the broker itself dead-lettered it most recently: the `reason` of the newest
    /// `x-death` entry (`x-first-death-reason` would name the first expiry in a delay level
    /// for a message that was retried before).
    pub fn broker_death_reason(&self) -> Option<String> {
        let AMQPValue::FieldArray(deaths) = self.header("x-death")? else {
            return self.header_str("x-first-death-reason");
        };
        let AMQPValue::FieldTable(newest) = deaths.as_slice().first()? else {
            return None;
        };
        match newest.inner().get("reason")? {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
            _ => None,
        }
    }

    /// All headers as JSON (for the dead-letter table), byte strings lossily as text.
    pub fn headers_json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        if let Some(table) = self.delivery.properties.headers() {
            for (k, v) in table.inner() {
                map.insert(k.as_str().to_owned(), value_json(v));
            }
        }
        serde_json::Value::Object(map)
    }

    /// Acknowledges this delivery alone.
    pub async fn ack(&self) -> lapin::Result<()> {
        self.delivery
            .ack(BasicAckOptions { multiple: false })
            .await
            .map(|_| ())
    }

    /// Hands it back to the queue for another delivery (counts toward `x-delivery-limit`).
    pub async fn requeue(&self) -> lapin::Result<()> {
        self.delivery
            .nack(BasicNackOptions {
                multiple: false,
                requeue: true,
            })
            .await
            .map(|_| ())
    }
}

fn value_json(v: &AMQPValue) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        AMQPValue::Boolean(b) => J::Bool(*b),
        AMQPValue::ShortShortInt(i) => J::from(*i),
        AMQPValue::ShortShortUInt(i) => J::from(*i),
        AMQPValue::ShortInt(i) => J::from(*i),
        AMQPValue::ShortUInt(i) => J::from(*i),
        AMQPValue::LongInt(i) => J::from(*i),
        AMQPValue::LongUInt(i) => J::from(*i),
        AMQPValue::LongLongInt(i) => J::from(*i),
        AMQPValue::Timestamp(t) => J::from(*t),
        AMQPValue::Float(f) => J::from(f64::from(*f)),
        AMQPValue::Double(f) => J::from(*f),
        AMQPValue::ShortString(s) => J::String(s.as_str().to_owned()),
        AMQPValue::LongString(s) => J::String(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::FieldArray(a) => J::Array(a.as_slice().iter().map(value_json).collect()),
        AMQPValue::FieldTable(t) => J::Object(
            t.inner()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), value_json(v)))
                .collect(),
        ),
        AMQPValue::ByteArray(b) => J::String(String::from_utf8_lossy(b.as_slice()).into_owned()),
        AMQPValue::DecimalValue(_) | AMQPValue::Void => J::Null,
    }
}

/// A consuming connection on one queue.
pub struct ConsumerLink {
    connection: Connection,
    channel: Channel,
    consumer: lapin::Consumer,
    tag: String,
}

impl ConsumerLink {
    /// Connects (named `<connection_name>-<role>`), declares the topology, sets a
    /// per-consumer prefetch and starts consuming `queue` with manual acks, all within the
    /// connect timeout.
    pub async fn open(
        settings: &AmqpSettings,
        role: &str,
        queue: &str,
        prefetch: u16,
    ) -> lapin::Result<Self> {
        tokio::time::timeout(
            settings.connect_timeout,
            Self::open_now(settings, role, queue, prefetch),
        )
        .await
        .unwrap_or_else(|_| {
            Err(
                lapin::ErrorKind::IOError(std::sync::Arc::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connecting, declaring and consuming took longer than the connect timeout",
                )))
                .into(),
            )
        })
    }

    async fn open_now(
        settings: &AmqpSettings,
        role: &str,
        queue: &str,
        prefetch: u16,
    ) -> lapin::Result<Self> {
        let props = ConnectionProperties::default()
            .with_connection_name(format!("{}-{role}", settings.connection_name).into());
        let connection = Connection::connect(&settings.url, props).await?;
        let setup = connection.create_channel().await?;
        declare_topology(
            &setup,
            &Topology::new(settings.prefix.clone(), settings.delivery_limit),
        )
        .await?;
        let _ = setup.close(200, "topology declared".into()).await;
        let channel = connection.create_channel().await?;
        // Per-consumer QoS (global QoS is a channel error on quorum queues).
        channel
            .basic_qos(prefetch.max(1), BasicQosOptions { global: false })
            .await?;
        let tag = format!("{}-{role}", settings.connection_name);
        let consumer = channel
            .basic_consume(
                queue.into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Self {
            connection,
            channel,
            consumer,
            tag,
        })
    }

    /// The next delivery; `None` when the consumer was cancelled, `Some(Err)` when the
    /// connection or channel failed (reconnect).
    pub async fn next(&mut self) -> Option<lapin::Result<Incoming>> {
        self.consumer
            .next()
            .await
            .map(|r| r.map(|delivery| Incoming { delivery }))
    }

    /// Whether the connection is still up.
    pub fn is_connected(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }

    /// Stops deliveries (in-flight ones can still be acked on this channel).
    pub async fn cancel(&self) {
        let _ = self
            .channel
            .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default())
            .await;
    }

    /// Closes the connection; unacked deliveries return to the queue.
    pub async fn close(self) {
        let _ = self.connection.close(200, "shutdown".into()).await;
    }
}
