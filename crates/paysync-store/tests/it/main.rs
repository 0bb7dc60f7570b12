//! Store tests against the real local PostgreSQL, each in its own schema.
#![allow(clippy::unwrap_used, missing_docs)]

mod event_log;
mod kpis;
mod migrations;
mod outbox_order;
mod tls;
