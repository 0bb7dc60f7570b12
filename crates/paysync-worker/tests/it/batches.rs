//! Batches: deliveries that arrive together are applied in one transaction; when one of them
//! fails, the batch is rolled back and split (a permanent failure) or applied one by one (a
//! transient one), so the failing event is retried or dead-lettered alone and every good event
//! is applied exactly once.

use std::collections::HashSet;
use std::time::Duration;

use paysync_testkit::{TestBroker, TestDb, poll_until, sample};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_event_in_a_batch_is_isolated_and_the_good_ones_apply_once() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let store = db.store().await.unwrap();
    // Good events change state: a rolled-back batch must leave none of it behind.
    let (handlers, _) = billing_and(vec![
        ("charge.failed", Script::FailTransiently(1)),
        ("charge.dispute.created", Script::FailPermanently),
        ("charge.refunded", Script::Panic),
    ]);
    // Everything is queued before the worker starts, so deliveries arrive together.
    let publisher = publisher(&broker);
    let mut events: Vec<(String, &str)> = (0..600)
        .map(|i| {
            let t = match i % 100 {
                10 => "charge.failed",
                50 => "charge.dispute.created",
                90 => "charge.refunded",
                _ => "customer.updated",
            };
            (format!("evt_batch_{i:04}"), t)
        })
        .collect();
    // Duplicates right behind their originals (same batch) and far from them.
    let repeats: Vec<(String, &str)> = events
        .iter()
        .filter(|e| e.1 == "customer.updated")
        .step_by(20)
        .cloned()
        .collect();
    for (n, repeat) in repeats.iter().enumerate() {
        let at = if n % 2 == 0 { n * 21 + 1 } else { events.len() };
        events.insert(at.min(events.len()), repeat.clone());
    }
    for chunk in events.chunks(100) {
        for (id, t) in chunk {
            publish_event(&publisher, id, t).await;
        }
    }
    let worker = spawn_worker(&broker, &db, fast_retry(3), handlers).await;

    let good: HashSet<&str> = events
        .iter()
        .filter(|e| matches!(e.1, "customer.updated" | "charge.failed"))
        .map(|e| e.0.as_str())
        .collect();
    let bad: HashSet<&str> = events
        .iter()
        .filter(|e| matches!(e.1, "charge.dispute.created" | "charge.refunded"))
        .map(|e| e.0.as_str())
        .collect();
    let (applied, dead) = poll_until(
        Duration::from_secs(120),
        "every good event applied, every bad one dead-lettered",
        || async {
            let (applied, dead) = logged_and_dead(&store, 10_000).await;
            let duplicates: i32 = applied.iter().map(|r| r.duplicates).sum();
            (applied.len() >= good.len()
                && dead.len() >= bad.len()
                && duplicates >= repeats.len() as i32)
                .then_some((applied, dead))
        },
    )
    .await
    .unwrap();
    let applied_ids: HashSet<&str> = applied.iter().map(|r| r.event_id.as_str()).collect();
    let dead_ids: HashSet<&str> = dead.iter().filter_map(|d| d.event_id.as_deref()).collect();
    assert_eq!(applied.len(), applied_ids.len(), "each applied once");
    assert_eq!(applied_ids, good);
    assert_eq!(dead_ids, bad, "only the failing events are dead-lettered");
    assert_eq!(
        applied.iter().map(|r| r.duplicates).sum::<i32>(),
        repeats.len() as i32,
        "every repeated delivery counted once as a duplicate"
    );
    for row in &applied {
        let expected = if row.event_type == "charge.failed" {
            2
        } else {
            1
        };
        assert_eq!(row.attempts, expected, "{}", row.event_id);
    }
    // One account per customer.updated event: none created twice, none left behind by a
    // rolled-back batch.
    let customers = applied
        .iter()
        .filter(|r| r.event_type == "customer.updated")
        .count();
    let client = db.client().await.unwrap();
    let accounts: i64 = client
        .query_one("select count(*) from accounts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(accounts, customers as i64);
    let linked: i64 = client
        .query_one(
            "select count(*) from event_log where event_type = 'customer.updated' and account_id is not null",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        linked, customers as i64,
        "every applied event linked to its account"
    );
    let scrape = worker.scrape().await;
    assert!(
        sample(&scrape, "paysync_worker_batch_size_count", &[]) > 0.0,
        "deliveries were applied in batches"
    );
    assert!(
        sample(&scrape, "paysync_worker_batch_fallbacks_total", &[]) > 0.0,
        "failing batches fell back to one by one"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanently_failing_event_is_cornered_by_halving_its_batch() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let store = db.store().await.unwrap();
    let (handlers, calls) = billing_and(vec![("charge.dispute.created", Script::FailPermanently)]);
    let bad_calls = &calls[0];
    // 255 good events with the bad one in the middle, all queued before the worker starts.
    let publisher = publisher(&broker);
    for i in 0..256 {
        let t = if i == 128 {
            "charge.dispute.created"
        } else {
            "customer.updated"
        };
        publish_event(&publisher, &format!("evt_halves_{i:03}"), t).await;
    }
    let mut s = settings(&broker, &db, fast_retry(3));
    // One lane taking the whole queue at once, so the bad event's batch is large.
    s.concurrency = 1;
    s.batch_size = 256;
    s.prefetch = 512;
    let worker = spawn(paysync_worker::App::build(s, handlers).await.unwrap()).await;
    let (applied, dead) = poll_until(
        Duration::from_secs(60),
        "255 events applied and the bad one dead-lettered",
        || async {
            let (applied, dead) = logged_and_dead(&store, 1_000).await;
            (applied.len() >= 255 && !dead.is_empty()).then_some((applied, dead))
        },
    )
    .await
    .unwrap();
    assert_eq!(applied.len(), 255, "every good event applied once");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event_id.as_deref(), Some("evt_halves_128"));
    assert!(applied.iter().all(|r| r.attempts == 1 && r.duplicates == 0));
    // Alone after one failed batch, the bad event would have run twice (the batch, then
    // alone); halving runs it once per smaller batch it is still in, then alone.
    let runs = bad_calls.count.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (3..=10).contains(&runs),
        "the bad event ran {runs} times: expected one run per halving (at most log2(256) + 1), then alone"
    );
    worker.stop().await;
}
