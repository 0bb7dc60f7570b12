//! The destinations, one module each behind [`crate::Sender`].

pub mod chat;
mod http;
pub mod hubspot;
