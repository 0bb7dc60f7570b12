//! The pure domain of paysync: provider signature checks and event envelopes, the message
//! contract between receiver and worker, the retry schedule, billing changes and their folded
//! writes, intents and their outbound routes, a destination's circuit breaker, and money
//! formatted for people.
//!
//! Rule of thumb: no IO, no clock, no randomness of its own. Time and random numbers are
//! arguments, so every function here is deterministic and tested exhaustively.

pub mod app;
pub mod authorizenet;
pub mod billing;
pub mod breaker;
pub mod intent;
mod json;
pub mod message;
pub mod money;
pub mod outbound;
pub mod paypal;
pub mod retry;
pub mod square;
pub mod standard_webhooks;
pub mod stripe;
pub mod timestamp;
pub mod verify;
pub mod webhook;
pub mod writes;

pub use webhook::{Envelope, EventMeta, Mode, Provider, VerifiedWebhook};
