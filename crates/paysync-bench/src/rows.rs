//! The rows of the table, each measured `runs` times (except the long memory run).
//!
//! A row that fails is reported as `FAILED` with its error, and the others still run. Checks
//! that do not stop a measurement (every answer 2xx, every message in the queue, every event
//! committed, no dead letter) are listed in the row's notes, as `CHECK FAILED: …` when one
//! did not hold.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use futures::StreamExt as _;
use paysync_amqp::{AmqpSettings, Publisher};
use paysync_domain::Mode;
use paysync_domain::stripe::signature::sign_header;
use paysync_domain::stripe::{DEFAULT_TOLERANCE_SECS, StripeVerifier};
use tokio_postgres::Client;

use crate::broker;
use crate::events::{self, DEFAULT_CUSTOMERS, EventFactory};
use crate::loadgen::{LoadReport, LoadgenArgs};
use crate::pg;
use crate::procs::{self, Proc, free_addr};
use crate::report::{Row, Samples, num};
use crate::run::{Bench, Group};

const BROKER: &str = "broker ceiling (bare lapin, quorum)";
const MINI: &str = "receiver ceiling (minimal receiver)";
const RECEIVER: &str = "receiver, full speed";
const PG_ONE: &str = "pgbench, 1 event/tx";
const WORKER: &str = "worker (paysync worker)";
const E2E: &str = "end to end, sustained (paysync up)";
const RECEIVER_PEAK: &str = "receiver peak RSS (VmHWM)";
const WORKER_PEAK: &str = "worker peak RSS (VmHWM)";
const RECEIVER_SOAK: &str = "receiver RSS over a long run";
const WORKER_SOAK: &str = "worker RSS over a long run";

/// How long a process may take to answer its readiness probe.
const READY_DEADLINE: Duration = Duration::from_secs(60);

/// How long a receiver row's queue count may take to settle after its load.
const RECEIVER_SETTLE: Duration = Duration::from_secs(15);

/// How long a process may take to stop after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(30);

fn receiver_latency_name(bench: &Bench) -> String {
    format!("receiver latency at {}/s", num(bench.plan.rate))
}

fn pg_many_name(bench: &Bench) -> String {
    format!("pgbench, {} events/tx", bench.plan.batch)
}

fn e2e_lag_name(bench: &Bench) -> String {
    format!("end to end lag at {}/s", num(bench.plan.rate))
}

/// Measures every row (or the groups `--only` selected), in the table's order.
pub async fn all(bench: &Bench) -> Vec<Row> {
    let mut rows = Vec::new();
    if bench.measures(Group::Broker) {
        rows.push(
            broker_ceiling(bench)
                .await
                .unwrap_or_else(|e| failed(bench, BROKER, e)),
        );
    }
    let mut receiver_peak = None;
    if bench.measures(Group::Receiver) {
        match receivers(bench).await {
            Ok(out) => {
                rows.extend(out.rows);
                receiver_peak = Some(out.peak_row);
            }
            Err(e) => {
                let e = failed_note(bench, &e);
                for name in [MINI, RECEIVER, &receiver_latency_name(bench)] {
                    rows.push(Row::failed(name, &e));
                }
                receiver_peak = Some(Row::new(
                    RECEIVER_PEAK,
                    "n/a",
                    "–",
                    "–",
                    "the receiver row failed",
                ));
            }
        }
    }
    let mut pgbench_out = None;
    if bench.measures(Group::Pgbench) {
        match pgbench(bench).await {
            Ok(out) => {
                rows.extend(out.rows.iter().cloned());
                pgbench_out = Some(out);
            }
            Err(e) => {
                let e = failed_note(bench, &e);
                for name in [PG_ONE, &pg_many_name(bench)] {
                    rows.push(Row::failed(name, &e));
                }
            }
        }
    }
    let mut worker_peak = None;
    if bench.measures(Group::Worker) {
        match worker(bench, pgbench_out.as_ref()).await {
            Ok((row, peak)) => {
                rows.push(row);
                worker_peak = Some(peak);
            }
            Err(e) => {
                rows.push(failed(bench, WORKER, e));
                worker_peak = Some(Row::new(
                    WORKER_PEAK,
                    "n/a",
                    "–",
                    "–",
                    "the worker row failed",
                ));
            }
        }
    }
    if bench.measures(Group::E2e) {
        match end_to_end(bench).await {
            Ok(out) => rows.extend(out),
            Err(e) => {
                let e = failed_note(bench, &e);
                for name in [E2E, &e2e_lag_name(bench)] {
                    rows.push(Row::failed(name, &e));
                }
            }
        }
    }
    rows.extend(receiver_peak);
    rows.extend(worker_peak);
    if bench.measures(Group::Memory) {
        match soak(bench).await {
            Ok(out) => rows.extend(out),
            Err(e) => {
                let e = failed_note(bench, &e);
                for name in [RECEIVER_SOAK, WORKER_SOAK] {
                    rows.push(Row::failed(name, &e));
                }
            }
        }
    }
    rows
}

fn failed_note(bench: &Bench, error: &anyhow::Error) -> anyhow::Error {
    bench.progress(format!("FAILED: {error:#}"));
    anyhow::anyhow!("{error:#}")
}

fn failed(bench: &Bench, name: &str, error: anyhow::Error) -> Row {
    Row::failed(name, &failed_note(bench, &error))
}

/// Checks that do not stop a measurement; their failures go into the row's notes.
#[derive(Debug, Default)]
struct Checks(Vec<String>);

impl Checks {
    fn expect(&mut self, ok: bool, failure: impl FnOnce() -> String) {
        if !ok {
            self.0.push(failure());
        }
    }

    fn note(&self, verified: &str) -> String {
        if self.0.is_empty() {
            format!("checked: {verified}")
        } else {
            format!("CHECK FAILED: {}", self.0.join("; "))
        }
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or_default()
}

/// The median of per-run ratios, formatted as `×r`.
fn ratio(samples: &Samples) -> String {
    if samples.is_empty() {
        "n/a".into()
    } else {
        format!("×{:.2}", samples.median())
    }
}

/// Row a: bare confirmed publishes of 2 KB persistent messages into a quorum queue.
async fn broker_ceiling(bench: &Bench) -> anyhow::Result<Row> {
    let plan = bench.plan.ceiling;
    let queue = format!("{}.bench.ceiling", bench.prefix);
    bench.cleanup.queue(&queue);
    let setup = bench.amqp.create_channel().await?;
    broker::declare_quorum(&setup, &queue).await?;
    let _ = setup.close(200, "declared".into()).await;
    let mut rates = Samples::new();
    for run in 0..bench.runs {
        bench
            .quiesce(&format!("broker ceiling, run {}", run + 1))
            .await;
        let rate = broker::publish_ceiling(&bench.amqp, &queue, plan).await?;
        // Purged at once: a quorum queue holding hundreds of MB slows the rows after it.
        broker::purge(&bench.amqp, &queue).await?;
        bench.progress(format!(
            "broker ceiling, run {}/{}: {} msg/s",
            run + 1,
            bench.runs,
            num(rate)
        ));
        rates.push(rate);
    }
    let failures = broker::delete_queues(&bench.amqp, std::slice::from_ref(&queue)).await;
    anyhow::ensure!(failures.is_empty(), "{}", failures.join("; "));
    Ok(Row::new(
        BROKER,
        format!("{} msg/s", num(rates.median())),
        rates.range(""),
        "–",
        format!(
            "{} persistent {} B messages per run to the default exchange, {} channels, {} confirms in flight; every confirm an ack",
            num(plan.messages as f64),
            plan.size,
            plan.channels,
            plan.window
        ),
    ))
}

struct ReceiverOut {
    rows: Vec<Row>,
    peak_row: Row,
}

fn loadgen_args(bench: &Bench, url: &str, tag: String) -> LoadgenArgs {
    LoadgenArgs {
        url: url.to_owned(),
        secret: bench.secret.clone(),
        count: Some(bench.plan.http_count),
        connections: bench.plan.connections,
        rate: None,
        duration_secs: None,
        tag,
        customers: DEFAULT_CUSTOMERS,
    }
}

fn fixed_rate(mut args: LoadgenArgs, rate: f64, secs: f64) -> LoadgenArgs {
    args.count = None;
    args.rate = Some(rate);
    args.duration_secs = Some(secs);
    args
}

fn expected_count(rate: f64, secs: f64) -> u64 {
    (rate * secs).round() as u64
}

fn check_answers(checks: &mut Checks, what: &str, report: &LoadReport) {
    checks.expect(report.all_ok(), || {
        format!(
            "{what}: {} of {} answered 2xx ({:?}, {} errors)",
            report.ok(),
            report.sent,
            report.status,
            report.errors
        )
    });
}

/// Answers and seconds over several loads of one receiver.
#[derive(Debug, Default)]
struct Throughput {
    answers: f64,
    secs: f64,
}

impl Throughput {
    fn add(&mut self, report: &LoadReport) {
        self.answers += report.rps * report.elapsed_secs;
        self.secs += report.elapsed_secs;
    }

    fn rps(&self) -> f64 {
        if self.secs > 0.0 {
            self.answers / self.secs
        } else {
            0.0
        }
    }
}

/// How a receiver load sends its requests.
#[derive(Debug, Clone, Copy)]
enum LoadMode {
    /// This many at full speed.
    Count(u64),
    /// An open loop at `rate` per second for `secs`.
    Rate { rate: f64, secs: f64 },
}

/// One of the two receivers under test, and the queue it publishes into.
struct Target<'a> {
    /// In the load generator's process name: `loadgen-<label>-…`.
    label: &'static str,
    url: &'a str,
    queue: &'a str,
    /// What the queue holds, for the check's message.
    what: &'static str,
}

impl<'a> Target<'a> {
    /// A load of this receiver, its process named `loadgen-<label>-<suffix>`.
    fn load(&'a self, suffix: String, tag: String, mode: LoadMode) -> ReceiverLoad<'a> {
        ReceiverLoad {
            target: self,
            name: format!("loadgen-{}-{suffix}", self.label),
            tag,
            mode,
        }
    }
}

/// One load of a receiver (minimal or real) into its queue.
struct ReceiverLoad<'a> {
    target: &'a Target<'a>,
    name: String,
    tag: String,
    mode: LoadMode,
}

/// Runs `load` on an empty queue and a quiet machine, checks every answer (and, at a fixed
/// rate, that every due request was sent) and that the queue holds every accepted message,
/// and empties the queue again.
async fn receiver_load(
    bench: &Bench,
    run: usize,
    load: ReceiverLoad<'_>,
    checks: &mut Checks,
) -> anyhow::Result<LoadReport> {
    let target = load.target;
    broker::purge(&bench.amqp, target.queue).await?;
    bench.quiesce(&load.name).await;
    let args = loadgen_args(bench, target.url, load.tag);
    let (args, due) = match load.mode {
        LoadMode::Count(count) => (
            LoadgenArgs {
                count: Some(count),
                ..args
            },
            count,
        ),
        LoadMode::Rate { rate, secs } => (fixed_rate(args, rate, secs), expected_count(rate, secs)),
    };
    let report = procs::loadgen(&bench.exe, bench.logs(), &load.name, &args).await?;
    check_answers(checks, &format!("run {run}"), &report);
    let held =
        broker::settled_count(&bench.amqp, target.queue, report.ok(), RECEIVER_SETTLE).await?;
    checks.expect(held == report.ok() && report.sent == due, || {
        format!(
            "run {run}: {} of {due} requests sent, the queue holds {held} of {} accepted {}",
            report.sent,
            report.ok(),
            target.what
        )
    });
    broker::purge(&bench.amqp, target.queue).await?;
    Ok(report)
}

/// Rows b and c: the minimal receiver and the real one, paired per run.
async fn receivers(bench: &Bench) -> anyhow::Result<ReceiverOut> {
    let plan = &bench.plan;
    let logs = bench.logs();
    let mini_queue = format!("{}.bench.mini", bench.prefix);
    bench.cleanup.queue(&mini_queue);
    let mini_addr = free_addr()?;
    let mut mini = Proc::spawn(
        "mini-receiver",
        &bench.exe,
        &[
            "mini-receiver".to_owned(),
            "--listen".to_owned(),
            mini_addr.to_string(),
            "--queue".to_owned(),
            mini_queue.clone(),
            "--secret".to_owned(),
            bench.secret.clone(),
            "--amqp-url".to_owned(),
            bench.amqp_url.clone(),
        ],
        &[],
        logs,
    )?;
    mini.wait_ready(mini_addr, "/readyz", READY_DEADLINE)
        .await?;

    let prefix = bench.prefix_for("recv");
    let work_queue = format!("{prefix}.work");
    let http = free_addr()?;
    let mut env = bench.paysync_env(&prefix);
    env.push(("PAYSYNC_HTTP_ADDR".into(), http.to_string()));
    env.push(("PAYSYNC_METRICS_ADDR".into(), free_addr()?.to_string()));
    env.push(("PAYSYNC_STRIPE_WEBHOOK_SECRET".into(), bench.secret.clone()));
    let mut receiver = Proc::spawn(
        "receiver",
        &bench.paysync,
        &["receiver".to_owned()],
        &env,
        logs,
    )?;
    receiver.wait_ready(http, "/readyz", READY_DEADLINE).await?;

    let mini_url = format!("http://{mini_addr}/webhooks/stripe");
    let url = format!("http://{http}/webhooks/stripe");
    let (mut mini_rps, mut rps, mut ratios) = (Samples::new(), Samples::new(), Samples::new());
    let (mut p50, mut p99, mut max) = (Samples::new(), Samples::new(), Samples::new());
    let (mut mini_checks, mut checks, mut rate_checks) =
        (Checks::default(), Checks::default(), Checks::default());
    let mut body_bytes = 0.0;
    let mini_target = Target {
        label: "mini",
        url: &mini_url,
        queue: &mini_queue,
        what: "messages",
    };
    let real_target = Target {
        label: "receiver",
        url: &url,
        queue: &work_queue,
        what: "events",
    };
    // The fixed-rate runs first, on an empty queue and a settled broker: after a full-speed
    // run the broker is still digesting its backlog for a while, and the latency would time
    // that instead. The minimal receiver takes the same rate, in turn with paysync's (first
    // in one run, second in the next), as the reference for what the broker and the host
    // cost at that rate.
    let mut fixed_runs = Vec::with_capacity(bench.runs);
    let mut mini_p99 = Samples::new();
    let mut mini_rate_checks = Checks::default();
    let fixed = LoadMode::Rate {
        rate: plan.rate,
        secs: plan.rate_secs,
    };
    for run in 0..bench.runs {
        let real_load = real_target.load(format!("rate-{run}"), bench.tag("d", run), fixed);
        let mini_load = mini_target.load(format!("rate-{run}"), bench.tag("e", run), fixed);
        let (real_report, mini_report) = if run % 2 == 0 {
            let real_report = receiver_load(bench, run, real_load, &mut rate_checks).await?;
            let mini_report = receiver_load(bench, run, mini_load, &mut mini_rate_checks).await?;
            (real_report, mini_report)
        } else {
            let mini_report = receiver_load(bench, run, mini_load, &mut mini_rate_checks).await?;
            let real_report = receiver_load(bench, run, real_load, &mut rate_checks).await?;
            (real_report, mini_report)
        };
        p50.push(real_report.p50_ms);
        p99.push(real_report.p99_ms);
        max.push(real_report.max_ms);
        mini_p99.push(mini_report.p99_ms);
        fixed_runs.push((real_report, mini_report));
    }
    // Each run measures the two receivers in four blocks of half the count, in the order
    // ABBA (BAAB in the next run): a drift of the host's speed over the run then costs both
    // the same, and neither always meets what the other left behind.
    let block_count = (plan.http_count / 2).max(1);
    for (run, (fixed, mini_fixed)) in fixed_runs.iter().enumerate() {
        let (mut mini_total, mut real_total) = (Throughput::default(), Throughput::default());
        for block in 0..4 {
            let mini_turn = (block == 0 || block == 3) == (run % 2 == 0);
            let (target, letter, checks, total) = if mini_turn {
                (&mini_target, "b", &mut mini_checks, &mut mini_total)
            } else {
                (&real_target, "c", &mut checks, &mut real_total)
            };
            let load = target.load(
                format!("{run}-{block}"),
                bench.tag(&format!("{letter}{block}"), run),
                LoadMode::Count(block_count),
            );
            let report = receiver_load(bench, run, load, checks).await?;
            total.add(&report);
            if mini_turn {
                body_bytes = report.body_bytes_mean;
            }
        }
        let (ceiling, full) = (mini_total.rps(), real_total.rps());
        mini_rps.push(ceiling);
        rps.push(full);
        ratios.push(full / ceiling);
        bench.progress(format!(
            "receivers, run {}/{}: minimal {} req/s, receiver {} req/s (×{:.2}), at {}/s p50 {} ms p99 {} ms max {} ms (minimal receiver p99 {} ms)",
            run + 1,
            bench.runs,
            num(ceiling),
            num(full),
            full / ceiling,
            num(plan.rate),
            num(fixed.p50_ms),
            num(fixed.p99_ms),
            num(fixed.max_ms),
            num(mini_fixed.p99_ms)
        ));
    }
    let receiver_peak = receiver.peak_rss_kib()?;
    let mini_peak = mini.peak_rss_kib()?;
    receiver.terminate(STOP_GRACE).await?;
    mini.terminate(STOP_GRACE).await?;
    let load = format!(
        "{} signed events (mean {} B) per run in two blocks, the two receivers' blocks in the order ABBA (BAAB in the next run), {} keep-alive connections",
        num((2 * block_count) as f64),
        num(body_bytes),
        plan.connections
    );
    let rows = vec![
        Row::new(
            MINI,
            format!("{} req/s", num(mini_rps.median())),
            mini_rps.range(""),
            "–",
            format!(
                "{load}; axum + HMAC check + confirmed publish (2 channels) into a quorum queue; {}",
                mini_checks.note("all 2xx, the queue held every message")
            ),
        ),
        Row::new(
            RECEIVER,
            format!("{} req/s", num(rps.median())),
            rps.range(""),
            format!("{} of the minimal receiver", ratio(&ratios)),
            format!(
                "{load}; ratio per run, to the minimal receiver of the same run; {}",
                checks.note("all 2xx, the work queue held every event")
            ),
        ),
        latency_row(
            receiver_latency_name(bench),
            &p50,
            &p99,
            &max,
            format!(
                "open loop for {} s, latency from each request's scheduled time; {}; the minimal receiver at the same rate, in turn with it: p99 {} ms{}, {}",
                plan.rate_secs,
                rate_checks.note("all 2xx, the work queue held every event"),
                num(mini_p99.median()),
                if mini_p99.len() < 2 {
                    String::new()
                } else {
                    format!(" (runs {})", mini_p99.range(" ms"))
                },
                mini_rate_checks.note("all 2xx, the queue held every message")
            ),
        ),
    ];
    let peak_row = Row::new(
        RECEIVER_PEAK,
        format!("{} MiB", num(mib(receiver_peak))),
        "–",
        "–",
        format!(
            "paysync receiver over all runs of its rows (one process); minimal receiver {} MiB",
            num(mib(mini_peak))
        ),
    );
    Ok(ReceiverOut { rows, peak_row })
}

struct PgbenchOut {
    rows: Vec<Row>,
    /// Events per second, one event per transaction, per run.
    one: Vec<f64>,
    /// Events per second, `batch` events per transaction, per run.
    many: Vec<f64>,
}

/// Row e: the database ceilings, pgbench with the worker's statements.
async fn pgbench(bench: &Bench) -> anyhow::Result<PgbenchOut> {
    let plan = &bench.plan;
    let schema = bench.schema_for("pgb").await?;
    let client = pg::connect(&bench.db_url, Some(&schema)).await?;
    pg::seed_customers(&client, pg::SCRIPT_CUSTOMERS).await?;
    let (one_script, many_script) = pg::write_scripts(&bench.pgbench_dir())?;
    let batch_size = [format!("n={}", plan.batch)];
    let (mut one, mut many) = (Vec::new(), Vec::new());
    let mut failed = 0;
    for run in 0..bench.runs {
        bench.quiesce(&format!("pgbench-1-{run}")).await;
        let single = pg::pgbench(
            &bench.db_url,
            &schema,
            &one_script,
            &[],
            pg::POOL_SIZE,
            plan.pgbench_secs,
            &bench.logs().join(format!("pgbench-1-{run}.log")),
        )
        .await?;
        bench
            .quiesce(&format!("pgbench-{}-{run}", plan.batch))
            .await;
        let batched = pg::pgbench(
            &bench.db_url,
            &schema,
            &many_script,
            &batch_size,
            pg::POOL_SIZE,
            plan.pgbench_secs,
            &bench
                .logs()
                .join(format!("pgbench-{}-{run}.log", plan.batch)),
        )
        .await?;
        failed += single.failed + batched.failed;
        one.push(single.tps);
        many.push(batched.tps * plan.batch as f64);
        bench.progress(format!(
            "pgbench, run {}/{}: {} events/s at 1/tx, {} events/s at {}/tx",
            run + 1,
            bench.runs,
            num(single.tps),
            num(batched.tps * plan.batch as f64),
            plan.batch
        ));
    }
    let samples = |v: &[f64]| {
        let mut s = Samples::new();
        for x in v {
            s.push(*x);
        }
        s
    };
    let (s_one, s_many) = (samples(&one), samples(&many));
    let how = format!(
        "pgbench -n -M prepared -c {} -j 2 -T {}, a mapped customer's charge.succeeded with the worker's statements for an event alone (crates/paysync-bench/pgbench/event-1.sql: event-log insert, mapping read, payment upsert, welcome task), 1,000 customers",
        pg::POOL_SIZE,
        plan.pgbench_secs
    );
    let failures = if failed == 0 {
        "no failed transaction".to_owned()
    } else {
        format!("CHECK FAILED: {failed} failed transactions")
    };
    let rows = vec![
        Row::new(
            PG_ONE,
            format!("{} events/s", num(s_one.median())),
            s_one.range(""),
            "–",
            format!("{how}; events/s = tps; {failures}"),
        ),
        Row::new(
            pg_many_name(bench),
            format!("{} events/s", num(s_many.median())),
            s_many.range(""),
            "–",
            format!(
                "the worker's statements for a batch (crates/paysync-bench/pgbench/events-n.sql, -D n={}): one statement per kind of row for {} such events in one transaction, each client on its own customers (no lock waits between clients); events/s = {} × tps; {failures}",
                plan.batch, plan.batch, plan.batch
            ),
        ),
    ];
    Ok(PgbenchOut { rows, one, many })
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

/// Waits until `expected` events matching `pattern` are in the log (or `deadline`); returns
/// how many are.
async fn wait_committed(
    client: &Client,
    pattern: &str,
    expected: u64,
    deadline: Duration,
    process: &mut Proc,
) -> anyhow::Result<u64> {
    let start = Instant::now();
    loop {
        let n = u64::try_from(pg::count_like(client, pattern).await?)?;
        if n >= expected || start.elapsed() > deadline {
            return Ok(n);
        }
        process.ensure_running()?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A latency row: the medians of p50, p99 and max, the spread of p99 across runs.
fn latency_row(name: String, p50: &Samples, p99: &Samples, max: &Samples, notes: String) -> Row {
    Row::new(
        name,
        format!(
            "p50 {} / p99 {} / max {} ms",
            num(p50.median()),
            num(p99.median()),
            num(max.median())
        ),
        if p99.len() < 2 {
            "–".into()
        } else {
            format!("p99 {}", p99.range(" ms"))
        },
        "–",
        notes,
    )
}

/// How long to wait for `n` events to be processed: a minute plus 1 ms per event.
fn drain_deadline(n: u64) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(n)
}

/// Row f: `paysync worker` on a pre-filled work queue.
async fn worker(bench: &Bench, pgbench: Option<&PgbenchOut>) -> anyhow::Result<(Row, Row)> {
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
        let mut env = bench.paysync_env(&prefix);
        env.push(("PAYSYNC_DATABASE_URL".into(), bench.db_url.clone()));
        env.push(("PAYSYNC_DATABASE_SCHEMA".into(), schema.clone()));
        env.push(("PAYSYNC_METRICS_ADDR".into(), metrics.to_string()));
        let client = pg::connect(&bench.db_url, Some(&schema)).await?;
        let mut worker = Proc::spawn(
            &format!("worker-{run}"),
            &bench.paysync,
            &["worker".to_owned()],
            &env,
            bench.logs(),
        )?;
        worker
            .wait_ready(metrics, "/readyz", READY_DEADLINE)
            .await?;
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
    let row = Row::new(
        WORKER,
        format!("{} deliveries/s", num(rates.median())),
        rates.range(""),
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
    let peak_row = Row::new(
        WORKER_PEAK,
        format!("{} MiB", num(peaks.median())),
        peaks.range(" MiB"),
        "–",
        "paysync worker of the worker row, one process per run",
    );
    Ok((row, peak_row))
}

/// Row g: `paysync up`, the receiver and the worker in one process.
async fn end_to_end(bench: &Bench) -> anyhow::Result<Vec<Row>> {
    let plan = &bench.plan;
    let prefix = bench.prefix_for("e2e");
    let (mut rates, mut cross) = (Samples::new(), Samples::new());
    let (mut p50, mut p99, mut max) = (Samples::new(), Samples::new(), Samples::new());
    let (mut checks, mut lag_checks) = (Checks::default(), Checks::default());
    for run in 0..bench.runs {
        let schema = format!("{}_e{run}", bench.schema_base);
        bench.cleanup.schema(&schema);
        let http = free_addr()?;
        let worker_metrics = free_addr()?;
        let mut env = bench.paysync_env(&prefix);
        env.push(("PAYSYNC_DATABASE_URL".into(), bench.db_url.clone()));
        env.push(("PAYSYNC_DATABASE_SCHEMA".into(), schema.clone()));
        env.push(("PAYSYNC_HTTP_ADDR".into(), http.to_string()));
        env.push(("PAYSYNC_METRICS_ADDR".into(), free_addr()?.to_string()));
        env.push((
            "PAYSYNC_WORKER_METRICS_ADDR".into(),
            worker_metrics.to_string(),
        ));
        env.push(("PAYSYNC_STRIPE_WEBHOOK_SECRET".into(), bench.secret.clone()));
        let mut up = Proc::spawn(
            &format!("up-{run}"),
            &bench.paysync,
            &["up".to_owned()],
            &env,
            bench.logs(),
        )?;
        let url = format!("http://{http}/webhooks/stripe");
        up.wait_ready(http, "/readyz", READY_DEADLINE).await?;
        up.wait_ready(worker_metrics, "/readyz", READY_DEADLINE)
            .await?;
        let client = pg::connect(&bench.db_url, Some(&schema)).await?;

        // The fixed rate first, on the fresh system: after the full-speed run the worker
        // is busy with that run's backlog for a while.
        let tag = bench.tag("l", run);
        let pattern = EventFactory::new(&tag, DEFAULT_CUSTOMERS)?.id_pattern();
        bench.quiesce(&format!("loadgen-e2e-rate-{run}")).await;
        let fixed = procs::loadgen(
            &bench.exe,
            bench.logs(),
            &format!("loadgen-e2e-rate-{run}"),
            &fixed_rate(loadgen_args(bench, &url, tag), plan.rate, plan.rate_secs),
        )
        .await?;
        check_answers(&mut lag_checks, &format!("run {run}"), &fixed);
        let n = fixed.ok();
        let committed = wait_committed(&client, &pattern, n, drain_deadline(n), &mut up).await?;
        lag_checks.expect(committed == n, || {
            format!("run {run}: {committed} of {n} accepted events committed")
        });
        let (lag50, lag99, lag_max) = pg::lag_ms(&client, &pattern).await?;
        p50.push(lag50);
        p99.push(lag99);
        max.push(lag_max);
        let tag = bench.tag("g", run);
        let pattern = EventFactory::new(&tag, DEFAULT_CUSTOMERS)?.id_pattern();
        let mut args = loadgen_args(bench, &url, tag);
        args.count = Some(plan.e2e_count);
        bench.quiesce(&format!("loadgen-e2e-{run}")).await;
        let sustained = procs::loadgen(
            &bench.exe,
            bench.logs(),
            &format!("loadgen-e2e-{run}"),
            &args,
        )
        .await?;
        check_answers(&mut checks, &format!("run {run}"), &sustained);
        let n = sustained.ok();
        let committed = wait_committed(&client, &pattern, n, drain_deadline(n), &mut up).await?;
        checks.expect(committed == n, || {
            format!("run {run}: {committed} of {n} accepted events committed")
        });
        let (first_received, _, last_commit) = pg::spans(&client, &pattern).await?;
        let start = sustained.start_unix_ms as f64 / 1000.0;
        let rate = committed as f64 / (last_commit - start);
        rates.push(rate);
        if last_commit > first_received {
            cross.push(committed as f64 / (last_commit - first_received));
        }

        up.terminate(STOP_GRACE).await?;
        bench.progress(format!(
            "end to end, run {}/{}: {} events/s sustained; at {}/s lag p50 {} ms p99 {} ms",
            run + 1,
            bench.runs,
            num(rate),
            num(plan.rate),
            num(lag50),
            num(lag99)
        ));
    }
    Ok(vec![
        Row::new(
            E2E,
            format!("{} events/s", num(rates.median())),
            rates.range(""),
            "–",
            format!(
                "{} events per run at full speed ({} connections), from the load generator's start to the last commit (SQL); max(processed_at) − min(received_at): {} events/s; {}",
                num(plan.e2e_count as f64),
                plan.connections,
                num(cross.median()),
                checks.note("all 2xx, every event committed")
            ),
        ),
        latency_row(
            e2e_lag_name(bench),
            &p50,
            &p99,
            &max,
            format!(
                "received → committed (processed_at − received_at, percentile_cont in SQL) over {} s open loop; {}",
                plan.rate_secs,
                lag_checks.note("all 2xx, every event committed")
            ),
        ),
    ])
}

/// Row h, the long run: `paysync receiver` and `paysync worker` at a moderate fixed rate, RSS
/// sampled every few seconds. Not repeated.
async fn soak(bench: &Bench) -> anyhow::Result<Vec<Row>> {
    let plan = &bench.plan;
    let schema = bench.schema_for("soak").await?;
    let prefix = bench.prefix_for("soak");
    let http = free_addr()?;
    let worker_metrics = free_addr()?;
    let mut env = bench.paysync_env(&prefix);
    env.push(("PAYSYNC_HTTP_ADDR".into(), http.to_string()));
    env.push(("PAYSYNC_METRICS_ADDR".into(), free_addr()?.to_string()));
    env.push(("PAYSYNC_STRIPE_WEBHOOK_SECRET".into(), bench.secret.clone()));
    let mut receiver = Proc::spawn(
        "soak-receiver",
        &bench.paysync,
        &["receiver".to_owned()],
        &env,
        bench.logs(),
    )?;
    let mut env = bench.paysync_env(&prefix);
    env.push(("PAYSYNC_DATABASE_URL".into(), bench.db_url.clone()));
    env.push(("PAYSYNC_DATABASE_SCHEMA".into(), schema.clone()));
    env.push(("PAYSYNC_METRICS_ADDR".into(), worker_metrics.to_string()));
    let mut worker = Proc::spawn(
        "soak-worker",
        &bench.paysync,
        &["worker".to_owned()],
        &env,
        bench.logs(),
    )?;
    receiver.wait_ready(http, "/readyz", READY_DEADLINE).await?;
    worker
        .wait_ready(worker_metrics, "/readyz", READY_DEADLINE)
        .await?;
    let client = pg::connect(&bench.db_url, Some(&schema)).await?;

    let tag = bench.tag("s", 0);
    let pattern = EventFactory::new(&tag, DEFAULT_CUSTOMERS)?.id_pattern();
    let args = fixed_rate(
        loadgen_args(bench, &format!("http://{http}/webhooks/stripe"), tag),
        plan.soak_rate,
        plan.soak_secs as f64,
    );
    bench.progress(format!(
        "long run: {}/s for {} s, RSS every {} s",
        num(plan.soak_rate),
        plan.soak_secs,
        plan.sample_every.as_secs()
    ));
    bench.quiesce("loadgen-soak").await;
    let exe = bench.exe.clone();
    let logs = bench.logs().to_path_buf();
    let load =
        tokio::spawn(async move { procs::loadgen(&exe, &logs, "loadgen-soak", &args).await });
    let start = Instant::now();
    let mut samples: Vec<(f64, u64, u64)> = Vec::new();
    let mut ticker = tokio::time::interval(plan.sample_every);
    ticker.tick().await;
    tokio::pin!(load);
    let report = loop {
        tokio::select! {
            done = &mut load => break done.context("the load generator task panicked")??,
            _ = ticker.tick() => {
                receiver.ensure_running()?;
                worker.ensure_running()?;
                samples.push((start.elapsed().as_secs_f64(), receiver.rss_kib()?, worker.rss_kib()?));
            }
        }
    };
    samples.push((
        start.elapsed().as_secs_f64(),
        receiver.rss_kib()?,
        worker.rss_kib()?,
    ));
    let mut checks = Checks::default();
    check_answers(&mut checks, "long run", &report);
    let n = report.ok();
    let committed = wait_committed(&client, &pattern, n, drain_deadline(n), &mut worker).await?;
    checks.expect(committed == n, || {
        format!("{committed} of {n} accepted events committed")
    });
    let peaks = (receiver.peak_rss_kib()?, worker.peak_rss_kib()?);
    receiver.terminate(STOP_GRACE).await?;
    worker.terminate(STOP_GRACE).await?;
    let csv = write_samples(bench, &samples)?;
    let early = samples
        .iter()
        .find(|s| s.0 >= plan.soak_early_secs as f64 - 0.5)
        .or(samples.first())
        .copied()
        .context("no RSS sample")?;
    let end = samples.last().copied().context("no RSS sample")?;
    let row = |name: &str, pick: fn(&(f64, u64, u64)) -> u64, peak: u64| {
        let (a, b) = (mib(pick(&early)), mib(pick(&end)));
        let lo = samples.iter().map(pick).min().unwrap_or_default();
        let hi = samples.iter().map(pick).max().unwrap_or_default();
        Row::new(
            name,
            format!(
                "{} MiB at {:.0} s → {} MiB at {:.0} s",
                num(a),
                early.0,
                num(b),
                end.0
            ),
            format!("{}–{} MiB (samples)", num(mib(lo)), num(mib(hi))),
            format!("×{:.2} end/start", b / a),
            format!(
                "{} req/s for {} s, VmRSS every {} s ({}), peak {} MiB; {}",
                num(plan.soak_rate),
                plan.soak_secs,
                plan.sample_every.as_secs(),
                csv.display(),
                num(mib(peak)),
                checks.note("all 2xx, every event committed")
            ),
        )
    };
    Ok(vec![
        row(RECEIVER_SOAK, |s| s.1, peaks.0),
        row(WORKER_SOAK, |s| s.2, peaks.1),
    ])
}

fn write_samples(bench: &Bench, samples: &[(f64, u64, u64)]) -> anyhow::Result<PathBuf> {
    let path = bench.dir.join("soak-rss.csv");
    let mut text = String::from("secs,receiver_rss_kib,worker_rss_kib\n");
    for (t, r, w) in samples {
        text.push_str(&format!("{t:.1},{r},{w}\n"));
    }
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
