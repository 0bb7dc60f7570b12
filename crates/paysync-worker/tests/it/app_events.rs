//! What the business's application is told, through the real handlers and PostgreSQL: a
//! customer life across two providers makes exactly the expected events, numbered per
//! account; duplicates, redeliveries and older events make none.

use paysync_store::Store;
use paysync_testkit::TestDb;
use paysync_testkit::life::{LIFE_APP_EVENTS, LifeEvent, two_provider_life};
use paysync_worker::{Done, Event, Handlers, apply_event};
use serde_json::Value;

async fn apply(store: &Store, handlers: &Handlers, e: &LifeEvent) -> Done {
    let meta = e.meta();
    let event = Event::new(meta, 1, e.body.to_string(), false);
    apply_event(store, handlers, &event)
        .await
        .unwrap_or_else(|f| panic!("{} {}: {f:?}", e.provider, e.event_type))
}

/// Every application event, in sequence order: (account, sequence, type, body).
async fn told(db: &TestDb) -> Vec<(i64, i64, String, Value)> {
    let c = db.client().await.unwrap();
    c.query(
        "select account_id, seq, type, body from app_events order by account_id, seq",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| {
        let body: String = r.get(3);
        (
            r.get(0),
            r.get(1),
            r.get(2),
            serde_json::from_str(&body).unwrap(),
        )
    })
    .collect()
}

#[tokio::test]
async fn a_two_provider_life_tells_each_change_once_and_resends_tell_nothing() {
    let db = TestDb::new();
    let store = db.store().await.unwrap();
    let handlers = paysync_worker::billing::handlers();
    let life = two_provider_life("applife");
    for e in &life {
        assert_eq!(apply(&store, &handlers, e).await, Done::Applied, "{}", e.id);
    }
    let events = told(&db).await;
    let types: Vec<&str> = events.iter().map(|e| e.2.as_str()).collect();
    assert_eq!(types, LIFE_APP_EVENTS);
    let account = events[0].0;
    for (i, (a, seq, kind, body)) in events.iter().enumerate() {
        assert_eq!(*a, account, "one account");
        assert_eq!(*seq, i as i64 + 1, "gapless sequence");
        assert_eq!(body["type"], kind.as_str());
        assert_eq!(body["id"], format!("evt_ps_{account}_{seq}"));
        assert_eq!(body["data"]["sequence"], *seq);
        assert_eq!(body["data"]["account"]["external_ref"], "ref_applife");
        assert_eq!(body["version"], 1);
    }
    let entitlements: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e.2 == "account.entitlement_changed")
        .map(|e| {
            (
                e.3["data"]["entitlement"].as_str().unwrap(),
                e.3["data"]["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        entitlements,
        [
            ("granted", "subscription_trialing"),
            ("grace", "subscription_past_due"),
            ("granted", "subscription_active"),
            ("denied", "subscription_canceled"),
            ("granted", "subscription_active"),
        ]
    );
    let recovered: Vec<bool> = events
        .iter()
        .filter(|e| e.2 == "payment.succeeded")
        .map(|e| e.3["data"]["recovered"].as_bool().unwrap())
        .collect();
    assert_eq!(recovered, [false, true, false]);
    let refund = events.iter().find(|e| e.2 == "payment.refunded").unwrap();
    assert_eq!(refund.3["data"]["payment"]["provider"], "square");
    assert_eq!(refund.3["data"]["refunded_now"], 1500);
    let dispute = events.iter().find(|e| e.2 == "dispute.opened").unwrap();
    assert_eq!(dispute.3["data"]["dispute"]["payment_id"], "pi_1_applife");

    // Every provider event three more times: duplicates, nothing more to tell.
    for _ in 0..3 {
        for e in &life {
            assert_eq!(apply(&store, &handlers, e).await, Done::Duplicate);
        }
    }
    assert_eq!(told(&db).await.len(), LIFE_APP_EVENTS.len());

    // An older event under a new id (a late retry of the past-due update) loses to the order
    // key and changes nothing, so it tells nothing.
    let mut late = life[5].clone();
    late.id = "evt_s3_late_applife".into();
    late.body["id"] = Value::from(late.id.clone());
    assert_eq!(apply(&store, &handlers, &late).await, Done::Applied);
    assert_eq!(told(&db).await.len(), LIFE_APP_EVENTS.len());
}

#[tokio::test]
async fn the_same_life_in_reverse_ends_with_the_same_projection() {
    let db = TestDb::new();
    let store = db.store().await.unwrap();
    let handlers = paysync_worker::billing::handlers();
    let mut life = two_provider_life("reverse");
    life.reverse();
    for e in &life {
        apply(&store, &handlers, e).await;
    }
    let events = told(&db).await;
    // Backwards, the final state is known from the first events on: the account is created,
    // and each payment, refund and dispute is told once; no payment is told failed after
    // its success, and nothing is told twice.
    let mut kinds: Vec<&str> = events.iter().map(|e| e.2.as_str()).collect();
    assert_eq!(kinds[0], "account.created");
    kinds.sort_unstable();
    let count = |k: &str| kinds.iter().filter(|x| **x == k).count();
    assert_eq!(count("account.created"), 1);
    assert_eq!(count("payment.succeeded"), 3);
    assert_eq!(count("payment.failed"), 0);
    assert_eq!(count("payment.refunded"), 1);
    assert_eq!(count("dispute.opened"), 1);
    let c = db.client().await.unwrap();
    let state: Value = c
        .query_one("select state from app_projections", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(state["entitlement"], "granted");
    assert_eq!(state["plan"], "SQ_PLAN_PRO");
    assert_eq!(state["deal_stage"], "closed_won");
}
