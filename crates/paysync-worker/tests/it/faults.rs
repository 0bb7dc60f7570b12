//! Faults injected on purpose: the broker connection of the receiver cut mid-stream, the
//! worker's database cut for 30 s mid-stream. Every event the receiver answered 200 for is
//! applied exactly once; nothing is lost, nothing dead-lettered. Each test prints its counts.

use std::collections::HashSet;
use std::time::Duration;

use paysync_amqp::AmqpSettings;
use paysync_store::StoreSettings;
use paysync_testkit::{
    Fault, FaultProxy, Tally, TestBroker, TestDb, poll_until, sample, stripe_event,
};

use crate::helpers::*;

const SECRET: &str = "whsec_faults";

/// A receiver that gives up on the broker quickly (2 s to connect or confirm).
async fn receiver(amqp: AmqpSettings) -> Receiver {
    let mut rs = receiver_settings(SECRET, amqp);
    rs.amqp.confirm_timeout = Duration::from_secs(2);
    rs.amqp.connect_timeout = Duration::from_secs(2);
    spawn_receiver(rs).await
}

/// Worker settings whose database connections go through `proxy`.
fn through_proxy(broker: &TestBroker, db: &TestDb, proxy: &FaultProxy) -> paysync_worker::Settings {
    let mut s = settings(broker, db, fast_retry(12));
    s.store = StoreSettings {
        url: format!("postgres://postgres@127.0.0.1:{}/paysync", proxy.port()),
        ..db.settings()
    };
    s
}

/// Posts `id` once; the status code.
async fn post(recv: &Receiver, id: &str) -> u16 {
    recv.post(&stripe_event(id, "customer.updated", false), SECRET)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_connection_cut_mid_stream_loses_nothing_answered_200() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let proxy = FaultProxy::start("127.0.0.1:5672").await.unwrap();
    let mut via_proxy = broker.settings("receiver");
    via_proxy.url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port());
    let recv = receiver(via_proxy).await;
    let worker = spawn_worker(
        &broker,
        &db,
        fast_retry(5),
        paysync_worker::billing::handlers(),
    )
    .await;

    let ids: Vec<String> = (0..2000).map(|i| format!("evt_cut_{i:05}")).collect();
    let mut accepted = HashSet::new();
    let mut refused = 0usize;
    for (n, chunk) in ids.chunks(50).enumerate() {
        if n == 10 {
            proxy.set(Fault::Cut);
        }
        if n == 14 {
            proxy.set(Fault::Pass);
        }
        let statuses = futures::future::join_all(chunk.iter().map(|id| post(&recv, id))).await;
        for (id, status) in chunk.iter().zip(statuses) {
            match status {
                200 => {
                    accepted.insert(id.clone());
                }
                503 | 0 => refused += 1,
                other => panic!("{id}: unexpected status {other}"),
            }
        }
    }
    assert!(
        refused > 0,
        "the cut was felt (503s while the broker was away)"
    );
    // The provider retries what was refused; after the broker is back every event gets in.
    recv.resend_refused(
        &ids,
        &mut accepted,
        "customer.updated",
        SECRET,
        Duration::from_secs(30),
    )
    .await;
    let store = db.store().await.unwrap();
    let tally = Tally::when_logged(&store, accepted.len(), Duration::from_secs(90))
        .await
        .unwrap();
    let lost = accepted.difference(&tally.distinct).count();
    println!(
        "broker cut: {}, refused-then-retried {refused}",
        tally.summary(accepted.len())
    );
    assert_eq!(lost, 0);
    tally.assert_each_applied_once(ids.len());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_cut_for_thirty_seconds_is_retried_and_nothing_is_dead_lettered() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let store = db.store().await.unwrap();
    let proxy = FaultProxy::start("127.0.0.1:5432").await.unwrap();
    let mut s = through_proxy(&broker, &db, &proxy);
    s.store.create_timeout = Duration::from_secs(1);
    s.store.wait_timeout = Duration::from_secs(1);
    let worker = spawn(
        paysync_worker::App::build(s, paysync_worker::billing::handlers())
            .await
            .unwrap(),
    )
    .await;
    let recv = receiver(broker.settings("receiver")).await;
    let ids: Vec<String> = (0..2000).map(|i| format!("evt_dbcut_{i:05}")).collect();
    let mut accepted = 0;
    for (n, chunk) in ids.chunks(100).enumerate() {
        if n == 5 {
            proxy.set(Fault::Cut);
        }
        let statuses = futures::future::join_all(chunk.iter().map(|id| post(&recv, id))).await;
        accepted += statuses.iter().filter(|s| **s == 200).count();
    }
    assert_eq!(accepted, ids.len(), "the receiver never needs the database");
    // 30 s without PostgreSQL, polled rather than slept: the worker keeps retrying meanwhile.
    let cut_at = std::time::Instant::now();
    poll_until(
        Duration::from_secs(40),
        "30 s of database outage",
        || async { (cut_at.elapsed() >= Duration::from_secs(30)).then_some(()) },
    )
    .await
    .unwrap();
    let during = worker.scrape().await;
    proxy.set(Fault::Pass);

    let tally = Tally::when_logged(&store, ids.len(), Duration::from_secs(120))
        .await
        .unwrap();
    let retried = processed(&during, "customer.updated", "retry_scheduled");
    println!(
        "database cut: {}, retries scheduled during the cut {retried}",
        tally.summary(accepted)
    );
    assert!(
        retried > 0.0,
        "deliveries were retried while the database was away"
    );
    tally.assert_each_applied_once(ids.len());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_database_grows_the_backlog_with_bounded_work_in_flight_then_drains() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let store = db.store().await.unwrap();
    let proxy = FaultProxy::start("127.0.0.1:5432").await.unwrap();
    let mut s = through_proxy(&broker, &db, &proxy);
    // A prefetch well below the 1,000 events, so a backlog has to form in the queue.
    s.prefetch = 256;
    // In flight: at most `concurrency` batches of at most `batch_size`, and never more than
    // the prefetch lets the broker push.
    let concurrency = (s.concurrency * s.batch_size).min(usize::from(s.prefetch));
    let worker = spawn(
        paysync_worker::App::build(s, paysync_worker::billing::handlers())
            .await
            .unwrap(),
    )
    .await;
    proxy.set(Fault::Slow(Duration::from_millis(200)));
    let recv = receiver(broker.settings("receiver")).await;
    let ids: Vec<String> = (0..1000).map(|i| format!("evt_slow_{i:05}")).collect();
    for chunk in ids.chunks(100) {
        let statuses = futures::future::join_all(chunk.iter().map(|id| post(&recv, id))).await;
        assert!(statuses.iter().all(|s| *s == 200));
    }
    // While the database is slow the backlog waits in the broker, not in worker memory.
    let backlog = poll_until(
        Duration::from_secs(30),
        "a backlog in the work queue",
        || async {
            let ready = broker
                .message_count(&broker.topology().work_queue())
                .await
                .unwrap();
            (ready > 0).then_some(ready)
        },
    )
    .await
    .unwrap();
    let mut max_in_flight = 0.0f64;
    for _ in 0..10 {
        max_in_flight = max_in_flight.max(sample(
            &worker.scrape().await,
            "paysync_worker_in_flight",
            &[],
        ));
    }
    assert!(
        max_in_flight <= concurrency as f64,
        "in flight {max_in_flight} > {concurrency}"
    );
    proxy.set(Fault::Pass);
    let tally = Tally::when_logged(&store, ids.len(), Duration::from_secs(180))
        .await
        .unwrap();
    println!(
        "slow database: {}, backlog seen {backlog}, max in flight {max_in_flight} (bound {concurrency})",
        tally.summary(ids.len())
    );
    tally.assert_each_applied_once(ids.len());
    worker.stop().await;
}
