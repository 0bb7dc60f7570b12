//! The `worker` group, row f: `paysync worker` draining a pre-filled work queue, its ratios to
//! the pgbench ceilings of the same run, and its peak RSS.
//!
//! Rule of thumb: the queue is filled through paysync's own publisher, as the receiver fills
//! it, so the worker meets exactly the messages it meets in production.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use futures::StreamExt as _;
use paysync_amqp::{AmqpSettings, Publisher};
use paysync_domain::Mode;
use paysync_domain::stripe::signature::sign_header;
use paysync_domain::stripe::{DEFAULT_TOLERANCE_SECS, StripeVerifier};

use super::WithPeak;
use super::common::{Checks, STOP_GRACE, database_env, drain_deadline, mib, ready, spawn_paysync};
use super::pgbench::PgbenchOut;
use crate::broker;
use crate::events::{self, DEFAULT_CUSTOMERS, EventFactory};
use crate::pg;
use crate::procs::free_addr;
use crate::report::{Row, Samples, num};
use crate::run::Bench;

/// The worker's row.
pub(super) const WORKER: &str = "worker (paysync worker)";
/// The worker's peak RSS row.
pub(super) const WORKER_PEAK: &str = "worker peak RSS (VmHWM)";

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or_default()
}

/// Fills the work queue under `settings.prefix` with `order`'s events, through paysync's own
/// confirmed publisher as the receiver does (verified first, so headers are exactly the
/// receiver's). Returns the publish rate.
async fn prefill(
    bench: &Bench,
    settings: AmqpSettings,
    factory: &EventFactory,
    order: &[u64],
) -> anyhow::Result<f64> {
    let publisher = Publisher::new(settings);
    let verifier = StripeVerifier::new(
        vec![bench.secret.clone()],
        Mode::Test,
        DEFAULT_TOLERANCE_SECS,
    );
    let start = Instant::now();
    let mut published = futures::stream::iter(order.iter().copied())
        .map(|i| {
            let publisher = publisher.clone();
            let verifier = verifier.clone();
            let body = factory.event(i);
            let secret = bench.secret.clone();
            async move {
                let received_at_ms = now_ms();
                let now = received_at_ms / 1000;
                let header = sign_header(&secret, now, &body);
                let hook = verifier
                    .verify(Some(&header), body.into(), now, received_at_ms)
                    .map_err(|e| anyhow::anyhow!("a generated event was refused: {e}"))?;
                publisher
                    .publish(&hook)
                    .await
                    .context("publishing an event")
            }
        })
        .buffer_unordered(1024);
    while let Some(outcome) = published.next().await {
        outcome?;
    }
    let rate = order.len() as f64 / start.elapsed().as_secs_f64();
    publisher.close().await;
    Ok(rate)
}

/// Row f: `paysync worker` on a pre-filled work queue.
pub(super) async fn measure(
    bench: &Bench,
    pgbench: Option<&PgbenchOut>,
) -> anyhow::Result<WithPeak> {
    let plan = &bench.plan;
    let total = plan.worker_messages;
    let (order, distinct) = events::with_duplicates(total);
    let duplicates = total - distinct;
    let prefix = bench.prefix_for("work");
    let settings = AmqpSettings {
        url: bench.amqp_url.clone(),
        prefix: prefix.clone(),
        connection_name: format!("paysync-bench-prefill-{}", bench.id),
        connect_timeout: Duration::from_secs(15),
        ..AmqpSettings::default()
    };
    let work_queue = format!("{prefix}.work");
    let dead_queue = format!("{prefix}.dead");
    let (mut rates, mut peaks, mut spans) = (Samples::new(), Samples::new(), Samples::new());
    let (mut to_one, mut to_many) = (Samples::new(), Samples::new());
    let mut checks = Checks::default();
    let mut prefill_rate = Samples::new();
    for run in 0..bench.runs {
        let schema = bench.schema_for(&format!("w{run}")).await?;
        paysync_amqp::declare(&settings)
            .await
            .context("declaring the worker's topology")?;
        broker::purge(&bench.amqp, &work_queue).await?;
        broker::purge(&bench.amqp, &dead_queue).await?;
        let factory = EventFactory::new(&bench.tag("f", run), DEFAULT_CUSTOMERS)?;
        prefill_rate.push(prefill(bench, settings.clone(), &factory, &order).await?);
        let held =
            broker::settled_count(&bench.amqp, &work_queue, total, Duration::from_secs(30)).await?;
        checks.expect(held == total, || {
            format!("run {run}: the work queue holds {held} of {total} before the worker starts")
        });

        // The broker is still writing the pre-fill when the count settles.
        bench.quiesce(&format!("worker-{run}")).await;
        let metrics = free_addr()?;
        let mut env = database_env(bench, &schema);
        env.push(("PAYSYNC_METRICS_ADDR", metrics.to_string()));
        let client = pg::connect(&bench.db_url, Some(&schema)).await?;
        let mut worker = spawn_paysync(bench, &format!("worker-{run}"), "worker", &prefix, env)?;
        ready(&mut worker, metrics).await?;
        let start = Instant::now();
        let deadline = drain_deadline(total);
        let (count, dups) = loop {
            let (count, dups) = pg::event_counts(&client).await?;
            let (count, dups) = (u64::try_from(count)?, u64::try_from(dups)?);
            if (count >= distinct && dups >= duplicates) || start.elapsed() > deadline {
                break (count, dups);
            }
            worker.ensure_running()?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let elapsed = start.elapsed().as_secs_f64();
        checks.expect(count == distinct && dups == duplicates, || {
            format!(
                "run {run}: {count} of {distinct} events logged and {dups} of {duplicates} duplicates counted after {elapsed:.0} s"
            )
        });
        let dead_rows = pg::dead_letter_count(&client).await?;
        let dead_msgs = broker::message_count(&bench.amqp, &dead_queue).await?;
        checks.expect(dead_rows == 0 && dead_msgs == 0, || {
            format!("run {run}: {dead_rows} dead letters in the table, {dead_msgs} in the queue")
        });
        let peak = worker.peak_rss_kib()?;
        worker.terminate(STOP_GRACE).await?;
        let (_, first, last) = pg::spans(&client, "%").await?;
        let rate = total as f64 / elapsed;
        rates.push(rate);
        peaks.push(mib(peak));
        if last > first {
            spans.push(total as f64 / (last - first));
        }
        if let Some(pg) = pgbench {
            if let Some(one) = pg.one.get(run) {
                to_one.push(rate / one);
            }
            if let Some(many) = pg.many.get(run) {
                to_many.push(rate / many);
            }
        }
        bench.progress(format!(
            "worker, run {}/{}: {} deliveries/s ({total} in {elapsed:.1} s), peak RSS {} MiB",
            run + 1,
            bench.runs,
            num(rate),
            num(mib(peak))
        ));
    }
    let ratio_text = if to_one.is_empty() {
        "n/a (pgbench failed)".to_owned()
    } else {
        format!(
            "×{:.2} of 1/tx; {:.0} % of {}/tx",
            to_one.median(),
            100.0 * to_many.median(),
            plan.batch
        )
    };
    let row = Row::median(
        WORKER,
        &rates,
        "deliveries/s",
        ratio_text,
        format!(
            "{} deliveries per run ({} distinct events of {} fixture types, 1,000 customers, {} duplicates) pre-filled at {} msg/s with paysync's publisher; clock from /readyz 200 to the last commit seen; first-to-last commit in SQL: {} deliveries/s; ratios per run, to pgbench of the same run; {}",
            num(total as f64),
            num(distinct as f64),
            events::EVENT_TYPES,
            num(duplicates as f64),
            num(prefill_rate.median()),
            num(spans.median()),
            checks.note("every event logged once, every duplicate counted, no dead letter")
        ),
    );
    let peak = Row::new(
        WORKER_PEAK,
        format!("{} MiB", num(peaks.median())),
        peaks.range(" MiB"),
        "–",
        "paysync worker of the worker row, one process per run",
    );
    Ok(WithPeak {
        rows: vec![row],
        peak,
    })
}
