//! PayPal's offline signature check against the official SDK vectors, the 20 live-simulator
//! deliveries, the derived edge cases, and the committed local test PKI (`fixtures/paypal-local`).
//!
//! Every recorded leaf (2015 sandbox, 2017 sandbox, 2024 live) chains through the bundled
//! DigiCert intermediate to the bundled root at its transmission time, so all of them are checked
//! with `TrustStore::paypal()` and the clock pinned to the transmission time. The 2015 node-SDK
//! certificate is a nock mock of what the cert URL served, but it is a real DigiCert-issued
//! leaf, so no stand-in root is needed for it.

use std::path::PathBuf;

use paysync_domain::paypal::signature::{
    self, CertError, CertUrlError, Certificate, PaypalEnv, SignatureError, Transmission, TrustStore,
};
use proptest::prelude::*;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn json(rel: &str) -> Value {
    serde_json::from_slice(&read(rel)).unwrap()
}

fn more() -> Value {
    json("signature-vectors-more.json")["paypal"].clone()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap()
}

/// `YYYY-MM-DDTHH:MM:SSZ` to unix seconds (civil-from-days, proleptic Gregorian).
fn unix(rfc3339: &str) -> i64 {
    let b = rfc3339.as_bytes();
    assert_eq!((b.len(), b[10], b[19]), (20, b'T', b'Z'), "{rfc3339}");
    let n = |r: std::ops::Range<usize>| rfc3339[r].parse::<i64>().unwrap();
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19)
}

/// One signed delivery with everything needed to check it.
#[derive(Clone)]
struct Delivery {
    name: String,
    id: String,
    time: String,
    sig: String,
    webhook_id: String,
    body: Vec<u8>,
    cert_pem: Vec<u8>,
    crc32: u64,
    signed_string: String,
}

impl Delivery {
    fn transmission(&self) -> Transmission<'_> {
        Transmission {
            id: &self.id,
            time: &self.time,
            sig_b64: &self.sig,
            auth_algo: signature::AUTH_ALGO,
        }
    }

    fn now(&self) -> i64 {
        unix(&self.time)
    }

    fn cert(&self) -> Certificate {
        Certificate::parse_and_check(&self.cert_pem, &TrustStore::paypal(), self.now())
            .unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }

    fn verify(&self, cert: &Certificate) -> Result<(), SignatureError> {
        signature::verify(
            cert,
            &self.transmission(),
            &self.webhook_id,
            &self.body,
            self.now(),
        )
    }
}

fn official_sdk_2015() -> Delivery {
    let v = more()["official_sdk_2015"].clone();
    let h = &v["headers"];
    Delivery {
        name: "official_sdk_2015".into(),
        id: s(&h["PAYPAL-TRANSMISSION-ID"]).into(),
        time: s(&h["PAYPAL-TRANSMISSION-TIME"]).into(),
        sig: s(&h["PAYPAL-TRANSMISSION-SIG"]).into(),
        webhook_id: s(&v["webhook_id"]).into(),
        body: read(s(&v["body_file"])),
        cert_pem: s(&v["certificate_pem"]).as_bytes().to_vec(),
        crc32: v["crc32"].as_u64().unwrap(),
        signed_string: s(&v["signed_string"]).into(),
    }
}

fn java_sdk_2017() -> Delivery {
    let v = json("signature-vectors.json")["paypal"].clone();
    let h = &v["headers"];
    Delivery {
        name: "java_sdk_2017".into(),
        id: s(&h["PAYPAL-TRANSMISSION-ID"]).into(),
        time: s(&h["PAYPAL-TRANSMISSION-TIME"]).into(),
        sig: s(&h["PAYPAL-TRANSMISSION-SIG"]).into(),
        webhook_id: s(&v["webhook_id"]).into(),
        body: s(&v["request_body"]).as_bytes().to_vec(),
        cert_pem: s(&v["certificate_pem"]).as_bytes().to_vec(),
        crc32: v["crc32"].as_u64().unwrap(),
        signed_string: s(&v["signed_string"]).into(),
    }
}

fn simulator() -> Vec<Delivery> {
    let v = more()["simulator_live_2024"].clone();
    let cert_pem = s(&v["certificate_pem"]).as_bytes().to_vec();
    let webhook_id = s(&v["webhook_id"]).to_owned();
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let body = match c.get("body_file") {
                Some(file) => read(s(file)),
                None => s(&c["body"]).as_bytes().to_vec(),
            };
            let len: usize = s(&c["content-length"]).parse().unwrap();
            assert_eq!(body.len(), len, "{}", c["const"]);
            assert_eq!(s(&c["expect"]), "valid");
            Delivery {
                name: s(&c["const"]).into(),
                id: s(&c["paypal-transmission-id"]).into(),
                time: s(&c["paypal-transmission-time"]).into(),
                sig: s(&c["paypal-transmission-sig"]).into(),
                webhook_id: webhook_id.clone(),
                body,
                cert_pem: cert_pem.clone(),
                crc32: c["crc32"].as_u64().unwrap(),
                signed_string: s(&c["signed_string"]).into(),
            }
        })
        .collect()
}

fn simulator_case(name: &str) -> Delivery {
    simulator().into_iter().find(|d| d.name == name).unwrap()
}

fn assert_valid(d: &Delivery, env: PaypalEnv) {
    assert_eq!(
        signature::crc32_decimal(&d.body),
        d.crc32.to_string(),
        "{}",
        d.name
    );
    assert_eq!(
        signature::signed_string(&d.transmission(), &d.webhook_id, &d.body),
        d.signed_string,
        "{}",
        d.name
    );
    let cert = d.cert();
    assert_eq!(cert.env(), env, "{}", d.name);
    d.verify(&cert)
        .unwrap_or_else(|e| panic!("{}: {e}", d.name));
}

fn outcome_of(r: Result<(), SignatureError>) -> &'static str {
    let e = r.expect_err("expected a refusal");
    let text = e.to_string();
    assert!(!text.contains('\n'), "one-line Display: {text:?}");
    e.outcome()
}

fn cert_outcome<T>(r: Result<T, CertError>) -> &'static str {
    let Err(e) = r else {
        panic!("expected a refusal")
    };
    let text = e.to_string();
    assert!(!text.contains('\n') && !text.contains("BEGIN"), "{text:?}");
    e.outcome()
}

#[test]
fn official_node_sdk_2015_vector_verifies_with_the_bundled_digicert_chain() {
    assert_valid(&official_sdk_2015(), PaypalEnv::Sandbox);
}

#[test]
fn official_java_sdk_2017_vector_verifies_and_refuses_another_webhook_id() {
    let d = java_sdk_2017();
    assert_valid(&d, PaypalEnv::Sandbox);
    let cert = d.cert();
    let other = Delivery {
        webhook_id: "NotToBeFound".into(),
        ..d
    };
    assert_eq!(outcome_of(other.verify(&cert)), "bad_signature");
}

#[test]
fn all_twenty_live_simulator_deliveries_verify_with_webhook_id_literal() {
    let cases = simulator();
    assert_eq!(cases.len(), 20);
    for d in &cases {
        assert_eq!(d.webhook_id, "WEBHOOK_ID");
        assert_valid(d, PaypalEnv::Live);
    }
}

#[test]
fn edge_cases_from_the_vector_file_have_their_expected_outcomes() {
    let edges = more()["edge_cases"].as_array().unwrap().clone();
    assert_eq!(edges.len(), 6);
    let completed = simulator_case("HOOK_PAYMENT_CAPTURE_COMPLETED_V2");
    let cert = completed.cert();
    for edge in &edges {
        let case = s(&edge["case"]);
        assert!(
            s(&edge["expect"]).starts_with("invalid") || s(&edge["expect"]).starts_with("reject")
        );
        match case {
            "right signature, wrong webhook id" => {
                let d = Delivery {
                    webhook_id: s(&edge["webhook_id"]).into(),
                    ..completed.clone()
                };
                assert_eq!(outcome_of(d.verify(&cert)), "bad_signature");
            }
            "body with one trailing newline" => {
                let mut d = completed.clone();
                d.body.push(b'\n');
                assert_eq!(outcome_of(d.verify(&cert)), "bad_signature");
            }
            "body re-serialised (json.loads then json.dumps)" => {
                let value: Value = serde_json::from_slice(&completed.body).unwrap();
                let mut d = completed.clone();
                d.body = serde_json::to_vec(&value).unwrap();
                assert_ne!(d.body, completed.body);
                assert_eq!(outcome_of(d.verify(&cert)), "bad_signature");
                // Python's json.dumps separators, too.
                d.body = serde_json::to_string(&value)
                    .unwrap()
                    .replace("\",\"", "\", \"")
                    .into_bytes();
                assert_eq!(outcome_of(d.verify(&cert)), "bad_signature");
            }
            "CRC32 rendered as signed int or as hex" => {
                let official = more()["official_sdk_2015"].clone();
                let d = official_sdk_2015();
                let signed = official["crc32_if_wrongly_signed"].as_i64().unwrap();
                assert_eq!(signed, i64::from(d.crc32 as u32 as i32));
                let hex = format!("{:x}", d.crc32);
                let prefix = format!("{}|{}|{}|", d.id, d.time, d.webhook_id);
                let sig = base64_decode(&d.sig);
                let leaf = first_der(&d.cert_pem);
                let ee = webpki::EndEntityCert::try_from(&leaf).unwrap();
                let alg = webpki::ring::RSA_PKCS1_2048_8192_SHA256;
                // The signature holds over the unsigned decimal only.
                let good = format!("{prefix}{}", signature::crc32_decimal(&d.body));
                assert!(ee.verify_signature(alg, good.as_bytes(), &sig).is_ok());
                for wrong in [signed.to_string(), hex] {
                    let message = format!("{prefix}{wrong}");
                    assert!(ee.verify_signature(alg, message.as_bytes(), &sig).is_err());
                }
            }
            c if c.starts_with("PAYPAL-CERT-URL not https") => {
                let allowed = default_hosts();
                for url in [
                    "http://api.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-1a5f47cb",
                    "https://api.paypal.com.evil.example/v1/notifications/certs/CERT-1",
                    "https://evil.example/api.paypal.com/v1/notifications/certs/CERT-1",
                ] {
                    assert!(signature::check_cert_url(url, &allowed).is_err(), "{url}");
                }
            }
            c if c.starts_with("certificate whose CN is not") => {
                let local = LocalPki::load();
                let r = Certificate::parse_and_check(
                    &local.leaf_wrong_name,
                    &local.trust(),
                    LocalPki::NOW,
                );
                assert_eq!(cert_outcome(r), "cert_host");
            }
            other => panic!("edge case without a test: {other}"),
        }
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

fn first_der(pem: &[u8]) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem).unwrap()
}

#[test]
fn the_auth_algo_must_be_exactly_sha256_with_rsa() {
    let d = official_sdk_2015();
    let cert = d.cert();
    for algo in [
        "SHA1withRSA",
        "sha256withrsa",
        "sha256",
        "sha256WithRSAEncryption",
        "SHA256withRSA ",
        " SHA256withRSA",
        "SHA512withRSA",
        "",
    ] {
        let t = Transmission {
            auth_algo: algo,
            ..d.transmission()
        };
        let r = signature::verify(&cert, &t, &d.webhook_id, &d.body, d.now());
        assert_eq!(outcome_of(r), "bad_algorithm", "{algo:?}");
    }
}

#[test]
fn a_signature_that_is_not_base64_is_malformed() {
    let d = official_sdk_2015();
    let cert = d.cert();
    for sig in ["", "not base64!", "%%%%", &"A".repeat(5000)] {
        let t = Transmission {
            sig_b64: sig,
            ..d.transmission()
        };
        let r = signature::verify(&cert, &t, &d.webhook_id, &d.body, d.now());
        assert_eq!(outcome_of(r), "malformed_signature", "{sig:?}");
    }
}

#[test]
fn an_expired_or_not_yet_valid_certificate_is_refused_at_parse_and_at_verify() {
    let d = simulator_case("HOOK_PAYMENT_CAPTURE_COMPLETED_V2");
    let cert = d.cert();
    // 2024-03-08T00:00:00Z .. 2025-03-07T23:59:59Z
    assert_eq!(cert.not_before(), unix("2024-03-08T00:00:00Z"));
    assert_eq!(cert.not_after(), unix("2025-03-07T23:59:59Z"));
    let trust = TrustStore::paypal();
    for now in [cert.not_before(), cert.not_after()] {
        Certificate::parse_and_check(&d.cert_pem, &trust, now).unwrap();
        signature::verify(&cert, &d.transmission(), &d.webhook_id, &d.body, now).unwrap();
    }
    let late = cert.not_after() + 1;
    let early = cert.not_before() - 1;
    let r = Certificate::parse_and_check(&d.cert_pem, &trust, late);
    assert!(matches!(r, Err(CertError::Expired { not_after }) if not_after == cert.not_after()));
    let r = Certificate::parse_and_check(&d.cert_pem, &trust, early);
    assert_eq!(cert_outcome(r), "cert_not_yet_valid");
    // A cached certificate expires too.
    let r = signature::verify(&cert, &d.transmission(), &d.webhook_id, &d.body, late);
    assert_eq!(outcome_of(r), "cert_expired");
    let r = signature::verify(&cert, &d.transmission(), &d.webhook_id, &d.body, early);
    assert_eq!(outcome_of(r), "cert_not_yet_valid");
}

#[test]
fn a_paypal_leaf_without_the_digicert_root_is_untrusted() {
    let d = simulator_case("HOOK_PAYMENT_CAPTURE_COMPLETED_V2");
    let r = Certificate::parse_and_check(&d.cert_pem, &TrustStore::empty(), d.now());
    assert_eq!(cert_outcome(r), "cert_untrusted");
    // A local root does not help a DigiCert leaf either.
    let r =
        Certificate::parse_and_check(&d.cert_pem, &LocalPki::load().trust_local_only(), d.now());
    assert_eq!(cert_outcome(r), "cert_untrusted");
}

#[test]
fn the_leaf_is_accepted_as_der_too() {
    let d = official_sdk_2015();
    let der = first_der(&d.cert_pem);
    let cert = Certificate::parse_and_check(&der, &TrustStore::paypal(), d.now()).unwrap();
    d.verify(&cert).unwrap();
}

#[test]
fn every_one_byte_change_of_the_leaf_der_fails_to_parse_or_chain() {
    let d = official_sdk_2015();
    let der = first_der(&d.cert_pem).to_vec();
    let trust = TrustStore::paypal();
    for i in 0..der.len() {
        let mut bad = der.clone();
        bad[i] ^= 0x01;
        let r = Certificate::parse_and_check(&bad, &trust, d.now());
        assert!(
            r.is_err(),
            "byte {i} of {} flipped and still accepted",
            der.len()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_one_byte_change_of_the_body_fails(pos in any::<prop::sample::Index>(), x in 1u8..=255) {
        let d = simulator_case("HOOK_PAYMENT_CAPTURE_PENDING_V2");
        let cert = d.cert();
        let mut bad = d.clone();
        let i = pos.index(bad.body.len());
        bad.body[i] ^= x;
        prop_assert_eq!(outcome_of(bad.verify(&cert)), "bad_signature");
    }

    #[test]
    fn any_one_byte_change_of_id_time_or_webhook_id_fails(
        field in 0usize..3,
        pos in any::<prop::sample::Index>(),
        c in "[ -~]",
    ) {
        let d = official_sdk_2015();
        let cert = d.cert();
        let mut bad = d.clone();
        let target = match field {
            0 => &mut bad.id,
            1 => &mut bad.time,
            _ => &mut bad.webhook_id,
        };
        let i = pos.index(target.len());
        prop_assume!(target[i..=i] != *c);
        target.replace_range(i..=i, &c);
        // `now` stays the real transmission time: only the signed string changes.
        let r = signature::verify(&cert, &bad.transmission(), &bad.webhook_id, &bad.body, d.now());
        prop_assert_eq!(outcome_of(r), "bad_signature");
    }

    #[test]
    fn any_one_byte_change_of_the_signature_fails(pos in any::<prop::sample::Index>(), x in 1u8..=255) {
        use base64::Engine as _;
        let d = simulator_case("HOOK_SUBSCRIPTION_CREATED_v2");
        let cert = d.cert();
        let mut raw = base64_decode(&d.sig);
        let i = pos.index(raw.len());
        raw[i] ^= x;
        let mut bad = d.clone();
        bad.sig = base64::engine::general_purpose::STANDARD.encode(&raw);
        prop_assert_eq!(outcome_of(bad.verify(&cert)), "bad_signature");
    }
}

fn default_hosts() -> Vec<String> {
    signature::DEFAULT_CERT_URL_HOSTS
        .iter()
        .map(|h| (*h).to_owned())
        .collect()
}

#[test]
fn cert_urls_are_allowed_only_on_paypal_hosts_and_the_cert_path() {
    let paypal = default_hosts();
    let mut with_loopback = paypal.clone();
    with_loopback.push("127.0.0.1:18443".into());
    with_loopback.push("localhost:18444".into());
    let live = "https://api.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-1a5f47cb";
    let sandbox =
        "https://api.sandbox.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-a5cafa77";

    for (url, allowed, expect) in [
        (live, &paypal, Ok("api.paypal.com")),
        (sandbox, &paypal, Ok("api.sandbox.paypal.com")),
        (live, &with_loopback, Ok("api.paypal.com")),
        (
            "http://127.0.0.1:18443/v1/notifications/certs/CERT-local",
            &with_loopback,
            Ok("127.0.0.1:18443"),
        ),
        (
            "https://127.0.0.1:18443/v1/notifications/certs/CERT-local",
            &with_loopback,
            Ok("127.0.0.1:18443"),
        ),
        (
            "http://localhost:18444/v1/notifications/certs/CERT-local",
            &with_loopback,
            Ok("localhost:18444"),
        ),
        // http on a real host
        (
            "http://api.paypal.com/v1/notifications/certs/CERT-1",
            &with_loopback,
            Err("cert_url_scheme"),
        ),
        (
            "ftp://api.paypal.com/v1/notifications/certs/CERT-1",
            &paypal,
            Err("cert_url_scheme"),
        ),
        // other hosts and suffix/prefix tricks
        (
            "https://evil.example/v1/notifications/certs/CERT-1",
            &paypal,
            Err("cert_url_host"),
        ),
        (
            "https://api.paypal.com.evil.com/v1/notifications/certs/CERT-1",
            &paypal,
            Err("cert_url_host"),
        ),
        (
            "https://evilapi.paypal.com/v1/notifications/certs/CERT-1",
            &paypal,
            Err("cert_url_host"),
        ),
        (
            "https://api-m.paypal.com/v1/notifications/certs/CERT-1",
            &paypal,
            Err("cert_url_host"),
        ),
        (
            "https://api.paypal.com./v1/notifications/certs/CERT-1",
            &paypal,
            Err("cert_url_host"),
        ),
        (
            "https://evil.example/api.paypal.com/v1/notifications/certs/CERT-1",
            &paypal,
            Err("cert_url_host"),
        ),
        (
            "https://api.paypal.com:8443/v1/notifications/certs/CERT-1",
            &paypal,
            Err("cert_url_host"),
        ),
        (
            "https://10.0.0.1/v1/notifications/certs/CERT-1",
            &paypal,
            Err("cert_url_host"),
        ),
        // userinfo
        (
            "https://api.paypal.com@evil.com/v1/notifications/certs/CERT-1",
            &paypal,
            Err("cert_url_userinfo"),
        ),
        (
            "https://user:pw@api.paypal.com/v1/notifications/certs/CERT-1",
            &paypal,
            Err("cert_url_userinfo"),
        ),
        // query and fragment
        (
            "https://api.paypal.com/v1/notifications/certs/CERT-1?x=https://evil.example",
            &paypal,
            Err("cert_url_query"),
        ),
        (
            "https://api.paypal.com/v1/notifications/certs/CERT-1?",
            &paypal,
            Err("cert_url_query"),
        ),
        (
            "https://api.paypal.com/v1/notifications/certs/CERT-1#frag",
            &paypal,
            Err("cert_url_query"),
        ),
        // non-canonical spellings
        (
            "https://API.PAYPAL.COM/v1/notifications/certs/CERT-1",
            &paypal,
            Err("cert_url_not_canonical"),
        ),
        (
            "https://api.paypal.com:443/v1/notifications/certs/CERT-1",
            &paypal,
            Err("cert_url_not_canonical"),
        ),
        (
            "https://api.paypal.com/v1/notifications/certs/../../../evil",
            &paypal,
            Err("cert_url_not_canonical"),
        ),
        (
            "https://api.paypal.com\\@evil.example/v1/notifications/certs/CERT-1",
            &paypal,
            Err("cert_url_not_canonical"),
        ),
        (
            " https://api.paypal.com/v1/notifications/certs/CERT-1",
            &paypal,
            Err("cert_url_not_canonical"),
        ),
        // wrong paths (the Java SDK test's stubbed URL is one)
        (
            "https://api.sandbox.paypal.com/v1/notifications/test",
            &paypal,
            Err("cert_url_path"),
        ),
        (
            "https://api.paypal.com/v1/notifications/certs/",
            &paypal,
            Err("cert_url_path"),
        ),
        (
            "https://api.paypal.com/v1/notifications/certs/CERT-1/x",
            &paypal,
            Err("cert_url_path"),
        ),
        (
            "https://api.paypal.com/v1/notifications/certs/CERT%2F1",
            &paypal,
            Err("cert_url_path"),
        ),
        (
            "https://api.paypal.com/v2/notifications/certs/CERT-1",
            &paypal,
            Err("cert_url_path"),
        ),
        // loopback only when listed, and only with its port
        (
            "http://127.0.0.1:18443/v1/notifications/certs/CERT-local",
            &paypal,
            Err("cert_url_host"),
        ),
        (
            "http://127.0.0.1:9999/v1/notifications/certs/CERT-local",
            &with_loopback,
            Err("cert_url_host"),
        ),
        (
            "http://127.0.0.1/v1/notifications/certs/CERT-local",
            &with_loopback,
            Err("cert_url_host"),
        ),
        (
            "http://localhost:18443/v1/notifications/certs/CERT-local",
            &with_loopback,
            Err("cert_url_host"),
        ),
        // garbage and size
        ("not a url", &paypal, Err("cert_url_malformed")),
        ("", &paypal, Err("cert_url_malformed")),
    ] {
        let got = signature::check_cert_url(url, allowed);
        match (got, expect) {
            (Ok(cert_url), Ok(host)) => {
                assert_eq!(cert_url.as_str(), url);
                assert_eq!(cert_url.host(), host, "{url}");
            }
            (Err(e), Err(label)) => {
                assert_eq!(e.outcome(), label, "{url}: {e}");
                assert!(!e.to_string().contains("evil"), "{e}");
            }
            (got, expect) => panic!("{url}: got {got:?}, expected {expect:?}"),
        }
    }
    let long = format!("{live}{}", "a".repeat(signature::MAX_CERT_URL_LEN));
    assert_eq!(
        signature::check_cert_url(&long, &paypal),
        Err(CertUrlError::TooLong)
    );
}

/// The committed local PKI (see `fixtures/paypal-local/README.md`): a CA valid
/// 2026-01-01..2046-01-01 that signs the leaves directly.
struct LocalPki {
    ca: Vec<u8>,
    leaf: Vec<u8>,
    leaf_live: Vec<u8>,
    leaf_expired: Vec<u8>,
    leaf_rogue: Vec<u8>,
    leaf_wrong_name: Vec<u8>,
    key: ring::signature::RsaKeyPair,
}

impl LocalPki {
    /// 2026-06-01T00:00:00Z.
    const NOW: i64 = 1_780_272_000;

    fn load() -> Self {
        let p = |name: &str| read(&format!("paypal-local/{name}"));
        let key_der = PrivatePkcs8KeyDer::from_pem_slice(&p("leaf.key.pem")).unwrap();
        LocalPki {
            ca: p("ca.pem"),
            leaf: p("leaf.pem"),
            leaf_live: p("leaf-live.pem"),
            leaf_expired: p("leaf-expired.pem"),
            leaf_rogue: p("leaf-rogue.pem"),
            leaf_wrong_name: p("leaf-wrong-name.pem"),
            key: ring::signature::RsaKeyPair::from_pkcs8(key_der.secret_pkcs8_der()).unwrap(),
        }
    }

    /// PayPal's chain plus the local CA, as a receiver under test would configure it.
    fn trust(&self) -> TrustStore {
        let mut trust = TrustStore::paypal();
        trust.add_root_pem(&self.ca).unwrap();
        trust
    }

    fn trust_local_only(&self) -> TrustStore {
        let mut trust = TrustStore::empty();
        trust.add_root_pem(&self.ca).unwrap();
        trust
    }

    fn sign(&self, message: &str) -> String {
        use base64::Engine as _;
        let mut sig = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                message.as_bytes(),
                &mut sig,
            )
            .unwrap();
        base64::engine::general_purpose::STANDARD.encode(sig)
    }
}

#[test]
fn unix_helper_matches_known_instants() {
    assert_eq!(unix("1970-01-01T00:00:00Z"), 0);
    assert_eq!(unix("2026-06-01T00:00:00Z"), LocalPki::NOW);
    assert_eq!(unix("2024-08-02T19:34:57Z"), 1_722_627_297);
}

#[test]
fn a_leaf_signed_directly_by_a_local_root_verifies_a_locally_signed_delivery() {
    let local = LocalPki::load();
    let body = read("paypal/PAYMENT.CAPTURE.COMPLETED.json");
    let mut t = Transmission {
        id: "0d1f9d40-5e9a-11f1-8c1f-2b4f1f0e1a01",
        time: "2026-06-01T00:00:00Z",
        sig_b64: "",
        auth_algo: "SHA256withRSA",
    };
    let sig = local.sign(&signature::signed_string(&t, "LOCAL-WEBHOOK", &body));
    t.sig_b64 = &sig;

    for (pem, env) in [
        (&local.leaf, PaypalEnv::Sandbox),
        (&local.leaf_live, PaypalEnv::Live),
    ] {
        let cert = Certificate::parse_and_check(pem, &local.trust(), LocalPki::NOW).unwrap();
        assert_eq!(cert.env(), env);
        signature::verify(&cert, &t, "LOCAL-WEBHOOK", &body, LocalPki::NOW).unwrap();
        let r = signature::verify(&cert, &t, "OTHER-WEBHOOK", &body, LocalPki::NOW);
        assert_eq!(outcome_of(r), "bad_signature");
    }
    // The local root alone is enough; PayPal's bundled chain alone is not.
    Certificate::parse_and_check(&local.leaf, &local.trust_local_only(), LocalPki::NOW).unwrap();
    let r = Certificate::parse_and_check(&local.leaf, &TrustStore::paypal(), LocalPki::NOW);
    assert_eq!(cert_outcome(r), "cert_untrusted");
}

#[test]
fn local_leaves_that_are_expired_untrusted_or_misnamed_are_refused() {
    let local = LocalPki::load();
    let trust = local.trust();
    let r = Certificate::parse_and_check(&local.leaf_expired, &trust, LocalPki::NOW);
    assert_eq!(cert_outcome(r), "cert_expired");
    // Inside its own validity it is fine: the chain and name are right, and (as in webpki and
    // RFC 5280) a trust anchor's own validity period is not checked.
    let in_2020 = unix("2020-06-01T00:00:00Z");
    let cert = Certificate::parse_and_check(&local.leaf_expired, &trust, in_2020).unwrap();
    assert_eq!(cert.env(), PaypalEnv::Sandbox);

    let r = Certificate::parse_and_check(&local.leaf_rogue, &trust, LocalPki::NOW);
    assert_eq!(cert_outcome(r), "cert_untrusted");

    let r = Certificate::parse_and_check(&local.leaf_wrong_name, &trust, LocalPki::NOW);
    assert_eq!(cert_outcome(r), "cert_host");

    // The CA is not a message-verification leaf.
    let r = Certificate::parse_and_check(&local.ca, &trust, LocalPki::NOW);
    assert!(r.is_err());

    let r = Certificate::parse_and_check(&local.leaf, &trust, unix("2046-01-01T00:00:01Z"));
    assert_eq!(cert_outcome(r), "cert_expired");
    let r = Certificate::parse_and_check(&local.leaf, &trust, unix("2025-12-31T23:59:59Z"));
    assert_eq!(cert_outcome(r), "cert_not_yet_valid");
}

#[test]
fn a_bad_trust_root_is_refused_and_adds_nothing() {
    let mut trust = TrustStore::empty();
    assert_eq!(cert_outcome(trust.add_root_pem(b"")), "cert_malformed");
    assert_eq!(
        cert_outcome(
            trust.add_root_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        ),
        "cert_malformed"
    );
    let local = LocalPki::load();
    let r = Certificate::parse_and_check(&local.leaf, &trust, LocalPki::NOW);
    assert_eq!(cert_outcome(r), "cert_untrusted");
}
