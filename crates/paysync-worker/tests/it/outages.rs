//! PostgreSQL unreachable: deliveries are retried later, never dead-lettered, and the worker
//! reports itself not ready while staying alive.

use std::time::Duration;

use paysync_store::StoreSettings;
use paysync_testkit::{TestBroker, TestDb, closed_port, poll_until};
use paysync_worker::{App, Handlers};

use crate::helpers::*;

#[tokio::test]
async fn a_database_outage_is_retried_not_dead_lettered_and_the_worker_is_not_ready() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let mut s = settings(&broker, &db, fast_retry(5));
    s.store = StoreSettings {
        url: format!("postgres://postgres@127.0.0.1:{}/paysync", closed_port()),
        ..db.settings()
    };
    let worker = spawn(App::build(s, Handlers::new()).await.unwrap()).await;
    publish_one(&broker, "evt_db_down", "invoice.paid").await;

    poll_until(Duration::from_secs(30), "two retries scheduled", || async {
        (processed(&worker.scrape().await, "other", "retry_scheduled") >= 2.0).then_some(())
    })
    .await
    .unwrap();
    let scrape = worker.scrape().await;
    assert_eq!(processed(&scrape, "other", "dead_lettered"), 0.0);
    assert_eq!(processed(&scrape, "other", "ignored"), 0.0);

    let readyz = worker.get("/readyz").await;
    assert_eq!(readyz.status(), 503);
    assert!(
        readyz
            .text()
            .await
            .unwrap()
            .contains("database unreachable")
    );
    let healthz = worker.get("/healthz").await;
    assert_eq!(healthz.status(), 200);
    worker.stop().await;
}

#[tokio::test]
async fn a_healthy_worker_reports_ready() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let worker = spawn_worker(&broker, &db, fast_retry(3), Handlers::new()).await;
    let url = format!("{}/readyz", worker.metrics_base);
    poll_until(Duration::from_secs(15), "worker ready", || async {
        (reqwest::get(&url).await.unwrap().status() == 200).then_some(())
    })
    .await
    .unwrap();
    worker.stop().await;
}
