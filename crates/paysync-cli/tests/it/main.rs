//! The `paysync` binary as an operator runs it, against the real local services (its own
//! AMQP prefix and PostgreSQL schema per test).
#![allow(clippy::unwrap_used, missing_docs)]

mod cluster;
mod crash;
mod dispatcher_kill;
mod dlq;
mod outbox;
mod reconcile;
mod send;
mod services;
mod support;
mod tls;
mod up;
