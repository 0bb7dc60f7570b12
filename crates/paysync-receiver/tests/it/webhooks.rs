//! What the receiver does with genuine and with bad Stripe webhooks.

use std::collections::HashSet;
use std::time::Duration;

use paysync_domain::Mode;
use paysync_domain::stripe::signature::sign_header;
use paysync_testkit::{TestBroker, now_secs, sample, stripe_event, stripe_fixture};

use crate::helpers::{SECRET, assert_nothing_published, received, settings, spawn, spawn_for};

#[tokio::test]
async fn signed_fixture_is_accepted_and_queued_byte_identical_with_metadata() {
    let broker = TestBroker::new();
    let app = spawn_for(&broker).await;
    let body = stripe_fixture("charge.refunded.json");

    let response = app.post_signed(&body).await;
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["event_id"], "evt_3KtQThJDPojXS6LN0E06aNxq");

    let topology = broker.topology();
    let messages = broker
        .take_messages(&topology.work_queue(), 1, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    assert_eq!(
        message.body, body,
        "queued body must be the raw request bytes"
    );
    assert_eq!(
        message.routing_key,
        topology.work_queue(),
        "published straight into the work queue through the default exchange"
    );
    assert_eq!(message.delivery_mode(), Some(2), "persistent");
    assert_eq!(message.message_id(), Some("evt_3KtQThJDPojXS6LN0E06aNxq"));
    assert_eq!(message.content_type(), Some("application/json"));
    let stamped = message.timestamp().expect("timestamp set") as i64;
    assert!(
        (stamped - now_secs()).abs() < 60,
        "timestamp is the receive time"
    );
    assert_eq!(
        message.kind(),
        Some("stripe.charge.refunded"),
        "the type property names provider and event type"
    );
    let read = message.read_event().unwrap();
    let (meta, attempt) = (read.meta, read.attempt);
    assert_eq!(attempt, 1);
    assert_eq!(meta.event_type, "charge.refunded");
    assert_eq!(meta.api_version.as_deref(), Some("2020-03-02"));
    assert_eq!(meta.created, 1_619_701_111);
    assert!((meta.received_at_ms / 1000 - now_secs()).abs() < 60);
    assert_eq!(
        message.header_i64("paysync-received-at-ms"),
        Some(meta.received_at_ms)
    );
    let names: Vec<&str> = message
        .header_names()
        .into_iter()
        .filter(|k| !k.starts_with("x-"))
        .collect();
    assert_eq!(
        names,
        ["paysync-received-at-ms"],
        "one header of ours (each costs the broker CPU); x- ones are the broker's"
    );

    let scrape = app.scrape().await;
    assert_eq!(received(&scrape, "accepted"), 1.0);
    assert_eq!(
        sample(
            &scrape,
            "paysync_publish_confirm_duration_seconds_count",
            &[]
        ),
        1.0
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn each_bad_input_gets_its_status_and_nothing_is_published() {
    let broker = TestBroker::new();
    let app = spawn_for(&broker).await;
    let good = stripe_event("evt_bad_inputs_1", "invoice.paid", false);
    let now = now_secs();
    // Signed with the receiver's secret, now.
    let ours = |body: &[u8]| Some(sign_header(SECRET, now, body));

    // (case, body, Stripe-Signature header, expected status, expected reason fragment)
    type Case = (&'static str, Vec<u8>, Option<String>, u16, &'static str);
    let cases: Vec<Case> = vec![
        (
            "missing signature",
            good.clone(),
            None,
            400,
            "missing Stripe-Signature",
        ),
        (
            "garbage header",
            good.clone(),
            Some("nonsense".into()),
            400,
            "unable to extract timestamp",
        ),
        (
            "only v0",
            good.clone(),
            Some(format!("t={now},v0=abc")),
            400,
            "v1",
        ),
        (
            "wrong secret",
            good.clone(),
            Some(sign_header("whsec_other", now, &good)),
            400,
            "no signature matches",
        ),
        (
            "tampered body",
            {
                let mut b = good.clone();
                b[10] ^= 1;
                b
            },
            ours(&good),
            400,
            "no signature matches",
        ),
        (
            "stale timestamp",
            good.clone(),
            Some(sign_header(SECRET, now - 301, &good)),
            400,
            "tolerance",
        ),
        (
            "malformed JSON",
            b"{not json".to_vec(),
            ours(b"{not json"),
            400,
            "malformed JSON",
        ),
        (
            "missing id",
            br#"{"type":"a","created":1,"livemode":false}"#.to_vec(),
            ours(br#"{"type":"a","created":1,"livemode":false}"#),
            400,
            "`id`",
        ),
        (
            "missing type",
            br#"{"id":"evt_x","created":1,"livemode":false}"#.to_vec(),
            ours(br#"{"id":"evt_x","created":1,"livemode":false}"#),
            400,
            "`type`",
        ),
        (
            "wrong mode",
            stripe_event("evt_live", "invoice.paid", true),
            ours(&stripe_event("evt_live", "invoice.paid", true)),
            400,
            "live mode",
        ),
    ];
    for (name, body, header, status, reason) in cases {
        let response = app.post_with_header(&body, header).await;
        assert_eq!(response.status().as_u16(), status, "{name}");
        let text = response.text().await.unwrap();
        assert!(
            text.contains(reason),
            "{name}: body {text:?} lacks {reason:?}"
        );
        assert_eq!(text.lines().count(), 1, "{name}: one-line reason");
    }

    // Body cap: 1 MiB + 1 byte, correctly signed, is refused before verification.
    let mut huge = b"{\"id\":\"evt_big\",\"pad\":\"".to_vec();
    huge.resize(1024 * 1024 + 1, b'a');
    let response = app.post_signed(&huge).await;
    assert_eq!(response.status(), 413);

    assert_nothing_published(&broker).await;
    let scrape = app.scrape().await;
    let label = |o: &str| received(&scrape, o);
    assert_eq!(label("missing_signature"), 1.0);
    assert_eq!(label("bad_signature"), 4.0);
    assert_eq!(label("stale_timestamp"), 1.0);
    assert_eq!(label("malformed"), 3.0);
    assert_eq!(label("wrong_mode"), 1.0);
    assert_eq!(label("too_large"), 1.0);
    assert_eq!(label("accepted"), 0.0);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn live_mode_endpoint_accepts_the_live_fixture_only() {
    let broker = TestBroker::new();
    let app = spawn(settings(broker.settings("receiver"), Mode::Live)).await;
    assert_eq!(
        app.post_signed(&stripe_fixture("checkout.session.completed.json"))
            .await
            .status(),
        200
    );
    assert_eq!(
        app.post_signed(&stripe_fixture("invoice.paid.json"))
            .await
            .status(),
        400
    );
    assert_eq!(
        broker
            .message_count(&broker.topology().work_queue())
            .await
            .unwrap(),
        1
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn two_hundred_concurrent_posts_are_all_confirmed_and_queued() {
    let broker = TestBroker::new();
    let app = spawn_for(&broker).await;
    let ids: Vec<String> = (0..200).map(|i| format!("evt_concurrent_{i:03}")).collect();
    let responses = futures::future::join_all(ids.iter().map(|id| {
        let body = stripe_event(id, "payment_intent.succeeded", false);
        let app = &app;
        async move { app.post_signed(&body).await.status().as_u16() }
    }))
    .await;
    assert!(
        responses.iter().all(|s| *s == 200),
        "statuses: {responses:?}"
    );

    let messages = broker
        .take_messages(&broker.topology().work_queue(), 201, Duration::from_secs(2))
        .await
        .unwrap();
    let queued: HashSet<String> = messages
        .iter()
        .map(|m| m.message_id().unwrap().to_owned())
        .collect();
    assert_eq!(messages.len(), 200);
    assert_eq!(queued, ids.into_iter().collect::<HashSet<_>>());
    app.stop().await.unwrap();
}

#[tokio::test]
async fn duplicate_deliveries_are_each_queued_for_the_worker_to_dedupe() {
    let broker = TestBroker::new();
    let app = spawn_for(&broker).await;
    let body = stripe_event("evt_dup", "invoice.paid", false);
    for _ in 0..3 {
        assert_eq!(app.post_signed(&body).await.status(), 200);
    }
    let queue = broker.topology().work_queue();
    assert_eq!(
        broker
            .take_messages(&queue, 4, Duration::from_millis(300))
            .await
            .unwrap()
            .len(),
        3
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn health_and_readiness_report_a_connected_receiver() {
    let broker = TestBroker::new();
    let app = spawn_for(&broker).await;
    assert_eq!(app.get(format!("{}/healthz", app.base)).await.status(), 200);
    // Readiness follows the broker connection, which the supervisor opens at start.
    let ready = paysync_testkit::poll_until(Duration::from_secs(10), "readyz 200", || async {
        (app.get(format!("{}/readyz", app.base)).await.status() == 200).then_some(())
    })
    .await;
    assert!(ready.is_ok(), "{ready:?}");
    assert_eq!(
        app.get(format!("{}/readyz", app.metrics_base))
            .await
            .status(),
        200
    );
    let scrape = app.scrape().await;
    assert!(
        scrape.contains("paysync_build_info{process=\"receiver\""),
        "{scrape}"
    );
    // The public port serves no metrics.
    assert_eq!(app.get(format!("{}/metrics", app.base)).await.status(), 404);
    app.stop().await.unwrap();
}
