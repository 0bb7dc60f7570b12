//! The only crate that speaks AMQP: topology, the confirmed publisher, the consumer runtime
//! ([`ConsumeLoop`]) and the mapping between our message contract
//! ([`paysync_domain::message`]) and AMQP properties and headers.
//!
//! Rule of thumb: no other crate imports `lapin`; they see [`Publisher`], [`ConsumeLoop`],
//! [`Incoming`], [`Topology`] and plain errors.

mod config;
mod connect;
mod consumer;
mod headers;
mod monitor;
mod publisher;
mod runtime;
mod topology;

pub use config::{
    AmqpSettings, AmqpSettingsError, AmqpTls, ClientIdentity, MAX_PREFIX_LEN, redact_url,
};
pub use connect::NodeCursor;
pub use consumer::{ConsumeError, ConsumerLink, Incoming, Lane, Next};
pub use headers::{event_properties, read_event};
pub use monitor::BrokerMonitor;
pub use publisher::{ConnectHook, DeadLetter, PublishError, Publisher};
pub use runtime::{ConsumeLoop, ConsumerConfig};
pub use topology::{
    DELAY_LEVELS, MAX_DELAY_SECS, Topology, declare, declare_topology, delay_routing_key,
};

/// Re-exported for tests and the CLI, which need a raw channel now and then.
pub use lapin;
