//! Stripe webhooks as a test needs them: a signature header for a body, and a body signed and
//! run through the real verifier, for code that starts after the receiver (publisher, worker).
//!
//! Rule of thumb: never construct a verified webhook by hand; sign it and verify it, so the
//! tests go through the same check production does.

use paysync_domain::stripe::StripeVerifier;
use paysync_domain::stripe::signature::sign_header;
use paysync_domain::{Mode, VerifiedWebhook};

use crate::now_secs;

/// The secret [`verified_event`] signs with.
const SECRET: &str = "whsec_testkit";

/// A `Stripe-Signature` header for `body`, signed with `secret` now.
pub fn signature_now(secret: &str, body: &[u8]) -> String {
    sign_header(secret, now_secs(), body)
}

/// `body` signed the Stripe way and verified by the real test-mode verifier, received now.
///
/// # Panics
/// When `body` is not a test-mode Stripe event the verifier accepts (a broken test input).
pub fn verified_event(body: Vec<u8>) -> VerifiedWebhook {
    let verifier = StripeVerifier::new(vec![SECRET.into()], Mode::Test, 300);
    let header = signature_now(SECRET, &body);
    let now = now_secs();
    verifier
        .verify(Some(&header), body.into(), now, now * 1000)
        .unwrap_or_else(|e| panic!("a test event the verifier refuses: {e}"))
}
