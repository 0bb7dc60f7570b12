//! The same event, however often delivered, is applied once; a crash between commit and ack
//! is redelivered and deduplicated.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use paysync_testkit::{TestBroker, TestDb, poll_until};
use paysync_worker::App;

use crate::helpers::*;

#[tokio::test]
async fn the_same_event_delivered_five_times_is_applied_once_and_four_duplicates_are_counted() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let (worker, calls) = scripted_worker(&broker, &db, "invoice.paid", Script::Succeed, 3).await;
    let publisher = publisher(&broker);
    for _ in 0..5 {
        publish_event(&publisher, "evt_five_times", "invoice.paid").await;
    }
    logged(&db, "evt_five_times").await;
    let store = db.store().await.unwrap();
    let row = poll_until(Duration::from_secs(20), "4 duplicates counted", || async {
        let row = store.event("stripe", "evt_five_times").await.unwrap()?;
        (row.duplicates == 4).then_some(row)
    })
    .await
    .unwrap();
    assert_eq!(row.outcome, "applied");
    assert_eq!(calls.count.load(Ordering::SeqCst), 1, "handler ran once");
    let scrape = worker.scrape().await;
    assert_eq!(processed(&scrape, "invoice.paid", "applied"), 1.0);
    assert_eq!(processed(&scrape, "invoice.paid", "duplicate"), 4.0);
    worker.stop().await;
}

#[tokio::test]
async fn an_event_without_a_handler_is_recorded_as_ignored_and_acked() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let (worker, calls) = scripted_worker(&broker, &db, "invoice.paid", Script::Succeed, 3).await;
    publish_one(&broker, "evt_unknown_type", "plan.created").await;
    let row = logged(&db, "evt_unknown_type").await;
    assert_eq!(row.outcome, "ignored");
    assert_eq!(calls.count.load(Ordering::SeqCst), 0);
    work_queue_drained(&broker).await;
    let scrape = worker.scrape().await;
    assert_eq!(processed(&scrape, "other", "ignored"), 1.0);
    worker.stop().await;
}

/// A worker that, after its first commit, tells the receiver and then hangs: the ack never
/// happens, and aborting it leaves the delivery committed but unacknowledged.
async fn hanging_after_commit(
    broker: &TestBroker,
    db: &TestDb,
    handlers: &paysync_worker::Handlers,
) -> (Running, tokio::sync::oneshot::Receiver<()>) {
    let (committed_tx, committed_rx) = tokio::sync::oneshot::channel::<()>();
    let committed_tx = Arc::new(std::sync::Mutex::new(Some(committed_tx)));
    let hook: paysync_worker::AfterCommitHook = Arc::new(move |_meta| {
        let tx = committed_tx.lock().unwrap().take();
        Box::pin(async move {
            if let Some(tx) = tx {
                let _ = tx.send(());
            }
            std::future::pending::<()>().await
        })
    });
    let app = App::build(settings(broker, db, fast_retry(3)), handlers.clone())
        .await
        .unwrap()
        .with_after_commit_hook(hook);
    (spawn(app).await, committed_rx)
}

#[tokio::test]
async fn work_interrupted_between_commit_and_ack_is_redelivered_and_not_applied_twice() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    db.store().await.unwrap();
    let (handlers, calls) = handlers("invoice.paid", Script::Succeed);
    let (crashing, committed_rx) = hanging_after_commit(&broker, &db, &handlers).await;
    publish_one(&broker, "evt_commit_then_crash", "invoice.paid").await;
    tokio::time::timeout(Duration::from_secs(20), committed_rx)
        .await
        .unwrap()
        .unwrap();
    // Abort the worker mid-flight: committed, not acked.
    crashing.abort().await;

    let worker = spawn_worker(&broker, &db, fast_retry(3), handlers).await;
    let store = db.store().await.unwrap();
    let row = poll_until(
        Duration::from_secs(30),
        "the redelivery counted as a duplicate",
        || async {
            let row = store
                .event("stripe", "evt_commit_then_crash")
                .await
                .unwrap()?;
            (row.duplicates == 1).then_some(row)
        },
    )
    .await
    .unwrap();
    assert_eq!(row.outcome, "applied");
    assert_eq!(
        calls.count.load(Ordering::SeqCst),
        1,
        "the handler's effect happened once"
    );
    work_queue_drained(&broker).await;
    worker.stop().await;
}

/// A replay is applied once, even when the broker delivers it twice: committed, not
/// acknowledged (the worker dies), delivered again. Its id, recorded in the replay's
/// transaction, makes the second delivery a duplicate.
#[tokio::test]
async fn a_replay_delivered_twice_is_applied_once() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let store = db.store().await.unwrap();
    let (handlers, calls) = handlers("invoice.paid", Script::Succeed);
    let worker = spawn_worker(&broker, &db, fast_retry(3), handlers.clone()).await;
    publish_one(&broker, "evt_replay_twice", "invoice.paid").await;
    logged(&db, "evt_replay_twice").await;
    worker.stop().await;

    let (crashing, committed_rx) = hanging_after_commit(&broker, &db, &handlers).await;
    let ops = paysync_worker::ops::Ops::new(store.clone(), publisher(&broker));
    let report = ops
        .replay(
            &paysync_worker::ops::ReplaySelection {
                provider: paysync_domain::Provider::Stripe,
                ids: Some(&["evt_replay_twice".to_owned()]),
                event_type: None,
                since: None,
            },
            0,
            false,
            "test",
            &|_, _| {},
        )
        .await
        .unwrap();
    assert_eq!(report.published, 1);
    tokio::time::timeout(Duration::from_secs(20), committed_rx)
        .await
        .unwrap()
        .unwrap();
    crashing.abort().await;

    let worker = spawn_worker(&broker, &db, fast_retry(3), handlers).await;
    let row = poll_until(
        Duration::from_secs(30),
        "the replay's second delivery counted as a duplicate",
        || async {
            let row = store.event("stripe", "evt_replay_twice").await.unwrap()?;
            (row.duplicates == 1).then_some(row)
        },
    )
    .await
    .unwrap();
    assert_eq!(row.replays, 1, "the replay counted once");
    assert_eq!(
        calls.count.load(Ordering::SeqCst),
        2,
        "the handler ran for the event and for its replay, not for the replay's redelivery"
    );
    work_queue_drained(&broker).await;
    worker.stop().await;
}
