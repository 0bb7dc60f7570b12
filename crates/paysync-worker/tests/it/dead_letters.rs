//! Permanent failures, exhausted retries and malformed messages end in the dead-letter table
//! with their error, and never loop.

use std::sync::atomic::Ordering;
use std::time::Duration;

use paysync_domain::message::HeaderValue;
use paysync_store::DeadLetterRow;
use paysync_testkit::{RawProperties, TestBroker, TestDb, poll_until, stripe_event};

use crate::helpers::*;

async fn dead_letters(db: &TestDb, n: usize) -> Vec<DeadLetterRow> {
    let store = db.store().await.unwrap();
    poll_until(
        Duration::from_secs(40),
        &format!("{n} dead letters"),
        || async {
            let rows = store.dead_letters(None, 100).await.unwrap();
            (rows.len() >= n).then_some(rows)
        },
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_permanent_failure_goes_straight_to_the_dead_letter_table_with_its_error() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let (worker, calls) = scripted_worker(
        &broker,
        &db,
        "charge.dispute.created",
        Script::FailPermanently,
        5,
    )
    .await;
    publish_one(&broker, "evt_permanent", "charge.dispute.created").await;

    let rows = dead_letters(&db, 1).await;
    let d = &rows[0];
    assert_eq!(d.event_id.as_deref(), Some("evt_permanent"));
    assert_eq!(d.event_type.as_deref(), Some("charge.dispute.created"));
    assert_eq!(d.error_kind, "test_contradiction");
    assert!(
        d.error_chain.contains("contradiction in evt_permanent"),
        "{}",
        d.error_chain
    );
    assert_eq!(d.attempts, 1, "no retries for a permanent failure");
    assert_eq!(d.state, "open");
    assert_eq!(d.routing_key, "stripe.charge.dispute.created");
    assert_eq!(
        d.body,
        stripe_event("evt_permanent", "charge.dispute.created", false)
    );
    assert!(
        d.headers["paysync-received-at-ms"].is_i64(),
        "headers kept: {}",
        d.headers
    );
    assert!(d.first_failed_at <= d.last_failed_at);
    assert_eq!(calls.count.load(Ordering::SeqCst), 1);
    // Rolled back: not in the event log, so a fixed handler can apply it on redrive.
    assert!(!is_logged(&db, "evt_permanent").await);
    worker.stop().await;
}

#[tokio::test]
async fn exhausting_the_attempts_dead_letters_with_attempts_equal_to_the_maximum() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let (worker, calls) = scripted_worker(
        &broker,
        &db,
        "invoice.paid",
        Script::FailTransiently(u32::MAX),
        3,
    )
    .await;
    publish_one(&broker, "evt_exhausted", "invoice.paid").await;

    let rows = dead_letters(&db, 1).await;
    let d = &rows[0];
    assert_eq!(d.attempts, 3);
    assert_eq!(d.error_kind, "test_dependency_down");
    assert!(
        d.error_chain
            .starts_with("retries exhausted after 3 attempts"),
        "{}",
        d.error_chain
    );
    assert!(
        d.error_chain.contains("dependency down at attempt 3"),
        "{}",
        d.error_chain
    );
    assert!(
        d.last_failed_at > d.first_failed_at,
        "first failure kept across retries"
    );
    assert_eq!(
        d.routing_key, "stripe.invoice.paid",
        "original routing kept across delay hops"
    );
    assert_eq!(calls.count.load(Ordering::SeqCst), 3);
    worker.stop().await;
}

/// The properties an earlier release (message format 1) published with.
fn event_headers(id: &str) -> RawProperties {
    let int = |name: &str, i| (name.to_owned(), HeaderValue::Int(i));
    RawProperties {
        persistent: true,
        message_id: Some(id.into()),
        kind: None,
        headers: Some(vec![
            int("paysync-format", 1),
            ("paysync-provider".into(), HeaderValue::Str("stripe".into())),
            (
                "paysync-event-type".into(),
                HeaderValue::Str("invoice.paid".into()),
            ),
            int("paysync-event-created", 1),
            ("paysync-livemode".into(), HeaderValue::Bool(false)),
            int("paysync-received-at-ms", 1),
            int("paysync-attempt", 1),
        ]),
    }
}

/// A worker for `invoice.paid` that succeeds, with the topology declared for raw publishes.
async fn worker_for_raw_messages(
    broker: &TestBroker,
    db: &TestDb,
) -> (Running, std::sync::Arc<Calls>) {
    let (worker, calls) = scripted_worker(broker, db, "invoice.paid", Script::Succeed, 5).await;
    broker.declare().await.unwrap();
    (worker, calls)
}

#[tokio::test]
async fn malformed_messages_land_in_the_dead_letter_table_and_do_not_loop() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let (worker, calls) = worker_for_raw_messages(&broker, &db).await;
    let t = broker.topology();
    let (events, work) = (t.events_exchange(), t.work_queue());
    let raw: [(&str, &str, Vec<u8>, RawProperties); 4] = [
        // A body that is not JSON, with valid headers.
        (
            &events,
            "stripe.invoice.paid",
            b"{not json".to_vec(),
            event_headers("evt_garbage"),
        ),
        // No headers at all.
        (
            &events,
            "stripe.invoice.paid",
            b"{}".to_vec(),
            RawProperties::default(),
        ),
        // Format 2: the type property and the body disagree on the event type.
        (
            "",
            &work,
            stripe_event("evt_typed", "charge.refunded", false),
            RawProperties {
                message_id: Some("evt_typed".into()),
                kind: Some("stripe.invoice.paid".into()),
                headers: Some(vec![("paysync-received-at-ms".into(), HeaderValue::Int(1))]),
                ..RawProperties::default()
            },
        ),
        // Headers and body disagree on the id.
        (
            &events,
            "stripe.invoice.paid",
            stripe_event("evt_other", "invoice.paid", false),
            event_headers("evt_claimed"),
        ),
    ];
    for (exchange, routing_key, body, props) in &raw {
        broker
            .publish_raw(exchange, routing_key, body, props)
            .await
            .unwrap();
    }

    let rows = dead_letters(&db, 4).await;
    let mut kinds: Vec<&str> = rows.iter().map(|d| d.error_kind.as_str()).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "malformed_body",
            "malformed_body",
            "malformed_body",
            "malformed_message"
        ]
    );
    let typed = rows
        .iter()
        .find(|d| d.event_id.as_deref() == Some("evt_typed"))
        .unwrap();
    assert!(
        typed.error_chain.contains("does not match message type"),
        "{}",
        typed.error_chain
    );
    assert_eq!(typed.event_type.as_deref(), Some("invoice.paid"));
    assert!(rows.iter().all(|d| d.attempts == 1));
    assert_eq!(calls.count.load(Ordering::SeqCst), 0);
    // Nothing left to loop on.
    work_queue_drained(&broker).await;
    for level in 0..paysync_amqp::DELAY_LEVELS {
        assert_eq!(
            broker.message_count(&t.delay_level(level)).await.unwrap(),
            0
        );
    }
    assert_eq!(dead_letter_count(&db, 100).await, 4);
    worker.stop().await;
}

#[tokio::test]
async fn a_message_of_an_earlier_release_is_applied() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let (worker, calls) = worker_for_raw_messages(&broker, &db).await;
    let t = broker.topology();
    // Format 1 through the events exchange, as receivers before the lean format published.
    broker
        .publish_raw(
            &t.events_exchange(),
            "stripe.invoice.paid",
            &stripe_event("evt_format_1", "invoice.paid", false),
            &event_headers("evt_format_1"),
        )
        .await
        .unwrap();
    let store = db.store().await.unwrap();
    let logged = poll_until(Duration::from_secs(20), "the event logged", || async {
        store.event("stripe", "evt_format_1").await.unwrap()
    })
    .await
    .unwrap();
    assert_eq!(logged.event_type, "invoice.paid");
    assert_eq!(calls.count.load(Ordering::SeqCst), 1);
    assert!(store.dead_letters(None, 10).await.unwrap().is_empty());
    worker.stop().await;
}

#[tokio::test]
async fn a_panicking_handler_is_dead_lettered_not_left_unacked() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let (worker, _calls) = scripted_worker(&broker, &db, "invoice.paid", Script::Panic, 5).await;
    publish_one(&broker, "evt_panics", "invoice.paid").await;
    let rows = dead_letters(&db, 1).await;
    assert_eq!(rows[0].error_kind, "handler_panicked");
    assert!(
        rows[0].error_chain.contains("handler bug for evt_panics"),
        "{}",
        rows[0].error_chain
    );
    assert!(!is_logged(&db, "evt_panics").await);
    worker.stop().await;
}
