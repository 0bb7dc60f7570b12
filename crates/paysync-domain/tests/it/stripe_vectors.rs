//! Stripe's published HMAC vectors, the header vectors derived with stripe-python 16.1.0, and
//! every real fixture payload signed at run time.

use std::path::PathBuf;

use bytes::Bytes;
use paysync_domain::Mode;
use paysync_domain::stripe::StripeVerifier;
use paysync_domain::stripe::signature::{self, SignatureError};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn vectors() -> Value {
    let raw = std::fs::read(fixtures().join("signature-vectors.json")).unwrap();
    serde_json::from_slice(&raw).unwrap()
}

fn body_of(case: &Value) -> Vec<u8> {
    let mut body = std::fs::read(fixtures().join(case["body_file"].as_str().unwrap())).unwrap();
    if case["body_mutation"] == "append_newline" {
        body.push(b'\n');
    }
    body
}

#[test]
fn official_stripe_node_hmac_vectors_match() {
    let v = vectors();
    let official = &v["stripe"]["official_hmac_sha256_hex"];
    let secret = official["secret"].as_str().unwrap();
    let cases = official["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for case in cases {
        let payload = case["payload"].as_str().unwrap();
        assert_eq!(
            signature::hmac_sha256_hex(secret, payload.as_bytes()),
            case["expected"].as_str().unwrap(),
            "payload {payload:?}"
        );
    }
}

#[test]
fn docs_example_header_parses_with_one_v1_and_ignores_v0() {
    let v = vectors();
    let header = v["stripe"]["docs_example_header_not_verifiable"]["header"]
        .as_str()
        .unwrap();
    let parsed = signature::parse_header(header).unwrap();
    assert_eq!(parsed.timestamp, 1_492_774_577);
    assert_eq!(parsed.v1.len(), 1);
    assert!(parsed.v1[0].starts_with("5257a869"));
}

#[test]
fn derived_header_vectors_verify_within_tolerance_only() {
    let v = vectors();
    let derived = &v["stripe"]["derived_header_vectors"];
    let secret = derived["secret"].as_str().unwrap();
    let tolerance = derived["tolerance_seconds"].as_i64().unwrap();
    let cases = derived["valid_cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for case in cases {
        let body = body_of(case);
        let t = case["timestamp"].as_i64().unwrap();
        let header = case["header"].as_str().unwrap();
        // We produce the same header Stripe's library did.
        assert_eq!(signature::sign_header(secret, t, &body), header);
        for now in [t, t + tolerance, t - 10_000] {
            assert_eq!(
                signature::verify(&[secret], header, &body, now, tolerance),
                Ok(t)
            );
        }
        assert!(matches!(
            signature::verify(&[secret], header, &body, t + tolerance + 1, tolerance),
            Err(SignatureError::TimestampTooOld { .. })
        ));
    }
}

#[test]
fn derived_edge_cases_give_the_documented_result() {
    let v = vectors();
    let derived = &v["stripe"]["derived_header_vectors"];
    let default_secret = derived["secret"].as_str().unwrap();
    let tolerance = derived["tolerance_seconds"].as_i64().unwrap();
    let cases = derived["edge_cases"].as_array().unwrap();
    assert_eq!(cases.len(), 9);
    for case in cases {
        let name = case["case"].as_str().unwrap();
        let secret = case["secret"].as_str().unwrap_or(default_secret);
        let result = signature::verify(
            &[secret],
            case["header"].as_str().unwrap(),
            &body_of(case),
            case["now"].as_i64().unwrap(),
            tolerance,
        );
        let expect = case["expect"].as_str().unwrap();
        match result {
            Ok(_) => assert!(
                expect.starts_with("valid"),
                "{name}: accepted, expected {expect}"
            ),
            Err(SignatureError::NoV1Signature) => assert!(expect.contains("no v1"), "{name}"),
            Err(SignatureError::Mismatch) => assert!(
                expect.contains("mismatch") || expect.contains("reject (official"),
                "{name}: mismatch, expected {expect}"
            ),
            Err(SignatureError::TimestampTooOld { .. }) => {
                assert!(expect.contains("tolerance"), "{name}")
            }
            Err(SignatureError::MalformedHeader) => {
                assert!(expect.contains("unable to extract"), "{name}")
            }
        }
    }
}

#[test]
fn every_stripe_fixture_passes_verification_when_signed() {
    let dir = fixtures().join("stripe");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let body = std::fs::read(&path).unwrap();
        let json: Value = serde_json::from_slice(&body).unwrap();
        let mode = Mode::from_livemode(json["livemode"].as_bool().unwrap());
        let secrets = vec!["whsec_old".to_owned(), "whsec_fixture".to_owned()];
        let verifier = StripeVerifier::new(secrets, mode, 300);
        let now = 1_800_000_000;
        let header = signature::sign_header("whsec_fixture", now - 5, &body);
        let hook = verifier
            .verify(Some(&header), Bytes::from(body.clone()), now, 1)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(hook.body().as_ref(), body.as_slice());
        assert_eq!(hook.meta().event_id, json["id"].as_str().unwrap());
        assert_eq!(hook.meta().event_type, json["type"].as_str().unwrap());
        assert_eq!(hook.meta().created, json["created"].as_i64().unwrap());
        assert_eq!(
            hook.meta().api_version.as_deref(),
            json["api_version"].as_str()
        );
        seen += 1;
    }
    assert_eq!(
        seen, 23,
        "fixture count changed: update this test deliberately"
    );
}
