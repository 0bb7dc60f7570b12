//! Square's mapper: each Square event type it knows as [`Changes`] in the canonical
//! vocabulary.
//!
//! Square's objects sit in `data.object.<kind>`. Money is `{amount, currency}` in minor units.
//! The order time is the object's `updated_at` in milliseconds (Square's event `created_at` is
//! not an ordering key). Our external reference is the customer's `reference_id` (and a
//! payment's, when it has one).

use serde_json_borrow::Value as Json;

use super::{
    BillingError, Changes, CustomerSnap, Intent, Notice, ObjectKind, SideEffect, Snap, at, at_path,
    effect, int, payment_failed, payment_snap, text,
};
use crate::timestamp::parse_rfc3339_ms;

/// Event types the Square mapper applies (`webhooks.test_notification` and the deprecated
/// `dispute.state.changed` twin are not among them).
pub const HANDLED_TYPES: &[&str] = &[
    "payment.created",
    "payment.updated",
    "refund.created",
    "refund.updated",
    "dispute.created",
    "dispute.state.updated",
    "invoice.payment_made",
    "invoice.scheduled_charge_failed",
    "invoice.refunded",
    "subscription.created",
    "subscription.updated",
    "customer.created",
    "customer.updated",
    "customer.deleted",
];

/// `{amount, currency}` at `key` of `o`: minor units and the lowercase currency.
fn money(o: &Json<'_>, key: &str) -> Option<(i64, String)> {
    let m = at(o, key)?;
    Some((
        int(m, "amount")?,
        text(m, "currency").unwrap_or_default().to_ascii_lowercase(),
    ))
}

/// The canonical payment status of a Square payment status.
pub fn payment_status(status: &str) -> &'static str {
    match status {
        "COMPLETED" => "succeeded",
        "FAILED" | "CANCELED" => "failed",
        _ => "pending",
    }
}

/// The canonical refund status of a Square refund status.
pub fn refund_status(status: &str) -> &'static str {
    match status {
        "COMPLETED" => "succeeded",
        "REJECTED" | "FAILED" => "failed",
        _ => "pending",
    }
}

/// The canonical dispute status of a Square dispute state.
pub fn dispute_status(state: &str) -> &'static str {
    match state {
        "INQUIRY_EVIDENCE_REQUIRED" => "warning_needs_response",
        "INQUIRY_PROCESSING" => "warning_under_review",
        "INQUIRY_CLOSED" => "warning_closed",
        "PROCESSING" => "under_review",
        "WON" => "won",
        "LOST" | "ACCEPTED" => "lost",
        _ => "needs_response",
    }
}

/// The canonical subscription status of a Square subscription status.
pub fn subscription_status(status: &str) -> &'static str {
    match status {
        "ACTIVE" => "active",
        "PAUSED" => "paused",
        "CANCELED" | "DEACTIVATED" => "canceled",
        _ => "incomplete",
    }
}

/// What the Square event `event_type` (`event` is the whole body) means.
pub fn changes(event_type: &str, event: &Json<'_>) -> Result<Changes, BillingError> {
    let family = event_type.split('.').next().unwrap_or_default();
    let o = at_path(event, &["data", "object", family])
        .filter(|o| o.is_object())
        .ok_or(BillingError::Missing("data.object"))?;
    let id = || text(o, "id").ok_or(BillingError::Missing("data.object.id"));
    let updated = text(o, "updated_at")
        .or_else(|| text(event, "created_at"))
        .and_then(|t| parse_rfc3339_ms(&t));
    let mut c = Changes {
        customer: text(o, "customer_id"),
        account_hint: text(o, "reference_id"),
        order_at: updated,
        ..Changes::default()
    };
    match family {
        "customer" => {
            let id = id()?;
            c.customer = Some(id.clone());
            let name = [text(o, "given_name"), text(o, "family_name")]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" ");
            c.customer_snap = Some(CustomerSnap {
                id,
                email: text(o, "email_address"),
                name: Some(name).filter(|n| !n.is_empty()),
                deleted: event_type == "customer.deleted"
                    || at_path(event, &["data", "deleted"]).and_then(Json::as_bool) == Some(true),
            });
        }
        "payment" => {
            let id = id()?;
            let (amount, currency) = money(o, "total_money")
                .or_else(|| money(o, "amount_money"))
                .ok_or(BillingError::Missing("data.object.payment.total_money"))?;
            let status = payment_status(&text(o, "status").unwrap_or_default());
            let refunded = money(o, "refunded_money").map_or(0, |(a, _)| a);
            let failure = at_path(o, &["card_details", "errors"])
                .and_then(Json::as_array)
                .and_then(|e| e.first())
                .and_then(|e| text(e, "code"));
            c.snaps.push(payment_snap(
                id.clone(),
                status,
                amount,
                currency.clone(),
                failure,
                refunded,
            ));
            let n = Notice {
                email: text(o, "buyer_email_address"),
                name: None,
                amount: Some(amount),
                currency: Some(currency).filter(|c| !c.is_empty()),
                description: text(o, "note"),
                link: text(o, "receipt_url"),
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
        "refund" => {
            let id = id()?;
            let (amount, currency) = money(o, "amount_money").unwrap_or_default();
            let status = refund_status(&text(o, "status").unwrap_or_default());
            c.snaps.push(Snap {
                kind: ObjectKind::Refund,
                id: id.clone(),
                status: status.to_owned(),
                amount,
                currency: currency.clone(),
                parent: text(o, "payment_id"),
                detail: text(o, "reason"),
                at: None,
                refunded: 0,
            });
            if status == "succeeded" {
                c.effects.push(SideEffect {
                    notice: Notice {
                        amount: Some(amount),
                        currency: Some(currency).filter(|c| !c.is_empty()),
                        ..Notice::default()
                    },
                    ..effect(Intent::RefundConfirmationEmail, &id, None)
                });
            }
        }
        "dispute" => {
            let id = id()?;
            let (amount, currency) = money(o, "amount_money").unwrap_or_default();
            let due = text(o, "due_at")
                .and_then(|t| parse_rfc3339_ms(&t))
                .map(|ms| ms.div_euclid(1000));
            c.snaps.push(Snap {
                kind: ObjectKind::Dispute,
                id: id.clone(),
                status: dispute_status(&text(o, "state").unwrap_or_default()).to_owned(),
                amount,
                currency,
                parent: at_path(o, &["disputed_payment", "payment_id"])
                    .and_then(Json::as_str)
                    .map(str::to_owned),
                detail: text(o, "reason"),
                at: due,
                refunded: 0,
            });
            c.effects.push(effect(Intent::DisputeResponse, &id, due));
        }
        "invoice" => {
            let id = id()?;
            c.customer = at_path(o, &["primary_recipient", "customer_id"])
                .and_then(Json::as_str)
                .map(str::to_owned);
            let request = at(o, "payment_requests")
                .and_then(Json::as_array)
                .and_then(|r| r.first());
            let (due, currency) = request
                .and_then(|r| money(r, "computed_amount_money"))
                .unwrap_or_default();
            let paid = request
                .and_then(|r| money(r, "total_completed_amount_money"))
                .map_or(0, |(a, _)| a);
            let status = match event_type {
                "invoice.payment_made" | "invoice.refunded" => "paid",
                _ => "open",
            };
            c.snaps.push(Snap {
                kind: ObjectKind::Invoice,
                id: id.clone(),
                status: status.to_owned(),
                amount: due,
                currency: currency.clone(),
                parent: text(o, "subscription_id"),
                detail: None,
                at: None,
                refunded: 0,
            });
            let n = Notice {
                email: at_path(o, &["primary_recipient", "email_address"])
                    .and_then(Json::as_str)
                    .map(str::to_owned),
                name: at_path(o, &["primary_recipient", "given_name"])
                    .and_then(Json::as_str)
                    .map(str::to_owned),
                amount: Some(if paid > 0 { paid } else { due }),
                currency: Some(currency.clone()).filter(|c| !c.is_empty()),
                description: text(o, "title"),
                link: text(o, "public_url"),
            };
            // An invoice's money arrives as its own Payment, whose `payment.*` events record it
            // (and its receipt) under the payment id; the invoice names no payment id, so
            // recording it here too would count the same money twice.
            if event_type == "invoice.scheduled_charge_failed" {
                payment_failed(&mut c, &id, n);
            }
        }
        "subscription" => {
            let id = id()?;
            let status = subscription_status(&text(o, "status").unwrap_or_default());
            c.snaps.push(Snap {
                kind: ObjectKind::Subscription,
                id: id.clone(),
                status: status.to_owned(),
                amount: 0,
                currency: String::new(),
                parent: None,
                detail: text(o, "plan_variation_id").or_else(|| text(o, "plan_id")),
                at: None,
                refunded: 0,
            });
            // `version` is Square's own order for subscriptions (epoch milliseconds).
            c.order_at = int(o, "version").or(c.order_at);
            if status == "canceled" {
                c.effects.push(effect(Intent::Churn, &id, None));
            }
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
        let t = at(&event, "type")
            .and_then(Json::as_str)
            .unwrap()
            .to_owned();
        changes(&t, &event).unwrap_or_else(|e| panic!("{file}: {e}"))
    }

    macro_rules! fixture {
        ($f:literal) => {
            map(
                $f,
                include_str!(concat!("../../../../fixtures/square/", $f)),
            )
        };
    }

    #[test]
    fn every_fixture_maps_to_canonical_state() {
        let c = fixture!("payment.updated.json");
        let p = &c.snaps[0];
        assert_eq!(
            (p.kind, p.status.as_str(), p.amount, p.currency.as_str()),
            (ObjectKind::Payment, "succeeded", 100, "usd")
        );
        assert_eq!(c.order_at, Some(1_606_079_940_831));
        assert_eq!(c.effects[0].intent, Intent::ReceiptEmail);

        let c = fixture!("payment.created.json");
        assert_eq!(c.snaps[0].status, "pending", "APPROVED is not money in yet");
        assert!(c.effects.is_empty());

        let c = fixture!("payment.updated.sandbox-external.converted.json");
        assert_eq!(c.snaps[0].kind, ObjectKind::Payment);

        let c = fixture!("refund.created.json");
        assert_eq!(
            (c.snaps[0].status.as_str(), c.effects.len()),
            ("pending", 0)
        );
        let c = fixture!("refund.updated.json");
        let r = &c.snaps[0];
        assert_eq!(
            (r.status.as_str(), r.amount, r.parent.as_deref()),
            ("succeeded", 1000, Some("KkAkhdMsgzn59SM8A89WgKwekxLZY"))
        );
        assert_eq!(c.effects[0].intent, Intent::RefundConfirmationEmail);

        let c = fixture!("dispute.created.json");
        let d = &c.snaps[0];
        assert_eq!(
            (d.status.as_str(), d.amount, d.parent.as_deref(), d.at),
            (
                "needs_response",
                8801,
                Some("fbmsaEOpoARDKxiSGH1fqPuqoqFZY"),
                Some(1_583_280_000)
            )
        );
        let c = fixture!("dispute.state.updated.json");
        assert_eq!(c.snaps[0].status, "won");

        let c = fixture!("invoice.payment_made.json");
        assert_eq!(c.customer.as_deref(), Some("JDKYHBWT1D4F8MFH63DBMEN8Y4"));
        assert_eq!((c.snaps[0].status.as_str(), c.snaps.len()), ("paid", 1));
        assert!(
            c.effects.is_empty(),
            "the money and its receipt come with the payment's events"
        );
        let c = fixture!("invoice.scheduled_charge_failed.json");
        assert_eq!(c.snaps[0].status, "open");
        assert!(
            c.effects
                .iter()
                .any(|e| e.intent == Intent::PaymentFailedFollowup)
        );
        let c = fixture!("invoice.refunded.json");
        assert_eq!(c.snaps[0].status, "paid");

        let c = fixture!("subscription.created.json");
        assert_eq!(c.snaps[0].status, "active");
        assert_eq!(
            c.order_at,
            Some(1_594_790_050_754),
            "the subscription's version"
        );
        let c = fixture!("subscription.updated.json");
        assert_eq!(c.snaps[0].status, "active");

        let c = fixture!("customer.created.json");
        let s = c.customer_snap.unwrap();
        assert_eq!(
            (s.email.as_deref(), s.name.as_deref(), s.deleted),
            (
                Some("jenkins+smorly@squareup.com"),
                Some("Jenkins Smorly"),
                false
            )
        );
        assert!(fixture!("customer.updated.json").customer_snap.is_some());
        assert!(
            fixture!("customer.deleted.json")
                .customer_snap
                .unwrap()
                .deleted
        );
    }

    #[test]
    fn the_test_notification_is_not_handled() {
        // Square's "Send test event": no object, nothing to apply; recorded as ignored.
        assert!(!HANDLED_TYPES.contains(&"webhooks.test_notification"));
    }

    #[test]
    fn failed_payments_and_references() {
        let body = r#"{"type":"payment.updated","data":{"object":{"payment":{"id":"p1","status":"FAILED","customer_id":"C1","reference_id":"acct-9","buyer_email_address":"a@b.c","total_money":{"amount":250,"currency":"EUR"},"updated_at":"2024-01-01T00:00:00.123456789Z"}}}}"#;
        let c = map("inline", body);
        assert_eq!(
            (c.customer.as_deref(), c.account_hint.as_deref(), c.order_at),
            (Some("C1"), Some("acct-9"), Some(1_704_067_200_123))
        );
        assert_eq!(
            (c.snaps[0].status.as_str(), c.snaps[0].currency.as_str()),
            ("failed", "eur")
        );
        let intents: Vec<_> = c.effects.iter().map(|e| e.intent).collect();
        assert_eq!(
            intents,
            [Intent::PaymentFailedFollowup, Intent::PaymentFailedEmail]
        );
        assert_eq!(c.effects[1].notice.email.as_deref(), Some("a@b.c"));
    }

    #[test]
    fn arbitrary_bodies_never_panic() {
        use proptest::prelude::*;
        proptest!(|(t in prop::sample::select(HANDLED_TYPES), s in ".{0,200}")| {
            let body = format!(r#"{{"data":{{"object":{{"{}":{}}}}}}}"#, t.split('.').next().unwrap(), serde_json::json!({"id": s, "status": s, "total_money": {"amount": 1}}));
            if let Ok(v) = serde_json::from_str::<Json<'_>>(&body) {
                let _ = changes(t, &v);
            }
        });
    }
}
