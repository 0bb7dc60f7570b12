//! A worker wired as in production, plus handlers whose behaviour a test scripts.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use paysync_amqp::{AmqpSettings, Publisher};
use paysync_domain::Provider;
use paysync_domain::retry::RetryPolicy;
use paysync_store::{DeadLetterRow, EventRow, Store, Tx};
use paysync_testkit::{
    RunningApp, TestBroker, TestDb, logged_events, open_dead_letters, sample, scrape,
    signature_now, stripe_event, verified_event,
};
use paysync_worker::{App, Event, Failure, Handler, Handlers, Settings};
use secrecy::SecretString;

/// A test retry schedule: 1 s base, doubling, ±20 %.
pub fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        base: Duration::from_secs(1),
        factor: 2.0,
        max_delay: Duration::from_secs(60),
        jitter: 0.2,
        max_attempts,
    }
}

pub fn settings(broker: &TestBroker, db: &TestDb, retry: RetryPolicy) -> Settings {
    Settings {
        metrics_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        retry,
        shutdown_grace: Duration::from_secs(5),
        amqp: broker.settings("worker"),
        store: db.settings(),
        ..Settings::default()
    }
}

/// A running worker: where its metrics and admin API listen, and the guard that stops it.
pub struct Running {
    pub metrics_base: String,
    pub metrics_port: u16,
    app: RunningApp,
}

impl Running {
    /// Stops the worker and asserts it exits cleanly within the testkit's deadline.
    pub async fn stop(self) {
        self.try_stop().await.unwrap();
    }

    /// Stops the worker; how it exited.
    pub async fn try_stop(self) -> anyhow::Result<()> {
        self.app.stop().await
    }

    /// Kills the worker mid-flight, as a crash would: nothing in flight is acked.
    pub async fn abort(self) {
        self.app.abort().await;
    }

    pub async fn scrape(&self) -> String {
        scrape(self.metrics_port).await.unwrap()
    }

    /// `GET <path>` on the metrics/health/admin port, without a token.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        reqwest::get(format!("{}{path}", self.metrics_base))
            .await
            .unwrap()
    }
}

pub async fn spawn(app: App) -> Running {
    let metrics_port = app.metrics_port();
    Running {
        metrics_base: format!("http://127.0.0.1:{metrics_port}"),
        metrics_port,
        app: RunningApp::spawn(|stop| app.run_until_stopped(stop)),
    }
}

pub async fn spawn_worker(
    broker: &TestBroker,
    db: &TestDb,
    retry: RetryPolicy,
    handlers: Handlers,
) -> Running {
    db.store().await.unwrap();
    spawn(
        App::build(settings(broker, db, retry), handlers)
            .await
            .unwrap(),
    )
    .await
}

/// Receiver settings as in production, on random loopback ports, accepting `secret`.
pub fn receiver_settings(secret: &str, amqp: AmqpSettings) -> paysync_receiver::Settings {
    let mut rs = paysync_receiver::Settings::local(vec![SecretString::from(secret.to_owned())]);
    rs.http_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    rs.metrics_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    rs.amqp = amqp;
    rs
}

/// A running receiver in front of the worker, and the guard that stops it.
pub struct Receiver {
    pub url: String,
    pub metrics_base: String,
    pub metrics_port: u16,
    client: reqwest::Client,
    app: RunningApp,
}

impl Receiver {
    /// Posts `body` signed with `secret`, as Stripe would; the status, or 0 when the request
    /// got no answer.
    pub async fn post(&self, body: &[u8], secret: &str) -> u16 {
        match self
            .client
            .post(&self.url)
            .header("Stripe-Signature", signature_now(secret, body))
            .body(body.to_vec())
            .send()
            .await
        {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }

    pub async fn scrape(&self) -> String {
        scrape(self.metrics_port).await.unwrap()
    }

    /// Sends each of `ids` not yet `accepted` again (as `event_type`, signed with `secret`)
    /// until the receiver answers 200, as a provider retries what was refused.
    pub async fn resend_refused(
        &self,
        ids: &[String],
        accepted: &mut HashSet<String>,
        event_type: &str,
        secret: &str,
        deadline: Duration,
    ) {
        for id in ids {
            if accepted.contains(id) {
                continue;
            }
            let body = stripe_event(id, event_type, false);
            paysync_testkit::poll_until(deadline, &format!("a 200 for {id}"), || async {
                (self.post(&body, secret).await == 200).then_some(())
            })
            .await
            .unwrap();
            accepted.insert(id.clone());
        }
    }

    /// Stops the receiver and asserts it exits cleanly.
    pub async fn stop(self) {
        self.app.stop().await.unwrap();
    }
}

pub async fn spawn_receiver(settings: paysync_receiver::Settings) -> Receiver {
    let app = paysync_receiver::App::build(settings).await.unwrap();
    let metrics_port = app.metrics_port();
    Receiver {
        url: format!("http://127.0.0.1:{}/webhooks/stripe", app.port()),
        metrics_base: format!("http://127.0.0.1:{metrics_port}"),
        metrics_port,
        client: reqwest::Client::new(),
        app: RunningApp::spawn(|stop| app.run_until_stopped(stop)),
    }
}

/// Publishes a Stripe-shaped event through our own confirmed publisher, as the receiver does.
pub async fn publish_event(publisher: &Publisher, id: &str, event_type: &str) {
    let hook = verified_event(stripe_event(id, event_type, false));
    publisher.publish(&hook).await.unwrap();
}

pub fn publisher(broker: &TestBroker) -> Publisher {
    Publisher::new(broker.settings("test-publisher"))
}

/// What a scripted handler saw: attempt number and when.
#[derive(Default)]
pub struct Calls {
    pub seen: Mutex<Vec<(String, u32, Instant)>>,
    pub count: AtomicUsize,
}

/// Handler behaviour per attempt.
pub enum Script {
    Succeed,
    /// Fail transiently while the attempt is ≤ n.
    FailTransiently(u32),
    FailPermanently,
    /// Fails permanently at another code site, with another kind (another fingerprint).
    FailPermanentlyElsewhere,
    Panic,
}

pub struct Scripted {
    pub script: Script,
    pub calls: Arc<Calls>,
}

impl Handler for Scripted {
    fn handle<'a>(
        &'a self,
        _tx: &'a Tx<'a>,
        event: &'a Event,
    ) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            self.calls.count.fetch_add(1, Ordering::SeqCst);
            self.calls.seen.lock().unwrap().push((
                event.meta.event_id.clone(),
                event.attempt,
                Instant::now(),
            ));
            match self.script {
                Script::Succeed => Ok(()),
                Script::FailTransiently(n) if event.attempt <= n => Err(Failure::retryable(
                    "test_dependency_down",
                    std::io::Error::other(format!("dependency down at attempt {}", event.attempt)),
                )),
                Script::FailTransiently(_) => Ok(()),
                Script::FailPermanentlyElsewhere => Err(Failure::permanent(
                    "test_missing_reference",
                    std::io::Error::other(format!("unknown reference in {}", event.meta.event_id)),
                )),
                Script::Panic => panic!("handler bug for {}", event.meta.event_id),
                Script::FailPermanently => Err(Failure::permanent(
                    "test_contradiction",
                    std::io::Error::other(format!("contradiction in {}", event.meta.event_id)),
                )),
            }
        })
    }
}

pub fn handlers(event_type: &str, script: Script) -> (Handlers, Arc<Calls>) {
    let calls = Arc::new(Calls::default());
    let mut h = Handlers::new();
    h.register(
        Provider::Stripe,
        event_type,
        Arc::new(Scripted {
            script,
            calls: calls.clone(),
        }),
    );
    (h, calls)
}

/// The billing handler for `customer.updated` (good events that change state) and a scripted
/// handler for each of `scripted`; the calls each scripted handler saw, in the same order.
pub fn billing_and(scripted: Vec<(&str, Script)>) -> (Handlers, Vec<Arc<Calls>>) {
    let mut all = Handlers::new();
    all.register(
        Provider::Stripe,
        "customer.updated",
        Arc::new(paysync_worker::billing::Billing::default()),
    );
    let mut seen = Vec::new();
    for (event_type, script) in scripted {
        let (h, calls) = handlers(event_type, script);
        all.register(
            Provider::Stripe,
            event_type,
            h.get(Provider::Stripe, event_type).unwrap().clone(),
        );
        seen.push(calls);
    }
    (all, seen)
}

/// Polls the event log until `id` is there.
pub async fn logged(db: &TestDb, id: &str) -> EventRow {
    let store = db.store().await.unwrap();
    paysync_testkit::poll_until(
        Duration::from_secs(30),
        &format!("{id} in the event log"),
        || {
            let store = store.clone();
            let id = id.to_owned();
            async move { store.event("stripe", &id).await.unwrap() }
        },
    )
    .await
    .unwrap()
}

/// The value of `paysync_events_processed_total` for a Stripe event type and outcome.
pub fn processed(scrape: &str, event_type: &str, outcome: &str) -> f64 {
    sample(
        scrape,
        "paysync_events_processed_total",
        &[
            ("event_type", event_type),
            ("outcome", outcome),
            ("provider", "stripe"),
        ],
    )
}

/// Everything in the event log and the dead-letter table (up to `limit` rows each).
pub async fn logged_and_dead(store: &Store, limit: i64) -> (Vec<EventRow>, Vec<DeadLetterRow>) {
    (
        logged_events(store, limit).await.unwrap(),
        open_dead_letters(store, limit).await.unwrap(),
    )
}

/// A worker with one scripted handler for `event_type` and `max_attempts` attempts; the calls
/// the handler sees.
pub async fn scripted_worker(
    broker: &TestBroker,
    db: &TestDb,
    event_type: &str,
    script: Script,
    max_attempts: u32,
) -> (Running, Arc<Calls>) {
    let (handlers, calls) = handlers(event_type, script);
    let worker = spawn_worker(broker, db, fast_retry(max_attempts), handlers).await;
    (worker, calls)
}

/// Publishes one event through a publisher of its own.
pub async fn publish_one(broker: &TestBroker, id: &str, event_type: &str) {
    publish_event(&publisher(broker), id, event_type).await;
}

/// Polls until the work queue holds nothing ready: nothing left to loop on.
pub async fn work_queue_drained(broker: &TestBroker) {
    let queue = broker.topology().work_queue();
    paysync_testkit::poll_until(Duration::from_secs(10), "work queue empty", || async {
        (broker.message_count(&queue).await.unwrap() == 0).then_some(())
    })
    .await
    .unwrap();
}

/// How many dead letters the test's schema holds (counted up to `limit`).
pub async fn dead_letter_count(db: &TestDb, limit: i64) -> usize {
    let store = db.store().await.unwrap();
    store.dead_letters(None, limit).await.unwrap().len()
}

/// Whether `id` is in the event log now.
pub async fn is_logged(db: &TestDb, id: &str) -> bool {
    let store = db.store().await.unwrap();
    store.event("stripe", id).await.unwrap().is_some()
}
