//! Receiver → broker → worker → PostgreSQL, as in production: every accepted event is in the
//! event log exactly once, duplicates included.

use std::collections::HashSet;
use std::time::Duration;

use paysync_testkit::{TestBroker, TestDb, logged_events, poll_until, stripe_event};
use paysync_worker::Handlers;

use crate::helpers::*;

#[tokio::test]
async fn every_event_posted_to_the_receiver_is_logged_exactly_once() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let worker = spawn_worker(&broker, &db, fast_retry(3), Handlers::new()).await;
    let receiver =
        spawn_receiver(receiver_settings("whsec_pipe", broker.settings("receiver"))).await;

    let ids: Vec<String> = (0..300).map(|i| format!("evt_pipe_{i:04}")).collect();
    // Every tenth event is posted twice, as providers do.
    let posts: Vec<&String> = ids.iter().chain(ids.iter().step_by(10)).collect();
    let statuses = futures::future::join_all(posts.iter().map(|id| {
        let body = stripe_event(id, "customer.updated", false);
        let receiver = &receiver;
        async move { receiver.post(&body, "whsec_pipe").await }
    }))
    .await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    let store = db.store().await.unwrap();
    let rows = poll_until(
        Duration::from_secs(60),
        "300 events logged and 30 duplicates counted",
        || async {
            let rows = logged_events(&store, 1000).await.unwrap();
            let dups: i32 = rows.iter().map(|r| r.duplicates).sum();
            (rows.len() == 300 && dups == 30).then_some(rows)
        },
    )
    .await
    .unwrap();
    let logged: HashSet<&str> = rows.iter().map(|r| r.event_id.as_str()).collect();
    assert_eq!(logged, ids.iter().map(String::as_str).collect());
    receiver.stop().await;
    worker.stop().await;
}
