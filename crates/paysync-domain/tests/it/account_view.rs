//! The account view's JSON is public contract (`paysync accounts show --json`, the admin API):
//! these tests pin its bytes. The pinned text was printed by the earlier `serde_json::Value`
//! implementation, so the typed view must keep every key, its order and its formatting.

use paysync_domain::billing::{
    AccountFacts, CustomerFact, DisputeFact, InvoiceFact, PaymentFact, RefundFact,
    SubscriptionFact, TaskFact, account_view,
};

fn s(v: &str) -> String {
    v.to_owned()
}

fn busy_account() -> AccountFacts {
    let payment = |id: &str, status: &str, amount, currency: &str, amount_refunded| PaymentFact {
        provider: "stripe".into(),
        id: s(id),
        status: s(status),
        amount,
        currency: s(currency),
        amount_refunded,
    };
    let task = |kind: &str, source_id: &str, due_at| TaskFact {
        kind: s(kind),
        source_id: s(source_id),
        due_at,
    };
    AccountFacts {
        id: 7,
        external_ref: Some(s("acct_42")),
        customers: vec![
            CustomerFact {
                provider: s("stripe"),
                customer_id: s("cus_A"),
                email: None,
                name: Some(s("Ada")),
                deleted: true,
            },
            CustomerFact {
                provider: s("stripe"),
                customer_id: s("cus_B"),
                email: Some(s("b@example.com")),
                name: Some(s("Bea")),
                deleted: false,
            },
        ],
        subscriptions: vec![
            SubscriptionFact {
                id: s("sub_1"),
                status: s("past_due"),
                plan: Some(s("price_pro")),
            },
            SubscriptionFact {
                id: s("sub_0"),
                status: s("canceled"),
                plan: None,
            },
        ],
        invoices: vec![InvoiceFact {
            id: s("in_1"),
            status: s("open"),
            billing_reason: Some(s("subscription_cycle")),
        }],
        payments: vec![
            payment("pi_1", "succeeded", 5000, "usd", 1000),
            payment("pi_2", "succeeded", 700, "eur", 0),
            payment("pi_3", "failed", 900, "usd", 0),
        ],
        refunds: vec![RefundFact {
            payment_id: Some(s("pi_1")),
            status: s("succeeded"),
            amount: 1500,
            currency: s("usd"),
        }],
        disputes: vec![DisputeFact {
            provider: "stripe".into(),
            id: s("dp_1"),
            payment_id: Some(s("pi_2")),
            status: s("lost"),
            amount: 700,
            currency: s("eur"),
        }],
        checkouts: vec![s("complete")],
        tasks: vec![
            task("payment_failed_followup", "in_1", None),
            task("dispute_response", "dp_1", Some(1_700_000_000)),
            task("welcome", "account:7", None),
        ],
    }
}

#[test]
fn the_pretty_json_of_an_account_view_keeps_the_bytes_the_cli_printed_before() {
    let printed = serde_json::to_string_pretty(&account_view(&busy_account())).unwrap();
    assert_eq!(printed, include_str!("pins/account_view.json"));
}

#[test]
fn the_compact_json_of_an_empty_account_keeps_its_keys_nulls_and_order() {
    let printed = serde_json::to_string(&account_view(&AccountFacts {
        id: 1,
        ..AccountFacts::default()
    }))
    .unwrap();
    assert_eq!(
        printed,
        r#"{"customers":[],"deal_stage":"opportunity","email":null,"entitlement":"denied","external_ref":null,"id":1,"lifecycle_stage":"lead","name":null,"open_tasks":[],"plan":null,"subscription_status":null,"totals":[]}"#
    );
}
