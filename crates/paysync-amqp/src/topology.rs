//! Names and declaration of everything we create on the broker, under one prefix.
//!
//! - `<p>.work` (quorum): the workers' queue. paysync publishes events straight into it
//!   through the default exchange (routing key = the queue's name), the cheapest route for the
//!   broker. `x-delivery-limit` is a backstop against poison loops; beyond it the broker
//!   dead-letters to `<p>.dead`.
//! - `<p>.events` (topic, routing key `<provider>.<type>`), bound to the work queue with `#`:
//!   the entry of receivers of earlier releases (so a rolling upgrade loses nothing) and of
//!   other producers; paysync's own publishers no longer use it.
//! - `<p>.delay.<L>` for L = 0..14 (exchange + quorum queue with TTL 2^L s): binary delay
//!   levels (the NServiceBus/Kombu design, no plugin). A retry's delay in whole seconds is
//!   written in binary into its routing key, most significant bit first, then `work`: each
//!   level either holds the message for 2^L s (bit 1) or passes it straight down (bit 0);
//!   level 0 hands it to `<p>.delay.deliver`, which routes it back to the work queue. Every
//!   queue of a level has one TTL, so there is no head-of-line blocking, and each message
//!   waits exactly its own jittered delay (1 s granularity). 15 levels reach 32767 s ≈ 9.1 h.
//! - `<p>.dead` (topic exchange + quorum queue): dead letters, drained into PostgreSQL by the
//!   worker's ingester.
//!
//! Declaration is idempotent, so every process declares on each (re)connect. Changing an
//! argument of an existing queue is a broker error (PRECONDITION_FAILED): that needs a
//! migration note, not a restart.

use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

/// Number of binary delay levels.
pub const DELAY_LEVELS: u32 = 15;

/// Longest delay the levels can express, in seconds (2^15 - 1).
pub const MAX_DELAY_SECS: u32 = (1 << DELAY_LEVELS) - 1;

/// `x-delivery-limit` of the dead-letter queue: effectively unlimited.
const DEAD_LETTER_DELIVERY_LIMIT: i64 = 1_000_000_000;

/// The last word of every delay routing key: where the delayed message goes back to.
const DELAY_DESTINATION: &str = "work";

/// Our broker objects for one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
    delivery_limit: u32,
}

impl Topology {
    /// The topology under `prefix`, with `delivery_limit` as the quorum queues'
    /// `x-delivery-limit`.
    pub fn new(prefix: impl Into<String>, delivery_limit: u32) -> Self {
        Self {
            prefix: prefix.into(),
            delivery_limit,
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Topic exchange bound to the work queue (`#`), routing key `<provider>.<event type>`:
    /// for earlier releases and other producers; paysync publishes to the queue directly.
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// Durable quorum queue the workers consume; bound to every event.
    pub fn work_queue(&self) -> String {
        format!("{}.work", self.prefix)
    }

    /// Exchange and queue of delay level `level` (they share the name).
    pub fn delay_level(&self, level: u32) -> String {
        format!("{}.delay.{level}", self.prefix)
    }

    /// Where level 0 hands expired messages back to the work queue.
    pub fn delay_deliver_exchange(&self) -> String {
        format!("{}.delay.deliver", self.prefix)
    }

    /// Exchange retries are published to (the highest level).
    pub fn delay_entry_exchange(&self) -> String {
        self.delay_level(DELAY_LEVELS - 1)
    }

    /// Exchange and queue of dead letters (they share the name).
    pub fn dead_letters(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// Every queue we declare (for teardown in tests and for depth metrics).
    pub fn queues(&self) -> Vec<String> {
        let mut q = vec![self.work_queue(), self.dead_letters()];
        q.extend((0..DELAY_LEVELS).map(|l| self.delay_level(l)));
        q
    }

    /// Every exchange we declare.
    pub fn exchanges(&self) -> Vec<String> {
        let mut e = vec![
            self.events_exchange(),
            self.dead_letters(),
            self.delay_deliver_exchange(),
        ];
        e.extend((0..DELAY_LEVELS).map(|l| self.delay_level(l)));
        e
    }

    fn quorum_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), long_string("quorum"));
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(self.delivery_limit)),
        );
        args
    }

    /// Quorum queue arguments with at-least-once dead-lettering to `exchange` (which needs
    /// `reject-publish` overflow; with the default `drop-head` RabbitMQ silently falls back to
    /// at-most-once).
    fn dead_lettering_args(&self, exchange: String) -> FieldTable {
        let mut args = self.quorum_args();
        args.insert("x-dead-letter-exchange".into(), long_string(&exchange));
        args.insert(
            "x-dead-letter-strategy".into(),
            long_string("at-least-once"),
        );
        args.insert("x-overflow".into(), long_string("reject-publish"));
        args
    }
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// The routing key that makes a message wait `delay_secs` seconds (clamped to
/// `1..=MAX_DELAY_SECS`) in the delay levels and then return to the work queue.
pub fn delay_routing_key(delay_secs: u32) -> String {
    let delay = delay_secs.clamp(1, MAX_DELAY_SECS);
    let mut key = String::with_capacity(2 * DELAY_LEVELS as usize + DELAY_DESTINATION.len());
    for level in (0..DELAY_LEVELS).rev() {
        key.push(if delay & (1 << level) != 0 { '1' } else { '0' });
        key.push('.');
    }
    key.push_str(DELAY_DESTINATION);
    key
}

/// The binding pattern selecting bit `level` = `bit` (words are MSB first).
fn level_pattern(level: u32, bit: char) -> String {
    let skip = (DELAY_LEVELS - 1 - level) as usize;
    format!("{}{bit}.#", "*.".repeat(skip))
}

/// Declares every exchange, queue and binding. Safe to call from every process on every
/// connect.
pub async fn declare_topology(channel: &Channel, topology: &Topology) -> lapin::Result<()> {
    let t = topology;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    for exchange in t.exchanges() {
        channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
    }
    let bind = |queue: String, exchange: String, key: String| {
        channel.queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
    };

    // Dead letters first: the work queue dead-letters into them. The queue has no
    // dead-letter exchange of its own, so its delivery limit is set out of reach (RabbitMQ 4
    // would default it to 20 and then drop): a dead letter is never dropped, however often
    // its ingestion is retried.
    let mut dead_args = FieldTable::default();
    dead_args.insert("x-queue-type".into(), long_string("quorum"));
    dead_args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(DEAD_LETTER_DELIVERY_LIMIT),
    );
    channel
        .queue_declare(t.dead_letters().into(), durable, dead_args)
        .await?;
    bind(t.dead_letters(), t.dead_letters(), "#".into()).await?;

    channel
        .queue_declare(
            t.work_queue().into(),
            durable,
            t.dead_lettering_args(t.dead_letters()),
        )
        .await?;
    bind(t.work_queue(), t.events_exchange(), "#".into()).await?;
    bind(
        t.work_queue(),
        t.delay_deliver_exchange(),
        format!("#.{DELAY_DESTINATION}"),
    )
    .await?;

    for level in 0..DELAY_LEVELS {
        let next = if level == 0 {
            t.delay_deliver_exchange()
        } else {
            t.delay_level(level - 1)
        };
        let mut args = t.dead_lettering_args(next.clone());
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(1000 * (1i64 << level)),
        );
        channel
            .queue_declare(t.delay_level(level).into(), durable, args)
            .await?;
        bind(
            t.delay_level(level),
            t.delay_level(level),
            level_pattern(level, '1'),
        )
        .await?;
        channel
            .exchange_bind(
                next.into(),
                t.delay_level(level).into(),
                level_pattern(level, '0').into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Connects once, declares the whole topology for `settings` and disconnects (for start-up
/// checks: a wrong URL or an incompatible existing queue fails here, loudly).
pub async fn declare(settings: &crate::AmqpSettings) -> lapin::Result<()> {
    let name = format!("{}-setup", settings.connection_name);
    let connection = crate::connect::connect(settings, &name).await?.connection;
    let channel = connection.create_channel().await?;
    declare_topology(
        &channel,
        &Topology::new(settings.prefix.clone(), settings.delivery_limit),
    )
    .await?;
    let _ = connection.close(200, "topology declared".into()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_routing_key_is_the_delay_in_binary_msb_first() {
        assert_eq!(delay_routing_key(1), "0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.work");
        assert_eq!(delay_routing_key(5), "0.0.0.0.0.0.0.0.0.0.0.0.1.0.1.work");
        assert_eq!(
            delay_routing_key(MAX_DELAY_SECS),
            "1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.work"
        );
        assert_eq!(
            delay_routing_key(0),
            delay_routing_key(1),
            "clamped up to 1 s"
        );
        assert_eq!(
            delay_routing_key(u32::MAX),
            delay_routing_key(MAX_DELAY_SECS)
        );
    }

    /// Walks a key through the levels as the broker would and sums the TTLs it waits.
    fn simulated_wait(key: &str) -> u32 {
        let words: Vec<&str> = key.split('.').collect();
        (0..DELAY_LEVELS)
            .rev()
            .filter(|&level| {
                let held = matches(&level_pattern(level, '1'), &words);
                let passed = matches(&level_pattern(level, '0'), &words);
                assert!(
                    held ^ passed,
                    "exactly one route at level {level} for {key}"
                );
                held
            })
            .map(|level| 1 << level)
            .sum()
    }

    fn matches(pattern: &str, words: &[&str]) -> bool {
        let p: Vec<&str> = pattern.split('.').collect();
        // Patterns are `*.`^n then a literal then `#`.
        let n = p.len() - 2;
        words.len() > n && words[n] == p[n]
    }

    #[test]
    fn every_delay_waits_exactly_its_seconds_through_the_levels() {
        for delay in (1..=MAX_DELAY_SECS)
            .step_by(7)
            .chain([1, 2, 3, 1024, MAX_DELAY_SECS])
        {
            assert_eq!(
                simulated_wait(&delay_routing_key(delay)),
                delay,
                "delay {delay}"
            );
        }
    }
}
