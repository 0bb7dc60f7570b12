//! The Stripe event parser behind the billing handlers never panics: any bytes, under any
//! handled event type, are either a set of changes or a typed error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paysync_domain::billing::stripe::{HANDLED_TYPES, changes_of_body};

fuzz_target!(|data: &[u8]| {
    let Some((first, rest)) = data.split_first() else {
        return;
    };
    let Ok(body) = std::str::from_utf8(rest) else {
        return;
    };
    let event_type = HANDLED_TYPES[usize::from(*first) % HANDLED_TYPES.len()];
    if let Ok(c) = changes_of_body(event_type, body) {
        for snap in &c.snaps {
            assert!(!snap.id.is_empty());
        }
    }
});
