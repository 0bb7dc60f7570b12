//! The Stripe-Signature header parser and verifier never panic, whatever the header, body,
//! clock and secrets; a header built by `sign_header` always verifies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paysync_domain::stripe::signature;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    let (header, body) = data.split_at(split);
    let header = String::from_utf8_lossy(header);
    let _ = signature::parse_header(&header);
    let now = i64::from(body.first().copied().unwrap_or(0)) * 1_000_000;
    let _ = signature::verify(&["whsec_fuzz", "whsec_other"], &header, body, now, 300);
    let signed = signature::sign_header("whsec_fuzz", now, body);
    assert!(signature::verify(&["whsec_fuzz"], &signed, body, now, 300).is_ok());
});
