//! Reconciliation against fakes of the providers' event lists: what the receiver never got is
//! found, published once and applied, to the same accounts as a run that received everything;
//! a 429 is waited out; an outage fails the run clearly; the scheduled reconciler runs in one
//! process per provider at a time and counts what it found; a Stripe thin event is completed
//! from the API.

use std::sync::Arc;
use std::time::Duration;

use paysync_amqp::{AmqpSettings, Publisher};
use paysync_domain::billing::account_view;
use paysync_domain::{EventMeta, Mode, Provider};
use paysync_store::{EventFilter, Store};
use paysync_testkit::fakes::Reply;
use paysync_testkit::fakes::provider_api::{
    FakeAuthorizeNetHistory, FakePaypalApi, FakeSquareApi, FakeStripeApi,
};
use paysync_testkit::{TestBroker, TestDb, closed_port, now_secs, poll_until, sample};
use paysync_worker::billing::{self, ProviderApis};
use paysync_worker::reconcile::authorizenet::AuthorizeNetHistory;
use paysync_worker::reconcile::paypal::PaypalApi;
use paysync_worker::reconcile::square::SquareApi;
use paysync_worker::reconcile::stripe::StripeApi;
use paysync_worker::reconcile::{
    ApiSettings, EventSource, ReconcileError, ReconcileSchedule, Reconciler, Report, Window,
};
use paysync_worker::{Event, Handlers, apply_event};
use secrecy::SecretString;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::helpers::*;

const KEY: &str = "sk_test_reconcile_0123456789";
const WHSEC: &str = "whsec_reconcile";

/// Five Stripe events of customer `n` (created from `t`): the customer, a subscription, its
/// update, the invoice and the payment; 12 customers make 60 events.
fn stripe_events(t: i64, customers: usize) -> Vec<Value> {
    let mut out = Vec::new();
    for n in 0..customers {
        let c = format!("cus_r{n}");
        let t = t + (n as i64) * 10;
        let ev = |k: usize, ty: &str, created: i64, object: Value| {
            json!({"id": format!("evt_r{n}_{k}"), "object": "event", "api_version": "2024-06-20",
                   "created": created, "livemode": false, "type": ty, "pending_webhooks": 1,
                   "data": {"object": object}})
        };
        out.push(ev(
            0,
            "customer.created",
            t,
            json!({"id": c, "object": "customer",
            "email": format!("r{n}@example.com"), "name": format!("Customer {n}"),
            "metadata": {"account_id": format!("acct_r{n}")}}),
        ));
        out.push(ev(
            1,
            "customer.subscription.created",
            t + 1,
            json!({"id": format!("sub_r{n}"),
            "object": "subscription", "customer": c, "status": "incomplete",
            "items": {"data": [{"price": {"id": "price_pro"}}]}}),
        ));
        out.push(ev(2, "customer.subscription.updated", t + 2, json!({"id": format!("sub_r{n}"),
            "object": "subscription", "customer": c, "status": "active", "current_period_end": t + 86_400,
            "items": {"data": [{"price": {"id": "price_pro"}}]}})));
        out.push(ev(
            3,
            "invoice.paid",
            t + 3,
            json!({"id": format!("in_r{n}"), "object": "invoice",
            "customer": c, "subscription": format!("sub_r{n}"), "status": "paid",
            "amount_due": 1000 + n as i64, "amount_paid": 1000 + n as i64, "currency": "usd",
            "payment_intent": format!("pi_r{n}")}),
        ));
        out.push(ev(
            4,
            "payment_intent.succeeded",
            t + 4,
            json!({"id": format!("pi_r{n}"),
            "object": "payment_intent", "customer": c, "amount": 1000 + n as i64,
            "amount_received": 1000 + n as i64, "currency": "usd"}),
        ));
    }
    out
}

fn api(base: String, token: &str) -> ApiSettings {
    let mut s = ApiSettings::new(base, SecretString::from(token.to_owned()));
    s.attempts = 2;
    s
}

fn window(since: i64, until: i64) -> Window {
    Window {
        since: OffsetDateTime::from_unix_timestamp(since).unwrap(),
        until: OffsetDateTime::from_unix_timestamp(until).unwrap(),
        types: Vec::new(),
    }
}

/// A publisher that cannot reach any broker: a dry run must never need one.
fn unreachable_publisher(broker: &TestBroker) -> Publisher {
    Publisher::new(AmqpSettings {
        url: format!("amqp://guest:guest@127.0.0.1:{}/%2f", closed_port()),
        ..broker.settings("unreachable")
    })
}

async fn logged(store: &Store) -> usize {
    store
        .events(&EventFilter {
            limit: 10_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .len()
}

async fn wait_logged(store: &Store, n: usize) {
    poll_until(
        Duration::from_secs(60),
        &format!("{n} events logged"),
        || async { (logged(store).await >= n).then_some(()) },
    )
    .await
    .unwrap();
    assert_eq!(logged(store).await, n, "no more than {n} events logged");
}

/// Applies `body` of `provider` as the worker does, in `store`.
async fn apply(store: &Store, handlers: &Handlers, provider: Provider, body: &Value) {
    let envelope =
        paysync_domain::message::parse_envelope(provider, body.to_string().as_bytes()).unwrap();
    let meta: EventMeta = envelope.into_meta(provider, Mode::Test, 1_700_000_000_000);
    let event = Event::new(meta, 1, body.to_string(), false);
    apply_event(store, handlers, &event).await.unwrap();
}

/// Every account's view, without the database's own ids, sorted: comparable across databases.
async fn accounts(store: &Store) -> Vec<String> {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.retain(|k, v| !(k == "id" && v.is_number()) && k != "account_id");
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            // The welcome task's key names the account id.
            Value::String(t) if t.starts_with("account:") => *t = "account:".into(),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for id in store.account_ids(1000).await.unwrap() {
        let mut v = serde_json::to_value(account_view(
            &store.account_facts(id).await.unwrap().unwrap(),
        ))
        .unwrap();
        strip(&mut v);
        out.push(v.to_string());
    }
    out.sort();
    out
}

/// The accounts of a database that received every event of `events` as a webhook.
async fn reference_accounts(provider: Provider, events: &[Value]) -> Vec<String> {
    let db = TestDb::new();
    let store = db.store().await.unwrap();
    let handlers = billing::handlers();
    for e in events {
        apply(&store, &handlers, provider, e).await;
    }
    accounts(&store).await
}

fn counter(scrape: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(scrape, name, labels)
}

#[tokio::test]
async fn stripe_events_the_receiver_never_got_are_published_once_and_applied_like_webhooks() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let store = db.store().await.unwrap();
    let worker = spawn_worker(&broker, &db, fast_retry(3), billing::handlers()).await;
    let receiver = spawn_receiver(receiver_settings(WHSEC, broker.settings("receiver"))).await;
    let t0 = now_secs() - 3600;
    let events = stripe_events(t0, 12);
    assert_eq!(events.len(), 60);
    let fake = FakeStripeApi::start(KEY).await;
    fake.add_events(events.clone());

    // The receiver saw 45 of them, five of those twice.
    let seen: Vec<&Value> = events
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 4 != 1)
        .map(|(_, e)| e)
        .collect();
    assert_eq!(seen.len(), 45);
    for (i, e) in seen.iter().enumerate() {
        let body = e.to_string();
        assert_eq!(receiver.post(body.as_bytes(), WHSEC).await, 200);
        if i % 9 == 0 {
            assert_eq!(receiver.post(body.as_bytes(), WHSEC).await, 200);
        }
    }
    wait_logged(&store, 45).await;

    let source = StripeApi::new(api(fake.base(), KEY), Mode::Test, 50);
    let w = window(t0 - 60, now_secs() + 60);

    // A dry run counts the 15 and publishes nothing (its publisher has no broker to reach).
    let dry = Reconciler::new(
        store.clone(),
        unreachable_publisher(&broker),
        billing::handlers(),
    );
    let report = dry.run(&source, &w, true, &|_| {}).await.unwrap();
    assert_eq!(
        (
            report.pages,
            report.listed,
            report.already_logged,
            report.published,
            report.skipped_total()
        ),
        (2, 60, 45, 15, 0),
        "{report:?}"
    );
    assert_eq!(logged(&store).await, 45);

    // The real run publishes exactly those 15; the worker applies them.
    let reconciler = Reconciler::new(store.clone(), publisher(&broker), billing::handlers());
    let report = reconciler.run(&source, &w, false, &|_| {}).await.unwrap();
    assert_eq!(
        (report.listed, report.already_logged, report.published),
        (60, 45, 15)
    );
    wait_logged(&store, 60).await;
    let scrape = worker.scrape().await;
    assert_eq!(
        counter(
            &scrape,
            "paysync_reconcile_missing_total",
            &[("provider", "stripe")]
        ),
        15.0
    );

    // Run again: nothing new.
    let again = reconciler.run(&source, &w, false, &|_| {}).await.unwrap();
    assert_eq!(
        (again.already_logged, again.published),
        (60, 0),
        "{again:?}"
    );

    // Every listing carried the key, the window and the page size.
    let requests = fake.requests();
    assert!(requests.iter().all(|r| r.status == 200), "{requests:?}");
    assert!(requests[0].params.contains("limit=50"), "{:?}", requests[0]);
    assert!(
        requests[1].params.contains("starting_after=evt_"),
        "{:?}",
        requests[1]
    );

    // The same accounts as a database that received all 60 as webhooks.
    assert_eq!(
        accounts(&store).await,
        reference_accounts(Provider::Stripe, &events).await
    );
    receiver.stop().await;
    worker.stop().await;
}

/// Twelve Square events over 28 days' search: customers, payments and refunds of four buyers.
fn square_events(t0: OffsetDateTime) -> Vec<Value> {
    let at = |s: i64| {
        (t0 + Duration::from_secs(s as u64))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let mut out = Vec::new();
    for n in 0..4i64 {
        let c = format!("SQC_{n}");
        let p = format!("SQP_{n}");
        out.push(json!({"merchant_id": "MLR", "type": "customer.created", "event_id": format!("sq-c-{n}"),
            "created_at": at(n * 10), "data": {"type": "customer", "id": c, "object": {"customer": {
            "id": c, "email_address": format!("s{n}@example.com"), "reference_id": format!("acct_s{n}"),
            "updated_at": at(n * 10)}}}}));
        out.push(json!({"merchant_id": "MLR", "type": "payment.updated", "event_id": format!("sq-p-{n}"),
            "created_at": at(n * 10 + 1), "data": {"type": "payment", "id": p, "object": {"payment": {
            "id": p, "customer_id": c, "status": "COMPLETED", "total_money": {"amount": 2000 + n, "currency": "USD"},
            "updated_at": at(n * 10 + 1), "version": 2}}}}));
        out.push(json!({"merchant_id": "MLR", "type": "refund.updated", "event_id": format!("sq-r-{n}"),
            "created_at": at(n * 10 + 2), "data": {"type": "refund", "id": format!("SQR_{n}"), "object": {"refund": {
            "id": format!("SQR_{n}"), "payment_id": p, "status": "COMPLETED",
            "amount_money": {"amount": 500, "currency": "USD"}, "updated_at": at(n * 10 + 2), "version": 1}}}}));
    }
    out
}

#[tokio::test]
async fn square_events_never_received_are_found_by_search_events_and_applied() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let store = db.store().await.unwrap();
    let handlers = billing::handlers();
    let worker = spawn_worker(&broker, &db, fast_retry(3), handlers.clone()).await;
    let t0 = OffsetDateTime::now_utc() - Duration::from_secs(7200);
    let events = square_events(t0);
    let fake = FakeSquareApi::start("EAAA_square_token").await;
    fake.add_events(events.clone());
    // The webhooks of 8 of the 12 arrived.
    for e in events
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 2)
        .map(|(_, e)| e)
    {
        apply(&store, &handlers, Provider::Square, e).await;
    }
    assert_eq!(logged(&store).await, 8);
    let source = SquareApi::new(api(fake.base(), "EAAA_square_token"), Mode::Test, 10);
    let w = Window {
        since: t0 - Duration::from_secs(60),
        until: OffsetDateTime::now_utc(),
        types: Vec::new(),
    };
    let dry = Reconciler::new(
        store.clone(),
        unreachable_publisher(&broker),
        handlers.clone(),
    );
    let report = dry.run(&source, &w, true, &|_| {}).await.unwrap();
    assert_eq!(
        (
            report.pages,
            report.listed,
            report.already_logged,
            report.published
        ),
        (2, 12, 8, 4),
        "{report:?}"
    );
    let reconciler = Reconciler::new(store.clone(), publisher(&broker), handlers.clone());
    let report = reconciler.run(&source, &w, false, &|_| {}).await.unwrap();
    assert_eq!(report.published, 4);
    wait_logged(&store, 12).await;
    let again = reconciler.run(&source, &w, false, &|_| {}).await.unwrap();
    assert_eq!((again.already_logged, again.published), (12, 0));
    // The search asked for the window, sorted, with the page size; then followed the cursor.
    let requests = fake.requests();
    let first: Value = serde_json::from_str(&requests[0].params).unwrap();
    assert_eq!(first["limit"], 10);
    assert!(first["query"]["filter"]["created_at"]["start_at"].is_string());
    let second: Value = serde_json::from_str(&requests[1].params).unwrap();
    assert_eq!(second["cursor"], "cur-10");
    assert_eq!(
        accounts(&store).await,
        reference_accounts(Provider::Square, &events).await
    );
    worker.stop().await;
}

#[tokio::test]
async fn a_429_mid_listing_is_waited_out_and_nothing_is_missed() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let store = db.store().await.unwrap();
    let fake = Arc::new(FakeStripeApi::start(KEY).await);
    let t0 = now_secs() - 3600;
    fake.add_events(stripe_events(t0, 6));
    let source = StripeApi::new(api(fake.base(), KEY), Mode::Test, 10);
    let reconciler = Reconciler::new(store, unreachable_publisher(&broker), billing::handlers());
    let throttle = fake.clone();
    // After the first page, Stripe says "slow down, come back in 2 s".
    let progress = move |r: &Report| {
        if r.pages == 1 {
            throttle.script().next(FakeStripeApi::rate_limited(2), 1);
        }
    };
    let report = reconciler
        .run(&source, &window(t0 - 60, now_secs() + 60), true, &progress)
        .await
        .unwrap();
    assert_eq!(
        (report.pages, report.listed, report.published),
        (3, 30, 30),
        "{report:?}"
    );
    let requests = fake.requests();
    let statuses: Vec<u16> = requests.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 429, 200, 200]);
    let waited = requests[2].at.duration_since(requests[1].at);
    assert!(
        waited >= Duration::from_secs(2),
        "came back after {waited:?}"
    );
}

#[tokio::test]
async fn a_provider_api_that_is_down_or_refuses_the_key_fails_the_run_clearly() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let store = db.store().await.unwrap();
    let fake = FakeStripeApi::start(KEY).await;
    fake.add_events(stripe_events(now_secs() - 3600, 1));
    let reconciler = Reconciler::new(store, unreachable_publisher(&broker), billing::handlers());
    let w = window(now_secs() - 7200, now_secs());

    fake.script().always(FakeStripeApi::api_error());
    let source = StripeApi::new(api(fake.base(), KEY), Mode::Test, 10);
    let failed = reconciler
        .run(&source, &w, true, &|_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(&failed.cause, ReconcileError::Api(e) if e.retryable()),
        "{failed:?}"
    );
    assert_eq!((failed.report.pages, failed.report.published), (0, 0));
    let text = format!("{failed}");
    assert!(
        text.contains("stripe API unavailable") && text.contains("An unknown error occurred"),
        "{text}"
    );
    assert_eq!(fake.requests().len(), 2, "two attempts, then the run fails");

    fake.script().normal();
    let wrong = "sk_test_wrong_key_0000000";
    let source = StripeApi::new(api(fake.base(), wrong), Mode::Test, 10);
    let failed = reconciler
        .run(&source, &w, true, &|_| {})
        .await
        .unwrap_err();
    let text = format!("{failed}");
    assert!(
        matches!(&failed.cause, ReconcileError::Api(e) if !e.retryable()),
        "{text}"
    );
    assert!(
        text.contains("HTTP 401") && text.contains("Invalid API Key provided"),
        "{text}"
    );
    assert!(!text.contains(wrong), "the key must not appear: {text}");

    // Nothing listening at all.
    let gone = StripeApi::new(
        api(format!("http://127.0.0.1:{}", closed_port()), KEY),
        Mode::Test,
        10,
    );
    let failed = reconciler.run(&gone, &w, true, &|_| {}).await.unwrap_err();
    assert!(failed.cause.retryable(), "{failed}");
}

#[tokio::test]
async fn two_workers_reconcile_one_at_a_time_and_count_what_was_missing() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let store = db.store().await.unwrap();
    let handlers = billing::handlers();
    let t0 = now_secs() - 3600;
    let events = stripe_events(t0, 8);
    // 25 of the 40 arrived as webhooks before.
    for e in events.iter().take(25) {
        apply(&store, &handlers, Provider::Stripe, e).await;
    }
    let fake = Arc::new(FakeStripeApi::start(KEY).await);
    fake.add_events(events);
    // A run (4 pages) takes 2 s and the interval is 1 s: two processes running on their own
    // would each be busy two thirds of the time, so their listings would have to overlap.
    fake.set_delay(Duration::from_millis(500));
    // The API is down at first: the schedule retries.
    fake.script().always(Reply::Status {
        status: 503,
        body: paysync_testkit::fakes::provider_api::stripe_error(
            "api_error",
            "Service unavailable",
        ),
        retry_after: None,
    });
    let mut workers = Vec::new();
    for _ in 0..2 {
        let mut settings = settings(&broker, &db, fast_retry(3));
        settings.reconcile = ReconcileSchedule {
            interval: Duration::from_secs(1),
            lookback: Duration::from_secs(7200),
            settle: Duration::ZERO,
        };
        let source: Arc<dyn EventSource> =
            Arc::new(StripeApi::new(api(fake.base(), KEY), Mode::Test, 10));
        let app = paysync_worker::App::build(settings, handlers.clone())
            .await
            .unwrap()
            .with_reconcile_sources(vec![source]);
        workers.push(spawn(app).await);
    }
    let runs = |outcome: &'static str| {
        let workers = &workers;
        async move {
            let mut n = 0.0;
            for w in workers {
                n += counter(
                    &w.scrape().await,
                    "paysync_reconcile_runs_total",
                    &[("provider", "stripe"), ("outcome", outcome)],
                );
            }
            n
        }
    };
    poll_until(
        Duration::from_secs(60),
        "a failed scheduled run",
        || async { (runs("failed").await >= 1.0).then_some(()) },
    )
    .await
    .unwrap();
    assert_eq!(logged(&store).await, 25);
    fake.script().normal();
    wait_logged(&store, 40).await;
    // Several more rounds, by either process.
    poll_until(Duration::from_secs(60), "three successful runs", || async {
        (runs("ok").await >= 3.0).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(fake.max_in_flight(), 1, "two reconcilers listed at once");
    let mut missing = 0.0;
    for w in &workers {
        let scrape = w.scrape().await;
        missing += counter(
            &scrape,
            "paysync_reconcile_missing_total",
            &[("provider", "stripe")],
        );
        let last = counter(
            &scrape,
            "paysync_reconcile_last_success_timestamp_seconds",
            &[("provider", "stripe")],
        );
        assert!(
            last >= (t0 + 3600 - 120) as f64,
            "every worker reports the last success: {last}"
        );
    }
    assert_eq!(missing, 15.0);
    assert_eq!(logged(&store).await, 40);
    let checkpoint = store.reconcile_checkpoint("stripe").await.unwrap().unwrap();
    assert!(checkpoint.until.unix_timestamp() > t0);
    for w in workers {
        w.stop().await;
    }
}

#[tokio::test]
async fn a_signed_stripe_thin_event_is_accepted_and_applied_from_the_fetched_object() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let store = db.store().await.unwrap();
    let fake = FakeStripeApi::start(KEY).await;
    fake.put_object(
        "/v1/payment_intents/pi_thin",
        json!({"id": "pi_thin", "object": "payment_intent", "customer": "cus_thin",
               "amount": 4200, "amount_received": 4200, "currency": "eur", "status": "succeeded"}),
    );
    fake.put_object(
        "/v1/customers/cus_thin",
        json!({"id": "cus_thin", "object": "customer", "email": "thin@example.com",
               "name": "Thin Customer", "metadata": {"account_id": "acct_thin"}}),
    );
    let stripe: Arc<dyn billing::ObjectSource> =
        Arc::new(StripeApi::new(api(fake.base(), KEY), Mode::Test, 10));
    let handlers = billing::handlers_for(ProviderApis {
        authorizenet: None,
        stripe: Some(stripe),
    });
    let worker = spawn_worker(&broker, &db, fast_retry(3), handlers).await;
    let receiver = spawn_receiver(receiver_settings(WHSEC, broker.settings("receiver"))).await;
    // A connected account's refund, readable only in its context.
    fake.put_object_in(
        "acct_1Connected",
        "/v1/refunds/re_thin",
        json!({"id": "re_thin", "object": "refund", "charge": "ch_thin", "payment_intent": "pi_thin",
               "amount": 200, "currency": "eur", "status": "succeeded"}),
    );
    let thin = |id: &str, ty: &str, url: &str| {
        let context = url.contains("re_thin").then_some("acct_1Connected");
        json!({"id": id, "object": "v2.core.event", "type": ty, "livemode": false,
               "created": "2026-12-05T10:00:00.123Z", "context": context,
               "related_object": {"id": url.rsplit('/').next().unwrap(), "type": "x", "url": url}})
        .to_string()
    };
    // The first fetch meets an outage: the event is retried, not lost.
    fake.script().next(FakeStripeApi::api_error(), 2);
    for body in [
        thin(
            "evt_thin_cus",
            "v1.customer.created",
            "/v1/customers/cus_thin",
        ),
        thin(
            "evt_thin_pi",
            "v1.payment_intent.succeeded",
            "/v1/payment_intents/pi_thin",
        ),
        thin("evt_thin_re", "v1.refund.updated", "/v1/refunds/re_thin"),
    ] {
        assert_eq!(receiver.post(body.as_bytes(), WHSEC).await, 200, "{body}");
    }
    wait_logged(&store, 3).await;
    let rows = store
        .events(&EventFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(rows.iter().all(|r| r.outcome == "applied"), "{rows:?}");
    let ids = store.account_ids(10).await.unwrap();
    assert_eq!(ids.len(), 1);
    let view = serde_json::to_value(account_view(
        &store.account_facts(ids[0]).await.unwrap().unwrap(),
    ))
    .unwrap();
    assert_eq!(view["external_ref"], "acct_thin");
    assert_eq!(view["email"], "thin@example.com");
    assert!(view.to_string().contains("4200"), "{view}");
    // The connected account's refund was read in its context and counts for the payment.
    assert!(
        view.to_string().contains("\"refunded_minor\":200"),
        "{view}"
    );
    assert!(fake.requests().iter().any(|r| r.status == 500));
    receiver.stop().await;
    worker.stop().await;
}

/// Ten PayPal events of five buyers (a capture each, and a refund for three), created from
/// `t0` on.
fn paypal_events(t0: OffsetDateTime) -> Vec<Value> {
    let at = |s: u64| {
        (t0 + Duration::from_secs(s))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let mut out = Vec::new();
    for n in 0..5u64 {
        out.push(json!({"id": format!("WH-CAP-{n}"), "event_version": "1.0", "create_time": at(n * 10),
            "resource_type": "capture", "resource_version": "2.0", "event_type": "PAYMENT.CAPTURE.COMPLETED",
            "summary": "Payment completed", "resource": {"id": format!("CAP{n}"), "status": "COMPLETED",
            "custom_id": format!("acct_p{n}"), "amount": {"currency_code": "USD", "value": format!("{}.00", 10 + n)},
            "update_time": at(n * 10)}, "links": []}));
        if n < 3 {
            out.push(json!({"id": format!("WH-REF-{n}"), "event_version": "1.0", "create_time": at(n * 10 + 5),
                "resource_type": "refund", "resource_version": "2.0", "event_type": "PAYMENT.CAPTURE.REFUNDED",
                "summary": "A refund", "resource": {"id": format!("REF{n}"), "status": "COMPLETED",
                "custom_id": format!("acct_p{n}"), "amount": {"currency_code": "USD", "value": "2.00"},
                "update_time": at(n * 10 + 5),
                "links": [{"rel": "up", "href": format!("https://api-m.paypal.com/v2/payments/captures/CAP{n}")}]}}));
        }
    }
    out.extend((0..2u64).map(|n| {
        json!({"id": format!("WH-X-{n}"), "event_version": "1.0", "create_time": at(60 + n),
            "resource_type": "x", "event_type": "PAYMENT.CAPTURE.COMPLETED", "summary": "",
            "resource": {"id": format!("CAPX{n}"), "status": "COMPLETED", "custom_id": "acct_p0",
            "amount": {"currency_code": "EUR", "value": "1.50"}, "update_time": at(60 + n)}})
    }));
    out
}

#[tokio::test]
async fn paypal_notifications_never_received_are_found_with_an_oauth_token_renewed_once() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let store = db.store().await.unwrap();
    let handlers = billing::handlers();
    let worker = spawn_worker(&broker, &db, fast_retry(3), handlers.clone()).await;
    let t0 = OffsetDateTime::now_utc() - Duration::from_secs(3 * 86_400);
    let events = paypal_events(t0);
    assert_eq!(events.len(), 10);
    let fake = Arc::new(FakePaypalApi::start("AppClientId", "app-secret").await);
    fake.add_events(events.clone());
    // Six of the ten arrived as webhooks.
    for e in events
        .iter()
        .step_by(2)
        .chain(events.iter().skip(1).step_by(4))
    {
        apply(&store, &handlers, Provider::Paypal, e).await;
    }
    let before = logged(&store).await;
    let source = PaypalApi::new(
        api(fake.base(), "unused"),
        SecretString::from("AppClientId".to_owned()),
        SecretString::from("app-secret".to_owned()),
        Mode::Test,
        4,
    );
    let w = Window {
        since: t0 - Duration::from_secs(60),
        until: OffsetDateTime::now_utc(),
        types: Vec::new(),
    };
    let reconciler = Reconciler::new(store.clone(), publisher(&broker), handlers.clone());
    // The token is revoked after the first page: the next listing gets a 401, a new token and
    // goes on.
    let expire = fake.clone();
    let progress = move |r: &Report| {
        if r.pages == 1 {
            expire.expire_tokens();
        }
    };
    let report = reconciler.run(&source, &w, false, &progress).await.unwrap();
    assert_eq!(
        (
            report.pages,
            report.listed,
            report.already_logged,
            report.published
        ),
        (3, 10, before, 10 - before),
        "{report:?}"
    );
    wait_logged(&store, 10).await;
    let requests = fake.requests();
    let tokens = requests
        .iter()
        .filter(|r| r.path == "/v1/oauth2/token")
        .count();
    let refused = requests.iter().filter(|r| r.status == 401).count();
    assert_eq!((tokens, refused), (2, 1), "{requests:?}");
    let again = reconciler.run(&source, &w, false, &|_| {}).await.unwrap();
    assert_eq!((again.already_logged, again.published), (10, 0));
    assert_eq!(
        accounts(&store).await,
        reference_accounts(Provider::Paypal, &events).await
    );

    // Wrong client credentials: PayPal's OAuth error, never the secret.
    let wrong = PaypalApi::new(
        api(fake.base(), "unused"),
        SecretString::from("AppClientId".to_owned()),
        SecretString::from("not-the-secret".to_owned()),
        Mode::Test,
        4,
    );
    let failed = reconciler.run(&wrong, &w, true, &|_| {}).await.unwrap_err();
    let text = failed.to_string();
    assert!(
        text.contains("HTTP 401") && text.contains("invalid_client"),
        "{text}"
    );
    assert!(!text.contains("not-the-secret"), "{text}");
    worker.stop().await;
}

#[tokio::test]
async fn a_broker_or_database_outage_stops_the_run_retryably_with_what_was_confirmed() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let store = db.store().await.unwrap();
    let fake = FakeStripeApi::start(KEY).await;
    fake.add_events(stripe_events(now_secs() - 3600, 2));
    let source = StripeApi::new(api(fake.base(), KEY), Mode::Test, 100);
    let w = window(now_secs() - 7200, now_secs());

    // The broker cannot be reached: nothing is confirmed, so nothing is counted as published.
    let mut amqp = broker.settings("down");
    amqp.url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", closed_port());
    amqp.confirm_timeout = Duration::from_secs(2);
    let reconciler = Reconciler::new(store.clone(), Publisher::new(amqp), billing::handlers());
    let failed = reconciler
        .run(&source, &w, false, &|_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(failed.cause, ReconcileError::Publish(_)),
        "{failed}"
    );
    assert!(failed.cause.retryable());
    assert_eq!((failed.report.listed, failed.report.published), (10, 0));

    // The database cannot be reached: the run stops before publishing anything.
    let mut settings = db.settings();
    settings.url = format!("postgres://postgres@127.0.0.1:{}/paysync", closed_port());
    let unreachable = Store::new(&settings).unwrap();
    let reconciler = Reconciler::new(unreachable, publisher(&broker), billing::handlers());
    let failed = reconciler
        .run(&source, &w, false, &|_| {})
        .await
        .unwrap_err();
    assert!(matches!(failed.cause, ReconcileError::Store(_)), "{failed}");
    assert!(failed.cause.retryable());
    assert_eq!(failed.report.published, 0);
    assert_eq!(
        broker
            .message_count(&broker.topology().work_queue())
            .await
            .unwrap(),
        0
    );
}

/// Eight Authorize.Net notifications: four customer profiles with our reference, and a
/// subscription of each.
fn authorizenet_notifications(t0: OffsetDateTime) -> Vec<Value> {
    let at = |s: u64| {
        (t0 + Duration::from_secs(s))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let mut out = Vec::new();
    for n in 0..4u64 {
        out.push(
            json!({"notificationId": format!("5c3f7e00-1265-4e8e-abd0-a7d73416388{n}"),
            "eventType": "net.authorize.customer.created", "eventDate": at(n * 10),
            "webhookId": "0b90f2e8-02ae-4d1d-b2e0-1bd167e60176",
            "payload": {"merchantCustomerId": format!("acct_a{n}"), "description": "Profile",
                "entityName": "customerProfile", "id": format!("39{n}")}}),
        );
        out.push(
            json!({"notificationId": format!("81c1e1d4-3f6e-4c5b-9d6b-0a1b2c3d4e5{n}"),
            "eventType": "net.authorize.customer.subscription.created", "eventDate": at(n * 10 + 5),
            "webhookId": "0b90f2e8-02ae-4d1d-b2e0-1bd167e60176",
            "payload": {"name": "Pro", "amount": 23.45, "status": "active",
                "profile": {"customerProfileId": 390 + n, "customerPaymentProfileId": 694,
                    "customerShippingAddressId": 0},
                "entityName": "subscription", "id": format!("144{n}")}}),
        );
    }
    out
}

#[tokio::test]
async fn authorizenet_notifications_never_received_are_fetched_whole_from_the_history() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let store = db.store().await.unwrap();
    let handlers = billing::handlers();
    let worker = spawn_worker(&broker, &db, fast_retry(3), handlers.clone()).await;
    let t0 = OffsetDateTime::now_utc() - Duration::from_secs(2 * 86_400);
    let events = authorizenet_notifications(t0);
    let fake = FakeAuthorizeNetHistory::start("5KP3u95bQpv", "346HZ32z3fP4hTG2").await;
    fake.add_events(events.clone());
    // Five of the eight were delivered.
    for e in events.iter().take(5) {
        apply(&store, &handlers, Provider::AuthorizeNet, e).await;
    }
    let source = AuthorizeNetHistory::new(
        api(fake.base(), "unused"),
        SecretString::from("5KP3u95bQpv".to_owned()),
        SecretString::from("346HZ32z3fP4hTG2".to_owned()),
        Mode::Test,
        3,
    );
    let w = Window {
        since: t0 - Duration::from_secs(60),
        until: OffsetDateTime::now_utc(),
        types: Vec::new(),
    };
    let dry = Reconciler::new(
        store.clone(),
        unreachable_publisher(&broker),
        handlers.clone(),
    );
    let report = dry.run(&source, &w, true, &|_| {}).await.unwrap();
    assert_eq!(
        (
            report.pages,
            report.listed,
            report.already_logged,
            report.published
        ),
        (3, 8, 5, 3),
        "{report:?}"
    );
    // A dry run fetches no notification.
    assert!(
        fake.requests()
            .iter()
            .all(|r| r.path == "/rest/v1/notifications")
    );
    let reconciler = Reconciler::new(store.clone(), publisher(&broker), handlers.clone());
    let report = reconciler.run(&source, &w, false, &|_| {}).await.unwrap();
    assert_eq!(report.published, 3, "{report:?}");
    wait_logged(&store, 8).await;
    let fetched: Vec<String> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path != "/rest/v1/notifications")
        .map(|r| r.path)
        .collect();
    assert_eq!(
        fetched.len(),
        3,
        "only the missing ones fetched: {fetched:?}"
    );
    let first = &fake.requests()[0];
    assert!(
        first.params.contains("from_date=") && first.params.contains("limit=3"),
        "{first:?}"
    );
    let again = reconciler.run(&source, &w, false, &|_| {}).await.unwrap();
    assert_eq!((again.already_logged, again.published), (8, 0));
    assert_eq!(
        accounts(&store).await,
        reference_accounts(Provider::AuthorizeNet, &events).await
    );
    // Wrong credentials: the API's own refusal, never the key.
    let wrong = AuthorizeNetHistory::new(
        api(fake.base(), "unused"),
        SecretString::from("5KP3u95bQpv".to_owned()),
        SecretString::from("not-the-transaction-key".to_owned()),
        Mode::Test,
        3,
    );
    let failed = reconciler.run(&wrong, &w, true, &|_| {}).await.unwrap_err();
    let text = failed.to_string();
    assert!(
        text.contains("HTTP 401") && text.contains("credentials are invalid"),
        "{text}"
    );
    assert!(!text.contains("not-the-transaction-key"), "{text}");
    worker.stop().await;
}

#[tokio::test]
async fn the_admin_api_reports_checkpoints_and_runs_a_reconciliation_like_the_cli() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let store = db.store().await.unwrap();
    let fake = FakeStripeApi::start(KEY).await;
    let t0 = now_secs() - 3600;
    fake.add_events(stripe_events(t0, 2));
    let token = "an-admin-token-for-reconcile";
    let mut s = settings(&broker, &db, fast_retry(3));
    s.admin_token = Some(SecretString::from(token.to_owned()));
    // A schedule that never comes round during the test: only the API runs.
    s.reconcile.interval = Duration::from_secs(3600);
    s.reconcile.lookback = Duration::from_secs(60);
    let source: Arc<dyn EventSource> =
        Arc::new(StripeApi::new(api(fake.base(), KEY), Mode::Test, 100));
    let app = paysync_worker::App::build(s, billing::handlers())
        .await
        .unwrap()
        .with_reconcile_sources(vec![source]);
    let worker = spawn(app).await;
    let client = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", worker.metrics_base);
    let post = |body: Value| {
        client
            .post(url("/admin/reconcile"))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let since = OffsetDateTime::from_unix_timestamp(t0 - 60)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();

    let unauthorized = client.get(url("/admin/reconcile")).send().await.unwrap();
    assert_eq!(unauthorized.status(), 401);
    let status: Value = client
        .get(url("/admin/reconcile"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["providers"], json!(["stripe"]), "{status}");

    let dry: Value = post(json!({"provider": "stripe", "since": since, "dry_run": true}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (dry["listed"].as_u64(), dry["published"].as_u64()),
        (Some(10), Some(10)),
        "{dry}"
    );
    let run = post(json!({"provider": "stripe", "since": since}))
        .await
        .unwrap();
    assert_eq!(run.status(), 200);
    wait_logged(&store, 10).await;
    let again: Value = post(json!({"provider": "stripe", "since": since}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            again["already_logged"].as_u64(),
            again["published"].as_u64()
        ),
        (Some(10), Some(0))
    );

    // Refusals: a provider without credentials, a bad time, an API outage.
    let square = post(json!({"provider": "square", "since": since}))
        .await
        .unwrap();
    assert_eq!(square.status(), 404);
    let bad = post(json!({"provider": "stripe", "since": "yesterday"}))
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    fake.script().always(FakeStripeApi::api_error());
    let down = post(json!({"provider": "stripe", "since": since}))
        .await
        .unwrap();
    assert_eq!(down.status(), 503);
    let down: Value = down.json().await.unwrap();
    assert!(
        down["error"]
            .as_str()
            .unwrap()
            .contains("stripe API unavailable"),
        "{down}"
    );

    // Every run is in the audit trail, by the admin API.
    let client_db = db.client().await.unwrap();
    let rows = client_db
        .query(
            &format!(
                "select actor, dry_run, affected from {}.operator_actions where action = 'events.reconcile' order by id",
                db.schema()
            ),
            &[],
        )
        .await
        .unwrap();
    let audit: Vec<(String, bool, i32)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        audit,
        [
            ("admin-api".to_owned(), true, 10),
            ("admin-api".to_owned(), false, 10),
            ("admin-api".to_owned(), false, 0),
            ("admin-api".to_owned(), false, 0)
        ]
    );
    worker.stop().await;
}
