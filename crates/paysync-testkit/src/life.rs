//! A scripted customer life across two providers, for the tests of what the business's
//! application is told: the events, in the order a provider would send them, and the
//! application events they must make, in order.

use paysync_domain::Provider;
use serde_json::{Value, json};

/// One provider event: who sends it, its id and type, and its body.
#[derive(Debug, Clone)]
pub struct LifeEvent {
    /// The provider.
    pub provider: Provider,
    /// Its event id.
    pub id: String,
    /// Its type.
    pub event_type: &'static str,
    /// Its body.
    pub body: Value,
    /// Its `created` (unix seconds; the Square bodies carry their own times).
    pub created: i64,
}

impl LifeEvent {
    /// Its metadata, as the receiver would have read it.
    pub fn meta(&self) -> paysync_domain::EventMeta {
        paysync_domain::EventMeta {
            provider: self.provider,
            event_id: self.id.clone(),
            event_type: self.event_type.to_owned(),
            created: self.created,
            livemode: false,
            api_version: None,
            received_at_ms: 1_700_000_000_000,
        }
    }
}

/// The application events [`two_provider_life`] makes, in order.
pub const LIFE_APP_EVENTS: [&str; 13] = [
    "account.created",
    "account.entitlement_changed",
    "payment.succeeded",
    "account.deal_stage_changed",
    "payment.failed",
    "account.entitlement_changed",
    "payment.succeeded",
    "account.entitlement_changed",
    "account.entitlement_changed",
    "account.entitlement_changed",
    "payment.succeeded",
    "payment.refunded",
    "dispute.opened",
];

/// A customer (reference `ref_<ns>`) who trials a Stripe plan, pays, fails a renewal and
/// recovers, cancels, moves to a Square subscription, pays there, is partly refunded, and
/// finally disputes the first Stripe payment. Every id carries `ns`.
pub fn two_provider_life(ns: &str) -> Vec<LifeEvent> {
    let r = format!("ref_{ns}");
    let cus = format!("cus_{ns}");
    let sub = format!("sub_{ns}");
    let mut out = Vec::new();
    let mut t = 1_800_000_000;
    let mut stripe = |id: &str, event_type: &'static str, object: Value| {
        t += 10;
        let id = format!("evt_{id}_{ns}");
        LifeEvent {
            provider: Provider::Stripe,
            body: json!({"id": id, "object": "event", "type": event_type, "created": t,
                         "livemode": false, "data": {"object": object}}),
            id,
            event_type,
            created: t,
        }
    };
    let subscription = |status: &str| {
        json!({"id": sub, "object": "subscription", "customer": cus, "status": status,
               "metadata": {"account_id": r},
               "items": {"data": [{"price": {"id": "price_pro"}, "current_period_end": 1_900_000_000}]}})
    };
    let intent = |id: &str, status: &str| {
        json!({"id": format!("{id}_{ns}"), "object": "payment_intent", "customer": cus,
               "status": status, "amount": 4900, "amount_received": if status == "succeeded" { 4900 } else { 0 },
               "currency": "usd"})
    };
    out.push(stripe(
        "c",
        "customer.created",
        json!({"id": cus, "object": "customer",
        "email": "ada@example.com", "name": "Ada", "metadata": {"account_id": r}}),
    ));
    out.push(stripe(
        "s1",
        "customer.subscription.created",
        subscription("trialing"),
    ));
    out.push(stripe(
        "p1",
        "payment_intent.succeeded",
        intent("pi_1", "succeeded"),
    ));
    out.push(stripe(
        "s2",
        "customer.subscription.updated",
        subscription("active"),
    ));
    out.push(stripe(
        "p2f",
        "payment_intent.payment_failed",
        intent("pi_2", "requires_payment_method"),
    ));
    out.push(stripe(
        "s3",
        "customer.subscription.updated",
        subscription("past_due"),
    ));
    out.push(stripe(
        "p2",
        "payment_intent.succeeded",
        intent("pi_2", "succeeded"),
    ));
    out.push(stripe(
        "s4",
        "customer.subscription.updated",
        subscription("active"),
    ));
    out.push(stripe(
        "s5",
        "customer.subscription.deleted",
        subscription("canceled"),
    ));
    let sqc = format!("SQC_{ns}");
    let square = |id: &str, event_type: &'static str, family: &str, at: &str, object: Value| {
        let id = format!("sq_{id}_{ns}");
        LifeEvent {
            provider: Provider::Square,
            body: json!({"merchant_id": "M", "type": event_type, "event_id": id, "created_at": at,
                         "data": {"type": family, "id": object["id"], "object": {family: object}}}),
            id,
            event_type,
            created: 0,
        }
    };
    out.push(square(
        "c",
        "customer.created",
        "customer",
        "2027-01-01T00:00:00Z",
        json!({"id": sqc, "reference_id": r, "email_address": "ada@example.com",
               "updated_at": "2027-01-01T00:00:00Z"}),
    ));
    out.push(square(
        "s",
        "subscription.created",
        "subscription",
        "2027-01-01T00:01:00Z",
        json!({"id": format!("SQS_{ns}"), "customer_id": sqc, "status": "ACTIVE",
               "plan_variation_id": "SQ_PLAN_PRO", "updated_at": "2027-01-01T00:01:00Z"}),
    ));
    out.push(square("p", "payment.updated", "payment", "2027-01-01T00:02:00Z",
        json!({"id": format!("SQP_{ns}"), "customer_id": sqc, "status": "COMPLETED",
               "total_money": {"amount": 5000, "currency": "USD"}, "updated_at": "2027-01-01T00:02:00Z"})));
    out.push(square("r", "refund.updated", "refund", "2027-01-01T00:03:00Z",
        json!({"id": format!("SQR_{ns}"), "payment_id": format!("SQP_{ns}"), "status": "COMPLETED",
               "amount_money": {"amount": 1500, "currency": "USD"}, "updated_at": "2027-01-01T00:03:00Z"})));
    out.push(stripe(
        "d",
        "charge.dispute.created",
        json!({"id": format!("dp_{ns}"), "object": "dispute",
        "charge": format!("ch_{ns}"), "payment_intent": format!("pi_1_{ns}"), "amount": 4900,
        "currency": "usd", "status": "needs_response", "reason": "fraudulent",
        "evidence_details": {"due_by": 1_900_000_000}}),
    ));
    out
}
