//! Authorize.Net's mapper: each Authorize.Net event type it knows as [`Changes`] in the
//! canonical vocabulary.
//!
//! The object is `payload`. Payment events carry the transaction id and amount but neither
//! the customer nor the refunded charge: [`changes`] asks for the transaction's details
//! ([`Enrichment::AuthorizeNetTransaction`]), and the worker maps the event again with them
//! ([`changes_with_transaction`]). Authorize.Net names no currency: amounts are taken as US
//! dollars, the gateway's usual one. Our external reference is `merchantCustomerId`. The order
//! time is `eventDate` in milliseconds.

use serde_json_borrow::Value as Json;

use super::{
    BillingError, Changes, CustomerSnap, Enrichment, Intent, Notice, ObjectKind, SideEffect, Snap,
    at, effect, payment_failed, payment_snap, text,
};
use crate::money::parse_minor;
use crate::timestamp::parse_rfc3339_ms;

/// The currency Authorize.Net amounts are read in (its events and details name none).
pub const CURRENCY: &str = "usd";

/// Payment events: they need the transaction's details before they can be applied.
pub const PAYMENT_TYPES: &[&str] = &[
    "net.authorize.payment.authcapture.created",
    "net.authorize.payment.capture.created",
    "net.authorize.payment.priorAuthCapture.created",
    "net.authorize.payment.authorization.created",
    "net.authorize.payment.refund.created",
    "net.authorize.payment.void.created",
    "net.authorize.payment.fraud.held",
    "net.authorize.payment.fraud.approved",
    "net.authorize.payment.fraud.declined",
];

/// Event types the Authorize.Net mapper applies. Payment-profile events and
/// `….subscription.expiring` (a notice with no change of state) are recorded as ignored.
pub const HANDLED_TYPES: &[&str] = &[
    "net.authorize.payment.authcapture.created",
    "net.authorize.payment.capture.created",
    "net.authorize.payment.priorAuthCapture.created",
    "net.authorize.payment.authorization.created",
    "net.authorize.payment.refund.created",
    "net.authorize.payment.void.created",
    "net.authorize.payment.fraud.held",
    "net.authorize.payment.fraud.approved",
    "net.authorize.payment.fraud.declined",
    "net.authorize.customer.created",
    "net.authorize.customer.updated",
    "net.authorize.customer.deleted",
    "net.authorize.customer.subscription.created",
    "net.authorize.customer.subscription.updated",
    "net.authorize.customer.subscription.suspended",
    "net.authorize.customer.subscription.terminated",
    "net.authorize.customer.subscription.cancelled",
    "net.authorize.customer.subscription.expired",
    "net.authorize.customer.subscription.failed",
];

/// What Authorize.Net's transaction-details API says about one transaction: the part of
/// `getTransactionDetailsResponse.transaction` the mapper needs. The worker fetches it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Transaction {
    /// `transId`.
    pub trans_id: String,
    /// `refTransId`: the original charge of a refund or void.
    pub ref_trans_id: Option<String>,
    /// `transactionStatus`, e.g. `settledSuccessfully`, `capturedPendingSettlement`,
    /// `authorizedPendingCapture`, `declined`, `voided`, `refundSettledSuccessfully`,
    /// `refundPendingSettlement`, `FDSPendingReview`.
    pub status: String,
    /// `responseCode`: 1 approved, 2 declined, 3 error, 4 held for review.
    pub response_code: Option<i64>,
    /// `settleAmount` (else `authAmount`) in minor units.
    pub amount: i64,
    /// `profile.customerProfileId`.
    pub customer_profile_id: Option<String>,
    /// `customer.id`: the merchant's own id of the customer (our external reference).
    pub merchant_customer_id: Option<String>,
    /// `customer.email`, else `billTo.email`.
    pub email: Option<String>,
    /// `billTo.firstName` and `billTo.lastName`, joined.
    pub name: Option<String>,
    /// `order.invoiceNumber`.
    pub invoice_number: Option<String>,
    /// `order.description`.
    pub description: Option<String>,
    /// `subscription.id` (ARB).
    pub subscription_id: Option<String>,
    /// `submitTimeUTC`, unix milliseconds.
    pub submitted_at_ms: Option<i64>,
}

/// A JSON number or string as exact minor units. A fractional number is read through its
/// shortest round-trip text, which for amounts of at most two decimals below 10^13 is the
/// decimal the gateway wrote, or a shorter form of it (`10.00` reads as `10`): exact either
/// way. Larger fractional numbers are refused (`None`), never read as another amount.
pub fn amount_minor(v: &Json<'_>) -> Option<i64> {
    match v {
        Json::Str(s) => parse_minor(s, 2),
        Json::Number(n) => n.as_i64().map(|i| i.checked_mul(100)).unwrap_or_else(|| {
            // Below 10^13 every 2-decimal amount has its own f64, whose shortest text is that
            // decimal (≤ 15 significant digits); above, two amounts can share one: refused.
            n.as_f64()
                .filter(|f| f.abs() < 1e13)
                .and_then(|f| parse_minor(&f.to_string(), 2))
        }),
        _ => None,
    }
}

/// An id that Authorize.Net writes as a number in some places and a string in others.
fn id_text(v: Option<&Json<'_>>) -> Option<String> {
    match v? {
        Json::Str(s) if !s.is_empty() => Some(s.to_string()),
        Json::Number(n) => n.as_u64().map(|n| n.to_string()),
        _ => None,
    }
}

/// The canonical subscription status of an ARB status.
pub fn subscription_status(event_type: &str, status: &str) -> &'static str {
    match (event_type.rsplit('.').next().unwrap_or_default(), status) {
        ("failed" | "suspended", _) | (_, "suspended") => "past_due",
        ("cancelled" | "terminated" | "expired", _)
        | (_, "canceled" | "terminated" | "expired") => "canceled",
        _ => "active",
    }
}

fn payload<'v>(event: &'v Json<'v>) -> Result<&'v Json<'v>, BillingError> {
    at(event, "payload")
        .filter(|p| p.is_object())
        .ok_or(BillingError::Missing("payload"))
}

/// What the Authorize.Net event `event_type` (`event` is the whole body) means. Payment events
/// come back as [`Changes::needs`] only: their meaning waits for the transaction's details.
pub fn changes(event_type: &str, event: &Json<'_>) -> Result<Changes, BillingError> {
    let o = payload(event)?;
    let id = text(o, "id").ok_or(BillingError::Missing("payload.id"))?;
    let mut c = Changes {
        order_at: text(event, "eventDate").and_then(|t| parse_rfc3339_ms(&t)),
        ..Changes::default()
    };
    if PAYMENT_TYPES.contains(&event_type) {
        c.needs = Some(Enrichment::AuthorizeNetTransaction(id));
        return Ok(c);
    }
    if event_type.starts_with("net.authorize.customer.subscription.") {
        let status = subscription_status(event_type, &text(o, "status").unwrap_or_default());
        c.customer = at(o, "profile").and_then(|p| id_text(at(p, "customerProfileId")));
        c.snaps.push(Snap {
            kind: ObjectKind::Subscription,
            id: id.clone(),
            status: status.to_owned(),
            amount: at(o, "amount").and_then(amount_minor).unwrap_or(0),
            currency: CURRENCY.to_owned(),
            parent: None,
            detail: text(o, "name"),
            at: None,
            refunded: 0,
        });
        match status {
            "canceled" => c.effects.push(effect(Intent::Churn, &id, None)),
            "past_due" => c
                .effects
                .push(effect(Intent::PaymentFailedFollowup, &id, None)),
            _ => {}
        }
        return Ok(c);
    }
    if event_type.starts_with("net.authorize.customer.") {
        c.customer = Some(id.clone());
        c.account_hint = text(o, "merchantCustomerId");
        c.customer_snap = Some(CustomerSnap {
            id,
            email: text(o, "email"),
            name: text(o, "description"),
            deleted: event_type == "net.authorize.customer.deleted",
        });
        return Ok(c);
    }
    Err(BillingError::Missing("a supported event type"))
}

/// What the payment event `event_type` means once its transaction's details `tx` are known.
pub fn changes_with_transaction(
    event_type: &str,
    event: &Json<'_>,
    tx: &Transaction,
) -> Result<Changes, BillingError> {
    let o = payload(event)?;
    let id = text(o, "id").ok_or(BillingError::Missing("payload.id"))?;
    let mut c = Changes {
        customer: tx.customer_profile_id.clone(),
        account_hint: tx.merchant_customer_id.clone(),
        order_at: text(event, "eventDate").and_then(|t| parse_rfc3339_ms(&t)),
        ..Changes::default()
    };
    let amount = Some(tx.amount)
        .filter(|a| *a > 0)
        .or_else(|| at(o, "authAmount").and_then(amount_minor))
        .unwrap_or(0);
    let code = at(o, "responseCode")
        .and_then(Json::as_i64)
        .or(tx.response_code);
    let notice = Notice {
        email: tx.email.clone(),
        name: tx.name.clone(),
        amount: Some(amount),
        currency: Some(CURRENCY.to_owned()),
        description: tx.description.clone(),
        link: None,
    };
    let kind = event_type.trim_start_matches("net.authorize.payment.");
    match kind {
        "refund.created" => {
            c.snaps.push(Snap {
                kind: ObjectKind::Refund,
                id: id.clone(),
                status: if code == Some(1) {
                    "succeeded"
                } else {
                    "failed"
                }
                .to_owned(),
                amount,
                currency: CURRENCY.to_owned(),
                parent: tx.ref_trans_id.clone(),
                detail: None,
                at: None,
                refunded: 0,
            });
            if code == Some(1) {
                c.effects.push(SideEffect {
                    notice,
                    ..effect(Intent::RefundConfirmationEmail, &id, None)
                });
            }
        }
        "void.created" => {
            // The voided charge (the event's id names it; a void transaction of its own
            // names it in refTransId): an authorisation cancelled, never money in.
            let target = tx.ref_trans_id.clone().unwrap_or(id);
            c.snaps.push(payment_snap(
                target,
                "failed",
                amount,
                CURRENCY.to_owned(),
                Some("voided".into()),
                0,
            ));
        }
        _ => {
            // Capture-type events settle on the response code: 1 approved, 2 declined, 3
            // error, 4 held for review. `0` is no gateway result (one library's test
            // delivery shows it): kept pending, so it never counts as money.
            let status = match (kind, code) {
                ("authorization.created" | "fraud.held", _) => "pending",
                ("fraud.declined", _) => "failed",
                ("fraud.approved", _) => "succeeded",
                (_, Some(1)) => "succeeded",
                (_, Some(2 | 3)) => "failed",
                _ => "pending",
            };
            c.snaps.push(payment_snap(
                id.clone(),
                status,
                amount,
                CURRENCY.to_owned(),
                None,
                0,
            ));
            match status {
                "succeeded" => c.effects.push(SideEffect {
                    notice,
                    ..effect(Intent::ReceiptEmail, &id, None)
                }),
                "failed" => payment_failed(&mut c, &id, notice),
                _ => {}
            }
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (String, Json<'_>) {
        let event: Json<'_> = serde_json::from_str(text).unwrap();
        let t = at(&event, "eventType")
            .and_then(Json::as_str)
            .unwrap()
            .to_owned();
        (t, event)
    }

    macro_rules! fixture {
        ($f:literal) => {
            include_str!(concat!("../../../../fixtures/authorizenet/", $f))
        };
    }

    fn tx(id: &str) -> Transaction {
        Transaction {
            trans_id: id.into(),
            customer_profile_id: Some("1811525852".into()),
            merchant_customer_id: Some("SUB_001".into()),
            email: Some("payer@example.com".into()),
            ..Transaction::default()
        }
    }

    #[test]
    fn every_fixture_maps_or_is_ignored_on_purpose() {
        let all = [
            fixture!("net.authorize.customer.created.docs-sample.json"),
            fixture!("net.authorize.customer.created.json"),
            fixture!("net.authorize.customer.deleted.json"),
            fixture!("net.authorize.customer.paymentProfile.created.docs-sample.json"),
            fixture!("net.authorize.customer.paymentProfile.created.json"),
            fixture!("net.authorize.customer.paymentProfile.deleted.json"),
            fixture!("net.authorize.customer.paymentProfile.updated.json"),
            fixture!("net.authorize.customer.subscription.cancelled.json"),
            fixture!("net.authorize.customer.subscription.created.docs-sample.json"),
            fixture!("net.authorize.customer.subscription.created.json"),
            fixture!("net.authorize.customer.updated.json"),
            fixture!("net.authorize.customer.updated.second.json"),
            fixture!("net.authorize.payment.authcapture.created.academe-2017-03-29.json"),
            fixture!("net.authorize.payment.authcapture.created.authnetjson-responsecode0.json"),
            fixture!("net.authorize.payment.authcapture.created.forum-2017-03-08.json"),
            fixture!("net.authorize.payment.authcapture.created.json"),
            fixture!("net.authorize.payment.authorization.created.json"),
            fixture!("net.authorize.payment.fraud.held.json"),
            fixture!("net.authorize.payment.refund.created.json"),
            fixture!("net.authorize.payment.void.created.json"),
        ];
        for text in all {
            let (t, event) = parse(text);
            if t.contains(".paymentProfile.") {
                // A stored card changed: nothing of billing state moves.
                assert!(!HANDLED_TYPES.contains(&t.as_str()), "{t}");
                continue;
            }
            let c = changes(&t, &event).unwrap_or_else(|e| panic!("{t}: {e}"));
            if PAYMENT_TYPES.contains(&t.as_str()) {
                assert!(
                    matches!(c.needs, Some(Enrichment::AuthorizeNetTransaction(_))),
                    "{t}"
                );
                let id = text_of(&event);
                let done = changes_with_transaction(&t, &event, &tx(&id)).unwrap();
                assert!(done.needs.is_none() && !done.snaps.is_empty(), "{t}");
                assert_eq!(done.account_hint.as_deref(), Some("SUB_001"));
            } else {
                assert!(c.needs.is_none());
            }
        }
    }

    fn text_of(event: &Json<'_>) -> String {
        text(payload(event).unwrap(), "id").unwrap()
    }

    #[test]
    fn payments_settle_on_the_response_code_with_exact_amounts() {
        let cases = [
            (
                fixture!("net.authorize.payment.authcapture.created.json"),
                "succeeded",
                725,
            ),
            (
                fixture!("net.authorize.payment.authcapture.created.forum-2017-03-08.json"),
                "succeeded",
                1000,
            ),
            (
                fixture!(
                    "net.authorize.payment.authcapture.created.authnetjson-responsecode0.json"
                ),
                "pending",
                0,
            ),
            (
                fixture!("net.authorize.payment.authorization.created.json"),
                "pending",
                1,
            ),
            (
                fixture!("net.authorize.payment.fraud.held.json"),
                "pending",
                5_000_000,
            ),
        ];
        for (text, status, amount) in cases {
            let (t, event) = parse(text);
            let c = changes_with_transaction(&t, &event, &tx(&text_of(&event))).unwrap();
            let s = &c.snaps[0];
            assert_eq!(
                (s.kind, s.status.as_str(), s.amount, s.currency.as_str()),
                (ObjectKind::Payment, status, amount, "usd"),
                "{t}"
            );
            assert_eq!(c.customer.as_deref(), Some("1811525852"));
        }
        let (t, event) = parse(fixture!("net.authorize.payment.refund.created.json"));
        let mut refund = tx("60022194896");
        refund.ref_trans_id = Some("60022194830".into());
        let c = changes_with_transaction(&t, &event, &refund).unwrap();
        let s = &c.snaps[0];
        assert_eq!(
            (s.kind, s.status.as_str(), s.amount, s.parent.as_deref()),
            (ObjectKind::Refund, "succeeded", 72, Some("60022194830"))
        );
        assert_eq!(c.effects[0].intent, Intent::RefundConfirmationEmail);
        let (t, event) = parse(fixture!("net.authorize.payment.void.created.json"));
        let c = changes_with_transaction(&t, &event, &tx("60022194830")).unwrap();
        assert_eq!(
            (c.snaps[0].id.as_str(), c.snaps[0].status.as_str()),
            ("60022194830", "failed")
        );
    }

    #[test]
    fn amounts_are_exact_or_refused() {
        for (text, want) in [
            ("10.00", Some(1000)),
            ("23", Some(2300)),
            ("50000.0", Some(5_000_000)),
            ("0.72", Some(72)),
            ("9999999999999.99", Some(999_999_999_999_999)),
            ("12345678901234.5", None),
            ("1670560706310.67000", None),
            ("\"12.34\"", Some(1234)),
        ] {
            let v: Json<'_> = serde_json::from_str(text).unwrap();
            assert_eq!(amount_minor(&v), want, "{text}");
        }
    }

    #[test]
    fn subscriptions_and_customers() {
        let (t, event) = parse(fixture!(
            "net.authorize.customer.subscription.cancelled.json"
        ));
        let c = changes(&t, &event).unwrap();
        let s = &c.snaps[0];
        assert_eq!(
            (s.status.as_str(), s.amount),
            ("canceled", 1271),
            "`canceled` under `cancelled`"
        );
        assert_eq!(
            c.customer.as_deref(),
            Some("1811467160"),
            "a numeric profile id"
        );
        assert_eq!(c.effects[0].intent, Intent::Churn);
        let (t, event) = parse(fixture!(
            "net.authorize.customer.subscription.created.docs-sample.json"
        ));
        assert_eq!(
            changes(&t, &event).unwrap().snaps[0].amount,
            2300,
            "`amount: 23`"
        );
        let (t, event) = parse(fixture!("net.authorize.customer.created.json"));
        let c = changes(&t, &event).unwrap();
        assert_eq!(
            (c.customer.as_deref(), c.account_hint.as_deref()),
            (Some("1811525852"), Some("SUB_001"))
        );
        let (t, event) = parse(fixture!("net.authorize.customer.deleted.json"));
        assert!(changes(&t, &event).unwrap().customer_snap.unwrap().deleted);
    }
}
