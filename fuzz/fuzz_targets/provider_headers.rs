//! The Square, Authorize.Net and PayPal signature headers never panic a check, and a random
//! header never verifies; the PayPal certificate URL policy never panics and accepts only the
//! listed host.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paysync_domain::{authorizenet, paypal, square};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (header, body) = text.split_at(text.len() / 2);
    assert!(square::verify_signature(&["key"], "https://h.test/w", header, body.as_bytes()).is_err());
    assert!(authorizenet::verify_signature(&["key"], header, body.as_bytes()).is_err());
    let hosts = vec!["api.paypal.com".to_owned()];
    if let Ok(url) = paypal::signature::check_cert_url(text, &hosts) {
        assert_eq!(url.host(), "api.paypal.com");
    }
});
