//! Names and declaration of everything we create on the broker, under one prefix.
//!
//! Declaration is idempotent (same names, same arguments), so every process declares on each
//! (re)connect and a deleted queue comes back. Changing an argument of an existing queue is a
//! broker error (PRECONDITION_FAILED): that is a migration, not a restart.

use lapin::Channel;
use lapin::ExchangeKind;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};

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

    /// Topic exchange the receiver publishes to; routing key `<provider>.<event type>`.
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// Durable quorum queue the workers consume; bound to every event.
    pub fn work_queue(&self) -> String {
        format!("{}.work", self.prefix)
    }

    /// Every queue we declare (for teardown in tests and for operators' listings).
    pub fn queues(&self) -> Vec<String> {
        vec![self.work_queue()]
    }

    /// Every exchange we declare.
    pub fn exchanges(&self) -> Vec<String> {
        vec![self.events_exchange()]
    }

    fn quorum_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from("quorum")),
        );
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(self.delivery_limit)),
        );
        args
    }
}

/// Declares the exchange, the work queue and its binding. Safe to call from every process on
/// every connect.
pub async fn declare_topology(channel: &Channel, topology: &Topology) -> lapin::Result<()> {
    let durable_exchange = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            topology.events_exchange().into(),
            ExchangeKind::Topic,
            durable_exchange,
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            topology.work_queue().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            topology.quorum_args(),
        )
        .await?;
    channel
        .queue_bind(
            topology.work_queue().into(),
            topology.events_exchange().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}
