//! The broker is unreachable or drops our connection: never a 2xx for an event that is not
//! durable, and recovery without a restart.

use std::time::Duration;

use paysync_amqp::AmqpSettings;
use paysync_domain::Mode;
use paysync_testkit::{
    TestBroker, close_broker_connections_named, closed_port, poll_until, stripe_event,
};

use crate::helpers::{settings, spawn, spawn_for};

#[tokio::test]
async fn unreachable_broker_gets_503_with_retry_after_and_the_receiver_keeps_running() {
    let amqp = AmqpSettings {
        url: format!("amqp://guest:guest@127.0.0.1:{}/%2f", closed_port()),
        prefix: format!("paysync-test-{}", paysync_testkit::unique_id()),
        ..AmqpSettings::default()
    };
    let app = spawn(settings(amqp, Mode::Test)).await;
    for i in 0..3 {
        let response = app
            .post_signed(&stripe_event(
                &format!("evt_down_{i}"),
                "invoice.paid",
                false,
            ))
            .await;
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "5");
        assert!(response.text().await.unwrap().contains("retry later"));
    }
    let readyz = app.get(format!("{}/readyz", app.base)).await;
    assert_eq!(readyz.status(), 503);
    assert!(readyz.text().await.unwrap().contains("broker unreachable"));
    assert_eq!(app.get(format!("{}/healthz", app.base)).await.status(), 200);
    let scrape = app.scrape().await;
    assert!(
        scrape.contains(
            r#"paysync_webhooks_received_total{outcome="unavailable",provider="stripe"} 3"#
        ),
        "{scrape}"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn posts_succeed_again_after_the_broker_closes_the_connection() {
    let broker = TestBroker::new();
    let app = spawn_for(&broker).await;
    assert_eq!(
        app.post_signed(&stripe_event("evt_before", "invoice.paid", false))
            .await
            .status(),
        200
    );

    let name = broker.settings("receiver").connection_name;
    let closed = tokio::task::spawn_blocking(move || close_broker_connections_named(&name))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(closed, 1, "the receiver's own named connection was closed");

    // Later posts succeed without a restart; any answered in between is a 503, never a lie.
    let statuses = std::sync::Mutex::new(Vec::new());
    poll_until(
        Duration::from_secs(20),
        "a 200 after the reconnect",
        || async {
            let n = statuses.lock().unwrap().len();
            let body = stripe_event(&format!("evt_after_{n}"), "invoice.paid", false);
            let status = app.post_signed(&body).await.status().as_u16();
            statuses.lock().unwrap().push(status);
            (status == 200).then_some(())
        },
    )
    .await
    .unwrap();
    let statuses = statuses.into_inner().unwrap();
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
    let accepted = 1 + statuses.iter().filter(|s| **s == 200).count() as u32;
    let queue = broker.topology().work_queue();
    assert_eq!(broker.message_count(&queue).await.unwrap(), accepted);
    app.stop().await.unwrap();
}
