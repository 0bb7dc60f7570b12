//! The thin webhook receiver: verify the provider signature over the raw body, publish to
//! RabbitMQ with a confirm, answer.
//!
//! Rule of thumb: the receiver never touches PostgreSQL and never answers 2xx before the
//! broker confirmed. Everything else (dedupe, state) is the worker's job.

mod certs;
mod metrics;
mod routes;
mod serve;
mod settings;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::http::{HeaderValue, StatusCode};
use axum::routing::{get, post};
use paysync_amqp::Publisher;
use paysync_domain::authorizenet::AuthorizeNetVerifier;
use paysync_domain::paypal::PaypalVerifier;
use paysync_domain::paypal::signature::TrustStore;
use paysync_domain::square::SquareVerifier;
use paysync_domain::stripe::StripeVerifier;
use paysync_domain::verify::Verifier;
use paysync_telemetry::{Readiness, Shutdown};
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;
use tower_http::timeout::TimeoutLayer;

pub use metrics::{OUTCOMES, ReceiverMetrics};
pub use settings::{
    AuthorizeNetSettings, DEFAULT_CERT_URL_HOSTS, PaypalSettings, STRIPE_SECRET_PREFIX, Settings,
    SettingsError, SquareSettings, StripeSettings, valid_stripe_secret,
};

use routes::AppState;

/// A built receiver: listeners bound, publisher created (it connects in the background).
pub struct App {
    http: TcpListener,
    metrics: TcpListener,
    router: Router,
    metrics_router: Router,
    publisher: Publisher,
    header_timeout: std::time::Duration,
}

impl App {
    /// Checks the settings ([`Settings::validate`]), binds the listeners and wires the
    /// handlers. Does not need the broker to be up: the receiver starts, answers 503 and
    /// reports not ready until the broker is reachable. A listener that cannot be bound is a
    /// [`ListenError`].
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        settings.validate()?;
        let registry = paysync_telemetry::new_registry("receiver");
        let metrics = ReceiverMetrics::register(&registry).context("registering metrics")?;
        let publisher = Publisher::new(settings.amqp.clone());
        let reconnects = metrics.broker_reconnects.with_label_values(&["publisher"]);
        publisher.set_on_connect(Arc::new(move |generation| {
            if generation > 1 {
                reconnects.inc();
            }
        }));
        let cert_timeout = settings
            .paypal
            .as_ref()
            .map_or(std::time::Duration::from_secs(5), |p| p.cert_timeout);
        let state = Arc::new(AppState {
            verifiers: verifiers(&settings)?,
            certs: certs::CertCache::new(cert_timeout),
            publisher: publisher.clone(),
            metrics,
            body_limit: settings.body_limit,
            request_timeout: settings.request_timeout,
            retry_after: HeaderValue::from(settings.retry_after_secs),
        });
        let router = public_router(state, settings.request_timeout);
        let metrics_router = paysync_telemetry::metrics_router(registry, readiness(&publisher));
        let http = listen(settings.http_addr, "http_addr").await?;
        let metrics = listen(settings.metrics_addr, "metrics_addr").await?;
        Ok(Self {
            http,
            metrics,
            router,
            metrics_router,
            publisher,
            header_timeout: settings.header_timeout,
        })
    }

    /// The public port (useful with port 0).
    pub fn port(&self) -> u16 {
        self.http.local_addr().map(|a| a.port()).unwrap_or_default()
    }

    /// The metrics/health port.
    pub fn metrics_port(&self) -> u16 {
        self.metrics
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_default()
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests finish
    /// (each within the request timeout) and closes the broker connection.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let stop = Shutdown::on(shutdown);
        let supervisor = {
            let publisher = self.publisher.clone();
            let stopped = stop.waiter();
            tokio::spawn(async move { publisher.run_supervisor(stopped).await })
        };
        let metrics = tokio::spawn(
            axum::serve(self.metrics, self.metrics_router)
                .with_graceful_shutdown(stop.waiter())
                .into_future(),
        );
        tracing::info!(
            port = self.http.local_addr().map(|a| a.port()).unwrap_or_default(),
            "receiver listening"
        );
        serve::serve(self.http, self.router, self.header_timeout, stop.waiter()).await;
        let _ = supervisor.await;
        let _ = metrics.await;
        self.publisher.close().await;
        tracing::info!("receiver stopped");
        Ok(())
    }
}

/// A listener of the receiver that could not be bound. The field tells the CLI which variable
/// to name.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({field})")]
pub struct ListenError {
    /// The settings field holding the address: `http_addr` or `metrics_addr`.
    pub field: &'static str,
    /// The address.
    pub addr: std::net::SocketAddr,
    /// Why the bind failed.
    #[source]
    pub source: std::io::Error,
}

async fn listen(
    addr: std::net::SocketAddr,
    field: &'static str,
) -> Result<TcpListener, ListenError> {
    TcpListener::bind(addr).await.map_err(|source| ListenError {
        field,
        addr,
        source,
    })
}

/// The verifiers of the configured providers.
fn verifiers(settings: &Settings) -> Result<Vec<Verifier>, SettingsError> {
    let expose = |keys: &[SecretString]| -> Vec<String> {
        keys.iter().map(|k| k.expose_secret().to_owned()).collect()
    };
    let mut out = Vec::new();
    if let Some(s) = &settings.stripe {
        out.push(Verifier::Stripe(StripeVerifier::new(
            expose(&s.secrets),
            s.mode,
            s.tolerance_secs,
        )));
    }
    if let Some(s) = &settings.square {
        out.push(Verifier::Square(SquareVerifier::new(
            s.notification_url.clone(),
            expose(&s.keys),
            s.mode,
        )));
    }
    if let Some(a) = &settings.authorizenet {
        out.push(Verifier::AuthorizeNet(AuthorizeNetVerifier::new(
            expose(&a.keys),
            a.mode,
        )));
    }
    if let Some(p) = &settings.paypal {
        let mut trust = TrustStore::paypal();
        for root in &p.extra_roots {
            trust
                .add_root_pem(root)
                .map_err(|e| SettingsError::Paypal(format!("extra root: {e}")))?;
        }
        out.push(Verifier::Paypal(PaypalVerifier::new(
            p.webhook_id.clone(),
            p.cert_hosts.clone(),
            trust,
            p.mode,
            p.tolerance_secs,
        )));
    }
    Ok(out)
}

fn readiness(publisher: &Publisher) -> Readiness {
    let publisher = publisher.clone();
    Arc::new(move || {
        if publisher.is_ready() {
            Ok(())
        } else {
            Err("broker unreachable")
        }
    })
}

/// The public routes. The webhook handler keeps its own deadline, so that a 408 is counted
/// like every other answer; the health routes get the same deadline from a layer.
fn public_router(state: Arc<AppState>, request_timeout: std::time::Duration) -> Router {
    let health = Router::new()
        .route("/healthz", get(paysync_telemetry::healthz))
        .route("/readyz", get(routes::readyz))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ));
    Router::new()
        .route("/webhooks/{provider}", post(routes::webhook))
        .merge(health)
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    #[tokio::test]
    async fn build_refuses_settings_the_binary_would_refuse() {
        let mut s = Settings::local(vec![SecretString::from("whsec_unit".to_owned())]);
        s.http_addr = "127.0.0.1:0".parse().unwrap();
        s.metrics_addr = s.http_addr;
        s.amqp.prefix = "bad prefix".into();
        let err = App::build(s.clone())
            .await
            .err()
            .expect("a bad prefix is refused");
        assert_eq!(
            err.downcast_ref::<SettingsError>(),
            Some(&SettingsError::Amqp(
                paysync_amqp::AmqpSettingsError::Prefix
            ))
        );
        s.amqp.prefix = "paysync".into();
        s.stripe.as_mut().unwrap().secrets.clear();
        let err = App::build(s).await.err().expect("no secret is refused");
        assert_eq!(
            err.to_string(),
            "at least one Stripe webhook secret is required"
        );
    }

    #[tokio::test]
    async fn a_listener_that_cannot_be_bound_names_its_field() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut s = Settings::local(vec![SecretString::from("whsec_unit".to_owned())]);
        s.http_addr = "127.0.0.1:0".parse().unwrap();
        s.metrics_addr = taken.local_addr().unwrap();
        let err = App::build(s).await.err().expect("the port is taken");
        let listen = err.downcast_ref::<ListenError>().expect("a ListenError");
        assert_eq!(listen.field, "metrics_addr");
        assert_eq!(listen.addr, taken.local_addr().unwrap());
        assert!(!err.to_string().contains("PAYSYNC_"), "{err}");
    }
}
