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

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use backon::BackoffBuilder;
use futures::FutureExt as _;
use paysync_amqp::{AmqpSettings, ConsumerLink, Incoming, Publisher};
use paysync_domain::retry::RetryPolicy;
use paysync_store::{Store, StoreSettings};
use paysync_telemetry::Shutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

pub use failure::{Failure, FailureClass, fingerprint};
pub use handler::{Event, Handler, Handlers};
pub use metrics::{OUTCOMES, WorkerMetrics};
pub use process::{AfterCommitHook, Done, apply_event};

use process::Processor;

/// Everything the worker needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Metrics and health listener.
    pub metrics_addr: SocketAddr,
    /// Unacked deliveries the broker may push to us at once. It bounds the batches in
    /// flight: concurrency × batch size keeps every connection busy with full batches while
    /// acks travel (RabbitMQ suggests 100-300 for throughput). Each unacked message is held
    /// in memory and redelivered on a crash.
    pub prefetch: u16,
    /// Batches processed at once (a lone delivery is a batch of one). Default: the database
    /// pool size, one transaction per connection; more only queues for a connection.
    pub concurrency: usize,
    /// The most deliveries applied in one transaction. A batch takes whatever has arrived
    /// when a slot frees up, so under light load batches are single deliveries (no added
    /// latency) and under heavy load they fill up. 1 turns batching off.
    pub batch_size: usize,
    /// The retry schedule.
    pub retry: RetryPolicy,
    /// How long shutdown waits for in-flight deliveries before closing (the broker
    /// redelivers whatever was not acked).
    pub shutdown_grace: Duration,
    /// How often queue depths, dead-letter counts and pool usage are refreshed for metrics.
    pub monitor_interval: Duration,
    /// Broker settings.
    pub amqp: AmqpSettings,
    /// Database settings.
    pub store: StoreSettings,
    /// Bearer token of the admin API on the metrics listener; `None` keeps the API off.
    pub admin_token: Option<secrecy::SecretString>,
}

impl Default for Settings {
    fn default() -> Self {
        let store = StoreSettings::default();
        Self {
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9464)),
            prefetch: 256,
            concurrency: store.max_connections,
            batch_size: 32,
            retry: RetryPolicy::default(),
            shutdown_grace: Duration::from_secs(20),
            monitor_interval: Duration::from_secs(15),
            amqp: AmqpSettings::default(),
            store,
            admin_token: None,
        }
    }
}

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
    /// Builds the worker with `handlers`. Needs neither broker nor database to be up.
    pub async fn build(settings: Settings, handlers: Handlers) -> anyhow::Result<Self> {
        settings
            .retry
            .validate()
            .context("retry policy (PAYSYNC_RETRY_*)")?;
        let registry = paysync_telemetry::new_registry("worker");
        let metrics = WorkerMetrics::register(&registry).context("registering metrics")?;
        let store =
            Store::new(&settings.store).context("database settings (PAYSYNC_DATABASE_URL)")?;
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

/// Consumes `queue` until stopped, reconnecting with backoff after broker outages. Deliveries
/// are handed over in batches of up to `max_batch`: a batch is the delivery that arrived plus
/// whatever else is already waiting when a task slot is free (never a wait to fill it). Each
/// batch runs as its own task, at most `concurrency` at once; every delivery is acked on
/// its own.
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
    let mut backoff = reconnect_backoff();
    let mut opened_before = false;
    loop {
        if stop.fired() {
            break;
        }
        let mut link = match ConsumerLink::open(&settings.amqp, role, &queue, prefetch).await {
            Ok(link) => {
                backoff = reconnect_backoff();
                if opened_before {
                    reconnects.inc();
                }
                opened_before = true;
                tracing::info!(role, queue = %queue, prefetch, concurrency, "consuming");
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
        let slots = Arc::new(Semaphore::new(concurrency.max(1)));
        let mut tasks = JoinSet::new();
        loop {
            tokio::select! {
                () = stop.wait() => {
                    link.cancel().await;
                    break;
                }
                next = link.next() => match next {
                    Some(Ok(incoming)) => {
                        // Invariant: the semaphore is never closed.
                        let Ok(permit) = slots.clone().acquire_owned().await else { break };
                        let mut batch = vec![incoming];
                        let mut failed = None;
                        // What arrived while we waited for the slot joins this batch.
                        while batch.len() < max_batch {
                            match link.next().now_or_never() {
                                Some(Some(Ok(more))) => batch.push(more),
                                Some(Some(Err(err))) => {
                                    failed = Some(Some(err));
                                    break;
                                }
                                Some(None) => {
                                    failed = Some(None);
                                    break;
                                }
                                None => break,
                            }
                        }
                        let handle = handle.clone();
                        tasks.spawn(async move {
                            handle(batch).await;
                            drop(permit);
                        });
                        match failed {
                            Some(Some(err)) => {
                                tracing::warn!(role, error = %err, "consumer connection failed; reconnecting");
                                break;
                            }
                            Some(None) => {
                                tracing::warn!(role, "consumer was cancelled by the broker; reconnecting");
                                break;
                            }
                            None => {}
                        }
                    }
                    Some(Err(err)) => {
                        tracing::warn!(role, error = %err, "consumer connection failed; reconnecting");
                        break;
                    }
                    None => {
                        tracing::warn!(role, "consumer was cancelled by the broker; reconnecting");
                        break;
                    }
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
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
        link.close().await;
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
