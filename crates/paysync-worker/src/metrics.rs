//! Every metric the worker exports, declared in one place.

use std::time::Duration;

use paysync_domain::Provider;
use paysync_store::BusinessKpis;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Outcome labels of `paysync_events_processed_total` (a closed set).
pub const OUTCOMES: &[&str] = &[
    "applied",
    "duplicate",
    "ignored",
    "retry_scheduled",
    "dead_lettered",
];

/// `path` labels of `paysync_event_lag_seconds` (a closed set): `direct` for a webhook's first
/// delivery, `delayed` for one that waited on purpose (a retry, a redrive, a replay, an event
/// found by reconciliation), whose lag says how long ago the provider sent it, not how fast
/// the worker is.
pub const LAG_PATHS: &[&str] = &["direct", "delayed"];

/// The worker's metrics.
#[derive(Clone)]
pub struct WorkerMetrics {
    /// `paysync_events_processed_total{provider,event_type,outcome}`; `event_type` is the
    /// type when a handler exists for it, else `other` (bounded cardinality).
    pub processed: IntCounterVec,
    /// `paysync_event_processing_duration_seconds{provider}`: delivery to ack.
    pub duration: HistogramVec,
    /// `paysync_event_lag_seconds{provider,path}`: received by the receiver → committed.
    pub lag: HistogramVec,
    /// `paysync_retries_scheduled_total{attempt}`: retries by the attempt that failed.
    pub retries: IntCounterVec,
    /// `paysync_dead_letters_ingested_total{kind}`: dead letters stored for operators.
    pub ingested: IntCounterVec,
    /// `paysync_worker_in_flight`: deliveries being processed now.
    pub in_flight: IntGauge,
    /// `paysync_dead_letters{state}`: rows in the dead-letter table (open, retried, archived),
    /// read from PostgreSQL by the monitor.
    pub dead_letters: IntGaugeVec,
    /// `paysync_queue_messages{queue}`: messages ready per queue (`work`, `dead`,
    /// `delay.0`…`delay.14`), read from the broker by the monitor.
    pub queue_messages: IntGaugeVec,
    /// `paysync_queue_depths_read_timestamp_seconds`: when the monitor last read the queue
    /// depths (0 until it has), so an alert can tell a still queue from an unread one.
    pub queue_depths_read: IntGauge,
    /// `paysync_db_pool_connections{state}`: pooled connections `in_use` and `idle`.
    pub pool_connections: IntGaugeVec,
    /// `paysync_db_pool_max_connections`: the pool's size limit.
    pub pool_max: IntGauge,
    /// `paysync_db_pool_waiting`: tasks waiting for a pooled connection.
    pub pool_waiting: IntGauge,
    /// `paysync_db_pool_wait_seconds`: time to get a pooled connection.
    pub pool_wait: Histogram,
    /// `paysync_events_unlinked`: applied events linked to no account (guest payments,
    /// refunds and disputes whose payment is unknown), read from PostgreSQL by the monitor.
    pub unlinked: IntGauge,
    /// `paysync_broker_reconnects_total{link}`: broker connections re-opened after a loss
    /// (`publisher`, `consumer`, `ingester`).
    pub broker_reconnects: IntCounterVec,
    /// `paysync_worker_batch_size`: deliveries applied together in one transaction.
    pub batch_size: Histogram,
    /// `paysync_worker_batch_fallbacks_total`: batch attempts rolled back because an event
    /// failed (halves of a split batch included); their events were applied in halves or one
    /// by one.
    pub batch_fallbacks: IntCounter,
    /// `paysync_reconcile_missing_total{provider}`: events that reached the event log only
    /// through reconciliation (their webhook never arrived), counted by the worker that
    /// applied them.
    pub reconcile_missing: IntCounterVec,
    /// `paysync_reconcile_last_success_timestamp_seconds{provider}`: when the provider's last
    /// complete reconciliation finished (read from the checkpoint, so every worker reports it).
    pub reconcile_last_success: IntGaugeVec,
    /// `paysync_reconcile_runs_total{provider,outcome}`: scheduled runs, `ok` or `failed`.
    pub reconcile_runs: IntCounterVec,
    /// `paysync_business_*`: the business KPIs of the last 24 h and 7 d, read from PostgreSQL
    /// by the monitor.
    pub business: BusinessMetrics,
}

/// The windows of the business KPI gauges: their `window` label and length.
pub const BUSINESS_WINDOWS: [(&str, Duration); 2] = [
    ("24h", Duration::from_secs(24 * 3600)),
    ("7d", Duration::from_secs(7 * 24 * 3600)),
];

/// `outcome` labels of `paysync_business_checkouts`.
pub const CHECKOUT_OUTCOMES: [&str; 3] = ["completed", "expired", "failed"];
/// `outcome` labels of `paysync_business_payments`.
pub const PAYMENT_OUTCOMES: [&str; 2] = ["succeeded", "failed"];
/// `change` labels of `paysync_business_customers`.
pub const CUSTOMER_CHANGES: [&str; 2] = ["new", "churned"];
/// `to` labels of `paysync_business_entitlement_changes`.
pub const ENTITLEMENTS: [&str; 3] = ["granted", "grace", "denied"];

/// The business KPI gauges (definitions in `docs/kpis.md`), each with a `window` label from
/// [`BUSINESS_WINDOWS`]; every label combination exists from the start, at zero.
#[derive(Clone)]
pub struct BusinessMetrics {
    /// `paysync_business_checkouts{outcome,window}`: checkout sessions that ended.
    pub checkouts: IntGaugeVec,
    /// `paysync_business_payments{provider,outcome,window}`: payments that succeeded, and
    /// payments first seen failed.
    pub payments: IntGaugeVec,
    /// `paysync_business_payments_recovered{provider,window}`: payments that succeeded after
    /// a failure.
    pub payments_recovered: IntGaugeVec,
    /// `paysync_business_refunds{provider,window}`: refunds that succeeded.
    pub refunds: IntGaugeVec,
    /// `paysync_business_disputes{provider,window}`: disputes first seen.
    pub disputes: IntGaugeVec,
    /// `paysync_business_customers{change,window}`: new and churned customers.
    pub customers: IntGaugeVec,
    /// `paysync_business_entitlement_changes{to,window}`: entitlement changes by new value.
    pub entitlement_changes: IntGaugeVec,
}

impl BusinessMetrics {
    fn register(registry: &Registry) -> prometheus::Result<Self> {
        let gauge = |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntGaugeVec> {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let m = Self {
            checkouts: gauge(
                "paysync_business_checkouts",
                "Checkout sessions that ended in the window, by outcome (completed, expired, failed).",
                &["outcome", "window"],
            )?,
            payments: gauge(
                "paysync_business_payments",
                "Payments that succeeded, or were first seen failed, in the window.",
                &["provider", "outcome", "window"],
            )?,
            payments_recovered: gauge(
                "paysync_business_payments_recovered",
                "Payments that succeeded in the window after having been seen failed.",
                &["provider", "window"],
            )?,
            refunds: gauge(
                "paysync_business_refunds",
                "Refunds that succeeded in the window.",
                &["provider", "window"],
            )?,
            disputes: gauge(
                "paysync_business_disputes",
                "Disputes first seen in the window.",
                &["provider", "window"],
            )?,
            customers: gauge(
                "paysync_business_customers",
                "Customers won (deal stage closed_won) and churned (entitlement denied after granted or grace) in the window.",
                &["change", "window"],
            )?,
            entitlement_changes: gauge(
                "paysync_business_entitlement_changes",
                "Entitlement changes in the window, by the entitlement they changed to.",
                &["to", "window"],
            )?,
        };
        for (window, _) in BUSINESS_WINDOWS {
            for outcome in CHECKOUT_OUTCOMES {
                m.checkouts.with_label_values(&[outcome, window]);
            }
            for provider in Provider::ALL {
                let p = provider.as_str();
                for outcome in PAYMENT_OUTCOMES {
                    m.payments.with_label_values(&[p, outcome, window]);
                }
                m.payments_recovered.with_label_values(&[p, window]);
                m.refunds.with_label_values(&[p, window]);
                m.disputes.with_label_values(&[p, window]);
            }
            for change in CUSTOMER_CHANGES {
                m.customers.with_label_values(&[change, window]);
            }
            for to in ENTITLEMENTS {
                m.entitlement_changes.with_label_values(&[to, window]);
            }
        }
        Ok(m)
    }

    /// Sets every gauge of `window` (a label of [`BUSINESS_WINDOWS`]) from `k`.
    pub fn set(&self, window: &str, k: &BusinessKpis) {
        let c = &k.checkouts;
        for (outcome, n) in [
            ("completed", c.completed),
            ("expired", c.expired),
            ("failed", c.failed),
        ] {
            self.checkouts.with_label_values(&[outcome, window]).set(n);
        }
        for provider in Provider::ALL {
            let p = k.provider(provider);
            let name = provider.as_str();
            self.payments
                .with_label_values(&[name, "succeeded", window])
                .set(p.payments_succeeded);
            self.payments
                .with_label_values(&[name, "failed", window])
                .set(p.payments_failed);
            self.payments_recovered
                .with_label_values(&[name, window])
                .set(p.payments_recovered);
            self.refunds
                .with_label_values(&[name, window])
                .set(p.refunds);
            self.disputes
                .with_label_values(&[name, window])
                .set(p.disputes);
        }
        self.customers
            .with_label_values(&["new", window])
            .set(k.new_customers);
        self.customers
            .with_label_values(&["churned", window])
            .set(k.churned_customers);
        let e = &k.entitlement_changes;
        for (to, n) in [
            ("granted", e.granted),
            ("grace", e.grace),
            ("denied", e.denied),
        ] {
            self.entitlement_changes
                .with_label_values(&[to, window])
                .set(n);
        }
    }
}

/// States of `paysync_dead_letters`.
pub const DEAD_LETTER_STATES: &[&str] = &["open", "retried", "archived"];

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
    /// Creates at zero the series whose labels the worker's configuration decides: each
    /// registered event type's outcomes and each attempt that can schedule a retry, so that
    /// dashboards and `rate()` alerts see them before the first event or retry.
    pub fn start_at_zero(&self, handlers: &crate::Handlers, max_attempts: u32) {
        for (provider, event_type) in handlers.types() {
            for outcome in OUTCOMES {
                self.processed
                    .with_label_values(&[provider.as_str(), event_type, outcome]);
            }
        }
        for attempt in 1..max_attempts {
            self.retries.with_label_values(&[&attempt.to_string()]);
        }
    }

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
            &["provider", "path"],
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
        let dead_letters = IntGaugeVec::new(
            Opts::new(
                "paysync_dead_letters",
                "Dead letters in PostgreSQL, by state.",
            ),
            &["state"],
        )?;
        let queue_messages = IntGaugeVec::new(
            Opts::new(
                "paysync_queue_messages",
                "Messages ready in each broker queue.",
            ),
            &["queue"],
        )?;
        let pool_connections = IntGaugeVec::new(
            Opts::new(
                "paysync_db_pool_connections",
                "Pooled database connections, by state.",
            ),
            &["state"],
        )?;
        let queue_depths_read = IntGauge::new(
            "paysync_queue_depths_read_timestamp_seconds",
            "When the worker's monitor last read the queue depths, unix seconds (0: not yet).",
        )?;
        registry.register(Box::new(queue_depths_read.clone()))?;
        let pool_max = IntGauge::new(
            "paysync_db_pool_max_connections",
            "Database pool size limit.",
        )?;
        let pool_waiting = IntGauge::new(
            "paysync_db_pool_waiting",
            "Tasks waiting for a pooled database connection.",
        )?;
        let pool_wait = Histogram::with_opts(
            HistogramOpts::new(
                "paysync_db_pool_wait_seconds",
                "Time to get a pooled database connection.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
        )?;
        let unlinked = IntGauge::new(
            "paysync_events_unlinked",
            "Applied events linked to no account.",
        )?;
        registry.register(Box::new(unlinked.clone()))?;
        let batch_size = Histogram::with_opts(
            HistogramOpts::new(
                "paysync_worker_batch_size",
                "Deliveries applied together in one transaction.",
            )
            .buckets(vec![2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
        )?;
        let batch_fallbacks = IntCounter::new(
            "paysync_worker_batch_fallbacks_total",
            "Batch attempts rolled back because an event failed (halves included); their events were applied in halves or one by one.",
        )?;
        registry.register(Box::new(batch_size.clone()))?;
        registry.register(Box::new(batch_fallbacks.clone()))?;
        let reconcile_missing = IntCounterVec::new(
            Opts::new(
                "paysync_reconcile_missing_total",
                "Events applied only because reconciliation found them at the provider (their webhook never arrived).",
            ),
            &["provider"],
        )?;
        let reconcile_last_success = IntGaugeVec::new(
            Opts::new(
                "paysync_reconcile_last_success_timestamp_seconds",
                "When the provider's last complete reconciliation finished, unix seconds.",
            ),
            &["provider"],
        )?;
        let reconcile_runs = IntCounterVec::new(
            Opts::new(
                "paysync_reconcile_runs_total",
                "Scheduled reconciliation runs by outcome (ok, failed).",
            ),
            &["provider", "outcome"],
        )?;
        registry.register(Box::new(reconcile_missing.clone()))?;
        registry.register(Box::new(reconcile_last_success.clone()))?;
        registry.register(Box::new(reconcile_runs.clone()))?;
        for provider in paysync_domain::Provider::ALL {
            reconcile_missing.with_label_values(&[provider.as_str()]);
        }
        let broker_reconnects = paysync_telemetry::broker_reconnects(registry)?;
        let business = BusinessMetrics::register(registry)?;
        registry.register(Box::new(processed.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(lag.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(ingested.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(dead_letters.clone()))?;
        registry.register(Box::new(queue_messages.clone()))?;
        registry.register(Box::new(pool_connections.clone()))?;
        registry.register(Box::new(pool_max.clone()))?;
        registry.register(Box::new(pool_waiting.clone()))?;
        registry.register(Box::new(pool_wait.clone()))?;
        for state in DEAD_LETTER_STATES {
            dead_letters.with_label_values(&[state]);
        }
        for state in ["in_use", "idle"] {
            pool_connections.with_label_values(&[state]);
        }
        for link in ["publisher", "consumer", "ingester"] {
            broker_reconnects.with_label_values(&[link]);
        }
        for outcome in OUTCOMES {
            for provider in paysync_domain::Provider::ALL {
                processed.with_label_values(&[provider.as_str(), "other", outcome]);
            }
        }
        for provider in paysync_domain::Provider::ALL {
            for outcome in ["ok", "failed"] {
                reconcile_runs.with_label_values(&[provider.as_str(), outcome]);
            }
            duration.with_label_values(&[provider.as_str()]);
            for path in LAG_PATHS {
                lag.with_label_values(&[provider.as_str(), path]);
            }
        }
        Ok(Self {
            processed,
            duration,
            lag,
            retries,
            ingested,
            in_flight,
            dead_letters,
            queue_messages,
            queue_depths_read,
            pool_connections,
            pool_max,
            pool_waiting,
            pool_wait,
            unlinked,
            broker_reconnects,
            reconcile_missing,
            reconcile_last_success,
            reconcile_runs,
            batch_size,
            batch_fallbacks,
            business,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paysync_store::{CheckoutCounts, EntitlementCounts, ProviderKpis};
    use prometheus::{Encoder as _, TextEncoder};

    fn text(registry: &Registry) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut out)
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    fn business_lines(text: &str) -> Vec<&str> {
        text.lines()
            .filter(|l| l.starts_with("paysync_business_"))
            .collect()
    }

    #[test]
    fn every_business_series_exists_at_zero_and_a_window_is_set_alone() {
        let registry = Registry::new();
        let m = WorkerMetrics::register(&registry).unwrap();
        let before = text(&registry);
        let lines = business_lines(&before);
        // Per window: 3 checkout outcomes, 4 providers × (2 payment outcomes, recovered,
        // refunds, disputes), 2 customer changes, 3 entitlements.
        let per_window = 3 + 4 * (2 + 1 + 1 + 1) + 2 + 3;
        assert_eq!(lines.len(), 2 * per_window, "{lines:#?}");
        assert!(lines.iter().all(|l| l.ends_with(" 0")), "{lines:#?}");

        let mut providers: Vec<ProviderKpis> = Provider::ALL
            .into_iter()
            .map(|provider| ProviderKpis {
                provider,
                payments_succeeded: 0,
                payments_failed: 0,
                payments_recovered: 0,
                refunds: 0,
                disputes: 0,
            })
            .collect();
        providers[0] = ProviderKpis {
            payments_succeeded: 9,
            payments_failed: 5,
            payments_recovered: 2,
            refunds: 1,
            disputes: 4,
            ..providers[0]
        };
        let kpis = BusinessKpis {
            window: BUSINESS_WINDOWS[0].1,
            checkouts: CheckoutCounts {
                completed: 7,
                expired: 3,
                failed: 6,
            },
            providers,
            new_customers: 8,
            churned_customers: 11,
            entitlement_changes: EntitlementCounts {
                granted: 12,
                grace: 13,
                denied: 14,
            },
        };
        m.business.set("24h", &kpis);
        let after = text(&registry);
        for line in [
            r#"paysync_business_checkouts{outcome="completed",window="24h"} 7"#,
            r#"paysync_business_checkouts{outcome="expired",window="24h"} 3"#,
            r#"paysync_business_checkouts{outcome="failed",window="24h"} 6"#,
            r#"paysync_business_payments{outcome="succeeded",provider="stripe",window="24h"} 9"#,
            r#"paysync_business_payments{outcome="failed",provider="stripe",window="24h"} 5"#,
            r#"paysync_business_payments_recovered{provider="stripe",window="24h"} 2"#,
            r#"paysync_business_refunds{provider="stripe",window="24h"} 1"#,
            r#"paysync_business_disputes{provider="stripe",window="24h"} 4"#,
            r#"paysync_business_customers{change="new",window="24h"} 8"#,
            r#"paysync_business_customers{change="churned",window="24h"} 11"#,
            r#"paysync_business_entitlement_changes{to="granted",window="24h"} 12"#,
            r#"paysync_business_entitlement_changes{to="grace",window="24h"} 13"#,
            r#"paysync_business_entitlement_changes{to="denied",window="24h"} 14"#,
            r#"paysync_business_payments{outcome="succeeded",provider="square",window="24h"} 0"#,
        ] {
            assert!(after.contains(line), "{line} in\n{after}");
        }
        let seven_days: Vec<&str> = business_lines(&after)
            .into_iter()
            .filter(|l| l.contains(r#"window="7d""#))
            .collect();
        assert_eq!(seven_days.len(), per_window);
        assert!(
            seven_days.iter().all(|l| l.ends_with(" 0")),
            "{seven_days:#?}"
        );
    }
}
