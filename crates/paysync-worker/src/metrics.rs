//! Every metric the worker exports, declared in one place.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

/// Outcome labels of `paysync_events_processed_total` (a closed set).
pub const OUTCOMES: &[&str] = &[
    "applied",
    "duplicate",
    "ignored",
    "retry_scheduled",
    "dead_lettered",
];

/// The worker's metrics.
#[derive(Clone)]
pub struct WorkerMetrics {
    /// `paysync_events_processed_total{provider,event_type,outcome}`; `event_type` is the
    /// type when a handler exists for it, else `other` (bounded cardinality).
    pub processed: IntCounterVec,
    /// `paysync_event_processing_duration_seconds{provider}`: delivery to ack.
    pub duration: HistogramVec,
    /// `paysync_event_lag_seconds{provider}`: received by the receiver → committed.
    pub lag: HistogramVec,
    /// `paysync_retries_scheduled_total{attempt}`: retries by the attempt that failed.
    pub retries: IntCounterVec,
    /// `paysync_dead_letters_ingested_total{kind}`: dead letters stored for operators.
    pub ingested: IntCounterVec,
    /// `paysync_worker_in_flight`: deliveries being processed now.
    pub in_flight: IntGauge,
}

const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Lag spans milliseconds (live traffic) to a day (retries, backlog after an outage).
const LAG_BUCKETS: &[f64] = &[
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    4.0 * 3600.0,
    12.0 * 3600.0,
    24.0 * 3600.0,
];

impl WorkerMetrics {
    /// Declares and registers the metrics in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let processed = IntCounterVec::new(
            Opts::new(
                "paysync_events_processed_total",
                "Deliveries processed, by provider, event type and outcome.",
            ),
            &["provider", "event_type", "outcome"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "paysync_event_processing_duration_seconds",
                "Time from delivery to ack.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["provider"],
        )?;
        let lag = HistogramVec::new(
            HistogramOpts::new(
                "paysync_event_lag_seconds",
                "Time from receipt by the receiver to commit by the worker.",
            )
            .buckets(LAG_BUCKETS.to_vec()),
            &["provider"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new(
                "paysync_retries_scheduled_total",
                "Retries scheduled, by the attempt that failed.",
            ),
            &["attempt"],
        )?;
        let ingested = IntCounterVec::new(
            Opts::new(
                "paysync_dead_letters_ingested_total",
                "Dead letters stored in PostgreSQL, by error kind.",
            ),
            &["kind"],
        )?;
        let in_flight = IntGauge::new(
            "paysync_worker_in_flight",
            "Deliveries being processed now.",
        )?;
        registry.register(Box::new(processed.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(lag.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(ingested.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        for outcome in OUTCOMES {
            processed.with_label_values(&["stripe", "other", outcome]);
        }
        Ok(Self {
            processed,
            duration,
            lag,
            retries,
            ingested,
            in_flight,
        })
    }
}
