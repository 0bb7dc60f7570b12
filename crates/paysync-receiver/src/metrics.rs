//! Every metric the receiver exports, declared in one place.

use paysync_domain::Provider;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};

/// Outcome labels of `paysync_webhooks_received_total` (a closed set).
pub const OUTCOMES: &[&str] = &[
    "accepted",
    "missing_signature",
    "bad_signature",
    "stale_timestamp",
    "malformed",
    "wrong_mode",
    "bad_cert_url",
    "bad_certificate",
    "cert_expired",
    "bad_algorithm",
    "too_large",
    "bad_request",
    "timeout",
    "unavailable",
];

/// The receiver's metrics.
#[derive(Clone)]
pub struct ReceiverMetrics {
    /// `paysync_webhooks_received_total{provider,outcome}`: requests by how they ended.
    pub received: IntCounterVec,
    /// `paysync_webhook_request_duration_seconds{provider}`: request start to response.
    pub request_duration: HistogramVec,
    /// `paysync_publish_confirm_duration_seconds`: publish start to broker confirm.
    pub confirm_duration: Histogram,
    /// `paysync_broker_reconnects_total{link="publisher"}`: connections re-opened.
    pub broker_reconnects: prometheus::IntCounterVec,
    /// The series every accepted webhook touches, resolved once per provider (in
    /// [`Provider::ALL`] order): a label lookup hashes the values and takes a lock on each call.
    accepted: Vec<IntCounter>,
    /// See `accepted`.
    duration: Vec<Histogram>,
}

/// Buckets from 0.5 ms to 10 s: a confirm takes a few ms; the tail shows broker trouble.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl ReceiverMetrics {
    /// Declares and registers the metrics in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let received = IntCounterVec::new(
            Opts::new(
                "paysync_webhooks_received_total",
                "Webhook requests received, by provider and outcome.",
            ),
            &["provider", "outcome"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "paysync_webhook_request_duration_seconds",
                "Time from request start to response, by provider.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["provider"],
        )?;
        let confirm_duration = Histogram::with_opts(
            HistogramOpts::new(
                "paysync_publish_confirm_duration_seconds",
                "Time from publish start to the broker's confirm.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        registry.register(Box::new(received.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(confirm_duration.clone()))?;
        let broker_reconnects = paysync_telemetry::broker_reconnects(registry)?;
        broker_reconnects.with_label_values(&["publisher"]);
        // Pre-create every series so dashboards see zeros rather than gaps.
        for provider in Provider::ALL {
            for outcome in OUTCOMES {
                received.with_label_values(&[provider.as_str(), outcome]);
            }
        }
        Ok(Self {
            accepted: Provider::ALL
                .iter()
                .map(|p| received.with_label_values(&[p.as_str(), "accepted"]))
                .collect(),
            duration: Provider::ALL
                .iter()
                .map(|p| request_duration.with_label_values(&[p.as_str()]))
                .collect(),
            received,
            request_duration,
            confirm_duration,
            broker_reconnects,
        })
    }
}

impl ReceiverMetrics {
    /// Counts one request of `provider` that ended as `outcome`, taking `secs`.
    pub(crate) fn observe(&self, provider: Provider, outcome: &str, secs: f64) {
        let i = Provider::ALL
            .iter()
            .position(|p| *p == provider)
            .unwrap_or_default();
        if outcome == "accepted" {
            self.accepted[i].inc();
        } else {
            self.received
                .with_label_values(&[provider.as_str(), outcome])
                .inc();
        }
        self.duration[i].observe(secs);
    }
}
