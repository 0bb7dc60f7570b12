//! The destinations, one module each behind [`crate::Sender`].
