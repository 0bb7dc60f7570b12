//! Transient failures are retried through the delay levels with exponential backoff and
//! jitter, then succeed; the observed delays follow the schedule.

use std::sync::atomic::Ordering;
use std::time::Duration;

use paysync_testkit::{TestBroker, TestDb, poll_until, sample};

use crate::helpers::*;

#[tokio::test]
async fn a_handler_failing_transiently_three_times_succeeds_at_attempt_four_after_growing_delays() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let policy = fast_retry(6);
    let (handlers, calls) = handlers("invoice.paid", Script::FailTransiently(3));
    let worker = spawn_worker(&broker, &db, policy, handlers).await;
    publish_one(&broker, "evt_flaky", "invoice.paid").await;

    let store = db.store().await.unwrap();
    let row = poll_until(Duration::from_secs(40), "evt_flaky applied", || async {
        let r = store.event("stripe", "evt_flaky").await;
        r.unwrap()
    })
    .await;
    let row = match row {
        Ok(row) => row,
        Err(err) => {
            for q in broker.topology().queues() {
                eprintln!("{q}: {} ready", broker.message_count(&q).await.unwrap());
            }
            eprintln!(
                "handler calls: {:?}",
                calls
                    .seen
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(_, a, t)| (*a, t.elapsed()))
                    .collect::<Vec<_>>()
            );
            eprintln!(
                "event now: {:?}",
                store
                    .event("stripe", "evt_flaky")
                    .await
                    .map(|r| r.map(|r| r.attempts))
            );
            panic!("{err:#}");
        }
    };
    assert_eq!(row.attempts, 4, "committed by attempt 4");
    assert_eq!(calls.count.load(Ordering::SeqCst), 4);

    let seen = calls.seen.lock().unwrap().clone();
    let attempts: Vec<u32> = seen.iter().map(|(_, a, _)| *a).collect();
    assert_eq!(attempts, [1, 2, 3, 4]);
    let gaps: Vec<f64> = seen
        .windows(2)
        .map(|w| (w[1].2 - w[0].2).as_secs_f64())
        .collect();
    for (k, gap) in gaps.iter().enumerate() {
        let failed_attempt = k as u32 + 1;
        let nominal = policy.nominal(failed_attempt).as_secs_f64();
        // The delay is rounded to whole seconds for the delay levels; the broker's expiry
        // and our processing add a little on top, never take away.
        let low = (nominal * (1.0 - policy.jitter)).round() - 0.05;
        let high = (nominal * (1.0 + policy.jitter)).round() + 1.5;
        assert!(
            (low..=high).contains(gap),
            "gap after attempt {failed_attempt}: {gap:.2}s not in [{low:.2}, {high:.2}] (all: {gaps:?})"
        );
    }
    assert!(gaps[2] > gaps[0], "delays grow: {gaps:?}");

    let scrape = worker.scrape().await;
    assert_eq!(processed(&scrape, "invoice.paid", "retry_scheduled"), 3.0);
    for attempt in ["1", "2", "3"] {
        assert_eq!(
            sample(
                &scrape,
                "paysync_retries_scheduled_total",
                &[("attempt", attempt)]
            ),
            1.0
        );
    }
    assert_eq!(dead_letter_count(&db, 10).await, 0);
    worker.stop().await;
}
