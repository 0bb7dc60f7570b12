//! Every metric the dispatcher exports, declared in one place (`docs/metrics.md` lists them).

use paysync_domain::outbound::{Destination, Operation};
use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

/// Outcome labels of `paysync_outbox_attempts_total` (a closed set).
pub const OUTCOMES: &[&str] = &[
    "sent",
    "retry",
    "rate_limited",
    "disabled",
    "dead",
    "skipped",
    "expired",
    "lease_lost",
];

/// Reasons of `paysync_outbox_skipped_total`.
pub const SKIP_REASONS: &[&str] = &["no_recipient", "superseded", "not_won"];

/// Breaker states of `paysync_outbox_breaker_state`.
pub const BREAKER_STATES: &[&str] = &[
    "closed",
    "open",
    "half_open",
    "forced_open",
    "forced_closed",
];

/// The dispatcher's metrics.
#[derive(Clone)]
pub struct DispatcherMetrics {
    /// `paysync_outbox_deliveries_pending{destination}`: pending or in flight.
    pub pending: IntGaugeVec,
    /// `paysync_outbox_oldest_pending_age_seconds{destination}`.
    pub oldest_pending: GaugeVec,
    /// `paysync_outbox_attempts_total{destination,operation,outcome}`.
    pub attempts: IntCounterVec,
    /// `paysync_outbox_delivery_latency_seconds{destination}`: intent recorded → sent.
    pub latency: HistogramVec,
    /// `paysync_outbox_attempt_duration_seconds{destination}`.
    pub attempt_duration: HistogramVec,
    /// `paysync_outbox_breaker_state{destination,state}`: 1 for the current state.
    pub breaker_state: IntGaugeVec,
    /// `paysync_outbox_breaker_transitions_total{destination,to}`.
    pub breaker_transitions: IntCounterVec,
    /// `paysync_outbox_paused{destination}`: paused by a rate limit, a quota or an operator.
    pub paused: IntGaugeVec,
    /// `paysync_outbox_rate_limit_pauses_total{destination}`.
    pub rate_limit_pauses: IntCounterVec,
    /// `paysync_outbox_destination_disabled{destination}`.
    pub disabled: IntGaugeVec,
    /// `paysync_outbox_dead_total{destination}` (the fingerprints are in the deliveries:
    /// `paysync outbox list --state dead`).
    pub dead: IntCounterVec,
    /// `paysync_outbox_skipped_total{destination,reason}`.
    pub skipped: IntCounterVec,
    /// `paysync_outbox_expired_total{destination}`.
    pub expired: IntCounterVec,
    /// `paysync_outbox_lease_reclaims_total`: deliveries the reaper took back.
    pub lease_reclaims: IntCounter,
    /// `paysync_outbox_lane_owned{destination}`: this process owns the destination's lane.
    pub lane_owned: IntGaugeVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0,
    86400.0,
];

const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl DispatcherMetrics {
    /// Registers every metric in `registry`, with a zero series for every destination (and
    /// every operation and outcome of it), so dashboards and alerts see them before traffic.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let by_dest =
            |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &["destination"]);
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                &["destination"],
            )
        };
        let m = Self {
            pending: by_dest(
                "paysync_outbox_deliveries_pending",
                "Deliveries pending or in flight.",
            )?,
            oldest_pending: GaugeVec::new(
                Opts::new(
                    "paysync_outbox_oldest_pending_age_seconds",
                    "Age of the oldest pending delivery (0 when none).",
                ),
                &["destination"],
            )?,
            attempts: counter(
                "paysync_outbox_attempts_total",
                "Delivery attempts by destination, operation and outcome.",
                &["destination", "operation", "outcome"],
            )?,
            latency: histogram(
                "paysync_outbox_delivery_latency_seconds",
                "From the intent being recorded to the delivery sent.",
                LATENCY_BUCKETS,
            )?,
            attempt_duration: histogram(
                "paysync_outbox_attempt_duration_seconds",
                "How long one attempt at the destination took.",
                DURATION_BUCKETS,
            )?,
            breaker_state: IntGaugeVec::new(
                Opts::new(
                    "paysync_outbox_breaker_state",
                    "The destination's circuit breaker: 1 for its current state.",
                ),
                &["destination", "state"],
            )?,
            breaker_transitions: counter(
                "paysync_outbox_breaker_transitions_total",
                "Circuit breaker transitions by destination and new state.",
                &["destination", "to"],
            )?,
            paused: by_dest(
                "paysync_outbox_paused",
                "1 while the destination is paused by a rate limit, a quota or an operator.",
            )?,
            rate_limit_pauses: counter(
                "paysync_outbox_rate_limit_pauses_total",
                "429s and quota answers that paused the destination.",
                &["destination"],
            )?,
            disabled: by_dest(
                "paysync_outbox_destination_disabled",
                "1 while an auth or configuration error keeps the destination disabled.",
            )?,
            dead: counter(
                "paysync_outbox_dead_total",
                "Deliveries given up (refused payload or exhausted retries).",
                &["destination"],
            )?,
            skipped: counter(
                "paysync_outbox_skipped_total",
                "Deliveries not sent on purpose, by destination and reason.",
                &["destination", "reason"],
            )?,
            expired: counter(
                "paysync_outbox_expired_total",
                "Deliveries too old to be worth sending.",
                &["destination"],
            )?,
            lease_reclaims: IntCounter::new(
                "paysync_outbox_lease_reclaims_total",
                "Deliveries whose lease expired, returned to pending by the reaper.",
            )?,
            lane_owned: by_dest(
                "paysync_outbox_lane_owned",
                "1 while this process owns the destination's lane.",
            )?,
        };
        registry.register(Box::new(m.pending.clone()))?;
        registry.register(Box::new(m.oldest_pending.clone()))?;
        registry.register(Box::new(m.attempts.clone()))?;
        registry.register(Box::new(m.latency.clone()))?;
        registry.register(Box::new(m.attempt_duration.clone()))?;
        registry.register(Box::new(m.breaker_state.clone()))?;
        registry.register(Box::new(m.breaker_transitions.clone()))?;
        registry.register(Box::new(m.paused.clone()))?;
        registry.register(Box::new(m.rate_limit_pauses.clone()))?;
        registry.register(Box::new(m.disabled.clone()))?;
        registry.register(Box::new(m.dead.clone()))?;
        registry.register(Box::new(m.skipped.clone()))?;
        registry.register(Box::new(m.expired.clone()))?;
        registry.register(Box::new(m.lease_reclaims.clone()))?;
        registry.register(Box::new(m.lane_owned.clone()))?;
        Ok(m)
    }

    /// Creates the zero series of `destination`.
    pub fn touch(&self, destination: Destination) {
        let d = destination.as_str();
        self.pending.with_label_values(&[d]);
        self.oldest_pending.with_label_values(&[d]);
        for op in Operation::ALL
            .into_iter()
            .filter(|o| o.goes_to(destination))
        {
            for outcome in OUTCOMES {
                self.attempts.with_label_values(&[d, op.as_str(), outcome]);
            }
        }
        self.latency.with_label_values(&[d]);
        self.attempt_duration.with_label_values(&[d]);
        self.set_breaker(destination, "closed");
        self.paused.with_label_values(&[d]);
        self.rate_limit_pauses.with_label_values(&[d]);
        self.disabled.with_label_values(&[d]);
        self.expired.with_label_values(&[d]);
        self.dead.with_label_values(&[d]);
        for reason in SKIP_REASONS {
            self.skipped.with_label_values(&[d, reason]);
        }
        self.lane_owned.with_label_values(&[d]);
    }

    /// This process no longer owns `destination`'s lane: its breaker, pause and disable series
    /// go to 0, so only the owner's series say 1 (the alerts take the max over processes).
    pub fn lane_lost(&self, destination: Destination) {
        let d = destination.as_str();
        self.lane_owned.with_label_values(&[d]).set(0);
        self.paused.with_label_values(&[d]).set(0);
        self.disabled.with_label_values(&[d]).set(0);
        for s in BREAKER_STATES {
            self.breaker_state.with_label_values(&[d, s]).set(0);
        }
    }

    /// Sets the breaker state series of `destination`: `state` 1, the others 0.
    pub fn set_breaker(&self, destination: Destination, state: &str) {
        for s in BREAKER_STATES {
            self.breaker_state
                .with_label_values(&[destination.as_str(), s])
                .set(i64::from(*s == state));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_lane_reports_nothing_of_its_destination() {
        let m = DispatcherMetrics::register(&Registry::new()).unwrap();
        let d = Destination::Chat;
        m.lane_owned.with_label_values(&[d.as_str()]).set(1);
        m.paused.with_label_values(&[d.as_str()]).set(1);
        m.disabled.with_label_values(&[d.as_str()]).set(1);
        m.set_breaker(d, "open");
        m.lane_lost(d);
        assert_eq!(m.lane_owned.with_label_values(&[d.as_str()]).get(), 0);
        assert_eq!(m.paused.with_label_values(&[d.as_str()]).get(), 0);
        assert_eq!(m.disabled.with_label_values(&[d.as_str()]).get(), 0);
        for s in BREAKER_STATES {
            assert_eq!(
                m.breaker_state.with_label_values(&[d.as_str(), s]).get(),
                0,
                "{s}"
            );
        }
    }
}
