//! PayPal's mapper: each PayPal event type it knows as [`Changes`] in the canonical
//! vocabulary.
//!
//! The object is `resource`. Money is a decimal string: `{currency_code, value}` on v2
//! resources, `{currency, total}` on v1 ones (negative on v1 refunds and reversals). The order
//! time is the resource's `update_time` (else its `create_time`) in milliseconds; the envelope's
//! `create_time` is never used (the simulator's is an impossible date). Our external reference
//! is `custom_id`. PayPal has no customer object: the payer's or subscriber's payer id stands in
//! where the resource names one.

use serde_json_borrow::Value as Json;

use super::{
    BillingError, Changes, Intent, Notice, ObjectKind, SideEffect, Snap, at, at_path, effect,
    payment_failed, payment_snap, text,
};
use crate::money::{decimals, parse_minor};
use crate::timestamp::parse_rfc3339_ms;

/// Event types the PayPal mapper applies. `CHECKOUT.ORDER.APPROVED` is only the buyer's
/// approval, and `PAYMENTS.PAYMENT.CREATED` a v1 payment awaiting approval: neither moves money,
/// so both are recorded as ignored.
pub const HANDLED_TYPES: &[&str] = &[
    "PAYMENT.CAPTURE.COMPLETED",
    "PAYMENT.CAPTURE.PENDING",
    "PAYMENT.CAPTURE.DECLINED",
    "PAYMENT.CAPTURE.DENIED",
    "PAYMENT.CAPTURE.REFUNDED",
    "PAYMENT.CAPTURE.REVERSED",
    "PAYMENT.SALE.COMPLETED",
    "PAYMENT.SALE.DENIED",
    "PAYMENT.SALE.REFUNDED",
    "PAYMENT.SALE.REVERSED",
    "PAYMENT.AUTHORIZATION.CREATED",
    "CHECKOUT.PAYMENT-APPROVAL.REVERSED",
    "BILLING.SUBSCRIPTION.CREATED",
    "BILLING.SUBSCRIPTION.ACTIVATED",
    "BILLING.SUBSCRIPTION.UPDATED",
    "BILLING.SUBSCRIPTION.SUSPENDED",
    "BILLING.SUBSCRIPTION.CANCELLED",
    "BILLING.SUBSCRIPTION.EXPIRED",
    "BILLING.SUBSCRIPTION.PAYMENT.FAILED",
    "CUSTOMER.DISPUTE.CREATED",
    "CUSTOMER.DISPUTE.UPDATED",
    "CUSTOMER.DISPUTE.RESOLVED",
];

/// The amount of `o` in minor units (absolute) and its lowercase currency.
fn amount(o: &Json<'_>, key: &str) -> Option<(i64, String)> {
    let m = at(o, key)?;
    let currency = text(m, "currency_code")
        .or_else(|| text(m, "currency"))?
        .to_ascii_lowercase();
    let value = text(m, "value").or_else(|| text(m, "total"))?;
    let minor = parse_minor(&value, decimals(&currency))?;
    Some((minor.abs(), currency))
}

/// The last path segment of the link with relation `rel` (a capture's id in a refund's `up`).
fn link_id(o: &Json<'_>, rel: &str) -> Option<String> {
    at(o, "links")?
        .as_array()?
        .iter()
        .find(|l| text(l, "rel").as_deref() == Some(rel))
        .and_then(|l| text(l, "href"))
        .and_then(|h| h.rsplit('/').next().map(str::to_owned))
        .filter(|id| !id.is_empty())
}

/// The canonical subscription status of a PayPal subscription status (v2) or agreement state
/// (v1, title case).
pub fn subscription_status(status: &str) -> &'static str {
    match status.to_ascii_uppercase().as_str() {
        "ACTIVE" => "active",
        "SUSPENDED" => "paused",
        "CANCELLED" | "EXPIRED" => "canceled",
        _ => "incomplete",
    }
}

/// What the PayPal event `event_type` (`event` is the whole body) means.
pub fn changes(event_type: &str, event: &Json<'_>) -> Result<Changes, BillingError> {
    let o = at(event, "resource")
        .filter(|o| o.is_object())
        .ok_or(BillingError::Missing("resource"))?;
    let id = || text(o, "id").ok_or(BillingError::Missing("resource.id"));
    let custom = text(o, "custom_id")
        .or_else(|| text(o, "custom"))
        .or_else(|| {
            at(o, "purchase_units")
                .and_then(Json::as_array)
                .and_then(|u| u.first())
                .and_then(|u| text(u, "custom_id"))
        });
    let mut c = Changes {
        customer: at_path(o, &["payer", "payer_id"])
            .or_else(|| at_path(o, &["subscriber", "payer_id"]))
            .or_else(|| at_path(o, &["payer", "payer_info", "payer_id"]))
            .and_then(Json::as_str)
            .map(str::to_owned),
        account_hint: custom,
        order_at: text(o, "update_time")
            .or_else(|| text(o, "create_time"))
            .and_then(|t| parse_rfc3339_ms(&t)),
        ..Changes::default()
    };
    let email = at_path(o, &["payer", "email_address"])
        .or_else(|| at_path(o, &["subscriber", "email_address"]))
        .and_then(Json::as_str)
        .map(str::to_owned);
    match event_type {
        "PAYMENT.CAPTURE.COMPLETED"
        | "PAYMENT.CAPTURE.PENDING"
        | "PAYMENT.CAPTURE.DECLINED"
        | "PAYMENT.CAPTURE.DENIED"
        | "PAYMENT.SALE.COMPLETED"
        | "PAYMENT.SALE.DENIED"
        | "PAYMENT.AUTHORIZATION.CREATED" => {
            let id = id()?;
            let (minor, currency) =
                amount(o, "amount").ok_or(BillingError::Missing("resource.amount"))?;
            let status = match event_type {
                "PAYMENT.CAPTURE.COMPLETED" | "PAYMENT.SALE.COMPLETED" => "succeeded",
                "PAYMENT.CAPTURE.DECLINED" | "PAYMENT.CAPTURE.DENIED" | "PAYMENT.SALE.DENIED" => {
                    "failed"
                }
                _ => "pending",
            };
            let reason = at_path(o, &["status_details", "reason"])
                .and_then(Json::as_str)
                .map(str::to_owned);
            c.snaps.push(payment_snap(
                id.clone(),
                status,
                minor,
                currency.clone(),
                reason,
                0,
            ));
            let n = Notice {
                email,
                amount: Some(minor),
                currency: Some(currency),
                ..Notice::default()
            };
            match status {
                "succeeded" => c.effects.push(SideEffect {
                    notice: n,
                    ..effect(Intent::ReceiptEmail, &id, None)
                }),
                "failed" => payment_failed(&mut c, &id, n),
                _ => {}
            }
        }
        "CHECKOUT.PAYMENT-APPROVAL.REVERSED" => {
            let order = text(o, "order_id").ok_or(BillingError::Missing("resource.order_id"))?;
            c.snaps.push(payment_snap(
                order.clone(),
                "failed",
                0,
                String::new(),
                None,
                0,
            ));
            let n = Notice {
                email: at_path(o, &["payment_source", "pay_upon_invoice", "email"])
                    .and_then(Json::as_str)
                    .map(str::to_owned),
                ..Notice::default()
            };
            payment_failed(&mut c, &order, n);
        }
        "PAYMENT.CAPTURE.REFUNDED" | "PAYMENT.SALE.REFUNDED" => {
            let id = id()?;
            let (minor, currency) =
                amount(o, "amount").ok_or(BillingError::Missing("resource.amount"))?;
            let parent = link_id(o, "up").or_else(|| text(o, "sale_id"));
            c.snaps.push(Snap {
                kind: ObjectKind::Refund,
                id: id.clone(),
                status: "succeeded".into(),
                amount: minor,
                currency: currency.clone(),
                parent,
                detail: text(o, "note_to_payer"),
                at: None,
                refunded: 0,
            });
            c.effects.push(SideEffect {
                notice: Notice {
                    email,
                    amount: Some(minor),
                    currency: Some(currency),
                    ..Notice::default()
                },
                ..effect(Intent::RefundConfirmationEmail, &id, None)
            });
        }
        "PAYMENT.CAPTURE.REVERSED" | "PAYMENT.SALE.REVERSED" => {
            // A reversal is a chargeback the seller has already lost: a dispute, `lost`.
            let id = id()?;
            let (minor, currency) =
                amount(o, "amount").ok_or(BillingError::Missing("resource.amount"))?;
            c.snaps.push(Snap {
                kind: ObjectKind::Dispute,
                id,
                status: "lost".into(),
                amount: minor,
                currency,
                parent: link_id(o, "up").or_else(|| text(o, "sale_id")),
                detail: Some("reversal".into()),
                at: None,
                refunded: 0,
            });
        }
        t if t.starts_with("BILLING.SUBSCRIPTION.") => {
            let id = id()?;
            let status = if t == "BILLING.SUBSCRIPTION.PAYMENT.FAILED" {
                "past_due"
            } else {
                subscription_status(
                    &text(o, "status")
                        .or_else(|| text(o, "state"))
                        .unwrap_or_default(),
                )
            };
            c.snaps.push(Snap {
                kind: ObjectKind::Subscription,
                id: id.clone(),
                status: status.to_owned(),
                amount: 0,
                currency: String::new(),
                parent: None,
                detail: text(o, "plan_id"),
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
        }
        t if t.starts_with("CUSTOMER.DISPUTE.") => {
            let id = text(o, "dispute_id").ok_or(BillingError::Missing("resource.dispute_id"))?;
            let (minor, currency) = amount(o, "dispute_amount").unwrap_or_default();
            let outcome = at_path(o, &["dispute_outcome", "outcome_code"]).and_then(Json::as_str);
            let inquiry = text(o, "dispute_life_cycle_stage").as_deref() == Some("INQUIRY");
            let status = match (outcome, inquiry) {
                (Some("RESOLVED_BUYER_FAVOUR"), _) => "lost",
                (Some("RESOLVED_SELLER_FAVOUR"), _) => "won",
                (Some(_), _) => "warning_closed",
                (None, true) => "warning_needs_response",
                (None, false) => "needs_response",
            };
            let due = text(o, "seller_response_due_date")
                .and_then(|t| parse_rfc3339_ms(&t))
                .map(|ms| ms.div_euclid(1000));
            let parent = at(o, "disputed_transactions")
                .and_then(Json::as_array)
                .and_then(|d| d.first())
                .and_then(|d| text(d, "seller_transaction_id"));
            c.snaps.push(Snap {
                kind: ObjectKind::Dispute,
                id: id.clone(),
                status: status.to_owned(),
                amount: minor,
                currency,
                parent,
                detail: text(o, "reason"),
                at: due,
                refunded: 0,
            });
            c.effects.push(effect(Intent::DisputeResponse, &id, due));
        }
        _ => return Err(BillingError::Missing("a supported event type")),
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(file: &str, text: &str) -> Changes {
        let event: Json<'_> = serde_json::from_str(text).unwrap();
        let t = at(&event, "event_type")
            .and_then(Json::as_str)
            .unwrap()
            .to_owned();
        changes(&t, &event).unwrap_or_else(|e| panic!("{file}: {e}"))
    }

    macro_rules! fixture {
        ($f:literal) => {
            map(
                $f,
                include_str!(concat!("../../../../fixtures/paypal/", $f)),
            )
        };
    }

    fn snap(c: &Changes) -> (ObjectKind, &str, i64, &str, Option<&str>) {
        let s = &c.snaps[0];
        (
            s.kind,
            s.status.as_str(),
            s.amount,
            s.currency.as_str(),
            s.parent.as_deref(),
        )
    }

    #[test]
    fn every_fixture_maps_or_is_ignored_on_purpose() {
        use ObjectKind::{Dispute, Payment, Refund, Subscription};
        let c = fixture!("PAYMENT.CAPTURE.COMPLETED.json");
        assert_eq!(snap(&c), (Payment, "succeeded", 3000, "usd", None));
        assert_eq!(c.order_at, Some(1_661_279_390_000));
        assert_eq!(c.effects[0].intent, Intent::ReceiptEmail);
        assert_eq!(snap(&fixture!("PAYMENT.CAPTURE.PENDING.json")).1, "pending");
        let c = fixture!("PAYMENT.CAPTURE.DECLINED.json");
        assert_eq!(snap(&c), (Payment, "failed", 18510, "usd", None));
        assert_eq!(snap(&fixture!("PAYMENT.CAPTURE.DENIED.json")).1, "failed");
        let c = fixture!("PAYMENT.CAPTURE.REFUNDED.json");
        assert_eq!(
            snap(&c),
            (Refund, "succeeded", 99, "usd", Some("0JF852973C016714D"))
        );
        assert_eq!(
            c.order_at,
            Some(1_534_360_409_000),
            "the -07:00 offset is honoured"
        );
        assert_eq!(snap(&fixture!("PAYMENT.CAPTURE.REVERSED.json")).1, "lost");
        assert_eq!(snap(&fixture!("PAYMENT.CAPTURE.REVERSED.json")).0, Dispute);
        assert_eq!(
            snap(&fixture!("PAYMENT.SALE.COMPLETED.json")).1,
            "succeeded"
        );
        assert_eq!(
            snap(&fixture!("PAYMENT.SALE.COMPLETED.paypal-sdk-2015.json")).1,
            "succeeded"
        );
        let c = fixture!("PAYMENT.SALE.REFUNDED.json");
        assert_eq!(
            snap(&c),
            (Refund, "succeeded", 1, "usd", Some("9T0916710M1105906"))
        );
        let c = fixture!("PAYMENT.SALE.REVERSED.json");
        assert_eq!(snap(&c), (Dispute, "lost", 49, "usd", None));
        assert_eq!(
            snap(&fixture!("PAYMENT.AUTHORIZATION.CREATED.json")).1,
            "pending"
        );
        let c = fixture!("CHECKOUT.PAYMENT-APPROVAL.REVERSED.json");
        assert_eq!(c.account_hint.as_deref(), Some("MERCHANT_CUSTOM_ID"));
        assert_eq!(snap(&c).1, "failed");
        for (f, status) in [
            (fixture!("BILLING.SUBSCRIPTION.CREATED.json"), "incomplete"),
            (fixture!("BILLING.SUBSCRIPTION.ACTIVATED.json"), "active"),
            (fixture!("BILLING.SUBSCRIPTION.SUSPENDED.json"), "paused"),
            (fixture!("BILLING.SUBSCRIPTION.CANCELLED.json"), "canceled"),
            (fixture!("BILLING.SUBSCRIPTION.EXPIRED.json"), "canceled"),
            (
                fixture!("BILLING.SUBSCRIPTION.PAYMENT.FAILED.json"),
                "past_due",
            ),
            (
                fixture!("BILLING.SUBSCRIPTION.CREATED.v1-agreement.json"),
                "incomplete",
            ),
            (
                fixture!("BILLING.SUBSCRIPTION.CANCELLED.v1-agreement.json"),
                "canceled",
            ),
        ] {
            assert_eq!((snap(&f).0, snap(&f).1), (Subscription, status));
        }
        // A v1 payment awaiting the buyer's approval moves no money.
        assert!(!HANDLED_TYPES.contains(&"PAYMENTS.PAYMENT.CREATED"));
    }

    #[test]
    fn custom_id_is_the_reference_and_bad_amounts_are_refused() {
        let body = r#"{"event_type":"PAYMENT.CAPTURE.COMPLETED","resource":{"id":"C1","custom_id":"acct-7","amount":{"currency_code":"JPY","value":"1500"},"update_time":"2024-05-01T00:00:00.250Z","payer":{"payer_id":"P1","email_address":"b@x.y"}}}"#;
        let c = map("inline", body);
        assert_eq!(
            (
                c.account_hint.as_deref(),
                c.customer.as_deref(),
                snap(&c).2,
                c.order_at
            ),
            (Some("acct-7"), Some("P1"), 1500, Some(1_714_521_600_250))
        );
        let bad = r#"{"resource":{"id":"C1","amount":{"currency_code":"USD","value":"1.005"}}}"#;
        let v: Json<'_> = serde_json::from_str(bad).unwrap();
        assert_eq!(
            changes("PAYMENT.CAPTURE.COMPLETED", &v),
            Err(BillingError::Missing("resource.amount"))
        );
    }

    #[test]
    fn disputes_resolve_by_outcome() {
        for (outcome, stage, want) in [
            (None, "INQUIRY", "warning_needs_response"),
            (None, "CHARGEBACK", "needs_response"),
            (Some("RESOLVED_BUYER_FAVOUR"), "CHARGEBACK", "lost"),
            (Some("RESOLVED_SELLER_FAVOUR"), "CHARGEBACK", "won"),
        ] {
            let mut r = serde_json::json!({"dispute_id": "PP-D-1", "dispute_life_cycle_stage": stage,
                "dispute_amount": {"currency_code": "USD", "value": "5.00"},
                "disputed_transactions": [{"seller_transaction_id": "CAP1"}]});
            if let Some(o) = outcome {
                r["dispute_outcome"] = serde_json::json!({"outcome_code": o});
            }
            let body = serde_json::json!({"resource": r}).to_string();
            let v: Json<'_> = serde_json::from_str(&body).unwrap();
            let c = changes("CUSTOMER.DISPUTE.UPDATED", &v).unwrap();
            assert_eq!(
                (snap(&c).1, snap(&c).2, snap(&c).4),
                (want, 500, Some("CAP1"))
            );
        }
    }
}
