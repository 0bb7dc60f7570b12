//! A real `paysync worker` process killed with SIGKILL mid-stream and started again: every
//! event is applied exactly once, nothing is lost or dead-lettered.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use paysync_amqp::Publisher;
use paysync_testkit::{
    Tally, TestBroker, TestDb, logged_events, paysync_env, poll_until, stripe_event, verified_event,
};

fn worker(broker: &TestBroker, db: &TestDb) -> Child {
    Command::new(env!("CARGO_BIN_EXE_paysync"))
        .arg("worker")
        .envs(paysync_env(broker, db))
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
    let ids: Vec<String> = (0..3000).map(|i| format!("evt_kill_{i:05}")).collect();
    for chunk in ids.chunks(250) {
        futures::future::join_all(chunk.iter().map(|id| {
            let hook = verified_event(stripe_event(id, "customer.updated", false));
            let publisher = &publisher;
            async move { publisher.publish(&hook).await.unwrap() }
        }))
        .await;
    }
    let count = || async { logged_events(&store, 10_000).await.unwrap() };

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
    let tally = Tally::when_logged(&store, ids.len(), Duration::from_secs(120))
        .await
        .unwrap();
    second.kill().unwrap();
    second.wait().unwrap();
    println!(
        "worker SIGKILL: {} ({at_kill} applied before the kill)",
        tally.summary(ids.len())
    );
    tally.assert_each_applied_once(ids.len());
    publisher.close().await;
}
