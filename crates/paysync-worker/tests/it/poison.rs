//! A poison-event flood: 1,000 permanently failing events among 10,000 good ones. The good
//! ones are all applied, the poison ones all end in the dead-letter table, nothing loops.

use std::collections::HashSet;
use std::time::Duration;

use paysync_testkit::{TestBroker, TestDb, poll_until};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_poison_events_among_ten_thousand_good_ones() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let store = db.store().await.unwrap();
    let (handlers, _) = billing_and(vec![("charge.dispute.created", Script::FailPermanently)]);
    let worker = spawn_worker(&broker, &db, fast_retry(3), handlers).await;
    let publisher = publisher(&broker);
    let events: Vec<(String, &str)> = (0..11_000)
        .map(|i| {
            if i % 11 == 10 {
                (format!("evt_poison_{i:05}"), "charge.dispute.created")
            } else {
                (format!("evt_good_{i:05}"), "customer.updated")
            }
        })
        .collect();
    for chunk in events.chunks(500) {
        futures::future::join_all(chunk.iter().map(|(id, t)| publish_event(&publisher, id, t)))
            .await;
    }
    let good: HashSet<&str> = events
        .iter()
        .filter(|e| e.1 == "customer.updated")
        .map(|e| e.0.as_str())
        .collect();
    let bad: HashSet<&str> = events
        .iter()
        .filter(|e| e.1 != "customer.updated")
        .map(|e| e.0.as_str())
        .collect();
    assert_eq!((good.len(), bad.len()), (10_000, 1_000));

    let applied = poll_until(
        Duration::from_secs(180),
        "10,000 applied and 1,000 dead letters",
        || async {
            let (applied, dead) = logged_and_dead(&store, 20_000).await;
            (applied.len() >= 10_000 && dead.len() >= 1_000).then_some((applied, dead))
        },
    )
    .await
    .unwrap();
    let (applied, dead) = applied;
    let applied_ids: HashSet<&str> = applied.iter().map(|r| r.event_id.as_str()).collect();
    let dead_ids: HashSet<&str> = dead.iter().filter_map(|d| d.event_id.as_deref()).collect();
    println!(
        "poison flood: accepted 11000, applied {}, duplicates {}, dead-lettered {}, lost {}",
        applied_ids.len(),
        applied.iter().map(|r| r.duplicates).sum::<i32>(),
        dead_ids.len(),
        11_000 - applied_ids.len() - dead_ids.len()
    );
    assert_eq!(applied_ids, good);
    assert_eq!(dead_ids, bad);
    assert!(
        dead.iter().all(|d| d.attempts == 1),
        "permanent failures are not retried"
    );
    // No loop: nothing left anywhere on the broker.
    for queue in broker.topology().queues() {
        if queue != broker.topology().dead_letters() {
            assert_eq!(broker.message_count(&queue).await.unwrap(), 0, "{queue}");
        }
    }
    worker.stop().await;
}
