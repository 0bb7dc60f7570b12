//! PayPal webhooks: the offline signature check.

pub mod signature;
