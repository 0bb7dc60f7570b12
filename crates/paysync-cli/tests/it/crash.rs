//! A real `paysync worker` process killed with SIGKILL mid-stream and started again: every
//! event is applied exactly once, nothing is lost or dead-lettered.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use paysync_amqp::Publisher;
use paysync_domain::Mode;
use paysync_domain::stripe::StripeVerifier;
use paysync_domain::stripe::signature::sign_header;
use paysync_store::EventFilter;
use paysync_testkit::{TestBroker, TestDb, now_secs, poll_until, stripe_event};

fn worker(broker: &TestBroker, db: &TestDb) -> Child {
    Command::new(env!("CARGO_BIN_EXE_paysync"))
        .arg("worker")
        .env("PAYSYNC_DATABASE_URL", paysync_testkit::database_url())
        .env("PAYSYNC_DATABASE_SCHEMA", db.schema())
        .env("PAYSYNC_AMQP_URL", paysync_testkit::amqp_url())
        .env("PAYSYNC_AMQP_PREFIX", broker.prefix())
        .env("PAYSYNC_METRICS_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_with_sigkill_mid_stream_loses_and_doubles_nothing() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let store = db.store().await.unwrap();
    let publisher = Publisher::new(broker.settings("test-publisher"));
    let verifier = StripeVerifier::new(vec!["whsec_k".into()], Mode::Test, 300);
    let ids: Vec<String> = (0..3000).map(|i| format!("evt_kill_{i:05}")).collect();
    for chunk in ids.chunks(250) {
        futures::future::join_all(chunk.iter().map(|id| {
            let body = stripe_event(id, "customer.updated", false);
            let header = sign_header("whsec_k", now_secs(), &body);
            let hook = verifier
                .verify(Some(&header), body.into(), now_secs(), now_secs() * 1000)
                .unwrap();
            let publisher = &publisher;
            async move { publisher.publish(&hook).await.unwrap() }
        }))
        .await;
    }
    let count = || async {
        store
            .events(&EventFilter {
                limit: 10_000,
                ..Default::default()
            })
            .await
            .unwrap()
    };

    let mut first = worker(&broker, &db);
    poll_until(Duration::from_secs(60), "the worker under way", || async {
        (count().await.len() >= 300).then_some(())
    })
    .await
    .unwrap();
    first.kill().unwrap(); // SIGKILL: no shutdown, unacked deliveries go back to the queue
    first.wait().unwrap();
    let at_kill = count().await.len();
    assert!(at_kill < ids.len(), "killed mid-stream ({at_kill} applied)");

    let mut second = worker(&broker, &db);
    let rows = poll_until(Duration::from_secs(120), "all 3,000 applied", || async {
        let rows = count().await;
        (rows.len() >= ids.len()).then_some(rows)
    })
    .await
    .unwrap();
    second.kill().unwrap();
    second.wait().unwrap();
    let distinct: HashSet<&str> = rows.iter().map(|r| r.event_id.as_str()).collect();
    let duplicates: i32 = rows.iter().map(|r| r.duplicates).sum();
    let dead = store.dead_letters(None, 10).await.unwrap().len();
    println!(
        "worker SIGKILL: accepted {}, applied {} ({at_kill} before the kill), duplicates {duplicates}, dead-lettered {dead}, lost {}",
        ids.len(),
        distinct.len(),
        ids.len() - distinct.len()
    );
    assert_eq!(rows.len(), ids.len(), "each exactly once");
    assert_eq!(distinct.len(), ids.len());
    assert_eq!(dead, 0);
    publisher.close().await;
}
