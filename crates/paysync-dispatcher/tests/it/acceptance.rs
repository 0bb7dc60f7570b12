//! The dispatcher end to end: real Stripe-shaped events applied by the worker's handlers to the
//! real PostgreSQL, then delivered by the real senders to the fakes (a real SMTP dialogue, the
//! Slack webhook, the HubSpot endpoints).

use std::collections::BTreeSet;
use std::time::Duration;

use paysync_dispatcher::destinations::chat::ChatSettings;
use paysync_dispatcher::destinations::email::EmailSettings;
use paysync_dispatcher::destinations::hubspot::HubspotSettings;
use paysync_dispatcher::{App, LaneConfig, Lanes, Settings};
use paysync_domain::breaker::BreakerPolicy;
use paysync_domain::outbound::Destination;
use paysync_domain::{EventMeta, Provider};
use paysync_store::{DeliveryFilter, Store};
use paysync_testkit::fakes::Reply;
use paysync_testkit::fakes::hubspot::FakeHubspot;
use paysync_testkit::fakes::slack::FakeSlack;
use paysync_testkit::fakes::smtp::{FakeSmtp, Stage};
use paysync_testkit::{RunningApp, TestDb, poll_until, sample, scrape};
use paysync_worker::{Event, Handlers, apply_event};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::helpers::{fast_lane, settings, states};

const DEADLINE: Duration = Duration::from_secs(60);
const TOKEN: &str = "pat-na1-test-token";

/// The destinations a test turns on.
#[derive(Default)]
struct Fakes {
    smtp: Option<FakeSmtp>,
    slack: Option<FakeSlack>,
    hubspot: Option<FakeHubspot>,
}

impl Fakes {
    async fn all() -> Self {
        Self {
            smtp: Some(FakeSmtp::start().await),
            slack: Some(FakeSlack::start().await),
            hubspot: Some(FakeHubspot::start(TOKEN).await),
        }
    }

    fn smtp(&self) -> &FakeSmtp {
        self.smtp.as_ref().expect("smtp on")
    }

    fn slack(&self) -> &FakeSlack {
        self.slack.as_ref().expect("slack on")
    }

    fn hubspot(&self) -> &FakeHubspot {
        self.hubspot.as_ref().expect("hubspot on")
    }

    /// Dispatcher settings sending to these fakes, with fast lanes.
    fn settings(&self, db: &TestDb, owner: &str) -> Settings {
        Settings {
            email: self.smtp.as_ref().map(|s| {
                let mut e = EmailSettings::new(
                    SecretString::from(s.url()),
                    "Acme Billing <billing@acme.test>",
                );
                e.timeout = Duration::from_secs(2);
                e
            }),
            chat: self
                .slack
                .as_ref()
                .map(|s| ChatSettings::new(SecretString::from(s.webhook_url()))),
            hubspot: self.hubspot.as_ref().map(|h| HubspotSettings {
                api_base: h.api_base(),
                ..HubspotSettings::new(SecretString::from(TOKEN))
            }),
            lanes: Lanes {
                email: fast_lane(Destination::Email),
                chat: fast_lane(Destination::Chat),
                hubspot: fast_lane(Destination::Hubspot),
                app: fast_lane(Destination::App),
            },
            ..settings(db, owner)
        }
    }
}

async fn start(settings: Settings) -> (RunningApp, u16) {
    let app = App::build(settings).await.expect("dispatcher builds");
    let port = app.metrics_port();
    (RunningApp::spawn(|stop| app.run_until_stopped(stop)), port)
}

fn ev(id: &str, t: &str, created: i64, object: Value) -> Value {
    json!({"id": id, "object": "event", "type": t, "created": created, "livemode": false,
           "data": {"object": object}})
}

async fn apply(store: &Store, handlers: &Handlers, body: &Value) {
    let meta = EventMeta {
        provider: Provider::Stripe,
        event_id: body["id"].as_str().expect("id").to_owned(),
        event_type: body["type"].as_str().expect("type").to_owned(),
        created: body["created"].as_i64().expect("created"),
        livemode: false,
        api_version: None,
        received_at_ms: 1_700_000_000_000,
    };
    let event = Event::new(meta, 1, body.to_string(), false);
    apply_event(store, handlers, &event)
        .await
        .unwrap_or_else(|f| panic!("{}: {f:?}", body["id"]));
}

/// Applies every event of `phase` three times, in an order shuffled by `seed`.
async fn apply_shuffled(store: &Store, handlers: &Handlers, phase: &[Value], seed: u64) {
    let mut all: Vec<&Value> = phase.iter().chain(phase).chain(phase).collect();
    // A small deterministic shuffle (Fisher-Yates over a linear congruential sequence).
    let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    for i in (1..all.len()).rev() {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        all.swap(i, (x >> 33) as usize % (i + 1));
    }
    for e in all {
        apply(store, handlers, e).await;
    }
}

/// Waits until no delivery is pending or in flight.
async fn settled(db: &TestDb) -> Vec<(String, i64)> {
    poll_until(DEADLINE, "every delivery settled", || async {
        let s = states(db).await;
        s.iter()
            .all(|(state, _)| state != "pending" && state != "in_flight")
            .then_some(s)
    })
    .await
    .expect("settled")
}

const CUS: &str = "cus_life";
const EMAIL: &str = "buyer@example.com";

fn customer() -> Value {
    json!({"id": CUS, "object": "customer", "email": EMAIL, "name": "Ada Buyer",
           "metadata": {"account_id": "acct-life"}})
}

fn subscription(status: &str, latest: &str) -> Value {
    json!({"id": "sub_life", "object": "subscription", "customer": CUS, "status": status,
           "latest_invoice": latest, "metadata": {"account_id": "acct-life"},
           "items": {"data": [{"price": {"id": "price_pro"}, "current_period_end": 1_800_000_000}]}})
}

fn invoice(id: &str, reason: &str, amount: i64, paid: bool, pi: &str) -> Value {
    json!({"id": id, "object": "invoice", "customer": CUS, "subscription": "sub_life",
           "billing_reason": reason, "amount_due": amount, "amount_paid": if paid { amount } else { 0 },
           "currency": "usd", "payment_intent": pi, "customer_email": EMAIL,
           "customer_name": "Ada Buyer",
           "hosted_invoice_url": format!("https://invoice.stripe.com/i/acct_1/{id}"),
           "lines": {"data": [{"description": "1 × Pro (at $20.00 / month)"}]}})
}

fn intent(id: &str, invoice: &str, amount: i64) -> Value {
    json!({"id": id, "object": "payment_intent", "customer": CUS, "invoice": invoice,
           "amount": amount, "amount_received": amount, "currency": "usd"})
}

/// The subscription's life, one phase per step; each phase is settled before the next.
fn life() -> Vec<Vec<Value>> {
    let checkout = json!({"id": "cs_life", "object": "checkout.session", "customer": CUS,
        "client_reference_id": "acct-life", "mode": "subscription", "payment_status": "paid",
        "status": "complete", "subscription": "sub_life", "amount_total": 2000, "currency": "usd",
        "customer_details": {"email": EMAIL, "name": "Ada Buyer"}});
    let refunded = json!({"id": "ch_life2", "object": "charge", "customer": CUS,
        "payment_intent": "pi_life2", "status": "succeeded", "amount": 2000,
        "amount_captured": 2000, "amount_refunded": 500, "currency": "usd",
        "billing_details": {"email": EMAIL, "name": "Ada Buyer"},
        "receipt_url": "https://pay.stripe.com/receipts/ch_life2",
        "refunds": {"data": [{"id": "re_life", "object": "refund", "amount": 500,
            "currency": "usd", "status": "succeeded", "payment_intent": "pi_life2",
            "charge": "ch_life2"}]}});
    vec![
        // Checkout paid, and its first invoice paid.
        vec![
            ev("evt_l1", "customer.created", 100, customer()),
            ev("evt_l2", "checkout.session.completed", 101, checkout),
            ev(
                "evt_l3",
                "customer.subscription.created",
                101,
                subscription("active", "in_life1"),
            ),
            ev(
                "evt_l4",
                "invoice.paid",
                102,
                invoice("in_life1", "subscription_create", 2000, true, "pi_life1"),
            ),
            ev(
                "evt_l5",
                "payment_intent.succeeded",
                102,
                intent("pi_life1", "in_life1", 2000),
            ),
        ],
        // The renewal fails.
        vec![
            ev(
                "evt_l6",
                "invoice.payment_failed",
                200,
                invoice("in_life2", "subscription_cycle", 2000, false, "pi_life2"),
            ),
            ev(
                "evt_l7",
                "payment_intent.payment_failed",
                200,
                json!({"id": "pi_life2",
                "object": "payment_intent", "customer": CUS, "invoice": "in_life2", "amount": 2000,
                "currency": "usd", "last_payment_error": {"code": "card_declined"}}),
            ),
            ev(
                "evt_l8",
                "customer.subscription.updated",
                201,
                subscription("past_due", "in_life2"),
            ),
        ],
        // Recovered.
        vec![
            ev(
                "evt_l9",
                "invoice.paid",
                300,
                invoice("in_life2", "subscription_cycle", 2000, true, "pi_life2"),
            ),
            ev(
                "evt_l10",
                "payment_intent.succeeded",
                300,
                intent("pi_life2", "in_life2", 2000),
            ),
            ev(
                "evt_l11",
                "customer.subscription.updated",
                301,
                subscription("active", "in_life2"),
            ),
        ],
        // A partial refund.
        vec![ev("evt_l12", "charge.refunded", 400, refunded)],
    ]
}

/// A portal whose admins renamed the stages: `closedwon` now means lost.
fn renamed_portal() -> Value {
    let stage = |id: &str, label: &str, prob: &str, closed: bool| {
        json!({"id": id, "label": label, "displayOrder": 0, "archived": false,
               "metadata": {"isClosed": closed.to_string(), "probability": prob}})
    };
    json!({"results": [{"id": "default", "label": "Sales Pipeline", "displayOrder": 0,
    "archived": false, "stages": [
        stage("appointmentscheduled", "New", "0.2", false),
        stage("12345678", "Won (renamed)", "1.0", true),
        stage("closedwon", "Lost (renamed)", "0.0", true),
    ]}]})
}

#[tokio::test]
async fn a_subscription_life_delivers_each_message_once_whatever_the_duplication_and_order() {
    let db = TestDb::new();
    let store = db.store().await.expect("store");
    let handlers = paysync_worker::billing::handlers();
    let fakes = Fakes::all().await;
    fakes.hubspot().set_pipelines(renamed_portal());
    let mut s = fakes.settings(&db, "life");
    // The events about one payment arrive within moments of each other; an email waits for
    // them (the production default is 10 s), so it shows the invoice's address and link
    // whichever event came first.
    s.lanes.email.hold = Duration::from_secs(3);
    let (app, _) = start(s).await;
    for (i, phase) in life().iter().enumerate() {
        apply_shuffled(&store, &handlers, phase, i as u64 + 7).await;
        settled(&db).await;
    }
    let mails = fakes.smtp().messages();
    let subjects: Vec<String> = mails
        .iter()
        .map(|m| m.header("Subject").unwrap_or_default())
        .collect();
    assert_eq!(mails.len(), 4, "{subjects:?}");
    assert!(
        mails.iter().all(|m| m.to == [EMAIL]),
        "every email to the customer"
    );
    let receipts: Vec<_> = mails
        .iter()
        .filter(|m| {
            m.header("Subject")
                .is_some_and(|s| s.starts_with("Receipt"))
        })
        .collect();
    assert_eq!(
        receipts.len(),
        2,
        "one receipt per successful payment: {subjects:?}"
    );
    assert!(receipts.iter().all(|m| m.text().contains("$20.00")));
    assert!(
        receipts[0]
            .text()
            .contains("https://invoice.stripe.com/i/acct_1/in_life1")
    );
    let failed: Vec<_> = mails
        .iter()
        .filter(|m| m.text().contains("could not collect"))
        .collect();
    assert_eq!(failed.len(), 1, "one payment-failed email: {subjects:?}");
    let refunds: Vec<_> = mails
        .iter()
        .filter(|m| m.text().contains("refunded"))
        .collect();
    assert_eq!(refunds.len(), 1);
    assert!(refunds[0].text().contains("$5.00"));
    let ids: BTreeSet<_> = mails.iter().filter_map(|m| m.message_id()).collect();
    assert_eq!(ids.len(), 4, "one Message-ID each");
    // Team chat: the new customer once, and the won account's failed payment.
    let chat = fakes.slack().delivered();
    let texts: Vec<String> = chat
        .iter()
        .map(|b| b["text"].as_str().unwrap_or("").to_owned())
        .collect();
    let new_customer = texts
        .iter()
        .filter(|t| t.to_lowercase().contains("new customer"))
        .count();
    assert_eq!(new_customer, 1, "{texts:?}");
    assert_eq!(chat.len(), 2, "{texts:?}");
    // HubSpot: the deal upserted once, to the stage the portal calls won.
    let hs = fakes.hubspot();
    let deal_upserts: Vec<_> = hs
        .requests()
        .into_iter()
        .filter(|r| r.path == "/crm/v3/objects/deals/batch/upsert" && r.status == 200)
        .collect();
    assert_eq!(deal_upserts.len(), 1);
    let deals = hs.objects("deals");
    assert_eq!(deals.len(), 1);
    assert_eq!(deals[0].properties["dealstage"], "12345678");
    let tasks = hs.objects("tasks");
    assert_eq!(
        tasks.len(),
        1,
        "one follow-up for the failed renewal: {tasks:?}"
    );
    assert!(
        !hs.associations().is_empty(),
        "the deal is linked to its contact"
    );
    let s = states(&db).await;
    assert!(s.iter().all(|(state, _)| state == "sent"), "{s:?}");
    app.stop().await.expect("stops");
}

#[tokio::test]
async fn a_payment_failed_email_for_an_invoice_paid_since_is_skipped_as_superseded() {
    let db = TestDb::new();
    let store = db.store().await.expect("store");
    let handlers = paysync_worker::billing::handlers();
    let fakes = Fakes {
        smtp: Some(FakeSmtp::start().await),
        ..Fakes::default()
    };
    // Register the destination first, so the worker records its deliveries.
    store
        .register_destinations(&["email"], "test")
        .await
        .expect("register");
    for e in [
        ev("evt_s1", "customer.created", 100, customer()),
        ev(
            "evt_s2",
            "invoice.payment_failed",
            101,
            invoice("in_s", "subscription_cycle", 2000, false, "pi_s"),
        ),
        ev(
            "evt_s3",
            "invoice.paid",
            102,
            invoice("in_s", "subscription_cycle", 2000, true, "pi_s"),
        ),
    ] {
        apply(&store, &handlers, &e).await;
    }
    let (app, port) = start(fakes.settings(&db, "superseded")).await;
    settled(&db).await;
    let skipped = store
        .deliveries(&DeliveryFilter {
            state: Some("skipped".into()),
            ..DeliveryFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].operation, "email.payment_failed");
    assert_eq!(skipped[0].reason.as_deref(), Some("superseded"));
    let mails = fakes.smtp().messages();
    assert_eq!(mails.len(), 1, "only the receipt");
    assert!(
        mails[0]
            .header("Subject")
            .is_some_and(|s| s.starts_with("Receipt"))
    );
    let text = scrape(port).await.expect("scrape");
    assert_eq!(
        sample(
            &text,
            "paysync_outbox_skipped_total",
            &[("destination", "email"), ("reason", "superseded")]
        ),
        1.0
    );
    app.stop().await.expect("stops");
}

/// `n` churned subscriptions: `n` chat notifications due.
async fn churns(store: &Store, handlers: &Handlers, n: usize) {
    for i in 0..n {
        let sub = json!({"id": format!("sub_c{i}"), "object": "subscription",
            "customer": format!("cus_c{i}"), "status": "canceled",
            "items": {"data": [{"price": {"id": "price_pro"}}]}});
        apply(
            store,
            handlers,
            &ev(
                &format!("evt_c{i}"),
                "customer.subscription.deleted",
                100,
                sub,
            ),
        )
        .await;
    }
}

#[tokio::test]
async fn an_outage_of_the_chat_opens_the_breaker_and_every_message_arrives_once_after_it() {
    let db = TestDb::new();
    let store = db.store().await.expect("store");
    let handlers = paysync_worker::billing::handlers();
    let fakes = Fakes {
        slack: Some(FakeSlack::start().await),
        ..Fakes::default()
    };
    store
        .register_destinations(&["chat"], "test")
        .await
        .expect("register");
    churns(&store, &handlers, 20).await;
    // Slack answers 503 for 8 s (the acceptance's 30 s, scaled with a 1 s open period).
    let outage = Duration::from_secs(8);
    fakes.slack().script.for_period(
        Reply::Status {
            status: 503,
            body: "service_unavailable".into(),
            retry_after: None,
        },
        outage,
    );
    let mut s = fakes.settings(&db, "outage");
    s.lanes.chat = LaneConfig {
        concurrency: 1,
        breaker: BreakerPolicy {
            consecutive_failures: 3,
            base_open: Duration::from_secs(1),
            max_open: Duration::from_secs(1),
            jitter: 0.0,
            ..BreakerPolicy::default()
        },
        ..fast_lane(Destination::Chat)
    };
    s.lanes.chat.retry.max_attempts = 100;
    let (app, port) = start(s).await;
    let saw_open = std::sync::atomic::AtomicBool::new(false);
    let delivered = poll_until(DEADLINE, "20 chat messages", || async {
        if let Ok(text) = scrape(port).await {
            let open = sample(
                &text,
                "paysync_outbox_breaker_state",
                &[("destination", "chat"), ("state", "open")],
            ) == 1.0;
            if open {
                saw_open.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let d = fakes.slack().delivered();
        (d.len() >= 20).then_some(d)
    })
    .await
    .expect("delivered");
    assert!(
        saw_open.load(std::sync::atomic::Ordering::SeqCst),
        "the breaker metric showed open during the outage"
    );
    let blocks: BTreeSet<String> = delivered
        .iter()
        .map(|b| b["blocks"][0]["block_id"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        (delivered.len(), blocks.len()),
        (20, 20),
        "each message once"
    );
    // During the outage: three failures trip the breaker, then at most one probe per second.
    let failures: Vec<_> = fakes
        .slack()
        .requests()
        .into_iter()
        .filter(|r| r.status == 503)
        .collect();
    for pair in failures.iter().skip(3).collect::<Vec<_>>().windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(900),
            "one probe per open period, got {gap:?}"
        );
    }
    assert!(
        failures.len() <= 3 + outage.as_secs() as usize + 1,
        "{} failures",
        failures.len()
    );
    let s = settled(&db).await;
    assert_eq!(s, [("sent".to_owned(), 20)]);
    app.stop().await.expect("stops");
}

#[tokio::test]
async fn a_429_from_hubspot_pauses_it_without_counting_and_the_backlog_drains_at_the_rate() {
    let db = TestDb::new();
    let store = db.store().await.expect("store");
    let handlers = paysync_worker::billing::handlers();
    let fakes = Fakes {
        hubspot: Some(FakeHubspot::start(TOKEN).await),
        ..Fakes::default()
    };
    store
        .register_destinations(&["hubspot"], "test")
        .await
        .expect("register");
    for i in 0..8 {
        let sub = json!({"id": format!("sub_t{i}"), "object": "subscription", "status": "trialing",
            "trial_end": 1_900_000_000, "items": {"data": [{"price": {"id": "price_pro"}}]}});
        apply(
            &store,
            &handlers,
            &ev(
                &format!("evt_t{i}"),
                "customer.subscription.trial_will_end",
                100,
                sub,
            ),
        )
        .await;
    }
    // The first request after start-up's pipeline read is throttled, with Retry-After: 3.
    let mut s = fakes.settings(&db, "throttled");
    let rate = 5.0;
    s.lanes.hubspot = LaneConfig {
        rate_per_second: rate,
        burst: 1,
        concurrency: 2,
        ..fast_lane(Destination::Hubspot)
    };
    let app = App::build(s).await.expect("builds");
    fakes.hubspot().script.next(
        Reply::Status {
            status: 429,
            body: r#"{"status":"error","message":"You have reached your ten_secondly_rolling limit.","errorType":"RATE_LIMIT","correlationId":"c0ffee00-0000-4000-8000-000000000000","policyName":"TEN_SECONDLY_ROLLING"}"#.into(),
            retry_after: Some(3),
        },
        1,
    );
    let app = RunningApp::spawn(|stop| app.run_until_stopped(stop));
    assert_eq!(settled(&db).await, [("sent".to_owned(), 8)]);
    let reqs: Vec<_> = fakes
        .hubspot()
        .requests()
        .into_iter()
        .filter(|r| r.path != "/crm/v3/pipelines/deals")
        .collect();
    let throttled = reqs.iter().position(|r| r.status == 429).expect("a 429");
    let after = &reqs[throttled + 1..];
    let quiet = after.first().expect("requests after the pause").at - reqs[throttled].at;
    assert!(
        quiet >= Duration::from_secs(3),
        "nothing reached HubSpot during the pause ({quiet:?})"
    );
    // No attempt was counted for the throttled call: every delivery took exactly one.
    let c = db.client().await.expect("client");
    let counted: Vec<i32> = c
        .query("select attempts from outbox_deliveries", &[])
        .await
        .expect("rows")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(counted.iter().all(|a| *a == 1), "{counted:?}");
    // Then at the configured rate, never above it: in any one-second window at most
    // rate + burst requests.
    for (i, r) in after.iter().enumerate() {
        let in_window = after[i..]
            .iter()
            .take_while(|x| x.at - r.at < Duration::from_secs(1))
            .count();
        assert!(
            in_window as f64 <= rate + 1.0,
            "{in_window} requests within a second"
        );
    }
    app.stop().await.expect("stops");
}

#[tokio::test]
async fn a_crash_after_data_resends_with_the_same_message_id_and_the_backlog_ends_terminal() {
    let db = TestDb::new();
    let store = db.store().await.expect("store");
    let handlers = paysync_worker::billing::handlers();
    let fakes = Fakes {
        smtp: Some(FakeSmtp::start().await),
        ..Fakes::default()
    };
    store
        .register_destinations(&["email"], "test")
        .await
        .expect("register");
    apply(
        &store,
        &handlers,
        &ev("evt_k0", "customer.created", 1, customer()),
    )
    .await;
    for i in 0..12 {
        let pi = json!({"id": format!("pi_k{i}"), "object": "payment_intent", "customer": CUS,
            "amount": 1000 + i, "amount_received": 1000 + i, "currency": "eur",
            "receipt_email": EMAIL});
        apply(
            &store,
            &handlers,
            &ev(
                &format!("evt_k{}", i + 1),
                "payment_intent.succeeded",
                10,
                pi,
            ),
        )
        .await;
    }
    // The first message is taken but never acknowledged; the dispatcher dies mid-send.
    fakes.smtp().stall_after_data(1);
    let mut s = fakes.settings(&db, "doomed");
    s.lease = Duration::from_secs(2);
    // One send at a time, so the one in flight at the crash is the stalled one.
    s.lanes.email.concurrency = 1;
    if let Some(e) = s.email.as_mut() {
        e.timeout = Duration::from_secs(600);
    }
    let (doomed, _) = start(s).await;
    fakes.smtp().wait_for(1, DEADLINE).await;
    doomed.abort().await;
    let (survivor, _) = start(fakes.settings(&db, "survivor")).await;
    let s = settled(&db).await;
    assert_eq!(s, [("sent".to_owned(), 12)], "every delivery ended sent");
    let mails = fakes.smtp().messages();
    let mut by_id: std::collections::BTreeMap<String, usize> = Default::default();
    for m in &mails {
        *by_id
            .entry(m.message_id().expect("Message-ID"))
            .or_default() += 1;
    }
    assert_eq!(by_id.len(), 12, "twelve receipts");
    let resent: Vec<_> = by_id.iter().filter(|(_, n)| **n > 1).collect();
    // The stalled one was completed by nobody: it was sent again, under its own Message-ID.
    assert_eq!(resent.len(), 1, "{by_id:?}");
    assert_eq!(*resent[0].1, 2);
    assert_eq!(Some(resent[0].0.clone()), mails[0].message_id());
    assert_eq!(mails.len(), 13);
    survivor.stop().await.expect("stops");
}

#[tokio::test]
async fn an_invalid_payload_is_dead_with_a_fingerprint_and_a_retry_sends_it_once() {
    let db = TestDb::new();
    let store = db.store().await.expect("store");
    let handlers = paysync_worker::billing::handlers();
    let fakes = Fakes {
        slack: Some(FakeSlack::start().await),
        ..Fakes::default()
    };
    store
        .register_destinations(&["chat"], "test")
        .await
        .expect("register");
    churns(&store, &handlers, 1).await;
    fakes.slack().script.next(
        Reply::Status {
            status: 400,
            body: "invalid_payload".into(),
            retry_after: None,
        },
        1,
    );
    let (app, _) = start(fakes.settings(&db, "payload")).await;
    assert_eq!(settled(&db).await, [("dead".to_owned(), 1)]);
    let dead = store
        .deliveries(&DeliveryFilter::default())
        .await
        .expect("list");
    assert_eq!(dead[0].fingerprint.as_deref(), Some("chat:invalid_payload"));
    assert!(fakes.slack().delivered().is_empty());
    // Fixed on the other side: the operator retries the dead ones.
    let retried = store
        .retry_deliveries(
            &DeliveryFilter {
                state: Some("dead".into()),
                ..DeliveryFilter::default()
            },
            1.0,
            false,
        )
        .await
        .expect("retry");
    assert_eq!(retried.len(), 1);
    fakes.slack().wait_for_delivered(1, DEADLINE).await;
    assert_eq!(settled(&db).await, [("sent".to_owned(), 1)]);
    assert_eq!(fakes.slack().delivered().len(), 1, "sent once");
    app.stop().await.expect("stops");
}

#[tokio::test]
async fn slack_no_service_disables_the_chat_until_an_operator_resumes_it() {
    let db = TestDb::new();
    let store = db.store().await.expect("store");
    let handlers = paysync_worker::billing::handlers();
    let fakes = Fakes {
        slack: Some(FakeSlack::start().await),
        ..Fakes::default()
    };
    store
        .register_destinations(&["chat"], "test")
        .await
        .expect("register");
    churns(&store, &handlers, 3).await;
    fakes.slack().script.always(Reply::Status {
        status: 404,
        body: "no_service".into(),
        retry_after: None,
    });
    let mut s = fakes.settings(&db, "disabled");
    s.lanes.chat.concurrency = 1;
    let (app, port) = start(s).await;
    let row = poll_until(DEADLINE, "chat disabled", || async {
        store
            .destination("chat")
            .await
            .ok()
            .flatten()
            .filter(|d| d.disabled_reason.is_some())
    })
    .await
    .expect("disabled");
    assert!(
        row.disabled_reason
            .is_some_and(|r| r.contains("no_service"))
    );
    poll_until(DEADLINE, "the disabled gauge", || async {
        let text = scrape(port).await.ok()?;
        (sample(
            &text,
            "paysync_outbox_destination_disabled",
            &[("destination", "chat")],
        ) == 1.0)
            .then_some(())
    })
    .await
    .expect("gauge");
    let hits = fakes.slack().requests().len();
    assert_eq!(hits, 1, "one refused request, then nothing");
    // Fixed: resumed, everything goes, nothing was burnt.
    fakes.slack().script.normal();
    store
        .resume_destination("chat", "test")
        .await
        .expect("resume");
    assert_eq!(settled(&db).await, [("sent".to_owned(), 3)]);
    app.stop().await.expect("stops");
}

#[tokio::test]
async fn a_rejected_recipient_is_dead_and_the_rest_is_sent() {
    let db = TestDb::new();
    let store = db.store().await.expect("store");
    let handlers = paysync_worker::billing::handlers();
    let fakes = Fakes {
        smtp: Some(FakeSmtp::start().await),
        ..Fakes::default()
    };
    store
        .register_destinations(&["email"], "test")
        .await
        .expect("register");
    for i in 0..2 {
        let pi = json!({"id": format!("pi_r{i}"), "object": "payment_intent", "amount": 700,
            "amount_received": 700, "currency": "usd", "receipt_email": format!("r{i}@example.com")});
        apply(
            &store,
            &handlers,
            &ev(&format!("evt_r{i}"), "payment_intent.succeeded", 5, pi),
        )
        .await;
    }
    // A guest payment without any address: nothing to send to.
    let pi = json!({"id": "pi_nobody", "object": "payment_intent", "amount": 700,
        "amount_received": 700, "currency": "usd"});
    apply(
        &store,
        &handlers,
        &ev("evt_r9", "payment_intent.succeeded", 5, pi),
    )
    .await;
    fakes.smtp().reply_next(
        Stage::Rcpt,
        550,
        "5.1.1 <r0@example.com>: Recipient address rejected: User unknown",
        1,
    );
    let mut s = fakes.settings(&db, "rcpt");
    s.lanes.email.concurrency = 1;
    let (app, _) = start(s).await;
    let s = settled(&db).await;
    assert_eq!(
        s,
        [
            ("dead".to_owned(), 1),
            ("sent".to_owned(), 1),
            ("skipped".to_owned(), 1)
        ]
    );
    let rows = store
        .deliveries(&DeliveryFilter::default())
        .await
        .expect("list");
    let dead = rows.iter().find(|r| r.state == "dead").expect("dead");
    assert_eq!(dead.fingerprint.as_deref(), Some("email:550"));
    let skipped = rows.iter().find(|r| r.state == "skipped").expect("skipped");
    assert_eq!(skipped.reason.as_deref(), Some("no_recipient"));
    assert_eq!(fakes.smtp().messages().len(), 1);
    app.stop().await.expect("stops");
}
