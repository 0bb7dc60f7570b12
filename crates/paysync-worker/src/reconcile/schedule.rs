//! The scheduled reconciler: every interval, per provider with API credentials, the one
//! process holding that provider's lock compares a trailing window with the event log.
//!
//! The window starts where the last complete run ended, minus one interval of overlap (so an
//! event that appeared in the list late is still seen), and never further back than the
//! provider keeps events; it ends `settle` before now, so a webhook still on its way is not
//! reported as lost. A run that fails is retried after a minute at most, from the same start.

use std::sync::Arc;
use std::time::Duration;

use paysync_telemetry::Shutdown;
use time::OffsetDateTime;

use super::{EventSource, Reconciler, Window};
use crate::WorkerMetrics;

/// When and how far back the scheduled reconciler looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileSchedule {
    /// Between runs (`PAYSYNC_RECONCILE_INTERVAL`); also the overlap of consecutive windows.
    pub interval: Duration,
    /// How far back the first run of a provider looks (no checkpoint yet).
    pub lookback: Duration,
    /// How old an event must be before its absence counts: the providers' usual delivery
    /// delay.
    pub settle: Duration,
}

impl Default for ReconcileSchedule {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(15 * 60),
            lookback: Duration::from_secs(24 * 3600),
            settle: Duration::from_secs(5 * 60),
        }
    }
}

impl ReconcileSchedule {
    /// The window of a run at `now` after the checkpoint `last` (the end of the last
    /// complete window), for a provider keeping events for `retention`.
    pub fn window(
        &self,
        now: OffsetDateTime,
        last: Option<OffsetDateTime>,
        retention: Duration,
    ) -> Window {
        let until = now - self.settle;
        let oldest = now - retention;
        let since = match last {
            Some(last) => last - self.interval,
            None => until - self.lookback,
        };
        Window {
            since: since.max(oldest).min(until),
            until,
            types: Vec::new(),
        }
    }
}

/// Runs every source's reconciliation on `schedule` until `stop`.
pub async fn run_scheduled(
    reconciler: Reconciler,
    sources: Vec<Arc<dyn EventSource>>,
    schedule: ReconcileSchedule,
    metrics: WorkerMetrics,
    stop: Shutdown,
) {
    if sources.is_empty() {
        return;
    }
    // Until a checkpoint says otherwise, "the last success" is when this worker started
    // trying: a provider never reconciled goes stale an hour after start, not at once.
    let started = OffsetDateTime::now_utc().unix_timestamp();
    for source in &sources {
        metrics
            .reconcile_last_success
            .with_label_values(&[source.provider().as_str()])
            .set(started);
    }
    let retry = schedule.interval.min(Duration::from_secs(60));
    let mut due: Vec<tokio::time::Instant> = vec![tokio::time::Instant::now(); sources.len()];
    loop {
        let next = due
            .iter()
            .min()
            .copied()
            .unwrap_or_else(tokio::time::Instant::now);
        tokio::select! {
            () = stop.wait() => return,
            () = tokio::time::sleep_until(next) => {}
        }
        for (i, source) in sources.iter().enumerate() {
            if due[i] > tokio::time::Instant::now() || stop.fired() {
                continue;
            }
            // Stopping mid-run is safe: a run only adds, and the next one starts from the
            // same checkpoint.
            let ok = tokio::select! {
                ok = once(&reconciler, source.as_ref(), &schedule, &metrics) => ok,
                () = stop.wait() => return,
            };
            due[i] = tokio::time::Instant::now() + if ok { schedule.interval } else { retry };
        }
    }
}

/// One scheduled run of `source`, if this process gets its lock. Whether it succeeded (or was
/// another process's turn).
async fn once(
    reconciler: &Reconciler,
    source: &dyn EventSource,
    schedule: &ReconcileSchedule,
    metrics: &WorkerMetrics,
) -> bool {
    let provider = source.provider();
    let label = provider.as_str();
    let store = reconciler.store();
    // Every worker reports the last success, whoever ran it.
    let checkpoint = match store.reconcile_checkpoint(label).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(provider = label, error = %e, "reconciliation: cannot read the checkpoint");
            return false;
        }
    };
    if let Some(c) = &checkpoint {
        metrics
            .reconcile_last_success
            .with_label_values(&[label])
            .set(c.succeeded_at.unix_timestamp());
    }
    let lock = match store.try_reconcile_lock(label).await {
        Ok(Some(lock)) => lock,
        Ok(None) => return true,
        Err(e) => {
            tracing::warn!(provider = label, error = %e, "reconciliation: cannot take the lock");
            return false;
        }
    };
    // Read again under the lock: the previous holder may just have moved it.
    let last = match store.reconcile_checkpoint(label).await {
        Ok(c) => c.map(|c| c.until),
        Err(_) => checkpoint.map(|c| c.until),
    };
    let window = schedule.window(OffsetDateTime::now_utc(), last, source.retention());
    let outcome = reconciler.run(source, &window, false, &|_| {}).await;
    let ok = match outcome {
        Ok(report) => {
            let json = serde_json::to_value(&report).unwrap_or_default();
            match store.record_reconcile(label, window.until, &json).await {
                Ok(()) => {
                    metrics
                        .reconcile_last_success
                        .with_label_values(&[label])
                        .set(OffsetDateTime::now_utc().unix_timestamp());
                    if report.published > 0 {
                        tracing::warn!(
                            provider = label,
                            published = report.published,
                            "reconciliation found events whose webhooks never arrived; published them (see the runbook: webhooks lost upstream)"
                        );
                    }
                    true
                }
                Err(e) => {
                    tracing::warn!(provider = label, error = %e, "reconciliation: cannot record the checkpoint");
                    false
                }
            }
        }
        Err(e) => {
            tracing::warn!(provider = label, error = %e, retryable = e.cause.retryable(), "reconciliation failed; trying again later");
            false
        }
    };
    drop(lock);
    metrics
        .reconcile_runs
        .with_label_values(&[label, if ok { "ok" } else { "failed" }])
        .inc();
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(secs).unwrap()
    }

    #[test]
    fn windows_overlap_by_an_interval_and_stay_within_retention() {
        let s = ReconcileSchedule {
            interval: Duration::from_secs(900),
            lookback: Duration::from_secs(86_400),
            settle: Duration::from_secs(300),
        };
        let day = Duration::from_secs(86_400);
        let now = at(10_000_000);
        // First run: the lookback before the settle line.
        let w = s.window(now, None, 30 * day);
        assert_eq!(w.until, at(10_000_000 - 300));
        assert_eq!(w.since, at(10_000_000 - 300 - 86_400));
        // Next run: from the last end minus the interval.
        let w2 = s.window(now + Duration::from_secs(900), Some(w.until), 30 * day);
        assert_eq!(w2.since, w.until - Duration::from_secs(900));
        assert!(w2.since < w.until && w2.until > w.until);
        // After a long stop: no further back than the provider keeps events.
        let w3 = s.window(now, Some(at(0)), 28 * day);
        assert_eq!(w3.since, now - 28 * day);
        // A checkpoint in the future (clock skew) never gives an inverted window.
        let w4 = s.window(now, Some(now + day), 28 * day);
        assert!(w4.since <= w4.until);
    }
}
