//! A lane's mechanics with a scripted destination: every delivery once, retries and their
//! end, pauses, disablement, the breaker, leases across crashes and two dispatchers.

use std::sync::Arc;
use std::time::Duration;

use paysync_dispatcher::{FailureKind, Sender};
use paysync_domain::breaker::BreakerPolicy;
use paysync_domain::outbound::Destination;
use paysync_store::{AttemptRecord, Completion};
use paysync_testkit::{TestDb, poll_until, sample, scrape};

use crate::helpers::*;

const DEADLINE: Duration = Duration::from_secs(30);

fn lane(s: &Scripted) -> (Arc<dyn Sender>, paysync_dispatcher::LaneConfig) {
    (Arc::new(s.clone()), fast_lane(s.destination))
}

async fn until_states(db: &TestDb, want: &[(&str, i64)]) {
    let want: Vec<(String, i64)> = want.iter().map(|(s, n)| ((*s).to_owned(), *n)).collect();
    poll_until(DEADLINE, &format!("delivery states {want:?}"), || async {
        (states(db).await == want).then_some(())
    })
    .await
    .expect("states reached");
}

#[tokio::test]
async fn every_delivery_is_sent_once_and_its_attempt_recorded() {
    let db = TestDb::new();
    db.store().await.expect("store");
    let ids = seed(&db, Destination::Chat, "chat.churn", 25).await;
    let chat = Scripted::new(Destination::Chat);
    let (app, port) = dispatcher(&db, "d1", vec![lane(&chat)]).await;
    until_states(&db, &[("sent", 25)]).await;
    let mut called: Vec<i64> = chat.calls().iter().map(|c| c.id).collect();
    called.sort_unstable();
    assert_eq!(called, ids, "each delivery sent exactly once");
    let c = db.client().await.expect("client");
    let attempts: i64 = c
        .query_one(
            "select count(*) from outbox_attempts where outcome = 'sent'",
            &[],
        )
        .await
        .expect("attempts")
        .get(0);
    assert_eq!(attempts, 25);
    let text = scrape(port).await.expect("scrape");
    let sent = sample(
        &text,
        "paysync_outbox_attempts_total",
        &[
            ("destination", "chat"),
            ("operation", "chat.churn"),
            ("outcome", "sent"),
        ],
    );
    assert_eq!(sent, 25.0);
    app.stop().await.expect("stops");
}

#[tokio::test]
async fn a_transient_failure_is_retried_and_an_exhausted_one_is_dead() {
    let db = TestDb::new();
    db.store().await.expect("store");
    seed(&db, Destination::Chat, "chat.churn", 1).await;
    let chat = Scripted::new(Destination::Chat);
    chat.then(Answer::Fail(FailureKind::Transient { ambiguous: false }), 2);
    let (app, _) = dispatcher(&db, "d1", vec![lane(&chat)]).await;
    until_states(&db, &[("sent", 1)]).await;
    let attempts: Vec<u32> = chat.calls().iter().map(|c| c.attempt).collect();
    assert_eq!(attempts, [1, 2, 3]);
    app.stop().await.expect("stops");

    // Every attempt fails: dead after the fifth, with a fingerprint.
    let db = TestDb::new();
    db.store().await.expect("store");
    seed(&db, Destination::Chat, "chat.churn", 1).await;
    let chat = Scripted::new(Destination::Chat);
    chat.then(
        Answer::Fail(FailureKind::Transient { ambiguous: false }),
        100,
    );
    let (app, _) = dispatcher(&db, "d1", vec![lane(&chat)]).await;
    until_states(&db, &[("dead", 1)]).await;
    assert_eq!(chat.calls().len(), 5);
    let c = db.client().await.expect("client");
    let fp: String = c
        .query_one("select fingerprint from outbox_deliveries", &[])
        .await
        .expect("row")
        .get(0);
    assert_eq!(fp, "chat:exhausted:scripted");
    app.stop().await.expect("stops");
}

#[tokio::test]
async fn a_payload_error_is_dead_at_once_and_a_config_error_disables_the_destination() {
    let db = TestDb::new();
    db.store().await.expect("store");
    seed(&db, Destination::Chat, "chat.churn", 1).await;
    let chat = Scripted::new(Destination::Chat);
    chat.then(Answer::Fail(FailureKind::Payload), 1);
    let (app, port) = dispatcher(&db, "d1", vec![lane(&chat)]).await;
    until_states(&db, &[("dead", 1)]).await;
    assert_eq!(chat.calls().len(), 1);
    let text = scrape(port).await.expect("scrape");
    assert_eq!(
        sample(
            &text,
            "paysync_outbox_dead_total",
            &[("destination", "chat")]
        ),
        1.0
    );
    app.stop().await.expect("stops");

    let db = TestDb::new();
    let store = db.store().await.expect("store");
    seed(&db, Destination::Chat, "chat.churn", 3).await;
    let chat = Scripted::new(Destination::Chat);
    // One batch of three goes out before the first answer comes back: all three are refused.
    chat.then(Answer::Fail(FailureKind::Config), 3);
    let (app, port) = dispatcher(&db, "d1", vec![lane(&chat)]).await;
    poll_until(DEADLINE, "the destination disabled", || async {
        let d = store.destination("chat").await.expect("row")?;
        d.disabled_reason.is_some().then_some(d)
    })
    .await
    .expect("disabled");
    poll_until(DEADLINE, "the disabled gauge", || async {
        let text = scrape(port).await.ok()?;
        (sample(
            &text,
            "paysync_outbox_destination_disabled",
            &[("destination", "chat")],
        ) == 1.0)
            .then_some(())
    })
    .await
    .expect("gauge");
    // Nothing burns while disabled: the items are pending again, their attempts not counted.
    // (Counted once all three answered: the batch's last send may still be in flight when the
    // first refusal disables the destination.)
    until_states(&db, &[("pending", 3)]).await;
    let before = chat.calls().len();
    let c = db.client().await.expect("client");
    let attempts: i64 = c
        .query_one("select sum(attempts) from outbox_deliveries", &[])
        .await
        .expect("sum")
        .get(0);
    assert_eq!(attempts, 0);
    // An operator fixes it and resumes: everything goes.
    store
        .resume_destination("chat", "test")
        .await
        .expect("resume");
    until_states(&db, &[("sent", 3)]).await;
    assert_eq!(
        before, 3,
        "one batch hit the misconfigured destination, then nothing"
    );
    app.stop().await.expect("stops");
}

#[tokio::test]
async fn a_rate_limit_pauses_the_destination_without_counting_an_attempt() {
    let db = TestDb::new();
    let store = db.store().await.expect("store");
    seed(&db, Destination::Hubspot, "crm.task", 1).await;
    let crm = Scripted::new(Destination::Hubspot);
    crm.then(
        Answer::Fail(FailureKind::RateLimited {
            pause: Duration::from_secs(2),
        }),
        1,
    );
    let (app, _) = dispatcher(&db, "d1", vec![lane(&crm)]).await;
    until_states(&db, &[("sent", 1)]).await;
    let calls = crm.calls();
    assert_eq!(calls.len(), 2);
    let gap = calls[1].at - calls[0].at;
    assert!(
        gap >= Duration::from_secs(2),
        "nothing reached it during the pause ({gap:?})"
    );
    assert_eq!(calls[1].attempt, 1, "the throttled attempt was not counted");
    let row = store
        .destination("hubspot")
        .await
        .expect("read")
        .expect("row");
    assert!(
        row.pause_reason
            .is_some_and(|r| r.starts_with("rate_limited"))
    );
    app.stop().await.expect("stops");
}

#[tokio::test]
async fn an_open_breaker_lets_one_probe_through_per_open_period() {
    let db = TestDb::new();
    db.store().await.expect("store");
    seed(&db, Destination::Chat, "chat.churn", 10).await;
    let chat = Scripted::new(Destination::Chat);
    chat.then(Answer::Fail(FailureKind::Transient { ambiguous: false }), 8);
    let mut config = fast_lane(Destination::Chat);
    config.concurrency = 1;
    config.retry.max_attempts = 50;
    config.breaker = BreakerPolicy {
        consecutive_failures: 3,
        base_open: Duration::from_millis(800),
        max_open: Duration::from_millis(800),
        jitter: 0.0,
        ..BreakerPolicy::default()
    };
    let (app, port) = dispatcher(&db, "d1", vec![(Arc::new(chat.clone()), config)]).await;
    until_states(&db, &[("sent", 10)]).await;
    let calls = chat.calls();
    // Three failures trip it; then one probe per 800 ms open period until the script runs out.
    let after_trip: Vec<_> = calls.iter().skip(3).take(5).collect();
    for pair in after_trip.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(700),
            "a probe per open period, got {gap:?}"
        );
    }
    let text = scrape(port).await.expect("scrape");
    let opened = sample(
        &text,
        "paysync_outbox_breaker_transitions_total",
        &[("destination", "chat"), ("to", "open")],
    );
    assert!(opened >= 1.0, "the breaker opened ({opened})");
    let dead: i64 = db
        .client()
        .await
        .expect("client")
        .query_one(
            "select count(*) from outbox_deliveries where state = 'dead'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(dead, 0);
    app.stop().await.expect("stops");
}

#[tokio::test]
async fn a_crash_mid_send_is_taken_back_and_sent_again_under_the_same_key() {
    let db = TestDb::new();
    db.store().await.expect("store");
    let ids = seed(&db, Destination::Email, "email.receipt", 1).await;
    let first = Scripted::new(Destination::Email);
    first.then(Answer::Hang(Duration::from_secs(3600)), 1);
    let mut s = settings(&db, "crashing");
    s.lease = Duration::from_secs(1);
    let (app, _) = dispatcher_with(s, vec![lane(&first)]).await;
    poll_until(DEADLINE, "the send to start", || async {
        (!first.calls().is_empty()).then_some(())
    })
    .await
    .expect("started");
    app.abort().await;
    let second = Scripted::new(Destination::Email);
    let (app, _) = dispatcher(&db, "survivor", vec![lane(&second)]).await;
    until_states(&db, &[("sent", 1)]).await;
    let (a, b) = (&first.calls()[0], &second.calls()[0]);
    assert_eq!((a.id, b.id), (ids[0], ids[0]));
    assert_eq!(a.key, b.key, "the resend carries the same idempotency key");
    assert_eq!(b.attempt, 2, "the interrupted attempt stays counted");
    app.stop().await.expect("stops");
}

#[tokio::test]
async fn two_dispatchers_on_one_backlog_never_send_a_delivery_twice() {
    let db = TestDb::new();
    db.store().await.expect("store");
    let ids = seed(&db, Destination::Chat, "chat.churn", 60).await;
    let (x, y) = (
        Scripted::new(Destination::Chat),
        Scripted::new(Destination::Chat),
    );
    let (a, _) = dispatcher(&db, "x", vec![lane(&x)]).await;
    let (b, _) = dispatcher(&db, "y", vec![lane(&y)]).await;
    until_states(&db, &[("sent", 60)]).await;
    let mut all: Vec<i64> = x
        .calls()
        .iter()
        .chain(y.calls().iter())
        .map(|c| c.id)
        .collect();
    all.sort_unstable();
    assert_eq!(all, ids);
    a.stop().await.expect("stops");
    b.stop().await.expect("stops");
}

#[tokio::test]
async fn claims_skip_locked_rows_and_a_stale_lease_completes_nothing() {
    let db = TestDb::new();
    let store = db.store().await.expect("store");
    seed(&db, Destination::Chat, "chat.churn", 10).await;
    let lease = Duration::from_secs(60);
    let (a, b) = tokio::join!(
        store.claim("chat", 6, lease, "a", false),
        store.claim("chat", 6, lease, "b", false)
    );
    let (a, b) = (a.expect("claim a"), b.expect("claim b"));
    assert_eq!(a.len() + b.len(), 10);
    assert!(a.iter().all(|x| b.iter().all(|y| x.id != y.id)));
    let tokens: Vec<i64> = a.iter().chain(&b).map(|c| c.lease_token).collect();
    let mut unique = tokens.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        tokens.len(),
        "every claim has its own fencing token"
    );
    // An operator (or the reaper) takes one back; the late completion changes nothing.
    let c = db.client().await.expect("client");
    c.execute(
        "update outbox_deliveries set state = 'pending', lease_token = null where id = $1",
        &[&a[0].id],
    )
    .await
    .expect("take back");
    let record = AttemptRecord {
        owner: "a".into(),
        duration_ms: 1,
        outcome: "sent".into(),
        status: Some(200),
        error: None,
        retry_after_s: None,
    };
    let done = store
        .complete(&a[0], &Completion::Sent { external_ref: None }, &record)
        .await
        .expect("complete");
    assert_eq!(done, None, "lease lost");
    let state: String = c
        .query_one(
            "select state from outbox_deliveries where id = $1",
            &[&a[0].id],
        )
        .await
        .expect("row")
        .get(0);
    assert_eq!(state, "pending");
    let applied = store
        .complete(&a[1], &Completion::Sent { external_ref: None }, &record)
        .await
        .expect("complete");
    assert!(applied.is_some());
}
