//! A worker wired as in production, plus handlers whose behaviour a test scripts.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use paysync_amqp::Publisher;
use paysync_domain::Mode;
use paysync_domain::retry::RetryPolicy;
use paysync_domain::stripe::StripeVerifier;
use paysync_domain::stripe::signature::sign_header;
use paysync_store::{DeadLetterFilter, DeadLetterRow, EventFilter, EventRow, Store, Tx};
use paysync_testkit::{TestBroker, TestDb, now_secs, stripe_event};
use paysync_worker::{App, Event, Failure, Handler, Handlers, Settings};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

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

pub struct Running {
    pub metrics_base: String,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("worker stops within 30 s")
                .unwrap()
                .unwrap();
        }
    }

    pub async fn scrape(&self) -> String {
        reqwest::get(format!("{}/metrics", self.metrics_base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub async fn spawn(app: App) -> Running {
    let metrics_base = format!("http://127.0.0.1:{}", app.metrics_port());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    Running {
        metrics_base,
        stop: Some(stop),
        task: Some(task),
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

/// Publishes a Stripe-shaped event through our own confirmed publisher, as the receiver does.
pub async fn publish_event(publisher: &Publisher, id: &str, event_type: &str) {
    let body = stripe_event(id, event_type, false);
    let verifier = StripeVerifier::new(vec!["whsec_t".into()], Mode::Test, 300);
    let header = sign_header("whsec_t", now_secs(), &body);
    let hook = verifier
        .verify(Some(&header), body.into(), now_secs(), now_secs() * 1000)
        .unwrap();
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
        "customer.updated",
        Arc::new(paysync_worker::billing::Billing),
    );
    let mut seen = Vec::new();
    for (event_type, script) in scripted {
        let (h, calls) = handlers(event_type, script);
        all.register(event_type, h.get(event_type).unwrap().clone());
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

/// The value of a sample line `series value` in a scrape.
pub fn sample(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// Everything in the event log and the dead-letter table (up to `limit` rows each).
pub async fn logged_and_dead(store: &Store, limit: i64) -> (Vec<EventRow>, Vec<DeadLetterRow>) {
    let applied = store
        .events(&EventFilter {
            limit,
            ..Default::default()
        })
        .await
        .unwrap();
    let dead = store
        .dead_letter_list(&DeadLetterFilter {
            limit,
            ..Default::default()
        })
        .await
        .unwrap();
    (applied, dead)
}
