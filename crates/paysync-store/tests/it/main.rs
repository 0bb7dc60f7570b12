//! Store tests against the real local PostgreSQL, each in its own schema.
#![allow(clippy::unwrap_used, missing_docs)]

mod event_log;
mod migrations;
mod tls;
