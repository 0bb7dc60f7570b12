//! Billing and CRM state from Stripe events through the real handlers and PostgreSQL:
//! fixtures, life-cycle scenarios, and order independence.

use paysync_domain::billing::account_view;
use paysync_domain::{EventMeta, Provider};
use paysync_store::Store;
use paysync_testkit::{TestDb, stripe_fixture};
use paysync_worker::{Done, Event, Failure, Handlers, apply_event};
use serde_json::{Value, json};

pub async fn apply(store: &Store, handlers: &Handlers, body: &Value) -> Result<Done, Failure> {
    let meta = EventMeta {
        provider: Provider::Stripe,
        event_id: body["id"].as_str().unwrap().to_owned(),
        event_type: body["type"].as_str().unwrap().to_owned(),
        created: body["created"].as_i64().unwrap(),
        livemode: body["livemode"].as_bool().unwrap_or(false),
        api_version: None,
        received_at_ms: 1_700_000_000_000,
    };
    let event = Event::new(meta, 1, body.to_string(), false);
    apply_event(store, handlers, &event).await
}

pub async fn view_of(store: &Store, external_ref: &str) -> Value {
    let id = store
        .find_account(Some(external_ref), None)
        .await
        .unwrap()
        .expect("account exists");
    serde_json::to_value(account_view(
        &store.account_facts(id).await.unwrap().unwrap(),
    ))
    .unwrap()
}

pub fn ev(id: &str, t: &str, created: i64, object: Value) -> Value {
    json!({"id": id, "object": "event", "type": t, "created": created, "livemode": false, "data": {"object": object}})
}

fn sub(id: &str, cus: &str, status: &str, hint: &str) -> Value {
    json!({"id": id, "object": "subscription", "customer": cus, "status": status, "metadata": {"account_id": hint},
           "items": {"data": [{"price": {"id": "price_pro"}, "current_period_end": 1_800_000_000}]}})
}

fn invoice(id: &str, cus: &str, sub: &str, reason: &str, paid: i64, pi: &str) -> Value {
    json!({"id": id, "object": "invoice", "customer": cus, "subscription": sub, "billing_reason": reason,
           "amount_due": paid, "amount_paid": paid, "currency": "usd", "payment_intent": pi})
}

#[tokio::test]
async fn every_fixture_is_applied_or_deliberately_ignored() {
    let db = TestDb::new();
    let store = db.store().await.unwrap();
    let handlers = paysync_worker::billing::handlers();
    let names = paysync_testkit::stripe_fixture_names();
    assert_eq!(names.len(), 23);
    for name in &names {
        let mut body: Value = serde_json::from_slice(&stripe_fixture(name)).unwrap();
        // The fixtures share event ids across files (a documented trap): make them unique
        // so each is applied rather than deduplicated.
        body["id"] = Value::from(format!(
            "{}_{}",
            body["id"].as_str().unwrap(),
            name.trim_end_matches(".json")
        ));
        let done = apply(&store, &handlers, &body)
            .await
            .unwrap_or_else(|f| panic!("{name}: {f:?}"));
        let expected = if name.starts_with("plan.created") {
            // Not a billing event: recorded in the event log as ignored.
            Done::Ignored
        } else {
            Done::Applied
        };
        assert_eq!(done, expected, "{name}");
    }
    // The shared-id trap, as it would arrive: the second event with the same id is a duplicate.
    let first: Value = serde_json::from_slice(&stripe_fixture("charge.succeeded.json")).unwrap();
    let second: Value = serde_json::from_slice(&stripe_fixture("charge.failed.json")).unwrap();
    assert_eq!(
        apply(&store, &handlers, &first).await.unwrap(),
        Done::Applied
    );
    assert_eq!(
        apply(&store, &handlers, &second).await.unwrap(),
        Done::Duplicate
    );
}

#[tokio::test]
async fn a_subscription_life_from_checkout_to_cancellation() {
    let db = TestDb::new();
    let store = db.store().await.unwrap();
    let h = paysync_worker::billing::handlers();
    let step = |v: Value| {
        let store = store.clone();
        let h = h.clone();
        async move { apply(&store, &h, &v).await.unwrap() }
    };
    step(ev("evt_s1", "checkout.session.completed", 100, json!({"id": "cs_1", "customer": "cus_A", "mode": "subscription",
        "payment_status": "paid", "status": "complete", "subscription": "sub_1", "client_reference_id": "acct_A",
        "amount_total": 2000, "currency": "usd"}))).await;
    step(ev(
        "evt_s2",
        "customer.subscription.created",
        101,
        sub("sub_1", "cus_A", "active", "acct_A"),
    ))
    .await;
    step(ev(
        "evt_s3",
        "invoice.paid",
        102,
        invoice(
            "in_1",
            "cus_A",
            "sub_1",
            "subscription_create",
            2000,
            "pi_1",
        ),
    ))
    .await;
    let v = view_of(&store, "acct_A").await;
    assert_eq!(
        (
            v["deal_stage"].as_str(),
            v["entitlement"].as_str(),
            v["plan"].as_str()
        ),
        (Some("closed_won"), Some("granted"), Some("price_pro"))
    );
    assert_eq!(v["lifecycle_stage"], "customer");

    step(ev(
        "evt_s4",
        "invoice.payment_failed",
        200,
        invoice("in_2", "cus_A", "sub_1", "subscription_cycle", 0, "pi_2"),
    ))
    .await;
    step(ev(
        "evt_s5",
        "customer.subscription.updated",
        200,
        sub("sub_1", "cus_A", "past_due", "acct_A"),
    ))
    .await;
    let v = view_of(&store, "acct_A").await;
    assert_eq!(v["entitlement"], "grace");
    assert_eq!(v["subscription_status"], "past_due");
    let kinds: Vec<&str> = v["open_tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"payment_failed_followup"), "{kinds:?}");

    step(ev(
        "evt_s6",
        "invoice.paid",
        300,
        invoice("in_2", "cus_A", "sub_1", "subscription_cycle", 2000, "pi_2"),
    ))
    .await;
    step(ev(
        "evt_s7",
        "customer.subscription.updated",
        300,
        sub("sub_1", "cus_A", "active", "acct_A"),
    ))
    .await;
    let v = view_of(&store, "acct_A").await;
    assert_eq!(v["entitlement"], "granted");
    assert!(
        v["open_tasks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["source_id"] != "in_2"),
        "recovered: follow-up closed"
    );

    step(ev(
        "evt_s8",
        "customer.subscription.deleted",
        400,
        sub("sub_1", "cus_A", "canceled", "acct_A"),
    ))
    .await;
    // A late, older update must not reopen the canceled subscription.
    step(ev(
        "evt_s9",
        "customer.subscription.updated",
        399,
        sub("sub_1", "cus_A", "active", "acct_A"),
    ))
    .await;
    let v = view_of(&store, "acct_A").await;
    assert_eq!(
        (v["entitlement"].as_str(), v["lifecycle_stage"].as_str()),
        (Some("denied"), Some("churned"))
    );
    assert_eq!(v["subscription_status"], "canceled");
    assert_eq!(
        v["totals"],
        json!([{"currency": "usd", "paid_minor": 4000, "refunded_minor": 0, "chargeback_minor": 0}])
    );
    assert!(
        v["open_tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["kind"] == "churn")
    );
    assert!(
        v["open_tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["kind"] == "welcome")
    );
}

#[tokio::test]
async fn one_off_payment_partial_then_full_refund_and_a_lost_dispute() {
    let db = TestDb::new();
    let store = db.store().await.unwrap();
    let h = paysync_worker::billing::handlers();
    let meta = json!({"account_id": "acct_B"});
    for v in [
        ev(
            "evt_p1",
            "payment_intent.succeeded",
            10,
            json!({"id": "pi_9", "customer": "cus_B", "amount": 5000, "amount_received": 5000, "currency": "usd", "status": "succeeded", "metadata": meta}),
        ),
        ev(
            "evt_p2",
            "charge.refunded",
            20,
            json!({"id": "ch_9", "payment_intent": "pi_9", "customer": "cus_B", "status": "succeeded", "amount": 5000, "amount_refunded": 2000, "currency": "usd",
            "refunds": {"data": [{"id": "re_1", "amount": 2000, "currency": "usd", "status": "succeeded", "charge": "ch_9"}]}}),
        ),
        ev(
            "evt_p3",
            "charge.refunded",
            30,
            json!({"id": "ch_9", "payment_intent": "pi_9", "customer": "cus_B", "status": "succeeded", "amount": 5000, "amount_refunded": 5000, "currency": "usd",
            "refunds": {"data": [{"id": "re_1", "amount": 2000, "currency": "usd", "status": "succeeded"}, {"id": "re_2", "amount": 3000, "currency": "usd", "status": "succeeded"}]}}),
        ),
        ev(
            "evt_d0",
            "charge.succeeded",
            40,
            json!({"id": "ch_d", "payment_intent": "pi_d", "customer": "cus_B", "status": "succeeded", "amount": 1000, "currency": "usd"}),
        ),
        ev(
            "evt_d1",
            "charge.dispute.created",
            50,
            json!({"id": "dp_1", "payment_intent": "pi_d", "charge": "ch_d", "status": "needs_response", "amount": 1000, "currency": "usd", "evidence_details": {"due_by": 1_700_500_000}}),
        ),
    ] {
        assert_eq!(apply(&store, &h, &v).await.unwrap(), Done::Applied);
    }
    let v = view_of(&store, "acct_B").await;
    assert_eq!(
        v["totals"],
        json!([{"currency": "usd", "paid_minor": 6000, "refunded_minor": 5000, "chargeback_minor": 0}])
    );
    let dispute_task = v["open_tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["kind"] == "dispute_response")
        .cloned();
    assert_eq!(dispute_task.unwrap()["due_at"], 1_700_500_000);
    apply(&store, &h, &ev("evt_d2", "charge.dispute.closed", 60, json!({"id": "dp_1", "payment_intent": "pi_d", "status": "lost", "amount": 1000, "currency": "usd"}))).await.unwrap();
    let v = view_of(&store, "acct_B").await;
    assert_eq!(v["totals"][0]["chargeback_minor"], 1000);
    // Side effects written with the state, once each however often the events came.
    let client = db.client().await.unwrap();
    let outbox: Vec<(String, String)> = client
        .query(
            "select kind, source_id from outbox order by kind, source_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let kinds: Vec<&str> = outbox.iter().map(|(k, _)| k.as_str()).collect();
    // (A new customer is announced from the `welcome` task: its first successful payment.)
    assert_eq!(
        kinds,
        [
            "receipt_email",
            "refund_confirmation_email",
            "refund_confirmation_email"
        ]
    );
    assert_eq!(outbox[0].1, "pi_9");
    assert!(
        v["open_tasks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["kind"] != "dispute_response")
    );
}

#[tokio::test]
async fn trial_ending_deleted_customers_conflicts_and_guest_payments() {
    let db = TestDb::new();
    let store = db.store().await.unwrap();
    let h = paysync_worker::billing::handlers();
    let mut trial = sub("sub_t", "cus_T", "trialing", "acct_T");
    trial["trial_end"] = json!(1_700_300_000);
    apply(
        &store,
        &h,
        &ev("evt_t1", "customer.subscription.trial_will_end", 10, trial),
    )
    .await
    .unwrap();
    let v = view_of(&store, "acct_T").await;
    assert_eq!(v["open_tasks"][0]["kind"], "trial_ending");
    assert_eq!(v["open_tasks"][0]["due_at"], 1_700_300_000);
    apply(
        &store,
        &h,
        &ev(
            "evt_t2",
            "customer.subscription.updated",
            20,
            sub("sub_t", "cus_T", "active", "acct_T"),
        ),
    )
    .await
    .unwrap();
    assert!(
        view_of(&store, "acct_T").await["open_tasks"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    let customer = |email: &str| json!({"id": "cus_T", "object": "customer", "email": email, "name": "Tess", "metadata": {"account_id": "acct_T"}});
    apply(
        &store,
        &h,
        &ev("evt_c1", "customer.updated", 30, customer("t@example.com")),
    )
    .await
    .unwrap();
    apply(
        &store,
        &h,
        &ev(
            "evt_c2",
            "customer.deleted",
            40,
            json!({"id": "cus_T", "object": "customer", "deleted": true}),
        ),
    )
    .await
    .unwrap();
    apply(
        &store,
        &h,
        &ev(
            "evt_c3",
            "customer.updated",
            25,
            customer("old@example.com"),
        ),
    )
    .await
    .unwrap();
    let v = view_of(&store, "acct_T").await;
    assert_eq!(
        v["customers"],
        json!([{"provider": "stripe", "customer_id": "cus_T", "deleted": true}])
    );
    assert_eq!(v["email"], "t@example.com", "the older update did not win");

    // The same customer hinted to another account: a person must decide.
    let err = apply(
        &store,
        &h,
        &ev(
            "evt_x",
            "customer.subscription.updated",
            50,
            sub("sub_t", "cus_T", "active", "acct_OTHER"),
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), "customer_account_conflict");

    // A guest payment: applied, linked to no account.
    let guest = ev(
        "evt_g",
        "payment_intent.succeeded",
        60,
        json!({"id": "pi_g", "amount": 700, "currency": "eur", "status": "succeeded"}),
    );
    assert_eq!(apply(&store, &h, &guest).await.unwrap(), Done::Applied);
    assert_eq!(
        store
            .event("stripe", "evt_g")
            .await
            .unwrap()
            .unwrap()
            .account_id,
        None
    );
    assert_eq!(
        store.unlinked_event_count().await.unwrap(),
        1,
        "counted as unlinked"
    );
}
