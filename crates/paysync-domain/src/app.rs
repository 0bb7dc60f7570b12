//! What the business's own application is told: the account's projection and the events that
//! say how it changed.
//!
//! The application is told about state, not about webhooks. After an event's writes, the
//! worker projects each account it touched ([`Projection::of`], from the stored facts only)
//! and compares it with the projection it last sent ([`changes`]). Only a real difference
//! makes an event, so a duplicate, a redelivery or an older event that lost to the order key
//! makes none. Each event is numbered per account (`sequence`, 1, 2, 3 … without gaps, in
//! commit order) and its body is fixed when it is made ([`body`]). The catalogue is in
//! `docs/app-webhooks.md`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::billing::{AccountFacts, ObjectKind, account_view, terminal};

/// The version of the event bodies; a change that is not additive makes a new version.
pub const BODY_VERSION: u32 = 1;

/// The closed set of event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    /// paysync saw the account for the first time.
    AccountCreated,
    /// Access changed: granted, grace or denied, or the plan that grants it.
    EntitlementChanged,
    /// The CRM deal stage changed (opportunity, closed won, closed lost).
    DealStageChanged,
    /// A payment succeeded.
    PaymentSucceeded,
    /// A payment failed.
    PaymentFailed,
    /// More of a payment was refunded.
    PaymentRefunded,
    /// A dispute (chargeback or inquiry) was opened.
    DisputeOpened,
}

impl EventType {
    /// Every type.
    pub const ALL: [EventType; 7] = [
        EventType::AccountCreated,
        EventType::EntitlementChanged,
        EventType::DealStageChanged,
        EventType::PaymentSucceeded,
        EventType::PaymentFailed,
        EventType::PaymentRefunded,
        EventType::DisputeOpened,
    ];

    /// The name in the body's `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::AccountCreated => "account.created",
            EventType::EntitlementChanged => "account.entitlement_changed",
            EventType::DealStageChanged => "account.deal_stage_changed",
            EventType::PaymentSucceeded => "payment.succeeded",
            EventType::PaymentFailed => "payment.failed",
            EventType::PaymentRefunded => "payment.refunded",
            EventType::DisputeOpened => "dispute.opened",
        }
    }

    /// The type named `name`, if any.
    pub fn parse(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

/// A payment, refund or dispute as the application sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    /// Minor units.
    pub amount: i64,
    /// Lowercase ISO 4217.
    pub currency: String,
}

/// What the application was last told about one account. Kept as JSON beside the account, so
/// the next change is compared with it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Projection {
    /// `granted`, `grace` or `denied`.
    pub entitlement: String,
    /// The plan of the subscription that decides the entitlement.
    pub plan: Option<String>,
    /// That subscription's status.
    pub subscription_status: Option<String>,
    /// `opportunity`, `closed_won` or `closed_lost`.
    pub deal_stage: String,
    /// Succeeded payments, as `provider:id`.
    pub succeeded: BTreeSet<String>,
    /// Payments whose state is failed, as `provider:id` (once told, never told again).
    pub failed: BTreeSet<String>,
    /// Refunded minor units per payment (`provider:id`).
    pub refunded: BTreeMap<String, i64>,
    /// Disputes seen, as `provider:id`.
    pub disputes: BTreeSet<String>,
}

/// Where a projection starts: nothing granted, nothing won, nothing seen. A new account whose
/// state is this is announced with `account.created` only.
pub fn initial() -> Projection {
    Projection {
        entitlement: "denied".into(),
        deal_stage: "opportunity".into(),
        ..Projection::default()
    }
}

impl Projection {
    /// The projection of an account's stored facts.
    pub fn of(f: &AccountFacts) -> Projection {
        let view = account_view(f);
        let key = |provider: &str, id: &str| format!("{provider}:{id}");
        let mut refunded = BTreeMap::new();
        for p in f.payments.iter().filter(|p| p.status == "succeeded") {
            let from_refunds: i64 = f
                .refunds
                .iter()
                .filter(|r| {
                    r.payment_id.as_deref() == Some(p.id.as_str()) && r.status == "succeeded"
                })
                .map(|r| r.amount)
                .sum();
            let total = p.amount_refunded.max(from_refunds);
            if total > 0 {
                refunded.insert(key(&p.provider, &p.id), total);
            }
        }
        Projection {
            entitlement: view.entitlement.to_owned(),
            plan: view.plan,
            subscription_status: view.subscription_status,
            deal_stage: view.deal_stage.to_owned(),
            succeeded: f
                .payments
                .iter()
                .filter(|p| p.status == "succeeded")
                .map(|p| key(&p.provider, &p.id))
                .collect(),
            failed: f
                .payments
                .iter()
                .filter(|p| p.status == "failed")
                .map(|p| key(&p.provider, &p.id))
                .collect(),
            refunded,
            disputes: f.disputes.iter().map(|d| key(&d.provider, &d.id)).collect(),
        }
    }

    /// What the application is told after `self`: `before` and `self` merged so that a set
    /// never forgets what it was told (a payment once reported failed stays reported).
    fn told(&self, before: &Projection) -> Projection {
        let mut out = self.clone();
        out.failed.extend(before.failed.iter().cloned());
        out.succeeded.extend(before.succeeded.iter().cloned());
        out.disputes.extend(before.disputes.iter().cloned());
        for (k, v) in &before.refunded {
            let e = out.refunded.entry(k.clone()).or_insert(*v);
            *e = (*e).max(*v);
        }
        out
    }
}

/// One change to tell: its type and its `data`, without the envelope [`body`] adds.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// What happened.
    pub kind: EventType,
    /// The type's own fields.
    pub data: Value,
}

/// What changed from `before` (`None`: the account was never projected) to the account now,
/// in a fixed order: the account's creation, then payments, refunds and disputes (each by
/// `provider:id`), then the deal stage, then the entitlement. Returns the projection to keep.
pub fn changes(before: Option<&Projection>, facts: &AccountFacts) -> (Vec<Change>, Projection) {
    let now = Projection::of(facts);
    let start = initial();
    let was = before.unwrap_or(&start);
    let mut out = Vec::new();
    let view = account_view(facts);
    if before.is_none() {
        out.push(Change {
            kind: EventType::AccountCreated,
            data: json!({
                "email": view.email,
                "name": view.name,
                "customers": view.customers.iter().map(|c| json!({
                    "provider": c.provider,
                    "customer_id": c.customer_id,
                })).collect::<Vec<_>>(),
            }),
        });
    }
    let payment = |key: &str| -> Value {
        let (provider, id) = key.split_once(':').unwrap_or(("", key));
        let p = facts
            .payments
            .iter()
            .find(|p| p.provider == provider && p.id == id);
        json!({
            "provider": provider,
            "id": id,
            "amount": p.map(|p| p.amount),
            "currency": p.map(|p| p.currency.clone()),
        })
    };
    for key in now.failed.difference(&was.failed) {
        if was.succeeded.contains(key) {
            continue;
        }
        out.push(Change {
            kind: EventType::PaymentFailed,
            data: json!({"payment": payment(key)}),
        });
    }
    for key in now.succeeded.difference(&was.succeeded) {
        let failed_before = was.failed.contains(key);
        out.push(Change {
            kind: EventType::PaymentSucceeded,
            data: json!({"payment": payment(key), "recovered": failed_before}),
        });
    }
    for (key, total) in &now.refunded {
        let told = was.refunded.get(key).copied().unwrap_or(0);
        if *total > told {
            out.push(Change {
                kind: EventType::PaymentRefunded,
                data: json!({
                    "payment": payment(key),
                    "amount_refunded": total,
                    "refunded_now": total - told,
                }),
            });
        }
    }
    for key in now.disputes.difference(&was.disputes) {
        let (provider, id) = key.split_once(':').unwrap_or(("", key));
        let Some(d) = facts
            .disputes
            .iter()
            .find(|d| d.provider == provider && d.id == id)
        else {
            continue;
        };
        out.push(Change {
            kind: EventType::DisputeOpened,
            data: json!({"dispute": {
                "provider": provider,
                "id": id,
                "payment_id": d.payment_id,
                "status": d.status,
                "closed": terminal(ObjectKind::Dispute, &d.status),
                "amount": d.amount,
                "currency": d.currency,
            }}),
        });
    }
    if now.deal_stage != was.deal_stage {
        out.push(Change {
            kind: EventType::DealStageChanged,
            data: json!({
                "deal_stage": now.deal_stage,
                "previous": was.deal_stage,
                "lifecycle_stage": view.lifecycle_stage,
            }),
        });
    }
    if (&now.entitlement, &now.plan) != (&was.entitlement, &was.plan) {
        out.push(Change {
            kind: EventType::EntitlementChanged,
            data: json!({
                "entitlement": now.entitlement,
                "previous": was.entitlement,
                "plan": now.plan,
                "previous_plan": was.plan,
                "reason": reason(now.subscription_status.as_deref()),
            }),
        });
    }
    let keep = now.told(was);
    (out, keep)
}

/// Why the entitlement is what it is: `subscription_<status>`, or `no_subscription`.
pub fn reason(subscription_status: Option<&str>) -> String {
    match subscription_status {
        Some(s) => format!("subscription_{s}"),
        None => "no_subscription".into(),
    }
}

/// The stable id of an account's `seq`th event (`webhook-id`): the same on every attempt.
pub fn event_id(account: i64, seq: i64) -> String {
    format!("evt_ps_{account}_{seq}")
}

/// The body that is signed and sent: the Standard Webhooks shape (`type`, `timestamp`,
/// `data`) with our `id`, `version`, and the account and its `sequence` in `data`.
/// `occurred_at` is RFC 3339 (UTC), the time of the transaction that made the change.
pub fn body(
    change: &Change,
    account: i64,
    external_ref: Option<&str>,
    seq: i64,
    occurred_at: &str,
) -> String {
    let mut data = serde_json::Map::new();
    data.insert(
        "account".into(),
        json!({"id": account, "external_ref": external_ref}),
    );
    data.insert("sequence".into(), json!(seq));
    if let Value::Object(fields) = &change.data {
        for (k, v) in fields {
            data.insert(k.clone(), v.clone());
        }
    }
    json!({
        "id": event_id(account, seq),
        "type": change.kind.as_str(),
        "version": BODY_VERSION,
        "timestamp": occurred_at,
        "data": Value::Object(data),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::{CustomerFact, DisputeFact, PaymentFact, RefundFact, SubscriptionFact};

    fn pay(provider: &str, id: &str, status: &str, amount: i64) -> PaymentFact {
        PaymentFact {
            provider: provider.into(),
            id: id.into(),
            status: status.into(),
            amount,
            currency: "usd".into(),
            amount_refunded: 0,
        }
    }

    fn sub(id: &str, status: &str, plan: &str) -> SubscriptionFact {
        SubscriptionFact {
            id: id.into(),
            status: status.into(),
            plan: Some(plan.into()),
        }
    }

    fn account() -> AccountFacts {
        AccountFacts {
            id: 7,
            external_ref: Some("user_7".into()),
            customers: vec![CustomerFact {
                provider: "stripe".into(),
                customer_id: "cus_1".into(),
                email: Some("ada@example.com".into()),
                name: None,
                deleted: false,
            }],
            ..AccountFacts::default()
        }
    }

    fn kinds(c: &[Change]) -> Vec<&'static str> {
        c.iter().map(|c| c.kind.as_str()).collect()
    }

    #[test]
    fn names_round_trip() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
        assert_eq!(EventType::parse("payment.created"), None);
    }

    #[test]
    fn a_new_account_is_announced_once_and_nothing_else_without_a_change() {
        let f = account();
        let (c, keep) = changes(None, &f);
        assert_eq!(kinds(&c), ["account.created"]);
        assert_eq!(c[0].data["email"], "ada@example.com");
        assert_eq!(c[0].data["customers"][0]["customer_id"], "cus_1");
        assert_eq!(keep, initial());
        let (again, keep2) = changes(Some(&keep), &f);
        assert!(again.is_empty(), "{again:?}");
        assert_eq!(keep2, keep);
    }

    #[test]
    fn a_subscription_life_tells_each_transition_once() {
        let mut f = account();
        let (_, p0) = changes(None, &f);
        // Trial: access granted, no payment yet.
        f.subscriptions = vec![sub("sub_1", "trialing", "pro")];
        let (c, p1) = changes(Some(&p0), &f);
        assert_eq!(kinds(&c), ["account.entitlement_changed"]);
        assert_eq!(c[0].data["entitlement"], "granted");
        assert_eq!(c[0].data["previous"], "denied");
        assert_eq!(c[0].data["plan"], "pro");
        assert_eq!(c[0].data["reason"], "subscription_trialing");
        // First payment: succeeded, deal won; entitlement unchanged (trialing → active).
        f.subscriptions = vec![sub("sub_1", "active", "pro")];
        f.payments = vec![pay("stripe", "pi_1", "succeeded", 4900)];
        let (c, p2) = changes(Some(&p1), &f);
        assert_eq!(
            kinds(&c),
            ["payment.succeeded", "account.deal_stage_changed"]
        );
        assert_eq!(c[0].data["payment"]["id"], "pi_1");
        assert_eq!(c[0].data["payment"]["amount"], 4900);
        assert_eq!(c[0].data["recovered"], false);
        assert_eq!(c[1].data["deal_stage"], "closed_won");
        // Renewal fails: grace.
        f.subscriptions = vec![sub("sub_1", "past_due", "pro")];
        f.payments.push(pay("stripe", "pi_2", "failed", 4900));
        let (c, p3) = changes(Some(&p2), &f);
        assert_eq!(kinds(&c), ["payment.failed", "account.entitlement_changed"]);
        assert_eq!(c[1].data["entitlement"], "grace");
        // The retry succeeds: recovered.
        f.subscriptions = vec![sub("sub_1", "active", "pro")];
        f.payments[1].status = "succeeded".into();
        let (c, p4) = changes(Some(&p3), &f);
        assert_eq!(
            kinds(&c),
            ["payment.succeeded", "account.entitlement_changed"]
        );
        assert_eq!(c[0].data["recovered"], true);
        // Refund in two steps, then a dispute.
        f.payments[0].amount_refunded = 1000;
        let (c, p5) = changes(Some(&p4), &f);
        assert_eq!(kinds(&c), ["payment.refunded"]);
        assert_eq!(c[0].data["refunded_now"], 1000);
        f.refunds = vec![RefundFact {
            payment_id: Some("pi_1".into()),
            status: "succeeded".into(),
            amount: 4900,
            currency: "usd".into(),
        }];
        f.disputes = vec![DisputeFact {
            provider: "stripe".into(),
            id: "dp_1".into(),
            payment_id: Some("pi_2".into()),
            status: "needs_response".into(),
            amount: 4900,
            currency: "usd".into(),
        }];
        let (c, p6) = changes(Some(&p5), &f);
        assert_eq!(kinds(&c), ["payment.refunded", "dispute.opened"]);
        assert_eq!(c[0].data["amount_refunded"], 4900);
        assert_eq!(c[0].data["refunded_now"], 3900);
        assert_eq!(c[1].data["dispute"]["payment_id"], "pi_2");
        // Cancelled: denied.
        f.subscriptions = vec![sub("sub_1", "canceled", "pro")];
        let (c, p7) = changes(Some(&p6), &f);
        assert_eq!(kinds(&c), ["account.entitlement_changed"]);
        assert_eq!(c[0].data["entitlement"], "denied");
        assert_eq!(c[0].data["reason"], "subscription_canceled");
        // The same facts again: nothing.
        assert!(changes(Some(&p7), &f).0.is_empty());
    }

    #[test]
    fn what_was_told_is_never_told_again() {
        let mut f = account();
        f.payments = vec![pay("stripe", "pi_1", "failed", 100)];
        let (c, p) = changes(Some(&initial()), &f);
        assert_eq!(kinds(&c), ["payment.failed"]);
        // A second failure of the same payment changes nothing.
        assert!(changes(Some(&p), &f).0.is_empty());
        // A payment that succeeded is never reported failed afterwards.
        let mut g = account();
        g.payments = vec![pay("stripe", "pi_9", "succeeded", 100)];
        let (_, p) = changes(Some(&initial()), &g);
        g.payments[0].status = "failed".into();
        assert!(
            !changes(Some(&p), &g)
                .0
                .iter()
                .any(|c| c.kind == EventType::PaymentFailed)
        );
        // A refund never goes down.
        let mut h = account();
        h.payments = vec![pay("stripe", "pi_3", "succeeded", 100)];
        h.payments[0].amount_refunded = 60;
        let (_, p) = changes(Some(&initial()), &h);
        h.payments[0].amount_refunded = 0;
        assert!(changes(Some(&p), &h).0.is_empty());
    }

    #[test]
    fn same_ids_of_two_providers_are_two_payments() {
        let mut f = account();
        f.payments = vec![
            pay("stripe", "1", "succeeded", 100),
            pay("square", "1", "succeeded", 200),
        ];
        let (c, _) = changes(Some(&initial()), &f);
        let ids: Vec<_> = c
            .iter()
            .filter(|c| c.kind == EventType::PaymentSucceeded)
            .map(|c| c.data["payment"]["provider"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(ids, ["square", "stripe"]);
    }

    #[test]
    fn a_plan_change_is_an_entitlement_change() {
        let mut f = account();
        f.subscriptions = vec![sub("sub_1", "active", "basic")];
        let (_, p) = changes(Some(&initial()), &f);
        f.subscriptions = vec![sub("sub_1", "active", "pro")];
        let (c, _) = changes(Some(&p), &f);
        assert_eq!(kinds(&c), ["account.entitlement_changed"]);
        assert_eq!(c[0].data["previous_plan"], "basic");
        assert_eq!(c[0].data["entitlement"], "granted");
    }

    #[test]
    fn the_body_is_versioned_and_carries_the_account_and_sequence() {
        let change = Change {
            kind: EventType::PaymentSucceeded,
            data: json!({"payment": {"id": "pi_1"}}),
        };
        let b = body(&change, 7, Some("user_7"), 3, "2026-12-06T01:00:00Z");
        let v: Value = serde_json::from_str(&b).expect("json");
        assert_eq!(v["id"], "evt_ps_7_3");
        assert_eq!(v["type"], "payment.succeeded");
        assert_eq!(v["version"], 1);
        assert_eq!(v["timestamp"], "2026-12-06T01:00:00Z");
        assert_eq!(v["data"]["account"]["id"], 7);
        assert_eq!(v["data"]["account"]["external_ref"], "user_7");
        assert_eq!(v["data"]["sequence"], 3);
        assert_eq!(v["data"]["payment"]["id"], "pi_1");
        assert!(!b.contains("card"), "{b}");
    }
}
