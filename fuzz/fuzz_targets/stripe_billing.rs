//! The Stripe event parser behind the billing handlers never panics: any JSON, under any
//! handled event type, is either a set of changes or a typed error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paysync_domain::billing::{HANDLED_TYPES, changes};

fuzz_target!(|data: &[u8]| {
    let Some((first, rest)) = data.split_first() else {
        return;
    };
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(rest) else {
        return;
    };
    let event_type = HANDLED_TYPES[usize::from(*first) % HANDLED_TYPES.len()];
    if let Ok(c) = changes(event_type, &value) {
        for snap in &c.snaps {
            assert!(!snap.id.is_empty());
        }
    }
});
