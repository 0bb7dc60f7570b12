//! The Standard Webhooks signature scheme (the one Svix and others use), for the webhooks we send
//! to the business's own endpoints.
//!
//! Headers: `webhook-id` (the message id, stable across retries, so a receiver can deduplicate),
//! `webhook-timestamp` (integer unix seconds of this attempt) and `webhook-signature`: one
//! `v1,<base64>` entry per signing secret, separated by spaces (two during a rotation). Each is
//! the standard base64 HMAC-SHA256 of `<id>.<timestamp>.<raw body>`, keyed with the bytes that
//! the secret's base64 part after `whsec_` decodes to.
//!
//! Rule of thumb: a secret's bytes never leave this module (no `Debug`, no `Display`), and
//! [`verify`] compares in constant time, tries every entry against every secret and refuses
//! a timestamp more than the tolerance away from now, in either direction.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The prefix of a serialized secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// The header names.
pub mod headers {
    /// The message id.
    pub const ID: &str = "webhook-id";
    /// The attempt's unix seconds.
    pub const TIMESTAMP: &str = "webhook-timestamp";
    /// The signatures.
    pub const SIGNATURE: &str = "webhook-signature";
}

/// The fewest and most key bytes a secret may carry (the specification asks for 24 to 64).
const KEY_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// Most entries [`verify`] looks at in one header: a hostile header cannot make it compute
/// thousands of comparisons.
pub const MAX_SIGNATURES: usize = 8;

/// A signing secret: the HMAC key. Made only by [`Secret::parse`]; shows nothing of itself.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Why a secret was refused; never shows the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// It does not start with `whsec_`.
    #[error("a signing secret starts with whsec_")]
    Prefix,
    /// The part after the prefix is not standard base64.
    #[error("the part after whsec_ must be standard base64")]
    Base64,
    /// It decodes to fewer than 24 or more than 64 bytes.
    #[error("the key must be 24 to 64 bytes (32 to 88 base64 characters after whsec_)")]
    Length,
}

impl Secret {
    /// `whsec_<standard base64 of 24 to 64 bytes>`, surrounding blanks ignored.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let encoded = text
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::Prefix)?;
        let key = STANDARD.decode(encoded).map_err(|_| SecretError::Base64)?;
        if !KEY_BYTES.contains(&key.len()) {
            return Err(SecretError::Length);
        }
        Ok(Self(key))
    }

    /// A secret serialized from `key` bytes, for making new secrets (`whsec_` + base64).
    pub fn serialize(key: &[u8]) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(key))
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> [u8; 32] {
        // HMAC takes a key of any length.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().into()
    }
}

/// The `webhook-signature` value: one `v1,<base64>` per secret, in order, space-separated.
pub fn sign(secrets: &[Secret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| format!("v1,{}", STANDARD.encode(s.mac(id, timestamp, body))))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Why a signed request was refused; safe to show (no secret, no expected signature).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// `webhook-timestamp` is not integer unix seconds.
    #[error("webhook-timestamp is not integer unix seconds")]
    Timestamp,
    /// The timestamp is further from now than the tolerance.
    #[error("webhook-timestamp is {off_secs} s away from now (tolerance {tolerance_secs} s)")]
    Tolerance {
        /// How far, in seconds.
        off_secs: i64,
        /// The tolerance, in seconds.
        tolerance_secs: i64,
    },
    /// No `v1` entry matches any secret.
    #[error("no v1 signature matches")]
    Mismatch,
}

/// Checks a request the way a Standard Webhooks receiver does: the timestamp within
/// `tolerance_secs` of `now` (either direction), then any `v1` entry of `signature` against
/// any secret, in constant time per comparison.
pub fn verify(
    secrets: &[Secret],
    id: &str,
    timestamp: &str,
    signature: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::Timestamp)?;
    let off_secs = now.saturating_sub(ts).saturating_abs();
    if off_secs > tolerance_secs {
        return Err(VerifyError::Tolerance {
            off_secs,
            tolerance_secs,
        });
    }
    let expected: Vec<[u8; 32]> = secrets.iter().map(|s| s.mac(id, ts, body)).collect();
    let mut matched = false;
    for entry in signature.split(' ').take(MAX_SIGNATURES) {
        let Some(encoded) = entry.strip_prefix("v1,") else {
            continue;
        };
        let Ok(given) = STANDARD.decode(encoded) else {
            continue;
        };
        for want in &expected {
            matched |= bool::from(given.as_slice().ct_eq(want));
        }
    }
    if matched {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the specification's reference libraries.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNED: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn secret(s: &str) -> Secret {
        Secret::parse(s).unwrap()
    }

    #[test]
    fn the_reference_example_signs_and_verifies() {
        assert_eq!(sign(&[secret(SECRET)], ID, TS, BODY), SIGNED);
        let ts = TS.to_string();
        assert_eq!(
            verify(&[secret(SECRET)], ID, &ts, SIGNED, BODY, TS, 300),
            Ok(())
        );
    }

    #[test]
    fn a_rotation_signs_with_every_secret_and_either_verifies() {
        let new = Secret::serialize(&[7u8; 32]);
        let both = [secret(SECRET), secret(&new)];
        let header = sign(&both, ID, TS, BODY);
        let entries: Vec<&str> = header.split(' ').collect();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0], SIGNED);
        let ts = TS.to_string();
        for one in [secret(SECRET), secret(&new)] {
            assert_eq!(verify(&[one], ID, &ts, &header, BODY, TS, 300), Ok(()));
        }
    }

    #[test]
    fn any_change_or_a_stale_timestamp_is_refused() {
        let s = [secret(SECRET)];
        let ts = TS.to_string();
        let refused = |id: &str, ts: &str, sig: &str, body: &[u8], now: i64| {
            verify(&s, id, ts, sig, body, now, 300)
        };
        assert_eq!(
            refused("msg_other", &ts, SIGNED, BODY, TS),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            refused(ID, &ts, SIGNED, b"{}", TS),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            refused(ID, &(TS + 1).to_string(), SIGNED, BODY, TS),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            refused(ID, &ts, "v2,abc v1,!!", BODY, TS),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            refused(ID, "soon", SIGNED, BODY, TS),
            Err(VerifyError::Timestamp)
        );
        assert_eq!(
            refused(ID, &ts, SIGNED, BODY, TS + 301),
            Err(VerifyError::Tolerance {
                off_secs: 301,
                tolerance_secs: 300
            })
        );
        assert!(
            refused(ID, &ts, SIGNED, BODY, TS - 301).is_err(),
            "future too"
        );
        let other = [secret(&Secret::serialize(&[1u8; 32]))];
        assert_eq!(
            verify(&other, ID, &ts, SIGNED, BODY, TS, 300),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn only_whsec_base64_of_24_to_64_bytes_is_a_secret() {
        assert_eq!(
            Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").err(),
            Some(SecretError::Prefix)
        );
        assert_eq!(
            Secret::parse("whsec_not base64!").err(),
            Some(SecretError::Base64)
        );
        assert_eq!(
            Secret::parse(&Secret::serialize(&[0u8; 23])).err(),
            Some(SecretError::Length)
        );
        assert_eq!(
            Secret::parse(&Secret::serialize(&[0u8; 65])).err(),
            Some(SecretError::Length)
        );
        assert!(Secret::parse(&format!(" {} ", Secret::serialize(&[0u8; 64]))).is_ok());
        let shown = format!("{:?} {}", secret(SECRET), SecretError::Base64);
        assert!(!shown.contains("MfKQ"), "{shown}");
    }
}
