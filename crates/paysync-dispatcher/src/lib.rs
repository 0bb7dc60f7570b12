//! The outbox dispatcher: delivers the intents the worker recorded (emails, team chat
//! messages, CRM upserts, the application's signed webhooks) to their destinations, each destination through one lane with a
//! lease per delivery, a circuit breaker, a rate limit and a retry schedule.
//!
//! Rule of thumb: never hold a database transaction across a network call. Claim (one short
//! statement), send, complete (one fenced statement).

pub mod destinations;
pub mod job;
mod lane;
mod metrics;
mod settings;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use paysync_domain::outbound::Destination;
use paysync_store::Store;
use paysync_telemetry::Shutdown;
use tokio::net::TcpListener;

pub use job::{FailureKind, Job, SendError, Sender, Throttle, Verdict};
pub use lane::LaneConfig;
pub use metrics::{BREAKER_STATES, DispatcherMetrics, OUTCOMES};
pub use settings::{Lanes, Settings, SettingsError};

use lane::{Lane, LaneEnv};

/// A built dispatcher: settings checked, destinations connected (HubSpot's stages resolved),
/// metrics listener bound.
pub struct App {
    settings: Settings,
    store: Store,
    metrics: DispatcherMetrics,
    metrics_listener: TcpListener,
    metrics_router: axum::Router,
    senders: Vec<(Arc<dyn Sender>, LaneConfig)>,
    database_ok: Arc<AtomicBool>,
}

impl App {
    /// Builds the dispatcher from `settings`: the configured destinations, each checked.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let senders = settings::senders(&settings).await?;
        Self::with_senders(settings, senders).await
    }

    /// Builds the dispatcher with the given destinations (tests, and destinations not in
    /// [`Settings`]). Registers them as configured, so the worker creates their deliveries.
    pub async fn with_senders(
        settings: Settings,
        senders: Vec<(Arc<dyn Sender>, LaneConfig)>,
    ) -> anyhow::Result<Self> {
        settings.validate()?;
        let registry = paysync_telemetry::new_registry("dispatcher");
        let metrics = DispatcherMetrics::register(&registry).context("registering metrics")?;
        let store = Store::new(&settings.store).context("database settings")?;
        let names: Vec<&str> = senders
            .iter()
            .map(|(s, _)| s.destination().as_str())
            .collect();
        store
            .register_destinations(&names, &settings.owner)
            .await
            .context("registering the configured destinations")?;
        for (s, lane) in &senders {
            metrics.touch(s.destination());
            store
                .set_destination_hold(s.destination().as_str(), lane.hold)
                .await
                .context("setting the destinations' hold")?;
        }
        let database_ok = Arc::new(AtomicBool::new(true));
        let readiness: paysync_telemetry::Readiness = {
            let ok = database_ok.clone();
            Arc::new(move || {
                if ok.load(Ordering::Relaxed) {
                    Ok(())
                } else {
                    Err("database unreachable")
                }
            })
        };
        let metrics_router = paysync_telemetry::metrics_router(registry, readiness);
        let metrics_listener = TcpListener::bind(settings.metrics_addr)
            .await
            .with_context(|| format!("cannot listen on {} (metrics)", settings.metrics_addr))?;
        Ok(Self {
            settings,
            store,
            metrics,
            metrics_listener,
            metrics_router,
            senders,
            database_ok,
        })
    }

    /// The metrics/health port.
    pub fn metrics_port(&self) -> u16 {
        self.metrics_listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_default()
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Delivers until `shutdown` resolves; then lets the attempts in flight finish and stops.
    /// A delivery whose completion did not make it is taken back by the reaper of any
    /// dispatcher once its lease expires.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let stop = Shutdown::on(shutdown);
        let server = axum::serve(self.metrics_listener, self.metrics_router)
            .with_graceful_shutdown(stop.waiter())
            .into_future();
        let env = LaneEnv {
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            owner: self.settings.owner.clone(),
            lease: self.settings.lease,
            poll: self.settings.poll,
        };
        // A set, so that dropping this future (an aborted task) ends every lane with it, as a
        // killed process would: their connections close and their locks go.
        let mut tasks = tokio::task::JoinSet::new();
        for (sender, config) in self.senders {
            let lane = Lane::new(sender, config, env.clone());
            tasks.spawn(lane.run(stop.clone()));
        }
        tasks.spawn(reap(
            self.store.clone(),
            self.metrics.clone(),
            self.settings.reap_every,
            stop.clone(),
        ));
        tasks.spawn(monitor(
            self.store.clone(),
            self.metrics.clone(),
            self.database_ok.clone(),
            self.settings.monitor_interval,
            stop.clone(),
        ));
        tasks.spawn(async move {
            let _ = server.await;
        });
        while tasks.join_next().await.is_some() {}
        tracing::info!("dispatcher stopped");
        Ok(())
    }
}

/// Returns expired leases to pending, every `every`.
async fn reap(store: Store, metrics: DispatcherMetrics, every: Duration, stop: Shutdown) {
    while !stop.fired() {
        match store.reap_expired_leases().await {
            Ok(taken) if !taken.is_empty() => {
                metrics.lease_reclaims.inc_by(taken.len() as u64);
                tracing::warn!(
                    deliveries = taken.len(),
                    "expired leases returned to pending"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "reaper failed"),
        }
        tokio::select! {
            _ = stop.wait() => {}
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Reads the queues into the gauges, every `every`.
async fn monitor(
    store: Store,
    metrics: DispatcherMetrics,
    ok: Arc<AtomicBool>,
    every: Duration,
    stop: Shutdown,
) {
    while !stop.fired() {
        match store.destinations().await {
            Ok(rows) => {
                ok.store(true, Ordering::Relaxed);
                for row in rows {
                    if Destination::parse(&row.name).is_none() {
                        continue;
                    }
                    metrics
                        .pending
                        .with_label_values(&[&row.name])
                        .set(row.pending + row.in_flight);
                    metrics
                        .oldest_pending
                        .with_label_values(&[&row.name])
                        .set(row.oldest_pending_s.unwrap_or(0.0));
                }
            }
            Err(e) => {
                ok.store(false, Ordering::Relaxed);
                tracing::warn!(error = %e, "reading the delivery queues failed");
            }
        }
        tokio::select! {
            _ = stop.wait() => {}
            _ = tokio::time::sleep(every) => {}
        }
    }
}
