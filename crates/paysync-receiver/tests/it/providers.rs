//! Square, Authorize.Net and PayPal through the receiver: captured deliveries accepted and
//! published, a changed byte refused, PayPal's certificate rules, unknown providers 404.

use std::time::Duration;

use axum::routing::get;
use paysync_domain::Mode;
use paysync_domain::paypal::headers;
use paysync_domain::paypal::signature::{AUTH_ALGO, sign_local};
use paysync_receiver::{AuthorizeNetSettings, PaypalSettings, Settings, SquareSettings};
use paysync_testkit::{TestBroker, fixtures_dir, sample};
use secrecy::SecretString;
use serde_json::Value;

use crate::helpers::{assert_nothing_published, settings, spawn};

fn vectors() -> Value {
    let text = std::fs::read_to_string(fixtures_dir().join("signature-vectors-more.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(fixtures_dir().join(path)).unwrap()
}

fn outcome(scrape: &str, provider: &str, outcome: &str) -> f64 {
    sample(
        scrape,
        "paysync_webhooks_received_total",
        &[("outcome", outcome), ("provider", provider)],
    )
}

fn only(mut s: Settings) -> Settings {
    s.stripe = None;
    s
}

async fn queued(broker: &TestBroker, n: usize) -> Vec<paysync_testkit::TakenMessage> {
    broker
        .take_messages(&broker.topology().work_queue(), n, Duration::from_secs(5))
        .await
        .unwrap()
}

#[tokio::test]
async fn squares_captured_delivery_is_accepted_and_a_changed_byte_is_refused() {
    let broker = TestBroker::new();
    let v: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures_dir().join("signature-vectors.json")).unwrap(),
    )
    .unwrap();
    let case = &v["square"]["cases"][0];
    let mut s = only(settings(broker.settings("receiver"), Mode::Test));
    s.square = Some(SquareSettings {
        notification_url: case["notification_url"].as_str().unwrap().to_owned(),
        keys: vec![
            SecretString::from("rotated-out".to_owned()),
            SecretString::from(case["signature_key"].as_str().unwrap().to_owned()),
        ],
        mode: Mode::Test,
    });
    let app = spawn(s).await;
    let body = case["request_body"].as_str().unwrap().as_bytes().to_vec();
    let sig = case["signature_header"].as_str().unwrap();
    let post = |body: Vec<u8>, sig: &str| {
        app.client
            .post(format!("{}/webhooks/square", app.base))
            .header("x-square-hmacsha256-signature", sig)
            .body(body)
            .send()
    };
    let r = post(body.clone(), sig).await.unwrap();
    assert_eq!(r.status(), 200);
    let m = queued(&broker, 1).await;
    assert_eq!(m[0].body, body);
    assert_eq!(
        m[0].message_id(),
        Some("ac3ac95b-f97d-458c-a6e6-18981597e05f")
    );

    let mut changed = body.clone();
    changed[10] ^= 1;
    let r = post(changed, sig).await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("signature does not match"));
    assert_nothing_published(&broker).await;
    // Stripe is not configured here: its endpoint does not exist, nor does an unknown one.
    for path in ["stripe", "nope", "Square"] {
        let r = app
            .client
            .post(format!("{}/webhooks/{path}", app.base))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    let scrape = app.scrape().await;
    assert_eq!(outcome(&scrape, "square", "accepted"), 1.0);
    assert_eq!(outcome(&scrape, "square", "bad_signature"), 1.0);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn authorizenets_captured_delivery_is_accepted_and_a_wrong_key_refused() {
    let broker = TestBroker::new();
    let v = vectors();
    let captured = &v["authorize_net"]["captured_2017_04"];
    let case = captured["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["expect"] == "valid"
                && c["body_file"]
                    .as_str()
                    .is_some_and(|f| f.ends_with("authcapture.created.json"))
        })
        .unwrap();
    let key = captured["signature_key"].as_str().unwrap();
    let body = fixture(case["body_file"].as_str().unwrap());
    let header = case["header"].as_str().unwrap();
    for (keys, status) in [(key.to_owned(), 200), ("A".repeat(128), 400)] {
        let mut s = only(settings(broker.settings("receiver"), Mode::Test));
        s.authorizenet = Some(AuthorizeNetSettings {
            keys: vec![SecretString::from(keys)],
            mode: Mode::Test,
        });
        let app = spawn(s).await;
        let r = app
            .client
            .post(format!("{}/webhooks/authorizenet", app.base))
            .header("X-ANET-Signature", header)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status);
        if status == 200 {
            let m = queued(&broker, 1).await;
            assert_eq!(m[0].body, body);
        } else {
            assert_nothing_published(&broker).await;
        }
        app.stop().await.unwrap();
    }
}

/// A certificate server on a loopback port serving the local test PKI's leaves.
async fn cert_server() -> (u16, tokio::task::JoinHandle<()>) {
    let dir = fixtures_dir().join("paypal-local");
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    let (good, expired, rogue) = (
        read("leaf.pem"),
        read("leaf-expired.pem"),
        read("leaf-rogue.pem"),
    );
    let app = axum::Router::new()
        .route(
            "/v1/notifications/certs/CERT-good",
            get(move || async move { good }),
        )
        .route(
            "/v1/notifications/certs/CERT-expired",
            get(move || async move { expired }),
        )
        .route(
            "/v1/notifications/certs/CERT-rogue",
            get(move || async move { rogue }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    (
        port,
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() }),
    )
}

#[tokio::test]
async fn paypal_checks_the_certificate_and_answers_503_when_it_cannot_be_fetched() {
    let broker = TestBroker::new();
    let (port, server) = cert_server().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let mut s = only(settings(broker.settings("receiver"), Mode::Test));
    let mut p = PaypalSettings::new("WH-OURS", Mode::Test);
    p.cert_hosts = vec![
        format!("127.0.0.1:{port}"),
        format!("127.0.0.1:{dead_port}"),
    ];
    p.extra_roots = vec![fixture("paypal-local/ca.pem")];
    p.tolerance_secs = 300;
    s.paypal = Some(p);
    let app = spawn(s).await;
    let body = fixture("paypal/PAYMENT.CAPTURE.COMPLETED.json");
    let key = fixture("paypal-local/leaf.key.pem");
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap();
    let fmt = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let send = |cert_url: String,
                time: String,
                algo: &'static str,
                webhook_id: &'static str,
                body: Vec<u8>| {
        let sig = sign_local(
            &key,
            &ring::rand::SystemRandom::new(),
            "tx-1",
            &time,
            webhook_id,
            &body,
        )
        .unwrap();
        app.client
            .post(format!("{}/webhooks/paypal", app.base))
            .header(headers::TRANSMISSION_ID, "tx-1")
            .header(headers::TRANSMISSION_TIME, time)
            .header(headers::TRANSMISSION_SIG, sig)
            .header(headers::AUTH_ALGO, algo)
            .header(headers::CERT_URL, cert_url)
            .body(body)
            .send()
    };
    let url =
        |p: u16, name: &str| format!("http://127.0.0.1:{p}/v1/notifications/certs/CERT-{name}");
    let refusals = [
        (
            url(port + 1, "good"),
            fmt(now),
            AUTH_ALGO,
            "WH-OURS",
            400,
            "bad_cert_url",
        ),
        (
            "https://api.paypal.com.evil.test/v1/notifications/certs/CERT-x".into(),
            fmt(now),
            AUTH_ALGO,
            "WH-OURS",
            400,
            "bad_cert_url",
        ),
        (
            url(port, "rogue"),
            fmt(now),
            AUTH_ALGO,
            "WH-OURS",
            400,
            "bad_certificate",
        ),
        (
            url(port, "expired"),
            fmt(now),
            AUTH_ALGO,
            "WH-OURS",
            400,
            "cert_expired",
        ),
        (
            url(port, "good"),
            fmt(now),
            "SHA1withRSA",
            "WH-OURS",
            400,
            "bad_algorithm",
        ),
        (
            url(port, "good"),
            fmt(now - time::Duration::hours(1)),
            AUTH_ALGO,
            "WH-OURS",
            400,
            "stale_timestamp",
        ),
        (
            url(port, "good"),
            fmt(now),
            AUTH_ALGO,
            "WH-THEIRS",
            400,
            "bad_signature",
        ),
        (
            url(dead_port, "good"),
            fmt(now),
            AUTH_ALGO,
            "WH-OURS",
            503,
            "unavailable",
        ),
    ];
    for (cert_url, time, algo, webhook_id, status, label) in refusals {
        let r = send(cert_url.clone(), time, algo, webhook_id, body.clone())
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{label}: {cert_url}");
        if status == 503 {
            assert!(r.headers().contains_key("retry-after"));
        }
        assert_nothing_published(&broker).await;
        let scrape = app.scrape().await;
        assert!(outcome(&scrape, "paypal", label) >= 1.0, "{label} counted");
    }
    let r = send(
        url(port, "good"),
        fmt(now),
        AUTH_ALGO,
        "WH-OURS",
        body.clone(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let m = queued(&broker, 1).await;
    assert_eq!(m[0].body, body);
    assert_eq!(
        m[0].message_id(),
        Some("WH-58D329510W468432D-8HN650336L201105X")
    );
    // A changed byte of the body after signing fails.
    let sig_body = body.clone();
    let mut changed = body;
    changed[20] ^= 1;
    let sig = sign_local(
        &key,
        &ring::rand::SystemRandom::new(),
        "tx-2",
        &fmt(now),
        "WH-OURS",
        &sig_body,
    )
    .unwrap();
    let r = app
        .client
        .post(format!("{}/webhooks/paypal", app.base))
        .header(headers::TRANSMISSION_ID, "tx-2")
        .header(headers::TRANSMISSION_TIME, fmt(now))
        .header(headers::TRANSMISSION_SIG, sig)
        .header(headers::AUTH_ALGO, AUTH_ALGO)
        .header(headers::CERT_URL, url(port, "good"))
        .body(changed)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_nothing_published(&broker).await;
    app.stop().await.unwrap();
    server.abort();
}

/// Every payload of the three fixture folders, signed as its provider signs, is accepted and
/// published unchanged (whether the worker applies or ignores it is the mappers' tests).
#[tokio::test]
async fn every_fixture_signed_is_accepted() {
    let broker = TestBroker::new();
    let (port, server) = cert_server().await;
    let mut s = only(settings(broker.settings("receiver"), Mode::Test));
    let square_url = "https://hooks.example.test/webhooks/square";
    let anet_key = "B".repeat(128);
    s.square = Some(SquareSettings {
        notification_url: square_url.into(),
        keys: vec![SecretString::from("sq-key".to_owned())],
        mode: Mode::Test,
    });
    s.authorizenet = Some(AuthorizeNetSettings {
        keys: vec![SecretString::from(anet_key.clone())],
        mode: Mode::Test,
    });
    let mut p = PaypalSettings::new("WH-OURS", Mode::Test);
    p.cert_hosts = vec![format!("127.0.0.1:{port}")];
    p.extra_roots = vec![fixture("paypal-local/ca.pem")];
    s.paypal = Some(p);
    let app = spawn(s).await;
    let key = fixture("paypal-local/leaf.key.pem");
    let mut sent = 0;
    for provider in ["square", "authorizenet", "paypal"] {
        let mut files: Vec<_> = std::fs::read_dir(fixtures_dir().join(provider))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        for path in files {
            let body = std::fs::read(&path).unwrap();
            let mut req = app.client.post(format!("{}/webhooks/{provider}", app.base));
            req = match provider {
                "square" => req.header(
                    "x-square-hmacsha256-signature",
                    paysync_domain::square::sign("sq-key", square_url, &body),
                ),
                "authorizenet" => req.header(
                    "X-ANET-Signature",
                    paysync_domain::authorizenet::sign(&anet_key, &body),
                ),
                _ => {
                    let time = time::OffsetDateTime::now_utc()
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap();
                    let sig = sign_local(
                        &key,
                        &ring::rand::SystemRandom::new(),
                        "tx",
                        &time,
                        "WH-OURS",
                        &body,
                    )
                    .unwrap();
                    req.header(headers::TRANSMISSION_ID, "tx")
                        .header(headers::TRANSMISSION_TIME, time)
                        .header(headers::TRANSMISSION_SIG, sig)
                        .header(headers::AUTH_ALGO, AUTH_ALGO)
                        .header(
                            headers::CERT_URL,
                            format!("http://127.0.0.1:{port}/v1/notifications/certs/CERT-good"),
                        )
                }
            };
            let r = req.body(body).send().await.unwrap();
            let status = r.status();
            assert_eq!(
                status,
                200,
                "{}: {}",
                path.display(),
                r.text().await.unwrap()
            );
            sent += 1;
        }
    }
    assert!(sent >= 57, "{sent} fixtures");
    assert_eq!(queued(&broker, sent).await.len(), sent);
    app.stop().await.unwrap();
    server.abort();
}
