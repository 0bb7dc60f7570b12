//! The only crate that speaks AMQP: topology, the confirmed publisher and the mapping between
//! our message contract ([`paysync_domain::message`]) and AMQP properties and headers.
//!
//! Rule of thumb: no other crate imports `lapin`; they see [`Publisher`], [`Topology`] and
//! plain errors.

mod config;
mod headers;
mod publisher;
mod topology;

pub use config::AmqpSettings;
pub use headers::{event_properties, read_event_properties};
pub use publisher::{PublishError, Publisher};
pub use topology::{Topology, declare_topology};

/// Re-exported for tests and the CLI, which need a raw channel now and then.
pub use lapin;
