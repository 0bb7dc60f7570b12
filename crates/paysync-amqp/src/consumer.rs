//! Consuming: a connection with one or more channels ("lanes"), each with its own consumer,
//! a bounded prefetch and manual acks; deliveries wrapped so nobody outside this crate handles
//! lapin types.
//!
//! Rule of thumb: a lane processes its deliveries one batch at a time, so when a batch is
//! finished every delivery the lane has handed out is settled, and one `multiple` ack covers
//! them all ([`Lane::flush`]); acking each message on its own costs the broker far more (see
//! docs/decisions.md). Concurrency comes from several lanes, never from two batches of one
//! lane, so a `multiple` ack never covers work in progress. The loop that drives the lanes is
//! in `runtime.rs`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use futures::{FutureExt as _, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use paysync_domain::message::{ReadError, ReadMessage, header};

use crate::AmqpSettings;
use crate::connect::connect;
use crate::headers::read_event;
use crate::runtime::ConsumerConfig;
use crate::topology::{Topology, declare_topology};

/// The broker connection or channel of a consumer failed (or opening it took too long); the
/// source chain is the client's.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ConsumeError(#[from] lapin::Error);

/// What a lane has next.
#[derive(Debug)]
pub enum Next<D = Incoming> {
    /// A delivery, handed out to be settled.
    Delivery(D),
    /// Nothing has arrived yet ([`Lane::next_ready`] only; [`Lane::next`] waits instead).
    Idle,
    /// The broker cancelled the consumer (e.g. its queue was deleted): reopen the link.
    Cancelled,
    /// The connection or the channel failed: reopen the link.
    Failed(ConsumeError),
}

/// Where a delivery handed out by a lane stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Handed out, not settled yet.
    Waiting,
    /// Done: to be acknowledged by the lane's next `multiple` ack.
    Done,
    /// Already settled on its own (handed back with a nack).
    Settled,
}

/// The deliveries a lane has handed out and not yet acknowledged, in delivery-tag order.
#[derive(Debug, Default)]
struct Ledger {
    slots: Mutex<VecDeque<(u64, Slot)>>,
}

impl Ledger {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, Slot)>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn handed_out(&self, tag: u64) {
        self.lock().push_back((tag, Slot::Waiting));
    }

    /// Moves `tag` from waiting to `to`; a delivery is settled once.
    fn settle(&self, tag: u64, to: Slot) {
        let mut slots = self.lock();
        if let Ok(i) = slots.binary_search_by_key(&tag, |(t, _)| *t)
            && slots[i].1 == Slot::Waiting
        {
            slots[i].1 = to;
        }
    }

    /// Removes the settled prefix; returns the highest done tag in it (the target of one
    /// `multiple` ack: every tag up to it is done or already settled on its own) and how many
    /// done deliveries that ack covers.
    fn take_settled_prefix(&self) -> (Option<u64>, usize) {
        let mut slots = self.lock();
        let (mut target, mut covered) = (None, 0);
        while let Some(&(tag, slot)) = slots.front() {
            match slot {
                Slot::Waiting => break,
                Slot::Done => {
                    target = Some(tag);
                    covered += 1;
                }
                Slot::Settled => {}
            }
            slots.pop_front();
        }
        (target, covered)
    }

    /// Tags handed out and still waiting.
    fn waiting(&self) -> Vec<u64> {
        self.lock()
            .iter()
            .filter(|(_, slot)| *slot == Slot::Waiting)
            .map(|(tag, _)| *tag)
            .collect()
    }
}

/// One delivery from a queue.
pub struct Incoming {
    delivery: Delivery,
    ledger: Arc<Ledger>,
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

    /// The event: metadata and attempt from the properties, headers and body (either format).
    pub fn event(&self) -> Result<ReadMessage<'_>, ReadError> {
        read_event(&self.delivery.properties, &self.delivery.data)
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

    /// The event's routing key, `<provider>.<type>`, whichever way it reached the queue: the
    /// header a retry or redrive carries, else the `type` property (format 2), else the
    /// provider and type headers (format 1; events are published straight to the work queue,
    /// so the delivery's own key is the queue's name), else the key it arrived with (a message
    /// without our properties).
    pub fn original_routing_key(&self) -> String {
        match self.event_key() {
            Some(key) => key,
            None => self.routing_key().to_owned(),
        }
    }

    /// The provider and event type the message names (without parsing the body), for dead
    /// letters and metrics of messages that could not be read.
    pub fn provider_and_type(&self) -> Option<(String, String)> {
        let key = self.event_key()?;
        let (provider, event_type) = key.split_once('.')?;
        Some((provider.to_owned(), event_type.to_owned()))
    }

    fn event_key(&self) -> Option<String> {
        if let Some(key) = self.header_str(header::ROUTING_KEY) {
            return Some(key);
        }
        if let Some(kind) = self.delivery.properties.kind() {
            return Some(kind.as_str().to_owned());
        }
        match (
            self.header_str(header::PROVIDER),
            self.header_str(header::EVENT_TYPE),
        ) {
            (Some(provider), Some(event_type)) => Some(format!("{provider}.{event_type}")),
            _ => None,
        }
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

    /// Marks this delivery done: its lane acknowledges it with the next [`Lane::flush`], in one
    /// `multiple` ack with the rest of its batch. Call it only once the work is durable.
    pub fn ack(&self) {
        self.ledger.settle(self.delivery.delivery_tag, Slot::Done);
    }

    /// Hands it back to the queue for another delivery (counts toward `x-delivery-limit`),
    /// right away and on its own.
    pub async fn requeue(&self) -> Result<(), ConsumeError> {
        let sent = self
            .delivery
            .nack(BasicNackOptions {
                multiple: false,
                requeue: true,
            })
            .await
            .map(|_| ());
        if sent.is_ok() {
            self.ledger
                .settle(self.delivery.delivery_tag, Slot::Settled);
        }
        Ok(sent?)
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

/// A consuming connection on one queue, with its lanes.
pub struct ConsumerLink {
    connection: Connection,
    lanes: Vec<Lane>,
}

/// One channel of a [`ConsumerLink`] with its own consumer and prefetch. Its deliveries are
/// processed one batch at a time and acknowledged together ([`Lane::flush`]).
pub struct Lane {
    channel: Channel,
    consumer: lapin::Consumer,
    tag: String,
    ledger: Arc<Ledger>,
}

impl ConsumerLink {
    /// Connects (named `<connection_name>-<role>`), declares the topology and opens
    /// `config.lanes` channels (at least one), each consuming `queue` with manual acks and its
    /// share of `config.prefetch` ([`ConsumerConfig::lane_prefetch`]), all within the connect
    /// timeout.
    pub async fn open(
        settings: &AmqpSettings,
        role: &str,
        queue: &str,
        config: &ConsumerConfig,
    ) -> Result<Self, ConsumeError> {
        let opened = tokio::time::timeout(
            settings.attempt_timeout(),
            Self::open_now(
                settings,
                role,
                queue,
                config.lane_count(),
                config.lane_prefetch(),
            ),
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
        });
        Ok(opened?)
    }

    async fn open_now(
        settings: &AmqpSettings,
        role: &str,
        queue: &str,
        lanes: usize,
        prefetch: u16,
    ) -> lapin::Result<Self> {
        let name = format!("{}-{role}", settings.connection_name);
        let connection = connect(settings, &name).await?.connection;
        let setup = connection.create_channel().await?;
        declare_topology(
            &setup,
            &Topology::new(settings.prefix.clone(), settings.delivery_limit),
        )
        .await?;
        let _ = setup.close(200, "topology declared".into()).await;
        let mut opened = Vec::with_capacity(lanes);
        for lane in 0..lanes {
            let channel = connection.create_channel().await?;
            // Per-consumer QoS (global QoS is a channel error on quorum queues).
            channel
                .basic_qos(prefetch.max(1), BasicQosOptions { global: false })
                .await?;
            let tag = format!("{}-{role}-{lane}", settings.connection_name);
            let consumer = channel
                .basic_consume(
                    queue.into(),
                    tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            opened.push(Lane {
                channel,
                consumer,
                tag,
                ledger: Arc::default(),
            });
        }
        Ok(Self {
            connection,
            lanes: opened,
        })
    }

    /// Takes the lanes out (each goes to its own task); the link keeps the connection.
    pub fn take_lanes(&mut self) -> Vec<Lane> {
        std::mem::take(&mut self.lanes)
    }

    /// Whether the connection is still up.
    pub fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }

    /// Closes the connection; unacked deliveries return to the queue.
    pub async fn close(self) {
        let _ = self.connection.close(200, "shutdown".into()).await;
    }
}

impl Lane {
    /// Waits for the next delivery (never [`Next::Idle`]).
    pub async fn next(&mut self) -> Next {
        let next = self.consumer.next().await;
        self.wrap(next)
    }

    /// The next delivery if one has already arrived, else [`Next::Idle`] at once.
    pub fn next_ready(&mut self) -> Next {
        match self.consumer.next().now_or_never() {
            Some(next) => self.wrap(next),
            None => Next::Idle,
        }
    }

    fn wrap(&self, next: Option<lapin::Result<Delivery>>) -> Next {
        match next {
            Some(Ok(delivery)) => {
                self.ledger.handed_out(delivery.delivery_tag);
                Next::Delivery(Incoming {
                    delivery,
                    ledger: self.ledger.clone(),
                })
            }
            Some(Err(err)) => Next::Failed(err.into()),
            None => Next::Cancelled,
        }
    }

    /// Settles the lane's batch with the broker: one `multiple` ack for every delivery marked
    /// done (up to the first one still waiting). Called after a batch, when every delivery
    /// the lane handed out should be settled; one that is not (a bug) is handed back to the
    /// queue rather than left unacked or acked unseen. Returns how many were acked.
    pub async fn flush(&self) -> Result<usize, ConsumeError> {
        for tag in self.ledger.waiting() {
            tracing::warn!(
                delivery_tag = tag,
                "a delivery was neither acked nor handed back by its handler; handing it back"
            );
            self.channel
                .basic_nack(
                    tag,
                    BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    },
                )
                .await?;
            self.ledger.settle(tag, Slot::Settled);
        }
        let (target, covered) = self.ledger.take_settled_prefix();
        if let Some(tag) = target {
            self.channel
                .basic_ack(tag, BasicAckOptions { multiple: true })
                .await?;
        }
        Ok(covered)
    }

    /// Stops deliveries (in-flight ones can still be acked on this channel).
    pub async fn cancel(&self) {
        let _ = self
            .channel
            .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default())
            .await;
    }

    /// Whether the channel is still up.
    pub fn is_connected(&self) -> bool {
        self.channel.status().connected()
    }

    /// Closes the channel and waits for the broker's answer. A channel only dropped is closed
    /// by lapin in the background, and when the connection is closing by then, lapin logs the
    /// refused close as an ERROR; closing first keeps a clean stop quiet. A lane already lost
    /// has nothing to close: the error is ignored.
    pub async fn close(self) {
        if self.channel.status().connected() {
            let _ = self.channel.close(200, "shutdown".into()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ack_target_is_the_highest_done_tag_before_the_first_waiting_one() {
        let ledger = Ledger::default();
        for tag in 1..=6 {
            ledger.handed_out(tag);
        }
        ledger.settle(1, Slot::Done);
        ledger.settle(2, Slot::Settled);
        ledger.settle(3, Slot::Done);
        ledger.settle(5, Slot::Done);
        // 4 is still waiting: only 1..=3 may be acknowledged, and 2 was settled on its own.
        assert_eq!(ledger.take_settled_prefix(), (Some(3), 2));
        assert_eq!(ledger.waiting(), vec![4, 6]);
        ledger.settle(4, Slot::Settled);
        ledger.settle(6, Slot::Settled);
        // 5 is the only done one left; 6 after it was handed back on its own.
        assert_eq!(ledger.take_settled_prefix(), (Some(5), 1));
        assert_eq!(ledger.take_settled_prefix(), (None, 0));
    }

    #[test]
    fn a_delivery_is_settled_once() {
        let ledger = Ledger::default();
        ledger.handed_out(7);
        ledger.settle(7, Slot::Settled);
        ledger.settle(7, Slot::Done);
        assert_eq!(
            ledger.take_settled_prefix(),
            (None, 0),
            "the requeue stands"
        );
        ledger.handed_out(8);
        ledger.settle(9, Slot::Done);
        assert_eq!(ledger.waiting(), vec![8], "an unknown tag changes nothing");
    }
}
