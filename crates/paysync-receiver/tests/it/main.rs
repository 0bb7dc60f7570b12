//! Receiver tests against the real local RabbitMQ, each under its own prefix.
#![allow(clippy::unwrap_used, missing_docs)]

mod broker_outage;
mod helpers;
mod hostile;
mod providers;
mod webhooks;
