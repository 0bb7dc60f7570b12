//! The outbox dispatcher: delivers the intents the worker recorded (emails, team chat
//! messages, CRM upserts) to their destinations, each destination through one lane with a
//! lease per delivery, a circuit breaker, a rate limit and a retry schedule.
//!
//! Rule of thumb: never hold a database transaction across a network call. Claim (one short
//! statement), send, complete (one fenced statement).

pub mod destinations;
pub mod job;

pub use job::{FailureKind, Job, SendError, Sender, Throttle, Verdict};
