//! Stripe's mapper: each Stripe event type it knows as [`Changes`].

use serde_json_borrow::Value as Json;

use super::{
    BillingError, Changes, CustomerSnap, Intent, Notice, ObjectKind, SideEffect, Snap, at, at_path,
    currency, effect, id_of, int, payment_failed, payment_snap, text,
};

/// Event types the Stripe mapper applies.
pub const HANDLED_TYPES: &[&str] = &[
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "checkout.session.expired",
    "customer.created",
    "customer.updated",
    "customer.deleted",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.trial_will_end",
    "customer.subscription.paused",
    "customer.subscription.resumed",
    "invoice.finalized",
    "invoice.paid",
    "invoice.payment_succeeded",
    "invoice.payment_failed",
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "charge.succeeded",
    "charge.failed",
    "charge.refunded",
    "charge.refund.updated",
    "refund.created",
    "refund.updated",
    "refund.failed",
    "charge.dispute.created",
    "charge.dispute.closed",
];

fn refund_snap(r: &Json<'_>, fallback_payment: Option<&str>) -> Option<Snap> {
    Some(Snap {
        kind: ObjectKind::Refund,
        id: text(r, "id")?,
        status: text(r, "status").unwrap_or_else(|| "pending".into()),
        amount: int(r, "amount").unwrap_or(0),
        currency: currency(r),
        // Keyed like payments: the intent when known, so a refund embedded in its charge
        // (which names only the charge) still joins the payment row.
        parent: id_of(r, "payment_intent")
            .or_else(|| fallback_payment.map(str::to_owned))
            .or_else(|| id_of(r, "charge")),
        detail: None,
        at: None,
        refunded: 0,
    })
}

fn hint_of(o: &Json<'_>) -> Option<String> {
    at(o, "metadata").and_then(|m| text(m, "account_id"))
}

/// Where an invoice names its customer's address and name.
const INVOICE_EMAIL: &[&[&str]] = &[&["customer_email"]];
const INVOICE_NAME: &[&[&str]] = &[&["customer_name"]];
/// Where a charge names its payer's address.
const CHARGE_EMAIL: &[&[&str]] = &[&["billing_details", "email"], &["receipt_email"]];

/// A message's notice: the address, name, amount, what was bought and the link the payload
/// carries. `email_at`, `name_at` and `link_at` list where to look, first match wins.
fn notice(
    o: &Json<'_>,
    email_at: &[&[&str]],
    name_at: &[&[&str]],
    amount: Option<i64>,
    link_at: &[&str],
) -> Notice {
    let first = |paths: &[&[&str]]| {
        paths.iter().find_map(|p| {
            at_path(o, p)
                .and_then(Json::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        })
    };
    let line = at_path(o, &["lines", "data"])
        .and_then(Json::as_array)
        .and_then(|l| l.first())
        .and_then(|l| text(l, "description"));
    Notice {
        email: first(email_at),
        name: first(name_at),
        amount,
        currency: Some(currency(o)).filter(|c| !c.is_empty()),
        description: line.or_else(|| text(o, "description")),
        link: link_at.iter().find_map(|k| text(o, k)),
    }
}

/// Stripe's thin events about API v1 objects are named like the snapshot event with this
/// prefix (`v1.invoice.paid`).
pub const THIN_TYPE_PREFIX: &str = "v1.";

/// The snapshot event type a thin event type stands for, when this mapper applies it.
pub fn thin_base(event_type: &str) -> Option<&'static str> {
    let base = event_type.strip_prefix(THIN_TYPE_PREFIX)?;
    HANDLED_TYPES.iter().copied().find(|t| *t == base)
}

/// Where the object of a thin event is fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThinObject {
    /// The checked API path (`related_object.url`, see [`thin_object_path`]).
    pub path: String,
    /// The event's `context` (a connected account, `acct_…`): sent as `Stripe-Context` so the
    /// platform's key reads that account's object.
    pub context: Option<String>,
}

/// The API path of the object a thin event refers to (`related_object.url`), if it is one we
/// may call: a `/v1/` path of ids and names only, so an event cannot point the worker's
/// authenticated client anywhere else.
pub fn thin_object_path(event: &Json<'_>) -> Result<String, BillingError> {
    let url = at_path(event, &["related_object", "url"])
        .and_then(Json::as_str)
        .ok_or(BillingError::Missing("related_object.url"))?;
    let safe = url.len() <= 300
        && url.starts_with("/v1/")
        && !url.contains("..")
        && !url.contains("//")
        && url
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-' | b'.'));
    if !safe {
        return Err(BillingError::Missing("related_object.url"));
    }
    Ok(url.to_owned())
}

/// The snapshot event a thin event stands for, once its object was fetched: the thin event's
/// id, mode and time, its type without [`THIN_TYPE_PREFIX`], and `object` (the API's JSON of
/// the related object) as `data.object`. The mapper then reads it like any snapshot event.
pub fn snapshot_of_thin(thin: &str, object: &str) -> Result<String, BillingError> {
    let thin: serde_json::Value = serde_json::from_str(thin).map_err(|_| BillingError::NotJson)?;
    let object: serde_json::Value =
        serde_json::from_str(object).map_err(|_| BillingError::NotJson)?;
    if !object.is_object() {
        return Err(BillingError::Missing("data.object"));
    }
    let event_type = thin["type"]
        .as_str()
        .and_then(thin_base)
        .ok_or(BillingError::Missing("type"))?;
    let created = thin["created"]
        .as_str()
        .and_then(crate::timestamp::parse_rfc3339_ms)
        .ok_or(BillingError::Missing("created"))?
        .div_euclid(1000);
    Ok(serde_json::json!({
        "id": thin["id"],
        "object": "event",
        "type": event_type,
        "created": created,
        "livemode": thin["livemode"],
        "data": {"object": object},
    })
    .to_string())
}

/// What the Stripe event `event_type` with the raw body `body` means: [`changes`] of the body
/// parsed into a borrowed tree, which lives only for this call.
pub fn changes_of_body(event_type: &str, body: &str) -> Result<Changes, BillingError> {
    super::changes_of_body(crate::Provider::Stripe, event_type, body)
}

/// What the event `event_type` with payload `event` (the whole Stripe event, parsed into a
/// borrowed JSON tree: strings are not copied, objects are vectors) means. Where a member
/// appears twice in an object, the first one counts.
pub fn changes(event_type: &str, event: &Json<'_>) -> Result<Changes, BillingError> {
    if at(event, "object").and_then(Json::as_str) == Some(crate::stripe::THIN_OBJECT) {
        // A thin event names its object; the worker fetches it and maps the snapshot.
        thin_base(event_type).ok_or(BillingError::Missing("type"))?;
        let context = match at(event, "context") {
            None => None,
            Some(c) if c.is_null() => None,
            Some(c) => Some(
                c.as_str()
                    .filter(|c| {
                        !c.is_empty()
                            && c.len() <= 100
                            && c.bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'/')
                    })
                    .ok_or(BillingError::Missing("context"))?
                    .to_owned(),
            ),
        };
        return Ok(Changes {
            needs: Some(super::Enrichment::StripeObject(ThinObject {
                path: thin_object_path(event)?,
                context,
            })),
            ..Changes::default()
        });
    }
    let o = at_path(event, &["data", "object"])
        .filter(|o| o.is_object())
        .ok_or(BillingError::Missing("data.object"))?;
    let id = || text(o, "id").ok_or(BillingError::Missing("data.object.id"));
    let mut c = Changes {
        account_hint: hint_of(o),
        ..Changes::default()
    };
    let family = event_type.rsplit_once('.').map_or(event_type, |(f, _)| f);
    match family {
        "customer" => {
            let id = id()?;
            c.customer = Some(id.clone());
            c.customer_snap = Some(CustomerSnap {
                id,
                email: text(o, "email"),
                name: text(o, "name"),
                deleted: event_type == "customer.deleted"
                    || at(o, "deleted").and_then(Json::as_bool) == Some(true),
            });
        }
        "customer.subscription" => {
            let id = id()?;
            c.customer = id_of(o, "customer");
            let item = at_path(o, &["items", "data"])
                .and_then(Json::as_array)
                .and_then(|items| items.first());
            let plan = item
                .and_then(|i| at_path(i, &["price", "id"]).or_else(|| at_path(i, &["plan", "id"])))
                .or_else(|| at_path(o, &["plan", "id"]))
                .and_then(Json::as_str)
                .map(str::to_owned);
            let period_end = int(o, "current_period_end")
                .or_else(|| item.and_then(|i| int(i, "current_period_end")));
            let status = text(o, "status").ok_or(BillingError::Missing("data.object.status"))?;
            c.snaps.push(Snap {
                kind: ObjectKind::Subscription,
                id: id.clone(),
                status: status.clone(),
                amount: 0,
                currency: String::new(),
                parent: None,
                detail: plan,
                at: period_end,
                refunded: 0,
            });
            match event_type {
                "customer.subscription.trial_will_end" => {
                    c.effects
                        .push(effect(Intent::TrialEnding, &id, int(o, "trial_end")))
                }
                "customer.subscription.deleted" => c.effects.push(effect(Intent::Churn, &id, None)),
                // Past due because its latest invoice failed: keyed on that invoice, like the
                // invoice's own failure, so one failure asks for one follow-up.
                _ if status == "past_due" => c.effects.push(effect(
                    Intent::PaymentFailedFollowup,
                    &id_of(o, "latest_invoice").unwrap_or(id),
                    None,
                )),
                _ => {}
            }
        }
        "invoice" => {
            let id = id()?;
            c.customer = id_of(o, "customer");
            // The type decides the status (fixtures carry inconsistent hand-edited statuses).
            let status = match event_type {
                "invoice.paid" | "invoice.payment_succeeded" => "paid".to_owned(),
                "invoice.payment_failed" => "open".to_owned(),
                _ => text(o, "status").unwrap_or_else(|| "open".into()),
            };
            let amount_paid = int(o, "amount_paid").unwrap_or(0);
            let cur = currency(o);
            let reason = text(o, "billing_reason");
            c.snaps.push(Snap {
                kind: ObjectKind::Invoice,
                id: id.clone(),
                status: status.clone(),
                amount: int(o, "amount_due").unwrap_or(0),
                currency: cur.clone(),
                parent: id_of(o, "subscription"),
                detail: reason,
                at: None,
                refunded: 0,
            });
            if status == "paid" && amount_paid > 0 {
                // Money in: keyed like the charge and intent events of the same payment.
                let key = id_of(o, "payment_intent")
                    .or_else(|| id_of(o, "charge"))
                    .unwrap_or(id.clone());
                c.snaps.push(payment_snap(
                    key.clone(),
                    "succeeded",
                    amount_paid,
                    cur,
                    None,
                    0,
                ));
                c.effects.push(SideEffect {
                    notice: notice(
                        o,
                        INVOICE_EMAIL,
                        INVOICE_NAME,
                        Some(amount_paid),
                        &["hosted_invoice_url", "invoice_pdf"],
                    ),
                    ..effect(Intent::ReceiptEmail, &key, None)
                });
            }
            if event_type == "invoice.payment_failed" {
                let due = int(o, "amount_due").filter(|a| *a > 0);
                let n = notice(o, INVOICE_EMAIL, INVOICE_NAME, due, &["hosted_invoice_url"]);
                payment_failed(&mut c, &id, n);
            }
        }
        "payment_intent" => {
            let id = id()?;
            c.customer = id_of(o, "customer");
            let succeeded = event_type == "payment_intent.succeeded";
            let status = if succeeded { "succeeded" } else { "failed" };
            let amount = int(o, "amount_received")
                .filter(|a| *a > 0)
                .or_else(|| int(o, "amount"))
                .unwrap_or(0);
            let failure = at_path(o, &["last_payment_error", "code"])
                .and_then(Json::as_str)
                .map(str::to_owned);
            c.snaps.push(payment_snap(
                id.clone(),
                status,
                amount,
                currency(o),
                failure,
                0,
            ));
            let n = notice(o, &[&["receipt_email"]], &[], Some(amount), &[]);
            if succeeded {
                c.effects.push(SideEffect {
                    notice: n,
                    ..effect(Intent::ReceiptEmail, &id, None)
                });
            } else {
                // A payment of an invoice fails with the invoice: one follow-up, one email,
                // keyed like `invoice.payment_failed`'s.
                let source = id_of(o, "invoice").unwrap_or(id);
                payment_failed(&mut c, &source, n);
            }
        }
        "charge" => {
            let id = id()?;
            c.customer = id_of(o, "customer");
            let key = id_of(o, "payment_intent").unwrap_or(id.clone());
            let status = match text(o, "status").as_deref() {
                Some("succeeded") => "succeeded",
                Some("failed") => "failed",
                _ => "pending",
            };
            let amount = int(o, "amount_captured")
                .filter(|a| *a > 0)
                .or_else(|| int(o, "amount"))
                .unwrap_or(0);
            let refunded = int(o, "amount_refunded").unwrap_or(0);
            c.snaps.push(payment_snap(
                key.clone(),
                status,
                amount,
                currency(o),
                text(o, "failure_code"),
                refunded,
            ));
            if let Some(refunds) = at_path(o, &["refunds", "data"]).and_then(Json::as_array) {
                for r in refunds {
                    if let Some(snap) = refund_snap(r, Some(&key)) {
                        if snap.status == "succeeded" {
                            let mut n = notice(
                                o,
                                CHARGE_EMAIL,
                                &[&["billing_details", "name"]],
                                Some(snap.amount),
                                &["receipt_url"],
                            );
                            n.description = None;
                            c.effects.push(SideEffect {
                                notice: n,
                                ..effect(Intent::RefundConfirmationEmail, &snap.id, None)
                            });
                        }
                        c.snaps.push(snap);
                    }
                }
            }
            if event_type == "charge.failed" {
                let source = id_of(o, "invoice").unwrap_or(key);
                c.effects
                    .push(effect(Intent::PaymentFailedFollowup, &source, None));
            }
        }
        "charge.refund" | "refund" => {
            let snap = refund_snap(o, None).ok_or(BillingError::Missing("data.object.id"))?;
            if snap.status == "succeeded" {
                c.effects.push(SideEffect {
                    notice: Notice {
                        amount: Some(snap.amount),
                        currency: Some(snap.currency.clone()).filter(|c| !c.is_empty()),
                        ..Notice::default()
                    },
                    ..effect(Intent::RefundConfirmationEmail, &snap.id, None)
                });
            }
            c.snaps.push(snap);
        }
        "charge.dispute" => {
            let id = id()?;
            let due = at_path(o, &["evidence_details", "due_by"]).and_then(Json::as_i64);
            c.snaps.push(Snap {
                kind: ObjectKind::Dispute,
                id: id.clone(),
                status: text(o, "status").ok_or(BillingError::Missing("data.object.status"))?,
                amount: int(o, "amount").unwrap_or(0),
                currency: currency(o),
                parent: id_of(o, "payment_intent").or_else(|| id_of(o, "charge")),
                detail: text(o, "reason"),
                at: due,
                refunded: 0,
            });
            c.effects.push(effect(Intent::DisputeResponse, &id, due));
        }
        "checkout.session" => {
            let id = id()?;
            c.customer = id_of(o, "customer");
            c.account_hint = c.account_hint.or_else(|| text(o, "client_reference_id"));
            let payment_status = text(o, "payment_status").unwrap_or_default();
            let status = match event_type {
                "checkout.session.expired" => "expired",
                "checkout.session.async_payment_failed" => "failed",
                "checkout.session.async_payment_succeeded" => "paid",
                _ if matches!(payment_status.as_str(), "paid" | "no_payment_required") => "paid",
                _ => "unpaid",
            };
            let amount = int(o, "amount_total").unwrap_or(0);
            let cur = currency(o);
            c.snaps.push(Snap {
                kind: ObjectKind::Checkout,
                id: id.clone(),
                status: status.to_owned(),
                amount,
                currency: cur.clone(),
                parent: id_of(o, "subscription"),
                detail: text(o, "mode"),
                at: None,
                refunded: 0,
            });
            if status == "paid"
                && text(o, "mode").as_deref() == Some("payment")
                && amount > 0
                && let Some(pi) = id_of(o, "payment_intent")
            {
                c.snaps
                    .push(payment_snap(pi.clone(), "succeeded", amount, cur, None, 0));
                c.effects.push(SideEffect {
                    notice: notice(
                        o,
                        &[&["customer_details", "email"], &["customer_email"]],
                        &[&["customer_details", "name"]],
                        Some(amount),
                        &[],
                    ),
                    ..effect(Intent::ReceiptEmail, &pi, None)
                });
            }
        }
        _ => return Err(BillingError::Missing("a supported event type")),
    }
    Ok(c)
}

#[cfg(test)]
mod thin_tests {
    use super::*;

    const THIN: &str = r#"{"id":"evt_test_65Th","object":"v2.core.event","type":"v1.invoice.paid","livemode":false,"created":"2024-09-17T06:20:52.246Z","related_object":{"id":"in_1","type":"invoice","url":"/v1/invoices/in_1"}}"#;

    #[test]
    fn a_thin_event_of_a_handled_type_asks_for_its_object() {
        let c = changes_of_body("v1.invoice.paid", THIN).unwrap();
        assert_eq!(
            c.needs,
            Some(super::super::Enrichment::StripeObject(ThinObject {
                path: "/v1/invoices/in_1".into(),
                context: None,
            }))
        );
        assert!(c.snaps.is_empty() && c.effects.is_empty());
        assert_eq!(thin_base("v1.invoice.paid"), Some("invoice.paid"));
        assert_eq!(thin_base("v1.billing.meter.error_report_triggered"), None);
        assert_eq!(thin_base("invoice.paid"), None);
    }

    #[test]
    fn a_thin_event_of_a_connected_account_is_fetched_in_its_context() {
        let body = THIN.replace(
            r#""livemode":false"#,
            r##""livemode":false,"context":"acct_1Nv0FG""##,
        );
        let c = changes_of_body("v1.invoice.paid", &body).unwrap();
        assert_eq!(
            c.needs,
            Some(super::super::Enrichment::StripeObject(ThinObject {
                path: "/v1/invoices/in_1".into(),
                context: Some("acct_1Nv0FG".into()),
            }))
        );
        for bad in [r#""context":"acct 1""#, r#""context":7"#, r#""context":"""#] {
            let body = THIN.replace(r#""livemode":false"#, &format!(r#""livemode":false,{bad}"#));
            assert_eq!(
                changes_of_body("v1.invoice.paid", &body),
                Err(BillingError::Missing("context")),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_thin_event_pointing_outside_the_v1_api_is_refused() {
        for url in [
            "https://evil.example/v1/invoices/in_1",
            "//evil.example/v1/x",
            "/v1/../v2/x",
            "/v2/core/events/evt_1",
            "/v1/invoices/in_1?expand=x",
            "/v1/invoices/in 1",
        ] {
            let body = THIN.replace("/v1/invoices/in_1", url);
            assert_eq!(
                changes_of_body("v1.invoice.paid", &body),
                Err(BillingError::Missing("related_object.url")),
                "{url}"
            );
        }
    }

    #[test]
    fn the_snapshot_of_a_thin_event_maps_like_the_snapshot_event() {
        let object = r#"{"id":"in_1","object":"invoice","customer":"cus_1","status":"paid","amount_paid":1500,"total":1500,"currency":"usd"}"#;
        let snapshot = snapshot_of_thin(THIN, object).unwrap();
        let v: serde_json::Value = serde_json::from_str(&snapshot).unwrap();
        assert_eq!(v["type"], "invoice.paid");
        assert_eq!(v["id"], "evt_test_65Th");
        assert_eq!(v["created"], 1_726_554_052);
        assert_eq!(v["data"]["object"]["id"], "in_1");
        let c = changes_of_body("invoice.paid", &snapshot).unwrap();
        assert_eq!(c.customer.as_deref(), Some("cus_1"));
        assert!(c.needs.is_none());
        assert!(snapshot_of_thin(THIN, "[1]").is_err());
        assert!(snapshot_of_thin(&THIN.replace("v1.invoice.paid", "v1.x"), object).is_err());
    }
}
