//! The worker: consumes the work queue with manual acks and applies each event exactly once
//! in effect; retries transient failures through the broker's delay levels with exponential
//! backoff and jitter; sends permanent failures and exhausted retries to the dead-letter
//! queue, which it also drains into PostgreSQL for operators.
//!
//! Rule of thumb: commit, then ack. Between the two a crash means a redelivery, which the
//! event log turns into a counted duplicate.

mod admin;
pub mod billing;
mod console;
pub mod enrich;
mod failure;
mod handler;
mod ingest;
mod metrics;
mod monitor;
pub mod ops;
mod process;
pub mod provider_api;
pub mod reconcile;
mod settings;

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use paysync_amqp::{AmqpSettings, ConsumeLoop, ConsumerConfig, Publisher};
use paysync_store::Store;
use paysync_telemetry::Shutdown;
use tokio::net::TcpListener;

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
    reconcile_sources: SharedSources,
}

/// The event lists a worker reconciles, shared by its scheduler and its admin API.
pub type SharedSources = Arc<std::sync::RwLock<Vec<Arc<dyn reconcile::EventSource>>>>;

impl App {
    /// Builds the worker with `handlers`, refusing what [`Settings::validate`] refuses. Needs
    /// neither broker nor database to be up.
    pub async fn build(settings: Settings, handlers: Handlers) -> anyhow::Result<Self> {
        settings.validate()?;
        let registry = paysync_telemetry::new_registry("worker");
        let metrics = WorkerMetrics::register(&registry).context("registering metrics")?;
        metrics.start_at_zero(&handlers, settings.retry.max_attempts);
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
        let reconcile_sources = SharedSources::default();
        if let Some(token) = settings.admin_token.clone() {
            let ops = ops::Ops::new(store.clone(), publisher.clone());
            let door = admin::ReconcileDoor {
                reconciler: reconcile::Reconciler::new(
                    store.clone(),
                    publisher.clone(),
                    handlers.clone(),
                ),
                sources: reconcile_sources.clone(),
            };
            let console = console::router(console::ConsoleParts {
                ops: ops.clone(),
                token: token.clone(),
                reconcile: door.clone(),
                metrics: metrics.clone(),
            })
            .context("building the console")?;
            metrics_router = metrics_router
                .merge(admin::router(ops, token, door))
                .merge(console);
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
            reconcile_sources,
        })
    }

    /// Installs a hook run after each commit, before the ack (for crash tests).
    pub fn with_after_commit_hook(mut self, hook: AfterCommitHook) -> Self {
        if let Some(p) = Arc::get_mut(&mut self.processor) {
            p.after_commit = Some(hook);
        }
        self
    }

    /// Reconciles these providers' event lists with the event log on the schedule of
    /// [`Settings::reconcile`], one process per provider at a time (docs/reconcile.md).
    pub fn with_reconcile_sources(self, sources: Vec<Arc<dyn reconcile::EventSource>>) -> Self {
        *self
            .reconcile_sources
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = sources;
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
            axum::serve(
                self.metrics_listener,
                // The console limits failed logins per client address.
                self.metrics_router
                    .into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .with_graceful_shutdown(stop.waiter())
            .into_future(),
        );
        let publisher = self.processor.publisher.clone();
        let supervisor = {
            let stopped = stop.waiter();
            let publisher = publisher.clone();
            tokio::spawn(async move { publisher.run_supervisor(stopped).await })
        };
        let health = tokio::spawn(monitor::ping_database(
            self.processor.store.clone(),
            self.database_ok.clone(),
            stop.clone(),
        ));
        let gauges = tokio::spawn(monitor::run(
            self.processor.clone(),
            self.settings.amqp.clone(),
            self.settings.monitor_interval,
            self.settings.kpi_interval,
            stop.clone(),
        ));
        let reconciler = tokio::spawn(reconcile::run_scheduled(
            reconcile::Reconciler::new(
                self.processor.store.clone(),
                self.processor.publisher.clone(),
                self.processor.handlers.clone(),
            ),
            self.reconcile_sources
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
            self.settings.reconcile.clone(),
            self.processor.metrics.clone(),
            stop.clone(),
        ));
        let topology = self.processor.publisher.topology().clone();
        let reconnects = |link: &str| {
            let counter = self
                .processor
                .metrics
                .broker_reconnects
                .with_label_values(&[link]);
            move || counter.inc()
        };
        let work = {
            let processor = self.processor.clone();
            ConsumeLoop::new(
                self.settings.amqp.clone(),
                "worker",
                topology.work_queue(),
                ConsumerConfig {
                    prefetch: self.settings.prefetch,
                    lanes: self.settings.concurrency,
                    max_batch: self.settings.batch_size,
                },
                self.settings.shutdown_grace,
            )
            .report_consuming(self.consuming.clone())
            .on_reopen(reconnects("consumer"))
            .run(stop.waiter(), move |batch| {
                let processor = processor.clone();
                async move { processor.handle_batch(batch).await }
            })
        };
        let dead = {
            let processor = self.processor.clone();
            ConsumeLoop::new(
                self.settings.amqp.clone(),
                "dlq-ingester",
                topology.dead_letters(),
                ingest::CONSUMER,
                self.settings.shutdown_grace,
            )
            .on_reopen(reconnects("ingester"))
            .run(stop.waiter(), move |batch| {
                let processor = processor.clone();
                async move { ingest::ingest_batch(&processor.store, &processor.metrics, batch).await }
            })
        };
        tokio::join!(work, dead);
        let _ = reconciler.await;
        let _ = health.await;
        let _ = gauges.await;
        let _ = supervisor.await;
        let _ = metrics.await;
        publisher.close().await;
        tracing::info!("worker stopped");
        Ok(())
    }
}
