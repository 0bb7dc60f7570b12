//! Receiver → broker → worker → PostgreSQL, as in production: every accepted event is in the
//! event log exactly once, duplicates included.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use paysync_domain::stripe::signature::sign_header;
use paysync_receiver::App as Receiver;
use paysync_testkit::{TestBroker, TestDb, now_secs, poll_until, stripe_event};
use paysync_worker::Handlers;
use secrecy::SecretString;

use crate::helpers::*;

#[tokio::test]
async fn every_event_posted_to_the_receiver_is_logged_exactly_once() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let worker = spawn_worker(&broker, &db, fast_retry(3), Handlers::new()).await;
    let mut rs =
        paysync_receiver::Settings::local(vec![SecretString::from("whsec_pipe".to_owned())]);
    rs.http_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    rs.metrics_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    rs.amqp = broker.settings("receiver");
    let receiver = Receiver::build(rs).await.unwrap();
    let url = format!("http://127.0.0.1:{}/webhooks/stripe", receiver.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let receiver = tokio::spawn(receiver.run_until_stopped(async move {
        let _ = stopped.await;
    }));

    let client = reqwest::Client::new();
    let ids: Vec<String> = (0..300).map(|i| format!("evt_pipe_{i:04}")).collect();
    // Every tenth event is posted twice, as providers do.
    let posts: Vec<&String> = ids.iter().chain(ids.iter().step_by(10)).collect();
    let statuses = futures::future::join_all(posts.iter().map(|id| {
        let body = stripe_event(id, "customer.updated", false);
        let header = sign_header("whsec_pipe", now_secs(), &body);
        let req = client
            .post(&url)
            .header("Stripe-Signature", header)
            .body(body);
        async move { req.send().await.unwrap().status().as_u16() }
    }))
    .await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    let store = db.store().await.unwrap();
    let rows = poll_until(
        Duration::from_secs(60),
        "300 events logged and 30 duplicates counted",
        || async {
            let rows = store
                .events(&paysync_store::EventFilter {
                    limit: 1000,
                    ..Default::default()
                })
                .await
                .unwrap();
            let dups: i32 = rows.iter().map(|r| r.duplicates).sum();
            (rows.len() == 300 && dups == 30).then_some(rows)
        },
    )
    .await
    .unwrap();
    let logged: HashSet<&str> = rows.iter().map(|r| r.event_id.as_str()).collect();
    assert_eq!(logged, ids.iter().map(String::as_str).collect());
    let _ = stop.send(());
    receiver.await.unwrap().unwrap();
    worker.stop().await;
}
