//! The Stripe envelope parser never panics on arbitrary bytes, and what it accepts has the
//! fields it promises.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paysync_domain::stripe::parse_envelope;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = parse_envelope(data) {
        assert!(!envelope.id.is_empty() && envelope.id.len() <= 200);
        assert!(!envelope.event_type.is_empty());
    }
});
