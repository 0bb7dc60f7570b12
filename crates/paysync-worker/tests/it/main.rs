//! Worker tests against the real local RabbitMQ and PostgreSQL, each test with its own AMQP
//! prefix and PostgreSQL schema.
#![allow(clippy::unwrap_used, missing_docs)]

mod anet_enrich;
mod app_events;
mod batches;
mod billing;
mod billing_order;
mod billing_workers;
mod console;
mod dead_letters;
mod exactly_once;
mod faults;
mod helpers;
mod kpis;
mod observability;
mod operators;
mod outages;
mod outbox_ops;
mod pipeline;
mod poison;
mod providers;
mod reconcile;
mod retries;
mod shutdown;
mod stack;
mod views;
