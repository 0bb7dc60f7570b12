//! Realistic Stripe events, built from the repository's captured fixtures.
//!
//! Event `i` of a factory is a pure function of `(tag, customers, i)`: the template (one of the
//! verbatim fixtures of `fixtures/stripe/`) and the customer are drawn from a hash of `i`, and
//! every id is rewritten so that events are distinct (`evt_<tag>_<i>`, objects
//! `<kind prefix>_<tag>x<i>`), while customers repeat (`cus_bench<k>`, `k < customers`), as a
//! real account's events do. The wrapped fixtures are left out (their envelopes are ours and
//! the OpenAPI objects hold schema-generated values), and so is `plan.created` (no billing
//! type). Bodies are serialized compactly, about 2.5 KB on average.
//!
//! The rewrite also makes every event acceptable to a test-mode endpoint and free of account
//! conflicts: `livemode` is false, and account hints (`metadata.account_id`,
//! `client_reference_id`) are removed.

use anyhow::Context as _;
use serde_json::{Map, Value};

/// The fixtures the events are built from: `(event type, file content)`.
const FIXTURES: &[(&str, &str)] = &[
    (
        "charge.dispute.closed",
        include_str!("../../../fixtures/stripe/charge.dispute.closed.json"),
    ),
    (
        "charge.dispute.created",
        include_str!("../../../fixtures/stripe/charge.dispute.created.json"),
    ),
    (
        "charge.failed",
        include_str!("../../../fixtures/stripe/charge.failed.json"),
    ),
    (
        "charge.refunded",
        include_str!("../../../fixtures/stripe/charge.refunded.json"),
    ),
    (
        "charge.succeeded",
        include_str!("../../../fixtures/stripe/charge.succeeded.json"),
    ),
    (
        "checkout.session.completed",
        include_str!("../../../fixtures/stripe/checkout.session.completed.json"),
    ),
    (
        "customer.deleted",
        include_str!("../../../fixtures/stripe/customer.deleted.json"),
    ),
    (
        "customer.subscription.created",
        include_str!("../../../fixtures/stripe/customer.subscription.created.json"),
    ),
    (
        "customer.subscription.deleted",
        include_str!("../../../fixtures/stripe/customer.subscription.deleted.json"),
    ),
    (
        "customer.subscription.updated",
        include_str!("../../../fixtures/stripe/customer.subscription.updated.json"),
    ),
    (
        "customer.updated",
        include_str!("../../../fixtures/stripe/customer.updated.json"),
    ),
    (
        "invoice.finalized",
        include_str!("../../../fixtures/stripe/invoice.finalized.json"),
    ),
    (
        "invoice.paid",
        include_str!("../../../fixtures/stripe/invoice.paid.json"),
    ),
    (
        "invoice.payment_failed",
        include_str!("../../../fixtures/stripe/invoice.payment_failed.json"),
    ),
    (
        "invoice.payment_succeeded",
        include_str!("../../../fixtures/stripe/invoice.payment_succeeded.json"),
    ),
    (
        "payment_intent.payment_failed",
        include_str!("../../../fixtures/stripe/payment_intent.payment_failed.json"),
    ),
    (
        "refund.updated",
        include_str!("../../../fixtures/stripe/refund.updated.json"),
    ),
];

/// How many event types the events are drawn from.
pub const EVENT_TYPES: usize = FIXTURES.len();

/// How many distinct customers the events belong to by default.
pub const DEFAULT_CUSTOMERS: u64 = 1000;

/// Top-level fields of `data.object` that hold ids of other objects (rewritten per event).
const REFERENCES: &[&str] = &["payment_intent", "charge", "invoice", "subscription"];

/// The provider customer id of customer number `k`.
pub fn customer_id(k: u64) -> String {
    format!("cus_bench{k}")
}

/// Builds distinct, realistic Stripe event bodies.
#[derive(Debug, Clone)]
pub struct EventFactory {
    templates: Vec<Template>,
    tag: String,
    customers: u64,
}

#[derive(Debug, Clone)]
struct Template {
    event_type: &'static str,
    event: Value,
}

impl EventFactory {
    /// A factory whose event ids start with `evt_<tag>_` and whose events belong to
    /// `customers` customers. `tag` must be a short alphanumeric word.
    pub fn new(tag: &str, customers: u64) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !tag.is_empty() && tag.len() <= 40 && tag.bytes().all(|b| b.is_ascii_alphanumeric()),
            "an event tag must be 1-40 ASCII letters or digits, got {tag:?}"
        );
        let templates = FIXTURES
            .iter()
            .map(|(event_type, text)| {
                let event: Value = serde_json::from_str(text)
                    .with_context(|| format!("parsing the {event_type} fixture"))?;
                anyhow::ensure!(
                    event.get("type").and_then(Value::as_str) == Some(*event_type),
                    "the {event_type} fixture has another type"
                );
                Ok(Template { event_type, event })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            templates,
            tag: tag.to_owned(),
            customers: customers.max(1),
        })
    }

    /// The event id of event `i`.
    pub fn event_id(&self, i: u64) -> String {
        format!("evt_{}_{i}", self.tag)
    }

    /// The SQL `like` pattern that matches this factory's event ids.
    pub fn id_pattern(&self) -> String {
        format!("evt\\_{}\\_%", self.tag)
    }

    /// The JSON body of event `i` (compact).
    pub fn event(&self, i: u64) -> Vec<u8> {
        let value = self.event_value(i);
        // Serializing a `Value` cannot fail (string keys only).
        serde_json::to_vec(&value).unwrap_or_default()
    }

    /// The type of event `i`.
    #[cfg(test)]
    pub fn event_type(&self, i: u64) -> &'static str {
        self.template(i).event_type
    }

    fn template(&self, i: u64) -> &Template {
        let n = self.templates.len() as u64;
        &self.templates[usize::try_from(splitmix(i) % n).unwrap_or_default()]
    }

    fn event_value(&self, i: u64) -> Value {
        let template = self.template(i);
        let customer = customer_id(splitmix(splitmix(i) ^ 0x5eed) % self.customers);
        let suffix = format!("{}x{i}", self.tag);
        let mut event = template.event.clone();
        if let Some(envelope) = event.as_object_mut() {
            envelope.insert("id".into(), Value::String(self.event_id(i)));
            envelope.insert("livemode".into(), Value::Bool(false));
        }
        let customer_family = template.event_type.starts_with("customer.")
            && !template.event_type.starts_with("customer.subscription.");
        if let Some(object) = event
            .pointer_mut("/data/object")
            .and_then(Value::as_object_mut)
        {
            rewrite_object(object, &suffix, &customer, customer_family);
        }
        event
    }
}

/// Rewrites the ids of a `data.object` so that they belong to this event only, except the
/// customer, which is `customer`.
fn rewrite_object(
    object: &mut Map<String, Value>,
    suffix: &str,
    customer: &str,
    customer_family: bool,
) {
    if customer_family {
        object.insert("id".into(), Value::String(customer.to_owned()));
    } else {
        rewrite_ids(object, suffix);
        if object.contains_key("customer") {
            object.insert("customer".into(), Value::String(customer.to_owned()));
        }
    }
    if object.contains_key("client_reference_id") {
        object.insert("client_reference_id".into(), Value::Null);
    }
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.remove("account_id");
    }
    if let Some(refunds) = object
        .get_mut("refunds")
        .and_then(|r| r.get_mut("data"))
        .and_then(Value::as_array_mut)
    {
        for (j, refund) in refunds.iter_mut().enumerate() {
            if let Some(refund) = refund.as_object_mut() {
                rewrite_ids(refund, suffix);
                if let Some(Value::String(id)) = refund.get("id") {
                    let id = format!("{id}r{j}");
                    refund.insert("id".into(), Value::String(id));
                }
            }
        }
    }
}

/// Replaces `id` and the reference fields that are strings by `<their prefix>_<suffix>`.
fn rewrite_ids(object: &mut Map<String, Value>, suffix: &str) {
    for key in std::iter::once("id").chain(REFERENCES.iter().copied()) {
        if let Some(Value::String(old)) = object.get(key) {
            let prefix = old.split('_').next().unwrap_or("obj");
            let new = format!("{prefix}_{suffix}");
            object.insert(key.into(), Value::String(new));
        }
    }
}

/// SplitMix64: a fast, well-mixed hash of a counter (the event's template and customer).
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The message sequence of the worker benchmark: `total` deliveries, of which every 20th (5 %)
/// repeats an earlier event (same id, same body). Returns event indexes in publish order and
/// the number of distinct events.
pub fn with_duplicates(total: u64) -> (Vec<u64>, u64) {
    let mut order = Vec::with_capacity(usize::try_from(total).unwrap_or_default());
    let mut distinct = 0u64;
    for k in 0..total {
        if k % 20 == 19 && distinct > 0 {
            order.push(splitmix(k) % distinct);
        } else {
            order.push(distinct);
            distinct += 1;
        }
    }
    (order, distinct)
}

#[cfg(test)]
mod tests {
    use super::*;
    use paysync_domain::Mode;
    use paysync_domain::stripe::StripeVerifier;
    use paysync_domain::stripe::signature::sign_header;

    #[test]
    fn every_event_is_distinct_valid_and_accepted_by_a_test_mode_verifier() {
        let factory = EventFactory::new("t1", 10).unwrap();
        let verifier = StripeVerifier::new(vec!["whsec_x".into()], Mode::Test, 300);
        let mut ids = std::collections::HashSet::new();
        let mut types = std::collections::HashSet::new();
        for i in 0..500 {
            let body = factory.event(i);
            let header = sign_header("whsec_x", 1000, &body);
            let hook = verifier
                .verify(Some(&header), body.clone().into(), 1000, 0)
                .unwrap();
            assert_eq!(hook.meta().event_id, factory.event_id(i));
            assert_eq!(hook.meta().event_type, factory.event_type(i));
            assert!(ids.insert(hook.meta().event_id.clone()));
            types.insert(hook.meta().event_type.clone());
            let text = std::str::from_utf8(&body).unwrap();
            let changes =
                paysync_domain::billing::stripe::changes_of_body(factory.event_type(i), text)
                    .expect("billing");
            if let Some(c) = &changes.customer {
                assert!(c.starts_with("cus_bench"), "{c}");
            }
            assert!(changes.account_hint.is_none());
            for snap in &changes.snaps {
                assert!(
                    snap.id.contains("t1x"),
                    "{} in {}",
                    snap.id,
                    factory.event_type(i)
                );
            }
        }
        assert_eq!(types.len(), FIXTURES.len());
    }

    #[test]
    fn one_in_twenty_deliveries_repeats_an_earlier_event() {
        let (order, distinct) = with_duplicates(1000);
        assert_eq!(order.len(), 1000);
        assert_eq!(distinct, 950);
        let mut seen = std::collections::HashSet::new();
        for i in order {
            if !seen.insert(i) {
                continue;
            }
            assert!(i < distinct);
        }
        assert_eq!(seen.len(), 950);
    }
}
