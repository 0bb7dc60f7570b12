//! Several providers, one account: customers of Stripe, Square, Authorize.Net and PayPal that carry the same
//! external reference end in one account with the totals of all of them, whatever the order
//! of arrival and whatever the duplicates, through the real handlers and PostgreSQL. And a
//! Square event never reaches Stripe's mapper: the registry is keyed by provider and type.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use paysync_domain::billing::account_view;
use paysync_domain::{EventMeta, Provider};
use paysync_store::Store;
use paysync_testkit::TestDb;
use std::sync::Arc;

use futures::future::BoxFuture;
use paysync_domain::billing::authorizenet::Transaction;
use paysync_worker::billing::TransactionSource;
use paysync_worker::{Done, Event, Failure, Handlers, apply_event};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};

/// One event of provider `p` with id `id`, type `t` and body `body`, applied like the worker.
async fn apply(
    store: &Store,
    handlers: &Handlers,
    p: Provider,
    id: &str,
    t: &str,
    body: &Value,
) -> Done {
    let meta = EventMeta {
        provider: p,
        event_id: id.to_owned(),
        event_type: t.to_owned(),
        created: 1_700_000_000,
        livemode: false,
        api_version: None,
        received_at_ms: 1_700_000_000_000,
    };
    let event = Event::new(meta, 1, body.to_string(), false);
    apply_event(store, handlers, &event)
        .await
        .unwrap_or_else(|f| panic!("{p} {t}: {f:?}"))
}

/// The six events of namespace `ns`: each provider's customer (where it has one) and payment,
/// all naming the reference `ref_<ns>`.
fn events(ns: &str) -> Vec<(Provider, String, &'static str, Value)> {
    let r = format!("ref_{ns}");
    vec![
        (
            Provider::Stripe,
            format!("evt_c_{ns}"),
            "customer.created",
            json!({"id": format!("evt_c_{ns}"), "type": "customer.created", "created": 1, "livemode": false,
                "data": {"object": {"id": format!("cus_{ns}"), "email": "ada@example.com", "metadata": {"account_id": r}}}}),
        ),
        (
            Provider::Stripe,
            format!("evt_p_{ns}"),
            "payment_intent.succeeded",
            json!({"id": format!("evt_p_{ns}"), "type": "payment_intent.succeeded", "created": 2, "livemode": false,
                "data": {"object": {"id": format!("pi_{ns}"), "customer": format!("cus_{ns}"), "amount": 1000, "amount_received": 1000, "currency": "usd"}}}),
        ),
        (
            Provider::Square,
            format!("sq_c_{ns}"),
            "customer.created",
            json!({"merchant_id": "M", "type": "customer.created", "event_id": format!("sq_c_{ns}"), "created_at": "2024-01-01T00:00:00Z",
                "data": {"type": "customer", "id": format!("SQC_{ns}"), "object": {"customer": {"id": format!("SQC_{ns}"), "reference_id": r, "updated_at": "2024-01-01T00:00:00Z"}}}}),
        ),
        (
            Provider::Square,
            format!("sq_p_{ns}"),
            "payment.updated",
            json!({"merchant_id": "M", "type": "payment.updated", "event_id": format!("sq_p_{ns}"), "created_at": "2024-01-01T00:00:01.5Z",
                "data": {"type": "payment", "id": format!("SQP_{ns}"), "object": {"payment": {"id": format!("SQP_{ns}"), "customer_id": format!("SQC_{ns}"), "status": "COMPLETED",
                "total_money": {"amount": 2000, "currency": "USD"}, "updated_at": "2024-01-01T00:00:01.5Z"}}}}),
        ),
        (
            Provider::AuthorizeNet,
            format!("anet_p_{ns}"),
            "net.authorize.payment.authcapture.created",
            json!({"notificationId": format!("anet_p_{ns}"), "eventType": "net.authorize.payment.authcapture.created",
                   "eventDate": "2024-01-03T00:00:00.1234567Z", "webhookId": "w",
                   "payload": {"responseCode": 1, "authAmount": 7.25, "entityName": "transaction", "id": format!("T{ns}")}}),
        ),
        (
            Provider::Paypal,
            format!("WH-{ns}"),
            "PAYMENT.CAPTURE.COMPLETED",
            json!({"id": format!("WH-{ns}"), "event_type": "PAYMENT.CAPTURE.COMPLETED", "resource_type": "capture",
                "resource": {"id": format!("CAP_{ns}"), "status": "COMPLETED", "custom_id": r, "amount": {"currency_code": "USD", "value": "30.00"},
                "update_time": "2024-01-02T00:00:00Z"}}),
        ),
        (
            Provider::Paypal,
            format!("WH-EUR-{ns}"),
            "PAYMENT.CAPTURE.COMPLETED",
            json!({"id": format!("WH-EUR-{ns}"), "event_type": "PAYMENT.CAPTURE.COMPLETED", "resource_type": "capture",
                "resource": {"id": format!("CAPE_{ns}"), "status": "COMPLETED", "custom_id": r, "amount": {"currency_code": "EUR", "value": "4.50"},
                "update_time": "2024-01-02T00:00:00Z"}}),
        ),
    ]
}

/// The parts of the account view that must not depend on order (its id, and the welcome task
/// an account merged away may have opened, are not among them).
async fn summary(store: &Store, ns: &str) -> Value {
    let id = store
        .find_account(Some(&format!("ref_{ns}")), None)
        .await
        .unwrap()
        .expect("the referenced account exists");
    let v = serde_json::to_value(account_view(
        &store.account_facts(id).await.unwrap().unwrap(),
    ))
    .unwrap();
    let mut customers: Vec<String> = v["customers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{}:{}",
                c["provider"].as_str().unwrap(),
                c["customer_id"].as_str().unwrap().replace(ns, "NS")
            )
        })
        .collect();
    customers.sort();
    json!({"totals": v["totals"], "deal_stage": v["deal_stage"], "lifecycle_stage": v["lifecycle_stage"],
           "email": v["email"], "customers": customers})
}

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
});
/// Authorize.Net's transaction details as its API would give them: transaction `T<ns>` of
/// profile `ANC_<ns>` whose merchant customer id is the shared reference. (The client against
/// the API's wire format is tested in `anet_enrich`.)
struct Details;

impl TransactionSource for Details {
    fn transaction<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Transaction, Failure>> {
        let ns = id.trim_start_matches('T').to_owned();
        Box::pin(async move {
            Ok(Transaction {
                trans_id: id.to_owned(),
                response_code: Some(1),
                amount: 725,
                customer_profile_id: Some(format!("ANC_{ns}")),
                merchant_customer_id: Some(format!("ref_{ns}")),
                ..Transaction::default()
            })
        })
    }
}

static CASE: AtomicUsize = AtomicUsize::new(0);

/// A property test run by hand (not `proptest!`), so the test owns its schema and drops it.
#[test]
fn one_reference_one_account_across_providers_in_any_order() {
    let db = TestDb::new();
    let store = RUNTIME.block_on(db.store()).unwrap();
    let details: Arc<dyn TransactionSource> = Arc::new(Details);
    let handlers = paysync_worker::billing::handlers_with(Some(details));
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (
        Just((0..7).collect::<Vec<usize>>()).prop_shuffle(),
        prop::collection::vec(0usize..7, 0..4),
    );
    let result = runner.run(&strategy, |(order, dups)| {
        let ns = format!("x{}", CASE.fetch_add(1, Ordering::Relaxed));
        let all = events(&ns);
        let got = RUNTIME.block_on(async {
            for i in order.iter().chain(&dups) {
                let (p, id, t, body) = &all[*i];
                apply(&store, &handlers, *p, id, t, body).await;
            }
            summary(&store, &ns).await
        });
        let expected = json!({
            "totals": [
                {"currency": "eur", "paid_minor": 450, "refunded_minor": 0, "chargeback_minor": 0},
                {"currency": "usd", "paid_minor": 6725, "refunded_minor": 0, "chargeback_minor": 0},
            ],
            "deal_stage": "closed_won",
            "lifecycle_stage": "customer",
            "email": "ada@example.com",
            "customers": ["authorizenet:ANC_NS", "square:SQC_NS", "stripe:cus_NS"],
        });
        prop_assert_eq!(got, expected);
        Ok(())
    });
    if let Err(err) = result {
        panic!("{err}");
    }
}

/// A Square `customer.created` and a Stripe `customer.created` with the same JSON shape of id:
/// each provider's mapper reads its own shape, so each lands as its own provider's customer.
/// Keyed by type alone, the Square event would reach Stripe's mapper and fail on its body.
#[tokio::test]
async fn same_type_name_goes_to_each_providers_mapper() {
    let db = TestDb::new();
    let store = db.store().await.unwrap();
    let h = paysync_worker::billing::handlers();
    assert!(h.knows(Provider::Square, "customer.created"));
    assert!(h.knows(Provider::Stripe, "customer.created"));
    assert!(
        !h.knows(Provider::Square, "invoice.paid"),
        "a Stripe-only type"
    );
    let all = events("same");
    for i in [0, 2] {
        let (p, id, t, body) = &all[i];
        assert_eq!(apply(&store, &h, *p, id, t, body).await, Done::Applied);
    }
    let v = summary(&store, "same").await;
    assert_eq!(v["customers"], json!(["square:SQC_NS", "stripe:cus_NS"]));
}
