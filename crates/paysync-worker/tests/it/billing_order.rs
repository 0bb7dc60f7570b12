//! Order independence, proven on generated streams through the real handlers and PostgreSQL:
//! any permutation of a stream, with any duplicates, ends in the same account as the
//! in-order stream.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use paysync_domain::billing::account_view;
use paysync_store::Store;
use paysync_testkit::TestDb;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};

use crate::billing::{apply, ev};

/// The event templates a stream is drawn from, for customer `c` in namespace `ns`.
pub fn template(ns: &str, c: usize, k: usize, created: i64, i: usize) -> Value {
    let cus = format!("cus_{ns}_{c}");
    let hint = json!({"account_id": format!("acct_{ns}_{c}")});
    let id = format!("evt_{ns}_{c}_{i:03}");
    let sub = |status: &str| {
        json!({"id": format!("sub_{ns}_{c}"), "customer": cus, "status": status, "metadata": hint,
               "items": {"data": [{"price": {"id": "price_basic"}}]}})
    };
    let invoice = |n: u8, paid: i64, reason: &str| {
        json!({"id": format!("in_{ns}_{c}_{n}"), "customer": cus, "subscription": format!("sub_{ns}_{c}"),
               "billing_reason": reason, "amount_due": 1500, "amount_paid": paid, "currency": "usd",
               "payment_intent": format!("pi_{ns}_{c}_{n}"), "metadata": hint})
    };
    let pi3 = format!("pi_{ns}_{c}_3");
    let (t, object) = match k {
        0 => ("customer.subscription.created", sub("trialing")),
        1 => ("customer.subscription.updated", sub("active")),
        2 => ("customer.subscription.updated", sub("past_due")),
        3 => ("customer.subscription.deleted", sub("canceled")),
        4 => ("invoice.paid", invoice(1, 1500, "subscription_create")),
        5 => (
            "invoice.payment_failed",
            invoice(2, 0, "subscription_cycle"),
        ),
        6 => ("invoice.paid", invoice(2, 1500, "subscription_cycle")),
        7 => (
            "payment_intent.succeeded",
            json!({"id": pi3, "customer": cus, "amount": 900, "currency": "usd", "status": "succeeded", "metadata": hint}),
        ),
        8 => (
            "charge.failed",
            json!({"id": format!("ch_{ns}_{c}_4"), "payment_intent": format!("pi_{ns}_{c}_4"), "customer": cus, "status": "failed", "amount": 300, "currency": "usd", "failure_code": "card_declined"}),
        ),
        9 => (
            "charge.refunded",
            json!({"id": format!("ch_{ns}_{c}_3"), "payment_intent": pi3, "customer": cus, "status": "succeeded", "amount": 900, "amount_refunded": 400, "currency": "usd",
                 "refunds": {"data": [{"id": format!("re_{ns}_{c}_1"), "amount": 400, "currency": "usd", "status": "succeeded"}]}}),
        ),
        10 => (
            "charge.dispute.created",
            json!({"id": format!("dp_{ns}_{c}"), "payment_intent": pi3, "status": "needs_response", "amount": 900, "currency": "usd", "evidence_details": {"due_by": 1_800_000_000}}),
        ),
        11 => (
            "charge.dispute.closed",
            json!({"id": format!("dp_{ns}_{c}"), "payment_intent": pi3, "status": "lost", "amount": 900, "currency": "usd"}),
        ),
        12 => (
            "customer.updated",
            json!({"id": cus, "email": format!("c{c}.{created}@example.com"), "name": "Pat", "metadata": hint}),
        ),
        13 => ("customer.deleted", json!({"id": cus, "deleted": true})),
        14 => (
            "checkout.session.completed",
            json!({"id": format!("cs_{ns}_{c}"), "customer": cus, "mode": "subscription", "status": "complete",
                 "payment_status": "paid", "client_reference_id": format!("acct_{ns}_{c}"), "amount_total": 1500, "currency": "usd"}),
        ),
        _ => (
            "checkout.session.expired",
            json!({"id": format!("cs2_{ns}_{c}"), "customer": cus, "status": "expired", "payment_status": "unpaid", "metadata": hint}),
        ),
    };
    ev(&id, t, created, object)
}

/// Template count.
pub const TEMPLATES: usize = 16;

/// The account of customer `c` in `ns` as comparable JSON: no ids that depend on insertion
/// order, namespace replaced.
pub async fn normalized(store: &Store, ns: &str, c: usize) -> Value {
    let Some(id) = store
        .find_account(Some(&format!("acct_{ns}_{c}")), None)
        .await
        .unwrap()
    else {
        return Value::Null;
    };
    let mut v = serde_json::to_value(account_view(
        &store.account_facts(id).await.unwrap().unwrap(),
    ))
    .unwrap();
    v["id"] = Value::Null;
    let text = v
        .to_string()
        .replace(&format!("_{ns}_"), "_NS_")
        .replace(&format!("account:{id}"), "account:SELF");
    serde_json::from_str(&text).unwrap()
}

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
});
static CASE: AtomicUsize = AtomicUsize::new(0);

fn stream() -> impl Strategy<Value = (Vec<(usize, usize, i64)>, Vec<usize>)> {
    // (customer, template, created) with few distinct seconds, so same-second ties are common.
    let events = prop::collection::vec((0usize..2, 0usize..TEMPLATES, 0i64..4), 2..9);
    events.prop_flat_map(|events| {
        let n = events.len();
        (Just(events), prop::collection::vec(0..n, 0..3))
    })
}

/// A property test run by hand (not `proptest!`), so the test owns its schema and drops it.
#[test]
fn any_permutation_with_duplicates_ends_in_the_in_order_state() {
    let db = TestDb::new();
    let store = RUNTIME.block_on(db.store()).unwrap();
    let handlers = paysync_worker::billing::handlers();
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(
        &(stream(), any::<u64>()),
        |((events, dups), shuffle_seed)| {
            let case = CASE.fetch_add(1, Ordering::Relaxed);
            let (a, b) = (format!("a{case}"), format!("b{case}"));
            // In-order stream, by created then position.
            let mut in_order: Vec<(usize, &(usize, usize, i64))> =
                events.iter().enumerate().collect();
            in_order.sort_by_key(|(i, e)| (e.2, *i));
            // The same events (with duplicates) in a seeded random order.
            let mut shuffled: Vec<(usize, &(usize, usize, i64))> =
                events.iter().enumerate().collect();
            shuffled.extend(dups.iter().map(|d| (*d, &events[*d])));
            let mut rng = shuffle_seed;
            for i in (1..shuffled.len()).rev() {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                shuffled.swap(i, (rng >> 33) as usize % (i + 1));
            }
            let (store, handlers) = (&store, &handlers);
            let outcome = RUNTIME.block_on(async {
                for (i, (c, k, t)) in &in_order {
                    apply(store, handlers, &template(&a, *c, *k, *t, *i))
                        .await
                        .map_err(|f| format!("{f:?}"))?;
                }
                for (i, (c, k, t)) in &shuffled {
                    apply(store, handlers, &template(&b, *c, *k, *t, *i))
                        .await
                        .map_err(|f| format!("{f:?}"))?;
                }
                let mut views = Vec::new();
                for c in 0..2 {
                    views.push((
                        normalized(store, &a, c).await,
                        normalized(store, &b, c).await,
                    ));
                }
                Ok::<_, String>(views)
            });
            let views = outcome.map_err(TestCaseError::fail)?;
            for (expected, got) in views {
                prop_assert_eq!(got, expected);
            }
            Ok(())
        },
    );
    if let Err(err) = result {
        panic!("{err}");
    }
}
