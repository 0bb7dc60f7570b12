//! Stripe's webhook signature scheme, exactly as stripe-python and stripe-node implement it.
//!
//! Header `Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>…][,v0=<hex>]`. The signed
//! payload is the ASCII timestamp, a `.`, then the raw body bytes; `v1` is the lowercase hex
//! HMAC-SHA256 of it keyed with the whole secret string (`whsec_` prefix included). Every `v1`
//! is tried against every configured secret (rotation); other schemes are ignored (downgrade
//! protection). The timestamp check is one-sided like Stripe's: only `t < now - tolerance`
//! is rejected.
//!
//! Rule of thumb: nothing here allocates per candidate or compares in variable time.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Length of a `v1` signature in lowercase hex.
const V1_HEX_LEN: usize = 64;

/// Most `v1` entries we look at in one header. Stripe sends one per active secret (two during
/// a rotation); a cap keeps a hostile header from making us compute thousands of comparisons.
pub const MAX_V1_SIGNATURES: usize = 8;

/// Why a `Stripe-Signature` header was refused. The messages are safe to show to the caller:
/// they never contain the secret, the expected signature or the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The header has no `t=` with a decimal timestamp (stripe-python: "Unable to extract
    /// timestamp and signatures from header").
    #[error("unable to extract timestamp and signatures from the Stripe-Signature header")]
    MalformedHeader,
    /// The header has no `v1` entry (only `v0` or unknown schemes).
    #[error("no signature with the expected scheme v1")]
    NoV1Signature,
    /// No `v1` matches any configured secret.
    #[error("no signature matches the expected signature for the payload")]
    Mismatch,
    /// `t` is older than the tolerance allows.
    #[error(
        "timestamp outside the tolerance zone ({age_secs} s old, tolerance {tolerance_secs} s)"
    )]
    TimestampTooOld {
        /// How many seconds before `now` the header was signed.
        age_secs: i64,
        /// The configured tolerance.
        tolerance_secs: i64,
    },
}

/// A parsed `Stripe-Signature` header: the timestamp and every `v1` candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeader<'a> {
    /// The `t=` value, unix seconds.
    pub timestamp: i64,
    /// The `v1=` values as sent (not validated as hex; a malformed one simply never matches).
    pub v1: Vec<&'a str>,
}

/// Parses a `Stripe-Signature` header. Items are split on `,` and each on its first `=`;
/// items without `=` and unknown schemes are skipped, as Stripe's libraries do. The last `t`
/// wins if several are present (stripe-python builds a dict).
pub fn parse_header(header: &str) -> Result<SignatureHeader<'_>, SignatureError> {
    let mut timestamp = None;
    let mut v1 = Vec::new();
    for item in header.split(',') {
        let Some((key, value)) = item.split_once('=') else {
            continue;
        };
        match key.trim() {
            "t" => timestamp = Some(parse_timestamp(value.trim())?),
            "v1" if v1.len() < MAX_V1_SIGNATURES => v1.push(value.trim()),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::MalformedHeader)?;
    if v1.is_empty() {
        return Err(SignatureError::NoV1Signature);
    }
    Ok(SignatureHeader { timestamp, v1 })
}

fn parse_timestamp(value: &str) -> Result<i64, SignatureError> {
    // Digits only: `+5` or ` 5` would parse in some languages; Stripe always sends digits.
    if value.is_empty() || value.len() > 18 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SignatureError::MalformedHeader);
    }
    value.parse().map_err(|_| SignatureError::MalformedHeader)
}

/// Lowercase hex HMAC-SHA256 of `timestamp.body` keyed with `secret`: the `v1` value Stripe
/// would send. Used by the verifier and by `paysync send`.
pub fn compute_v1(secret: &str, timestamp: i64, body: &[u8]) -> String {
    hex::encode(mac_over(secret, timestamp, body))
}

/// Builds a complete header `t=<timestamp>,v1=<sig>` for `body`, as Stripe would send it.
pub fn sign_header(secret: &str, timestamp: i64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", compute_v1(secret, timestamp, body))
}

/// Lowercase hex HMAC-SHA256 of `payload` keyed with the UTF-8 bytes of `secret`: the
/// primitive under `v1` (Stripe's `computeHMACSignature`).
pub fn hmac_sha256_hex(secret: &str, payload: &[u8]) -> String {
    hex::encode(hmac_parts(secret, &[payload]))
}

fn mac_over(secret: &str, timestamp: i64, body: &[u8]) -> [u8; 32] {
    hmac_parts(secret, &[timestamp.to_string().as_bytes(), b".", body])
}

fn hmac_parts(secret: &str, parts: &[&[u8]]) -> [u8; 32] {
    // Invariant: HMAC accepts keys of any length, so new_from_slice cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC-SHA256 accepts keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Verifies `header` over `body` against any of `secrets` at time `now` (unix seconds).
///
/// Accepts if any `v1` equals (in constant time, lowercase hex as the libraries require) the
/// HMAC under any secret, and `t >= now - tolerance_secs`. A future `t` is accepted, as Stripe's
/// libraries do. The signature is checked before the timestamp, so a forged header learns
/// nothing about the clock.
pub fn verify<S: AsRef<str>>(
    secrets: &[S],
    header: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<i64, SignatureError> {
    let parsed = parse_header(header)?;
    let mut matched = subtle::Choice::from(0u8);
    for secret in secrets {
        let expected = hex_lower(&mac_over(secret.as_ref(), parsed.timestamp, body));
        for candidate in &parsed.v1 {
            let candidate = candidate.as_bytes();
            if candidate.len() == V1_HEX_LEN {
                matched |= candidate.ct_eq(&expected);
            }
        }
    }
    if !bool::from(matched) {
        return Err(SignatureError::Mismatch);
    }
    let age_secs = now.saturating_sub(parsed.timestamp);
    if tolerance_secs > 0 && age_secs > tolerance_secs {
        return Err(SignatureError::TimestampTooOld {
            age_secs,
            tolerance_secs,
        });
    }
    Ok(parsed.timestamp)
}

fn hex_lower(bytes: &[u8; 32]) -> [u8; V1_HEX_LEN] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; V1_HEX_LEN];
    for (i, byte) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(byte >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(byte & 0x0f)];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &str = "whsec_test_secret";

    #[test]
    fn header_with_timestamp_and_two_v1_and_v0_parses_all_v1() {
        let header = "t=1492774577,v1=aa,v1=bb,v0=cc";
        let parsed = parse_header(header).unwrap();
        assert_eq!(parsed.timestamp, 1_492_774_577);
        assert_eq!(parsed.v1, vec!["aa", "bb"]);
    }

    #[test]
    fn header_without_timestamp_is_malformed() {
        assert_eq!(parse_header("v1=abc"), Err(SignatureError::MalformedHeader));
        assert_eq!(parse_header(""), Err(SignatureError::MalformedHeader));
        assert_eq!(
            parse_header("t=12a,v1=abc"),
            Err(SignatureError::MalformedHeader)
        );
        assert_eq!(
            parse_header("t=-5,v1=abc"),
            Err(SignatureError::MalformedHeader)
        );
    }

    #[test]
    fn header_with_only_v0_has_no_v1() {
        assert_eq!(
            parse_header("t=1,v0=abc"),
            Err(SignatureError::NoV1Signature)
        );
    }

    #[test]
    fn hex_lower_matches_hex_crate() {
        let mac = mac_over(SECRET, 42, b"body");
        assert_eq!(hex_lower(&mac).as_slice(), hex::encode(mac).as_bytes());
    }

    #[test]
    fn signed_body_verifies_and_future_timestamp_is_accepted() {
        let body = br#"{"id":"evt_1"}"#;
        let header = sign_header(SECRET, 1_000, body);
        assert_eq!(verify(&[SECRET], &header, body, 1_000, 300), Ok(1_000));
        assert_eq!(verify(&[SECRET], &header, body, 1_300, 300), Ok(1_000));
        assert_eq!(verify(&[SECRET], &header, body, 10, 300), Ok(1_000));
        assert_eq!(
            verify(&[SECRET], &header, body, 1_301, 300),
            Err(SignatureError::TimestampTooOld {
                age_secs: 301,
                tolerance_secs: 300
            })
        );
    }

    #[test]
    fn any_configured_secret_may_match() {
        let body = b"{}";
        let header = sign_header("whsec_new", 5, body);
        assert_eq!(
            verify(&["whsec_old", "whsec_new"], &header, body, 5, 300),
            Ok(5)
        );
        assert_eq!(
            verify(&["whsec_old"], &header, body, 5, 300),
            Err(SignatureError::Mismatch)
        );
        let none: [&str; 0] = [];
        assert_eq!(
            verify(&none, &header, body, 5, 300),
            Err(SignatureError::Mismatch)
        );
    }

    proptest! {
        #[test]
        fn header_parser_never_panics(header in ".*") {
            let _ = parse_header(&header);
        }

        #[test]
        fn header_parser_never_panics_on_header_like_input(
            parts in proptest::collection::vec("(t|v1|v0|x)?=?[0-9a-f,=]{0,70}", 0..6)
        ) {
            let _ = parse_header(&parts.join(","));
        }

        #[test]
        fn any_one_byte_change_of_the_body_fails(
            body in proptest::collection::vec(any::<u8>(), 1..512),
            index in any::<proptest::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let header = sign_header(SECRET, 1_000, &body);
            let mut tampered = body.clone();
            let i = index.index(tampered.len());
            tampered[i] ^= flip;
            prop_assert_eq!(verify(&[SECRET], &header, &tampered, 1_000, 300), Err(SignatureError::Mismatch));
            prop_assert_eq!(verify(&[SECRET], &header, &body, 1_000, 300), Ok(1_000));
        }

        #[test]
        fn any_change_of_the_timestamp_fails(
            body in proptest::collection::vec(any::<u8>(), 0..256),
            ts in 1_000_000i64..2_000_000_000,
            other in 1_000_000i64..2_000_000_000,
        ) {
            prop_assume!(ts != other);
            let sig = compute_v1(SECRET, ts, &body);
            let forged = format!("t={other},v1={sig}");
            prop_assert_eq!(verify(&[SECRET], &forged, &body, other, 300), Err(SignatureError::Mismatch));
        }

        #[test]
        fn any_one_character_change_of_the_signature_fails(
            body in proptest::collection::vec(any::<u8>(), 0..256),
            index in 0usize..V1_HEX_LEN,
            replacement in proptest::char::any(),
        ) {
            let sig = compute_v1(SECRET, 7, &body);
            let mut chars: Vec<char> = sig.chars().collect();
            prop_assume!(chars[index] != replacement);
            chars[index] = replacement;
            let forged: String = chars.into_iter().collect();
            let header = format!("t=7,v1={forged}");
            prop_assert_eq!(verify(&[SECRET], &header, &body, 7, 300), Err(SignatureError::Mismatch));
        }
    }
}
