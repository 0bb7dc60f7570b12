//! Receiver tests against the real local RabbitMQ, each under its own prefix.

mod helpers;
mod webhooks;
mod broker_outage;
