//! The worker: consumes the work queue with manual acks and applies each event exactly once
//! in effect; retries transient failures through the broker's delay levels with exponential
//! backoff and jitter; sends permanent failures and exhausted retries to the dead-letter
//! queue, which it also drains into PostgreSQL for operators.
//!
//! Rule of thumb: commit, then ack. Between the two a crash means a redelivery, which the
//! event log turns into a counted duplicate.

mod admin;
pub mod billing;
mod failure;
mod handler;
mod ingest;
mod metrics;
pub mod ops;
mod process;
mod settings;

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use backon::BackoffBuilder;
use paysync_amqp::{AmqpSettings, ConsumerLink, Incoming, Lane, Publisher};
use paysync_store::Store;
use paysync_telemetry::Shutdown;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub use failure::{Failure, FailureClass, fingerprint};
pub use handler::{Event, Handler, Handlers};
pub use metrics::{OUTCOMES, WorkerMetrics};
pub use process::{AfterCommitHook, Done, apply_event};
pub use settings::{MIN_ADMIN_TOKEN_LEN, Settings, SettingsError};

use process::Processor;

/// A built worker: listener bound, pool and publisher created (both connect lazily).
pub struct App {
    settings: Settings,
    metrics_listener: TcpListener,
    metrics_router: axum::Router,
    processor: Arc<Processor>,
    consuming: Arc<AtomicBool>,
    database_ok: Arc<AtomicBool>,
}

impl App {
    /// Builds the worker with `handlers`, refusing what [`Settings::validate`] refuses. Needs
    /// neither broker nor database to be up.
    pub async fn build(settings: Settings, handlers: Handlers) -> anyhow::Result<Self> {
        settings.validate()?;
        let registry = paysync_telemetry::new_registry("worker");
        let metrics = WorkerMetrics::register(&registry).context("registering metrics")?;
        let store = Store::new(&settings.store).context("database settings")?;
        let publisher = Publisher::new(AmqpSettings {
            connection_name: format!("{}-publisher", settings.amqp.connection_name),
            ..settings.amqp.clone()
        });
        let reconnects = metrics.broker_reconnects.with_label_values(&["publisher"]);
        publisher.set_on_connect(Arc::new(move |generation| {
            if generation > 1 {
                reconnects.inc();
            }
        }));
        let consuming = Arc::new(AtomicBool::new(false));
        let database_ok = Arc::new(AtomicBool::new(false));
        let readiness: paysync_telemetry::Readiness = {
            let consuming = consuming.clone();
            let database_ok = database_ok.clone();
            Arc::new(move || {
                if !database_ok.load(Ordering::Relaxed) {
                    Err("database unreachable")
                } else if !consuming.load(Ordering::Relaxed) {
                    Err("not consuming (broker unreachable)")
                } else {
                    Ok(())
                }
            })
        };
        let mut metrics_router = paysync_telemetry::metrics_router(registry, readiness);
        if let Some(token) = settings.admin_token.clone() {
            metrics_router = metrics_router.merge(admin::router(
                ops::Ops::new(store.clone(), publisher.clone()),
                token,
            ));
        }
        let metrics_listener = TcpListener::bind(settings.metrics_addr)
            .await
            .with_context(|| format!("cannot listen on {} (metrics)", settings.metrics_addr))?;
        let processor = Arc::new(Processor {
            store,
            publisher,
            handlers,
            retry: settings.retry,
            metrics,
            after_commit: None,
            unknown_types: Mutex::new(HashSet::new()),
        });
        Ok(Self {
            settings,
            metrics_listener,
            metrics_router,
            processor,
            consuming,
            database_ok,
        })
    }

    /// Installs a hook run after each commit, before the ack (for crash tests).
    pub fn with_after_commit_hook(mut self, hook: AfterCommitHook) -> Self {
        if let Some(p) = Arc::get_mut(&mut self.processor) {
            p.after_commit = Some(hook);
        }
        self
    }

    /// The metrics/health port.
    pub fn metrics_port(&self) -> u16 {
        self.metrics_listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_default()
    }

    /// The store (for the CLI and tests).
    pub fn store(&self) -> &Store {
        &self.processor.store
    }

    /// Consumes until `shutdown` resolves; then stops consuming, lets in-flight deliveries
    /// finish (up to the grace period) and closes the connections. Unfinished deliveries are
    /// redelivered by the broker.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let stop = Shutdown::on(shutdown);
        let metrics = tokio::spawn(
            axum::serve(self.metrics_listener, self.metrics_router)
                .with_graceful_shutdown(stop.waiter())
                .into_future(),
        );
        let publisher = self.processor.publisher.clone();
        let supervisor = {
            let stopped = stop.waiter();
            let publisher = publisher.clone();
            tokio::spawn(async move { publisher.run_supervisor(stopped).await })
        };
        let health = {
            let store = self.processor.store.clone();
            let ok = self.database_ok.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                loop {
                    let pinged = tokio::time::timeout(DATABASE_PING_EVERY, store.ping()).await;
                    ok.store(matches!(pinged, Ok(Ok(()))), Ordering::Relaxed);
                    tokio::select! {
                        () = stop.wait() => break,
                        () = tokio::time::sleep(DATABASE_PING_EVERY) => {}
                    }
                }
            })
        };
        let monitor = tokio::spawn(monitor(
            self.processor.clone(),
            self.settings.amqp.clone(),
            self.settings.monitor_interval,
            stop.clone(),
        ));
        let topology = self.processor.publisher.topology().clone();
        let settings = Arc::new(self.settings);
        let work = {
            let processor = self.processor.clone();
            consume_loop(
                settings.clone(),
                "worker",
                topology.work_queue(),
                settings.prefetch,
                settings.concurrency,
                settings.batch_size,
                Some(self.consuming.clone()),
                self.processor
                    .metrics
                    .broker_reconnects
                    .with_label_values(&["consumer"]),
                stop.clone(),
                move |batch| {
                    let processor = processor.clone();
                    async move { processor.handle_batch(batch).await }
                },
            )
        };
        let dead = {
            let processor = self.processor.clone();
            consume_loop(
                settings.clone(),
                "dlq-ingester",
                topology.dead_letters(),
                16,
                4,
                1,
                None,
                self.processor
                    .metrics
                    .broker_reconnects
                    .with_label_values(&["ingester"]),
                stop.clone(),
                move |batch: Vec<Incoming>| {
                    let processor = processor.clone();
                    async move {
                        for incoming in batch {
                            ingest::ingest(&processor.store, &processor.metrics, incoming).await;
                        }
                    }
                },
            )
        };
        tokio::join!(work, dead);
        let _ = health.await;
        let _ = monitor.await;
        let _ = supervisor.await;
        let _ = metrics.await;
        publisher.close().await;
        tracing::info!("worker stopped");
        Ok(())
    }
}

/// Consumes `queue` until stopped, reconnecting with backoff after broker outages. The link
/// has `concurrency` lanes (channels with a consumer each, `prefetch` split between them), and
/// each lane runs in its own task, one batch at a time: a batch is the delivery that arrived
/// plus whatever else is already waiting on the lane, up to `max_batch` (never a wait to fill
/// it). After a batch the lane acknowledges it with one `multiple` ack.
#[allow(clippy::too_many_arguments)]
async fn consume_loop<F, Fut>(
    settings: Arc<Settings>,
    role: &'static str,
    queue: String,
    prefetch: u16,
    concurrency: usize,
    max_batch: usize,
    consuming: Option<Arc<AtomicBool>>,
    reconnects: prometheus::IntCounter,
    stop: Shutdown,
    handle: F,
) where
    F: Fn(Vec<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handle = Arc::new(handle);
    let set_consuming = |v: bool| {
        if let Some(flag) = &consuming {
            flag.store(v, Ordering::Relaxed);
        }
    };
    let lanes = concurrency.max(1);
    let per_lane = lane_prefetch(prefetch, lanes);
    let mut backoff = reconnect_backoff();
    let mut opened_before = false;
    loop {
        if stop.fired() {
            break;
        }
        let mut link = match ConsumerLink::open(&settings.amqp, role, &queue, lanes, per_lane).await
        {
            Ok(link) => {
                backoff = reconnect_backoff();
                if opened_before {
                    reconnects.inc();
                }
                opened_before = true;
                tracing::info!(role, queue = %queue, prefetch, lanes, "consuming");
                link
            }
            Err(err) => {
                let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                tracing::warn!(role, error = %err, retry_in_ms = delay.as_millis() as u64, "cannot consume; will reconnect");
                tokio::select! {
                    () = stop.wait() => break,
                    () = tokio::time::sleep(delay) => continue,
                }
            }
        };
        set_consuming(true);
        // One lane that loses its channel or consumer halts the others: the whole link is
        // reopened (their unacked deliveries go back to the queue).
        let (halt_now, halted) = tokio::sync::oneshot::channel::<()>();
        let halt = Shutdown::on(async move {
            let _ = halted.await;
        });
        let mut tasks = JoinSet::new();
        for lane in link.take_lanes() {
            tasks.spawn(run_lane(
                lane,
                role,
                max_batch.max(1),
                handle.clone(),
                stop.clone(),
                halt.clone(),
            ));
        }
        tokio::select! {
            () = stop.wait() => {}
            Some(_) = tasks.join_next() => {}
        }
        // Whatever ended the wait, the other lanes stop too (a stop ends each by itself).
        drop(halt_now);
        set_consuming(false);
        let drained = tokio::time::timeout(settings.shutdown_grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                role,
                left = tasks.len(),
                "grace period over; unfinished deliveries go back to the queue"
            );
            tasks.abort_all();
        }
        // Best effort: the broker returns whatever is unacked when the connection goes.
        if tokio::time::timeout(BROKER_GOODBYE, link.close())
            .await
            .is_err()
        {
            tracing::warn!(
                role,
                "the broker did not confirm closing the connection in time"
            );
        }
    }
}

/// How long a cancel or a connection close may wait for the broker's answer at shutdown.
const BROKER_GOODBYE: Duration = Duration::from_secs(2);

/// The prefetch of each lane: the worker's `prefetch` shared out, at least one delivery.
fn lane_prefetch(prefetch: u16, lanes: usize) -> u16 {
    let lanes = u16::try_from(lanes.max(1)).unwrap_or(u16::MAX);
    prefetch.div_ceil(lanes).max(1)
}

/// One lane until it is stopped, halted, or loses its consumer: take a batch, let `handle`
/// settle each delivery, acknowledge the batch.
async fn run_lane<F, Fut>(
    mut lane: Lane,
    role: &'static str,
    max_batch: usize,
    handle: Arc<F>,
    stop: Shutdown,
    halt: Shutdown,
) where
    F: Fn(Vec<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let first = tokio::select! {
            // A stop wins over deliveries already waiting: the lane finishes its batch, never
            // starts another.
            biased;
            () = stop.wait() => {
                let _ = tokio::time::timeout(BROKER_GOODBYE, lane.cancel()).await;
                return;
            }
            () = halt.wait() => return,
            next = lane.next() => next,
        };
        let mut lost = match first {
            Some(Ok(incoming)) => {
                let mut batch = vec![incoming];
                let mut lost = None;
                // What arrived meanwhile joins this batch.
                while batch.len() < max_batch {
                    match lane.next_ready() {
                        Some(Some(Ok(more))) => batch.push(more),
                        Some(other) => {
                            lost = Some(other);
                            break;
                        }
                        None => break,
                    }
                }
                handle(batch).await;
                if let Err(err) = lane.flush().await {
                    tracing::warn!(role, error = %err, "acknowledging a batch failed; the broker redelivers it (deduplicated)");
                }
                lost
            }
            other => Some(other),
        };
        match lost.take() {
            None => {}
            Some(Some(Err(err))) => {
                tracing::warn!(role, error = %err, "consumer connection failed; reconnecting");
                return;
            }
            Some(_) => {
                tracing::warn!(role, "consumer was cancelled by the broker; reconnecting");
                return;
            }
        }
    }
}

/// Refreshes the gauges that are read from outside: queue depths from the broker,
/// dead-letter counts and pool usage from the database.
async fn monitor(processor: Arc<Processor>, amqp: AmqpSettings, every: Duration, stop: Shutdown) {
    let mut broker = paysync_amqp::BrokerMonitor::new(amqp);
    let m = &processor.metrics;
    loop {
        let pool = processor.store.pool_status();
        m.pool_max.set(pool.max_size as i64);
        m.pool_waiting.set(pool.waiting as i64);
        m.pool_connections
            .with_label_values(&["idle"])
            .set(pool.available as i64);
        m.pool_connections
            .with_label_values(&["in_use"])
            .set(pool.size.saturating_sub(pool.available) as i64);
        match broker.depths().await {
            Ok(depths) => {
                for (queue, ready) in depths {
                    m.queue_messages
                        .with_label_values(&[&queue])
                        .set(i64::from(ready));
                }
            }
            Err(err) => tracing::debug!(error = %err, "queue depths unavailable"),
        }
        match processor.store.dead_letter_counts().await {
            Ok(counts) => {
                for state in metrics::DEAD_LETTER_STATES {
                    let n = counts
                        .iter()
                        .find(|(s, _)| s == state)
                        .map_or(0, |(_, n)| *n);
                    m.dead_letters.with_label_values(&[state]).set(n);
                }
            }
            Err(err) => tracing::debug!(error = %err, "dead-letter counts unavailable"),
        }
        if let Ok(n) = processor.store.unlinked_event_count().await {
            m.unlinked.set(n);
        }
        tokio::select! {
            () = stop.wait() => break,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// How often readiness re-checks the database (and how long one check may take).
const DATABASE_PING_EVERY: Duration = Duration::from_secs(2);

fn reconnect_backoff() -> backon::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times()
        .build()
}
