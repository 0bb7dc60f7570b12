//! The worker's background upkeep besides consuming: the monitor, which refreshes the gauges
//! read from outside the worker's code path (queue depths, dead-letter counts, pool usage,
//! unlinked events, and, less often, the business KPIs), and the database ping behind
//! readiness.
//!
//! Rule of thumb: each pass is best effort; a source that is down leaves its gauges as they
//! were and is logged at `debug`, never fails the worker.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use paysync_amqp::{AmqpSettings, BrokerMonitor};
use paysync_store::Store;
use paysync_telemetry::Shutdown;

use crate::metrics;
use crate::process::Processor;

/// How often readiness re-checks the database (and how long one check may take).
const DATABASE_PING_EVERY: Duration = Duration::from_secs(2);

/// Refreshes the gauges that are read from outside every `every` until `stop`: queue depths
/// from the broker, dead-letter counts and pool usage from the database; and the business
/// KPIs on the first pass and then on the first pass at least `kpis_every` after the last
/// refresh (their counts cost more than the others').
pub(crate) async fn run(
    processor: Arc<Processor>,
    amqp: AmqpSettings,
    every: Duration,
    kpis_every: Duration,
    stop: Shutdown,
) {
    let mut broker = BrokerMonitor::new(amqp);
    let m = &processor.metrics;
    let mut kpis_due = tokio::time::Instant::now();
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
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                m.queue_depths_read
                    .set(i64::try_from(now).unwrap_or(i64::MAX));
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
        if tokio::time::Instant::now() >= kpis_due {
            kpis_due = tokio::time::Instant::now() + kpis_every;
            refresh_business_kpis(&processor).await;
        }
        tokio::select! {
            () = stop.wait() => break,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Sets the business KPI gauges of every window from the store; a window whose counts cannot
/// be read keeps its last values.
async fn refresh_business_kpis(processor: &Processor) {
    for (window, length) in metrics::BUSINESS_WINDOWS {
        match processor.store.business_kpis(length).await {
            Ok(kpis) => processor.metrics.business.set(window, &kpis),
            Err(err) => {
                tracing::debug!(error = %err, window, "business KPIs unavailable");
            }
        }
    }
}

/// Pings the database every [`DATABASE_PING_EVERY`] (each ping bounded by it) until `stop`,
/// keeping `ok` true exactly while the last ping succeeded.
pub(crate) async fn ping_database(store: Store, ok: Arc<AtomicBool>, stop: Shutdown) {
    loop {
        let pinged = tokio::time::timeout(DATABASE_PING_EVERY, store.ping()).await;
        ok.store(matches!(pinged, Ok(Ok(()))), Ordering::Relaxed);
        tokio::select! {
            () = stop.wait() => break,
            () = tokio::time::sleep(DATABASE_PING_EVERY) => {}
        }
    }
}
