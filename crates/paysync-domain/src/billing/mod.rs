//! Provider events as billing/CRM changes, and the rules that make their order irrelevant.
//!
//! The model is provider-neutral: canonical object kinds and statuses (Stripe's vocabulary,
//! which the other providers' mappers translate into), the order key, account hints and side
//! effects. One mapper per provider turns its event types into [`Changes`]: [`stripe`],
//! [`square`], [`authorizenet`], [`paypal`]; [`handled_types`] and [`changes_of_body`] pick
//! the mapper by provider, so two providers' events of the same type never meet.
//!
//! Every provider object (subscription, invoice, payment, refund, dispute, checkout session,
//! customer) is applied as a snapshot with an [`OrderKey`]: `(terminal, created, status rank,
//! event id)`. A snapshot replaces the stored one only when its key is greater, so the final
//! state is the snapshot with the greatest key whatever the arrival order: terminal statuses
//! are never reopened, newer beats older, same-second ties go to the later status in the
//! lifecycle, and the event id breaks exact ties deterministically.
//!
//! Rule of thumb: parsing is total: an unknown shape is `Unsupported` (a permanent failure),
//! never a panic; amounts are integer minor units with a lowercase ISO currency.

use serde::Serialize;

pub mod authorizenet;
pub mod paypal;
pub mod square;
pub mod stripe;

use crate::webhook::Provider;

pub use crate::intent::{Channel, Intent, Notice};
use serde_json_borrow::Value as Json;

/// The ordering key of a snapshot (compared lexicographically).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct OrderKey {
    /// Terminal statuses win over everything else.
    pub terminal: bool,
    /// The provider's time of the state (Stripe: the event's `created`, seconds; the others:
    /// milliseconds, see [`Changes::order_at`]).
    pub created: i64,
    /// Lifecycle precedence of the status, for same-second ties.
    pub rank: i16,
    /// Last resort: the event id.
    pub event_id: String,
}

/// A customer snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerSnap {
    /// `cus_…`.
    pub id: String,
    /// Email, when given.
    pub email: Option<String>,
    /// Name, when given.
    pub name: Option<String>,
    /// `customer.deleted`.
    pub deleted: bool,
}

/// A provider object's snapshot: its id, status and the fields we keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snap {
    /// Kind of object.
    pub kind: ObjectKind,
    /// Provider id (for payments: the payment intent when known, so a charge and its intent
    /// are one payment).
    pub id: String,
    /// Normalized status.
    pub status: String,
    /// Amount in minor units (0 when not applicable).
    pub amount: i64,
    /// Lowercase ISO currency (empty when not applicable).
    pub currency: String,
    /// The payment this object refers to (refunds, disputes), or the subscription (invoices).
    pub parent: Option<String>,
    /// Plan or price id (subscriptions), billing reason (invoices), failure code (payments),
    /// reason (disputes), mode (checkout sessions).
    pub detail: Option<String>,
    /// Unix seconds: period end (subscriptions), evidence due (disputes), trial end.
    pub at: Option<i64>,
    /// Cumulative refunded amount (payments).
    pub refunded: i64,
}

/// Object kinds we keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// Subscription.
    Subscription,
    /// Invoice.
    Invoice,
    /// Payment intent or charge.
    Payment,
    /// Refund.
    Refund,
    /// Dispute.
    Dispute,
    /// Checkout session.
    Checkout,
}

impl ObjectKind {
    /// Table-ish name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Subscription => "subscription",
            Self::Invoice => "invoice",
            Self::Payment => "payment",
            Self::Refund => "refund",
            Self::Dispute => "dispute",
            Self::Checkout => "checkout",
        }
    }
}

/// A follow-up task or an outbox message the event calls for (insert-only, unique per
/// provider, intent and source, so a redelivery cannot duplicate it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SideEffect {
    /// What is asked for.
    pub intent: Intent,
    /// The object it is about.
    pub source_id: String,
    /// Due date (unix seconds) for tasks that have one.
    pub due_at: Option<i64>,
    /// What a message about it needs to say (messages only).
    pub notice: Notice,
}

impl SideEffect {
    /// Where it is recorded.
    pub fn channel(&self) -> Channel {
        self.intent.channel()
    }
}

/// Everything one event means for the state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Changes {
    /// The provider customer it belongs to, if any.
    pub customer: Option<String>,
    /// Our own account reference (`metadata.account_id`, checkout `client_reference_id`).
    pub account_hint: Option<String>,
    /// A customer snapshot (customer events).
    pub customer_snap: Option<CustomerSnap>,
    /// Object snapshots.
    pub snaps: Vec<Snap>,
    /// Tasks and outbox messages.
    pub effects: Vec<SideEffect>,
    /// The provider's own time of this state, in the finest resolution it gives (milliseconds
    /// for Square, Authorize.Net and PayPal), used for the order key instead of the event's
    /// `created` (Stripe: `None`, the event's seconds). Only compared within one object of
    /// one provider, so the units need not agree across providers.
    pub order_at: Option<i64>,
    /// Data the event needs from the provider's API before it can be applied (the worker
    /// fetches it and maps again); `None` for complete events.
    pub needs: Option<Enrichment>,
}

/// A lookup the worker makes before applying an event whose payload is incomplete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enrichment {
    /// Authorize.Net's `getTransactionDetails` of this transaction id.
    AuthorizeNetTransaction(String),
    /// The current state of the object a Stripe thin event refers to.
    StripeObject(stripe::ThinObject),
}

/// Event types `provider`'s mapper applies; any other type is recorded as `ignored`.
pub fn handled_types(provider: Provider) -> &'static [&'static str] {
    match provider {
        Provider::Stripe => stripe::HANDLED_TYPES,
        Provider::Square => square::HANDLED_TYPES,
        Provider::AuthorizeNet => authorizenet::HANDLED_TYPES,
        Provider::Paypal => paypal::HANDLED_TYPES,
    }
}

/// What `provider`'s event `event_type` with the raw body `body` means, by that provider's
/// mapper. The body is parsed into a borrowed tree that lives only for this call.
pub fn changes_of_body(
    provider: Provider,
    event_type: &str,
    body: &str,
) -> Result<Changes, BillingError> {
    let event: Json<'_> = serde_json::from_str(body).map_err(|_| BillingError::NotJson)?;
    match provider {
        Provider::Stripe => stripe::changes(event_type, &event),
        Provider::Square => square::changes(event_type, &event),
        Provider::AuthorizeNet => authorizenet::changes(event_type, &event),
        Provider::Paypal => paypal::changes(event_type, &event),
    }
}

/// Why an event's payload cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BillingError {
    /// A field we need is missing or of the wrong type.
    #[error("unsupported payload: `{0}` missing or not the expected type")]
    Missing(&'static str),
    /// The payload is not a JSON document.
    #[error("unsupported payload: not JSON")]
    NotJson,
}

/// The member `key` of an object (`None` when `v` is not an object or has no such member; an
/// explicit `null` is `Some`).
pub(crate) fn at<'v>(v: &'v Json<'v>, key: &str) -> Option<&'v Json<'v>> {
    v.as_object()?.get(key)
}

/// The value at `path` of nested members, as a JSON pointer would find it.
pub(crate) fn at_path<'v>(v: &'v Json<'v>, path: &[&str]) -> Option<&'v Json<'v>> {
    path.iter().try_fold(v, |v, key| at(v, key))
}

pub(crate) fn text(v: &Json<'_>, key: &str) -> Option<String> {
    at(v, key)?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// An id field that may be a string or an expanded object with `id`.
pub(crate) fn id_of(v: &Json<'_>, key: &str) -> Option<String> {
    match at(v, key)? {
        Json::Str(s) if !s.is_empty() => Some(s.to_string()),
        expanded @ Json::Object(_) => at(expanded, "id")?.as_str().map(str::to_owned),
        _ => None,
    }
}

pub(crate) fn int(v: &Json<'_>, key: &str) -> Option<i64> {
    at(v, key)?.as_i64()
}

pub(crate) fn currency(v: &Json<'_>) -> String {
    text(v, "currency").unwrap_or_default().to_ascii_lowercase()
}

/// Whether `status` of `kind` is terminal (never reopened).
pub fn terminal(kind: ObjectKind, status: &str) -> bool {
    match kind {
        ObjectKind::Subscription => matches!(status, "canceled" | "incomplete_expired"),
        ObjectKind::Invoice => matches!(status, "paid" | "void"),
        ObjectKind::Payment => status == "succeeded",
        ObjectKind::Refund => matches!(status, "succeeded" | "failed" | "canceled"),
        ObjectKind::Dispute => matches!(
            status,
            "won" | "lost" | "warning_closed" | "charge_refunded"
        ),
        ObjectKind::Checkout => matches!(status, "expired" | "paid" | "failed"),
    }
}

/// Lifecycle precedence of `status` for same-second ties.
pub fn rank(kind: ObjectKind, status: &str) -> i16 {
    let order: &[&str] = match kind {
        ObjectKind::Subscription => &[
            "incomplete",
            "trialing",
            "active",
            "paused",
            "past_due",
            "unpaid",
            "incomplete_expired",
            "canceled",
        ],
        ObjectKind::Invoice => &["draft", "open", "uncollectible", "paid", "void"],
        ObjectKind::Payment => &["pending", "failed", "succeeded"],
        ObjectKind::Refund => &[
            "pending",
            "requires_action",
            "canceled",
            "failed",
            "succeeded",
        ],
        ObjectKind::Dispute => &[
            "warning_needs_response",
            "warning_under_review",
            "needs_response",
            "under_review",
            "warning_closed",
            "charge_refunded",
            "won",
            "lost",
        ],
        ObjectKind::Checkout => &["open", "unpaid", "expired", "failed", "paid"],
    };
    order
        .iter()
        .position(|s| *s == status)
        .map_or(-1, |p| p as i16)
}

/// The ordering key of `snap` from an event whose state dates from `created` (the provider's
/// time in its own resolution: [`Changes::order_at`], else the event's `created`) with id
/// `event_id`.
pub fn order_key(snap: &Snap, created: i64, event_id: &str) -> OrderKey {
    OrderKey {
        terminal: terminal(snap.kind, &snap.status),
        created,
        rank: rank(snap.kind, &snap.status),
        event_id: event_id.to_owned(),
    }
}

/// Entitlement from a subscription status (the table is in `docs/billing.md`).
pub fn entitlement(status: &str) -> &'static str {
    match status {
        "trialing" | "active" => "granted",
        "past_due" => "grace",
        _ => "denied",
    }
}

pub(crate) fn payment_snap(
    id: String,
    status: &str,
    amount: i64,
    currency: String,
    failure: Option<String>,
    refunded: i64,
) -> Snap {
    Snap {
        kind: ObjectKind::Payment,
        id,
        status: status.to_owned(),
        amount,
        currency,
        parent: None,
        detail: failure,
        at: None,
        refunded,
    }
}

pub(crate) fn effect(intent: Intent, source_id: &str, due_at: Option<i64>) -> SideEffect {
    SideEffect {
        intent,
        source_id: source_id.to_owned(),
        due_at,
        notice: Notice::default(),
    }
}

/// The follow-up task and the email a failed payment calls for.
pub(crate) fn payment_failed(c: &mut Changes, source_id: &str, notice: Notice) {
    c.effects
        .push(effect(Intent::PaymentFailedFollowup, source_id, None));
    c.effects.push(SideEffect {
        notice,
        ..effect(Intent::PaymentFailedEmail, source_id, None)
    });
}

/// A provider customer linked to an account.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CustomerFact {
    /// The provider (`stripe`).
    pub provider: String,
    /// The provider's customer id.
    pub customer_id: String,
    /// The email of its newest `customer.*` event, if any.
    pub email: Option<String>,
    /// The name of its newest `customer.*` event, if any.
    pub name: Option<String>,
    /// Whether the provider deleted the customer.
    pub deleted: bool,
}

/// A subscription of the account.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubscriptionFact {
    /// Provider object id.
    pub id: String,
    /// Provider status.
    pub status: String,
    /// The plan (price or product) it is for.
    pub plan: Option<String>,
}

/// An invoice of the account.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InvoiceFact {
    /// Provider object id.
    pub id: String,
    /// Provider status.
    pub status: String,
    /// Why it was made (`subscription_create`, `subscription_cycle`, …).
    pub billing_reason: Option<String>,
}

/// A payment of the account.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PaymentFact {
    /// The provider (`stripe`).
    pub provider: String,
    /// Provider object id.
    pub id: String,
    /// Provider status.
    pub status: String,
    /// Amount in minor units.
    pub amount: i64,
    /// Currency code, lower case.
    pub currency: String,
    /// Amount refunded in minor units, as the payment itself reports it.
    pub amount_refunded: i64,
}

/// A refund of one of the account's payments.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RefundFact {
    /// The payment it refunds.
    pub payment_id: Option<String>,
    /// Provider status.
    pub status: String,
    /// Amount in minor units.
    pub amount: i64,
    /// Currency code, lower case.
    pub currency: String,
}

/// A dispute of one of the account's payments.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DisputeFact {
    /// The provider (`stripe`).
    pub provider: String,
    /// Provider object id.
    pub id: String,
    /// The disputed payment.
    pub payment_id: Option<String>,
    /// Provider status.
    pub status: String,
    /// Amount in minor units.
    pub amount: i64,
    /// Currency code, lower case.
    pub currency: String,
}

/// A follow-up task linked to the account or its objects.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskFact {
    /// Task kind (`welcome`, `payment_failed_followup`, …).
    pub kind: String,
    /// The object (or `account:<id>`) it is about.
    pub source_id: String,
    /// When it is due, in Unix seconds.
    pub due_at: Option<i64>,
}

/// The stored facts an account view is derived from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AccountFacts {
    /// Account id.
    pub id: i64,
    /// External reference.
    pub external_ref: Option<String>,
    /// Linked provider customers.
    pub customers: Vec<CustomerFact>,
    /// Subscriptions.
    pub subscriptions: Vec<SubscriptionFact>,
    /// Invoices.
    pub invoices: Vec<InvoiceFact>,
    /// Payments.
    pub payments: Vec<PaymentFact>,
    /// Refunds of these payments.
    pub refunds: Vec<RefundFact>,
    /// Disputes of these payments (or linked to the account).
    pub disputes: Vec<DisputeFact>,
    /// Checkout session statuses.
    pub checkouts: Vec<String>,
    /// Tasks linked to the account or its objects.
    pub tasks: Vec<TaskFact>,
}

// The view structs serialise their fields in declaration order, which is alphabetical: the
// JSON that `paysync accounts` and the admin API print was built as a `serde_json::Value`
// before (sorted keys), and stays byte for byte the same.

/// The account as operators and the CRM see it. Its JSON is public contract (the CLI's
/// `--json`); fields are declared in alphabetical order to keep the bytes stable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccountView {
    /// The linked provider customers.
    pub customers: Vec<CustomerView>,
    /// `opportunity`, `closed_won` or `closed_lost`.
    pub deal_stage: &'static str,
    /// The contact email, from the first customer (not deleted first) that has one.
    pub email: Option<String>,
    /// `granted`, `grace` or `denied`, from the best subscription.
    pub entitlement: &'static str,
    /// Our own reference.
    pub external_ref: Option<String>,
    /// Account id.
    pub id: i64,
    /// `lead`, `customer` or `churned`.
    pub lifecycle_stage: &'static str,
    /// The contact name, from the same customer as the email.
    pub name: Option<String>,
    /// Tasks still to do.
    pub open_tasks: Vec<TaskView>,
    /// The plan of the best subscription.
    pub plan: Option<String>,
    /// The status of the best subscription.
    pub subscription_status: Option<String>,
    /// Money per currency, in minor units.
    pub totals: Vec<TotalView>,
}

/// A provider customer in an [`AccountView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CustomerView {
    /// The provider's customer id.
    pub customer_id: String,
    /// Whether the provider deleted it.
    pub deleted: bool,
    /// The provider.
    pub provider: String,
}

/// An open task in an [`AccountView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskView {
    /// When it is due, in Unix seconds.
    pub due_at: Option<i64>,
    /// Task kind.
    pub kind: String,
    /// What it is about.
    pub source_id: String,
}

/// The totals of one currency in an [`AccountView`], in minor units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TotalView {
    /// Lost disputes.
    pub chargeback_minor: i64,
    /// Currency code.
    pub currency: String,
    /// Succeeded payments.
    pub paid_minor: i64,
    /// Refunded, the larger of what the payments report and what their refunds add up to.
    pub refunded_minor: i64,
}

/// The account as operators and the CRM see it, derived from its facts alone (so it depends
/// only on which events were applied, never on their order).
pub fn account_view(f: &AccountFacts) -> AccountView {
    use std::collections::BTreeMap;
    let best = f.subscriptions.iter().max_by_key(|s| {
        let e = match entitlement(&s.status) {
            "granted" => 2,
            "grace" => 1,
            _ => 0,
        };
        (
            e,
            !terminal(ObjectKind::Subscription, &s.status),
            rank(ObjectKind::Subscription, &s.status),
            s.id.clone(),
        )
    });
    let entitlement_now = best.map_or("denied", |s| entitlement(&s.status));
    let won = f
        .payments
        .iter()
        .any(|p| p.status == "succeeded" && p.amount > 0)
        || f.checkouts.iter().any(|s| s == "paid")
        || f.invoices.iter().any(|i| {
            i.status == "paid" && i.billing_reason.as_deref() == Some("subscription_create")
        });
    let lost = f.checkouts.iter().any(|s| s == "expired" || s == "failed")
        || f.subscriptions
            .iter()
            .any(|s| s.status == "incomplete_expired");
    let deal_stage = if won {
        "closed_won"
    } else if lost {
        "closed_lost"
    } else {
        "opportunity"
    };
    let all_ended = !f.subscriptions.is_empty()
        && f.subscriptions
            .iter()
            .all(|s| terminal(ObjectKind::Subscription, &s.status));
    let lifecycle = if all_ended {
        "churned"
    } else if won {
        "customer"
    } else {
        "lead"
    };

    let mut totals: BTreeMap<&str, TotalView> = BTreeMap::new();
    for p in f.payments.iter().filter(|p| p.status == "succeeded") {
        let from_refunds: i64 = f
            .refunds
            .iter()
            .filter(|r| r.payment_id.as_deref() == Some(p.id.as_str()) && r.status == "succeeded")
            .map(|r| r.amount)
            .sum();
        let t = totals
            .entry(p.currency.as_str())
            .or_insert_with(|| TotalView::zero(&p.currency));
        t.paid_minor += p.amount;
        t.refunded_minor += p.amount_refunded.max(from_refunds);
    }
    for d in f.disputes.iter().filter(|d| d.status == "lost") {
        totals
            .entry(d.currency.as_str())
            .or_insert_with(|| TotalView::zero(&d.currency))
            .chargeback_minor += d.amount;
    }
    let status_of = |id: &str| -> Option<&str> {
        f.invoices
            .iter()
            .map(|i| (&i.id, &i.status))
            .chain(f.payments.iter().map(|p| (&p.id, &p.status)))
            .chain(f.subscriptions.iter().map(|s| (&s.id, &s.status)))
            .chain(f.disputes.iter().map(|d| (&d.id, &d.status)))
            .find(|(i, _)| i.as_str() == id)
            .map(|(_, s)| s.as_str())
    };
    let open_tasks = f
        .tasks
        .iter()
        .filter(|t| match t.kind.as_str() {
            "payment_failed_followup" => !matches!(
                status_of(&t.source_id),
                Some("paid" | "succeeded" | "active" | "trialing" | "canceled")
            ),
            "dispute_response" => {
                !status_of(&t.source_id).is_some_and(|s| terminal(ObjectKind::Dispute, s))
            }
            "trial_ending" => status_of(&t.source_id) == Some("trialing"),
            _ => true,
        })
        .map(|t| TaskView {
            due_at: t.due_at,
            kind: t.kind.clone(),
            source_id: t.source_id.clone(),
        })
        .collect();
    let contact = f
        .customers
        .iter()
        .filter(|c| !c.deleted)
        .chain(f.customers.iter().filter(|c| c.deleted))
        .find(|c| c.email.is_some() || c.name.is_some());
    AccountView {
        customers: f
            .customers
            .iter()
            .map(|c| CustomerView {
                customer_id: c.customer_id.clone(),
                deleted: c.deleted,
                provider: c.provider.clone(),
            })
            .collect(),
        deal_stage,
        email: contact.and_then(|c| c.email.clone()),
        entitlement: entitlement_now,
        external_ref: f.external_ref.clone(),
        id: f.id,
        lifecycle_stage: lifecycle,
        name: contact.and_then(|c| c.name.clone()),
        open_tasks,
        plan: best.and_then(|s| s.plan.clone()),
        subscription_status: best.map(|s| s.status.clone()),
        totals: totals.into_values().collect(),
    }
}

impl TotalView {
    fn zero(currency: &str) -> Self {
        Self {
            chargeback_minor: 0,
            currency: currency.to_owned(),
            paid_minor: 0,
            refunded_minor: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::stripe::{HANDLED_TYPES, changes, changes_of_body};
    use super::*;
    use serde_json::Value;
    use serde_json::json;
    use serde_json_borrow::OwnedValue;

    /// The borrowed tree of `v`, as the worker parses a body.
    fn owned(v: Value) -> OwnedValue {
        OwnedValue::from_string(v.to_string()).unwrap()
    }

    fn ev(t: &str, o: Value) -> OwnedValue {
        owned(json!({"id": "evt_1", "type": t, "created": 1, "data": {"object": o}}))
    }

    #[test]
    fn terminal_statuses_outrank_any_later_non_terminal_snapshot() {
        let canceled = Snap {
            kind: ObjectKind::Subscription,
            id: "s".into(),
            status: "canceled".into(),
            amount: 0,
            currency: String::new(),
            parent: None,
            detail: None,
            at: None,
            refunded: 0,
        };
        let active = Snap {
            status: "active".into(),
            ..canceled.clone()
        };
        assert!(order_key(&canceled, 100, "evt_a") > order_key(&active, 200, "evt_b"));
        // Same second: lifecycle precedence, not arrival.
        let past_due = Snap {
            status: "past_due".into(),
            ..canceled.clone()
        };
        assert!(order_key(&past_due, 100, "evt_a") > order_key(&active, 100, "evt_z"));
    }

    #[test]
    fn the_customer_is_the_id_of_a_customer_event_or_the_object_customer_plain_or_expanded() {
        let objects = [
            (
                json!({"id": "cus_9", "object": "customer", "status": "active", "customer": "cus_1"}),
                "cus_9",
                "cus_1",
            ),
            (
                json!({"id": "obj_1", "status": "succeeded", "customer": "cus_1", "payment_intent": "pi_1"}),
                "obj_1",
                "cus_1",
            ),
            (
                json!({"id": "obj_1", "status": "succeeded", "customer": {"id": "cus_2", "object": "customer"}}),
                "obj_1",
                "cus_2",
            ),
        ];
        for (o, as_customer, otherwise) in &objects {
            for t in [
                "customer.updated",
                "invoice.paid",
                "charge.succeeded",
                "checkout.session.completed",
            ] {
                let expected = if t.starts_with("customer.") {
                    as_customer
                } else {
                    otherwise
                };
                let c = changes(t, &ev(t, o.clone())).unwrap();
                assert_eq!(c.customer.as_deref(), Some(*expected), "{t} {o}");
            }
        }
        for o in [
            json!({"id": "obj_1", "status": "succeeded", "customer": ""}),
            json!({"id": "obj_1", "status": "succeeded"}),
        ] {
            assert_eq!(
                changes("charge.succeeded", &ev("charge.succeeded", o.clone()))
                    .unwrap()
                    .customer,
                None,
                "{o}"
            );
        }
        // Refunds and disputes name no customer.
        let refund =
            json!({"id": "re_1", "status": "succeeded", "customer": "cus_1", "charge": "ch_1"});
        assert_eq!(
            changes(
                "charge.refund.updated",
                &ev("charge.refund.updated", refund)
            )
            .unwrap()
            .customer,
            None
        );
    }

    #[test]
    fn a_body_that_is_not_json_is_unsupported_not_a_panic() {
        assert_eq!(
            changes_of_body("invoice.paid", "{oops"),
            Err(BillingError::NotJson)
        );
        assert!(
            changes_of_body(
                "invoice.paid",
                r#"{"data":{"object":{"id":"in_1","customer":"cus_1"}}}"#
            )
            .is_ok()
        );
    }

    #[test]
    fn every_handled_type_parses_a_minimal_payload_or_says_what_is_missing() {
        for t in HANDLED_TYPES {
            let o = json!({"id": "obj_1", "object": "x", "status": "succeeded", "customer": "cus_1",
                           "amount": 100, "currency": "USD", "payment_intent": "pi_1"});
            let c = changes(t, &ev(t, o)).unwrap_or_else(|e| panic!("{t}: {e}"));
            assert!(c.customer_snap.is_some() || !c.snaps.is_empty(), "{t}");
        }
        assert_eq!(
            changes("plan.created", &ev("plan.created", json!({"id": "p"}))),
            Err(BillingError::Missing("a supported event type"))
        );
        assert_eq!(
            changes("invoice.paid", &owned(json!({"data": {}}))),
            Err(BillingError::Missing("data.object"))
        );
    }

    #[test]
    fn a_charge_and_its_payment_intent_are_one_payment() {
        let charge = changes("charge.succeeded", &ev("charge.succeeded", json!({
            "id": "ch_1", "status": "succeeded", "amount": 500, "currency": "usd", "payment_intent": "pi_9"}))).unwrap();
        let pi = changes(
            "payment_intent.succeeded",
            &ev(
                "payment_intent.succeeded",
                json!({
            "id": "pi_9", "status": "succeeded", "amount": 500, "currency": "usd"}),
            ),
        )
        .unwrap();
        assert_eq!(charge.snaps[0].id, "pi_9");
        assert_eq!(pi.snaps[0].id, "pi_9");
    }

    #[test]
    fn entitlement_follows_the_design_table() {
        for (s, e) in [
            ("trialing", "granted"),
            ("active", "granted"),
            ("past_due", "grace"),
            ("incomplete", "denied"),
            ("incomplete_expired", "denied"),
            ("unpaid", "denied"),
            ("canceled", "denied"),
            ("paused", "denied"),
        ] {
            assert_eq!(entitlement(s), e, "{s}");
        }
    }
}
