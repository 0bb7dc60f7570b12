//! AMQP adapter tests against the real local RabbitMQ (3.10 on Debian), each under its own
//! prefix.
#![allow(clippy::unwrap_used, missing_docs)]

mod delay_levels;
mod tls_failover;
