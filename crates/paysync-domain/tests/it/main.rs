//! Integration tests of the pure domain against the shared fixtures and signature vectors.
#![allow(clippy::unwrap_used, missing_docs)]

mod account_view;
mod hmac_vectors;
mod paypal_vectors;
mod stripe_vectors;
