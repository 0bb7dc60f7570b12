//! The application's acceptance: a customer life across Stripe and Square, applied by the
//! worker's real handlers to the real PostgreSQL, reaches a fake application endpoint signed
//! with two secrets (a rotation), in sequence order, exactly once per change, and every
//! request verifies with the reference Python library. Every provider event is resent three
//! times, and the endpoint is down for the first minute: nothing more is sent, nothing is lost.

use std::time::{Duration, Instant};

use paysync_dispatcher::destinations::app::AppSettings;
use paysync_dispatcher::{App, LaneConfig};
use paysync_domain::breaker::BreakerPolicy;
use paysync_domain::outbound::Destination;
use paysync_domain::retry::RetryPolicy;
use paysync_domain::standard_webhooks::Secret;
use paysync_store::Store;
use paysync_testkit::fakes::app::{FakeApp, unavailable};
use paysync_testkit::life::{LIFE_APP_EVENTS, LifeEvent, two_provider_life};
use paysync_testkit::{RunningApp, TestDb};
use paysync_worker::{Event, Handlers, apply_event};
use secrecy::SecretString;
use serde_json::Value;

use crate::helpers::{fast_lane, settings};
use crate::standard_webhooks::{VERIFY, b64, run_python};

const DOWN: Duration = Duration::from_secs(60);

async fn apply(store: &Store, handlers: &Handlers, e: &LifeEvent) {
    let meta = e.meta();
    apply_event(
        store,
        handlers,
        &Event::new(meta, 1, e.body.to_string(), false),
    )
    .await
    .unwrap_or_else(|f| panic!("{}: {f:?}", e.id));
}

#[tokio::test]
async fn a_two_provider_life_reaches_the_app_signed_once_in_order_through_a_minute_down() {
    let db = TestDb::new();
    let store = db.store().await.unwrap();
    let handlers = paysync_worker::billing::handlers();
    let fake = FakeApp::start().await;
    fake.script.for_period(unavailable(), DOWN);
    let down_since = Instant::now();

    let new = Secret::serialize(&[0x42; 32]);
    let old = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let mut s = settings(&db, "app-life");
    s.app = Some(AppSettings::new(
        SecretString::from(fake.url()),
        vec![Secret::parse(&new).unwrap(), Secret::parse(old).unwrap()],
    ));
    s.lanes.app = LaneConfig {
        retry: RetryPolicy {
            base: Duration::from_millis(200),
            factor: 2.0,
            max_delay: Duration::from_secs(2),
            jitter: 0.0,
            max_attempts: 500,
        },
        breaker: BreakerPolicy {
            consecutive_failures: 3,
            base_open: Duration::from_secs(1),
            max_open: Duration::from_secs(4),
            jitter: 0.0,
            ..BreakerPolicy::default()
        },
        ..fast_lane(Destination::App)
    };
    let app = App::build(s).await.expect("dispatcher builds");
    let dispatcher = RunningApp::spawn(|stop| app.run_until_stopped(stop));

    // The life once, then every provider event three more times.
    let life = two_provider_life("appaccept");
    for _ in 0..4 {
        for e in &life {
            apply(&store, &handlers, e).await;
        }
    }

    let n = LIFE_APP_EVENTS.len();
    let delivered = fake
        .wait_for_delivered(n, DOWN + Duration::from_secs(120))
        .await;
    let refused = fake.requests().iter().filter(|r| !r.accepted()).count();
    assert!(refused > 0, "the endpoint refused nothing while down");
    assert!(
        delivered[0].at >= down_since + DOWN,
        "a request was accepted while the endpoint was down"
    );

    // Exactly one delivery per change: the resends made none, and every delivery is sent.
    let c = db.client().await.unwrap();
    let states: Vec<(String, i64)> = c
        .query(
            "select state, count(*) from outbox_deliveries where destination = 'app' group by state",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(states, [("sent".to_owned(), n as i64)]);
    let delivered = fake.delivered();
    assert_eq!(delivered.len(), n, "one accepted request per change");

    // In sequence order, the expected types, ids stable and unique.
    let bodies: Vec<Value> = delivered
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    let types: Vec<&str> = bodies.iter().map(|b| b["type"].as_str().unwrap()).collect();
    assert_eq!(types, LIFE_APP_EVENTS);
    for (i, (r, b)) in delivered.iter().zip(&bodies).enumerate() {
        assert_eq!(b["data"]["sequence"], i as i64 + 1);
        assert_eq!(r.webhook_id(), b["id"].as_str());
        assert_eq!(r.header("content-type"), Some("application/json"));
    }

    // Every accepted request verifies with the reference library, under either secret.
    let mut cases = Vec::new();
    for r in &delivered {
        for secret in [new.as_str(), old] {
            cases.push(serde_json::json!({
                "secret": secret,
                "id": r.webhook_id().unwrap(),
                "ts": r.header("webhook-timestamp").unwrap().parse::<i64>().unwrap(),
                "signature": r.header("webhook-signature").unwrap(),
                "body": b64(&r.body),
            }));
        }
    }
    let answers = run_python(VERIFY, &Value::Array(cases));
    assert_eq!(
        answers.lines().filter(|l| *l == "verified").count(),
        2 * n,
        "{answers}"
    );
    dispatcher.stop().await.unwrap();
}
