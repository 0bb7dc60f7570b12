//! Two workers competing on one queue end in the same state as one worker.

use std::time::Duration;

use paysync_store::Store;
use paysync_testkit::{TestBroker, TestDb, logged_events, poll_until, verified_event};

use crate::billing_order::{TEMPLATES, normalized, template};
use crate::helpers::*;

const CUSTOMERS: usize = 50;
const PER_CUSTOMER: usize = 100;

async fn publish_all(broker: &TestBroker) {
    let publisher = publisher(broker);
    // Interleaved: customer after customer, each customer's events in their own order.
    let bodies: Vec<Vec<u8>> = (0..PER_CUSTOMER)
        .flat_map(|j| (0..CUSTOMERS).map(move |c| (c, j)))
        .map(|(c, j)| {
            template("w", c, j % TEMPLATES, (j / 3) as i64, j)
                .to_string()
                .into_bytes()
        })
        .collect();
    for chunk in bodies.chunks(250) {
        futures::future::join_all(chunk.iter().map(|body| {
            let hook = verified_event(body.clone());
            let publisher = &publisher;
            async move { publisher.publish(&hook).await.unwrap() }
        }))
        .await;
    }
}

async fn drained(store: &Store) {
    poll_until(Duration::from_secs(180), "5,000 events logged", || async {
        let n = logged_events(store, 10_000).await.unwrap().len();
        (n == CUSTOMERS * PER_CUSTOMER).then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_on_one_queue_end_in_the_same_state_as_one() {
    let (one_broker, one_db) = (TestBroker::new(), TestDb::new());
    let (two_broker, two_db) = (TestBroker::new(), TestDb::new());
    let one_store = one_db.store().await.unwrap();
    let two_store = two_db.store().await.unwrap();
    let handlers = paysync_worker::billing::handlers();

    let single = spawn_worker(&one_broker, &one_db, fast_retry(5), handlers.clone()).await;
    let first = spawn_worker(&two_broker, &two_db, fast_retry(5), handlers.clone()).await;
    let second = spawn_worker(&two_broker, &two_db, fast_retry(5), handlers).await;
    publish_all(&one_broker).await;
    publish_all(&two_broker).await;
    drained(&one_store).await;
    drained(&two_store).await;

    for store in [&one_store, &two_store] {
        assert!(
            store.dead_letters(None, 10).await.unwrap().is_empty(),
            "no dead letters"
        );
    }
    for c in 0..CUSTOMERS {
        let expected = normalized(&one_store, "w", c).await;
        assert_ne!(expected, serde_json::Value::Null);
        assert_eq!(
            normalized(&two_store, "w", c).await,
            expected,
            "customer {c}"
        );
    }
    // No errors at all: nothing retried, nothing dead-lettered, on either worker.
    let scrape = format!(
        "{}{}{}",
        single.scrape().await,
        first.scrape().await,
        second.scrape().await
    );
    let failures: Vec<&str> = scrape
        .lines()
        .filter(|l| l.starts_with("paysync_events_processed_total"))
        .filter(|l| {
            (l.contains("dead_lettered") || l.contains("retry_scheduled")) && !l.ends_with(" 0")
        })
        .collect();
    assert!(failures.is_empty(), "{failures:?}");
    let applied: f64 = first
        .scrape()
        .await
        .lines()
        .chain(
            second
                .scrape()
                .await
                .lines()
                .collect::<Vec<_>>()
                .into_iter(),
        )
        .filter(|l| {
            l.starts_with("paysync_events_processed_total") && l.contains("outcome=\"applied\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(
        applied,
        (CUSTOMERS * PER_CUSTOMER) as f64,
        "both workers together applied every event once"
    );
    single.stop().await;
    first.stop().await;
    second.stop().await;
}
