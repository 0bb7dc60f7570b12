//! Shutdown stops consuming but lets in-flight work commit and ack.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use paysync_store::Tx;
use paysync_testkit::{TestBroker, TestDb};
use paysync_worker::{Event, Failure, Handler, Handlers};
use tokio::sync::Notify;

use crate::helpers::*;

struct Gate {
    started: Notify,
    release: Notify,
}

impl Handler for Gate {
    fn handle<'a>(
        &'a self,
        _tx: &'a Tx<'a>,
        _event: &'a Event,
    ) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            self.started.notify_one();
            self.release.notified().await;
            Ok(())
        })
    }
}

#[tokio::test]
async fn shutdown_finishes_the_delivery_in_flight_before_exiting() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let gate = Arc::new(Gate {
        started: Notify::new(),
        release: Notify::new(),
    });
    let mut handlers = Handlers::new();
    handlers.register(
        paysync_domain::Provider::Stripe,
        "invoice.paid",
        gate.clone(),
    );
    let worker = spawn_worker(&broker, &db, fast_retry(3), handlers).await;
    publish_one(&broker, "evt_in_flight", "invoice.paid").await;
    tokio::time::timeout(Duration::from_secs(20), gate.started.notified())
        .await
        .unwrap();

    // Ask to stop while the handler is mid-transaction; once the worker has stopped
    // consuming (readiness drops or the listener closes), let the handler finish.
    let readyz = format!("{}/readyz", worker.metrics_base);
    let stopping = tokio::spawn(worker.stop());
    paysync_testkit::poll_until(
        Duration::from_secs(10),
        "the worker to stop consuming",
        || async {
            match reqwest::get(&readyz).await {
                Ok(r) if r.status() == 200 => None,
                _ => Some(()),
            }
        },
    )
    .await
    .unwrap();
    assert!(
        !stopping.is_finished(),
        "shutdown waits for the delivery in flight"
    );
    gate.release.notify_one();
    tokio::time::timeout(Duration::from_secs(30), stopping)
        .await
        .unwrap()
        .unwrap();

    let row = db
        .store()
        .await
        .unwrap()
        .event("stripe", "evt_in_flight")
        .await
        .unwrap();
    let row = row.expect("the in-flight event was committed before exit");
    assert_eq!(row.duplicates, 0);
    assert_eq!(
        broker
            .message_count(&broker.topology().work_queue())
            .await
            .unwrap(),
        0,
        "and acked"
    );
}
