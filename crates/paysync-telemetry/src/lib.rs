//! Tracing setup and the metrics/health listener shared by every paysync process.
//!
//! Rule of thumb: each process owns one [`prometheus::Registry`] (no global registry, so tests
//! running several apps in one binary do not mix their counters) and declares all of its
//! metrics in one struct in its own crate.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{Encoder, IntGaugeVec, Opts, Registry, TextEncoder};
use tokio::net::TcpListener;

/// Log output format (`PAYSYNC_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Installs the global tracing subscriber, writing to stderr. The filter comes from
/// `RUST_LOG` (default `info`, with tokio-postgres notices at `warn`). Safe to call more than once: later calls do nothing.
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tokio_postgres=warn"));
    // Logs go to stderr: stdout belongs to command output (`paysync dlq export > file`).
    // Colours only on a terminal: in a file or a journal the escape codes are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// A fresh registry with `paysync_build_info{version,process}` set to 1.
pub fn new_registry(process: &str) -> Registry {
    let registry = Registry::new();
    // Invariant: the name and labels are static and valid, and the registry is empty.
    let info = IntGaugeVec::new(
        Opts::new("paysync_build_info", "Build information; always 1."),
        &["version", "process"],
    )
    .expect("static metric definition is valid");
    info.with_label_values(&[env!("CARGO_PKG_VERSION"), process])
        .set(1);
    registry
        .register(Box::new(info))
        .expect("a fresh registry has no paysync_build_info yet");
    registry
}

/// Declares and registers `paysync_broker_reconnects_total{link}` (broker connections
/// re-opened after a loss), shared by the receiver and the worker.
pub fn broker_reconnects(registry: &Registry) -> prometheus::Result<prometheus::IntCounterVec> {
    let counter = prometheus::IntCounterVec::new(
        Opts::new(
            "paysync_broker_reconnects_total",
            "Broker connections re-opened after a loss, by link.",
        ),
        &["link"],
    )?;
    registry.register(Box::new(counter.clone()))?;
    Ok(counter)
}

/// A shutdown signal any number of tasks can wait on; it fires once its trigger resolves.
#[derive(Clone, Debug)]
pub struct Shutdown(tokio::sync::watch::Receiver<bool>);

impl Shutdown {
    /// Fires once `trigger` resolves (e.g. a signal, or a test's oneshot).
    pub fn on(trigger: impl std::future::Future<Output = ()> + Send + 'static) -> Self {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            trigger.await;
            let _ = tx.send(true);
        });
        Self(rx)
    }

    /// Resolves once fired (at once if it already has).
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|fired| *fired).await;
    }

    /// An owned future resolving once fired, for APIs that need `'static`.
    pub fn waiter(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let me = self.clone();
        async move { me.wait().await }
    }

    /// Whether it has fired.
    pub fn fired(&self) -> bool {
        *self.0.borrow()
    }
}

/// Readiness probe: returns `Ok(())` when ready, or a short reason.
pub type Readiness = Arc<dyn Fn() -> Result<(), &'static str> + Send + Sync>;

#[derive(Clone)]
struct AdminState {
    registry: Registry,
    readiness: Readiness,
}

/// The routes of the metrics listener: `/metrics`, `/healthz`, `/readyz`.
pub fn metrics_router(registry: Registry, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AdminState {
            registry,
            readiness,
        })
}

/// Binds the metrics listener on `addr` (port 0 picks a free port).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let mut buf = Vec::new();
    match TextEncoder::new().encode(&state.registry.gather(), &mut buf) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                TextEncoder::new().format_type().to_owned(),
            )],
            buf,
        )
            .into_response(),
        Err(err) => {
            tracing::error!(error = %err, "encoding metrics failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// `GET /healthz`: the process is alive and serving.
pub async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AdminState>) -> Response {
    readiness_response(&state.readiness)
}

/// The `/readyz` answer for a readiness probe: 200 `ready`, or 503 with the reason.
pub fn readiness_response(readiness: &Readiness) -> Response {
    match readiness() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}
