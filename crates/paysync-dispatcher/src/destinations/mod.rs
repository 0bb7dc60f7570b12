//! The destinations, one module each behind [`crate::Sender`].

pub mod app;
pub mod chat;
pub mod email;
mod http;
pub mod hubspot;
