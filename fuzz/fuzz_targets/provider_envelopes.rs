//! The Square, Authorize.Net and PayPal envelope parsers never panic on arbitrary bytes, and
//! what they accept has the fields they promise.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paysync_domain::Provider;
use paysync_domain::message::parse_envelope;

fuzz_target!(|data: &[u8]| {
    for provider in [Provider::Square, Provider::AuthorizeNet, Provider::Paypal] {
        if let Ok(envelope) = parse_envelope(provider, data) {
            assert!(!envelope.id.is_empty() && envelope.id.len() <= 200);
            assert!(!envelope.event_type.is_empty());
            assert!(envelope.livemode.is_none());
        }
    }
});
