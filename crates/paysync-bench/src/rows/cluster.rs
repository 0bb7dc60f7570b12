//! The `cluster` group: scale-out on the three-node RabbitMQ cluster of
//! `deploy/local/cluster.sh`. Two `paysync receiver` processes take the load generator's
//! connections in turn (as a load balancer spreads its clients), and 1, 2 and 4
//! `paysync worker` processes compete for the quorum work queue, replicated to the three
//! nodes. Each configuration gets a fresh prefix and schema, and a fixed number of events at
//! full speed; its rows give the rate the receivers accepted, the rate the workers applied
//! (first to last commit in the event log) and the lag from receipt to commit.
//!
//! Rule of thumb: what a configuration declared on the cluster is deleted only after its
//! processes stopped (RabbitMQ 3.10.8's segment writer can crash when a quorum queue is
//! deleted right after its last ack with consumers attached), and the cluster is stopped at
//! the end only if this group started it.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use paysync_amqp::AmqpSettings;

use super::common::{
    Latencies, STOP_GRACE, database_env, loadgen_args, ready, receiver_env, wait_committed,
};
use crate::broker;
use crate::events::{DEFAULT_CUSTOMERS, EventFactory};
use crate::host::{self, CpuTimes};
use crate::pg;
use crate::procs::{self, Proc, free_addr, log_tail};
use crate::report::{Row, Samples, num};
use crate::run::Bench;

/// The cluster's script, from the workspace root (where `just` and the bench run).
const SCRIPT: &str = "deploy/local/cluster.sh";

/// The cluster's nodes, as the script names them (`cluster.sh pid <node>`, `rabbitmqctl -n`).
const NODES: [(&str, &str); 3] = [
    ("c1", "paysync-c1@localhost"),
    ("c2", "paysync-c2@localhost"),
    ("c3", "paysync-c3@localhost"),
];

/// `paysync receiver` processes behind the load generator.
const RECEIVERS: usize = 2;

/// The worker counts measured, in this order in even runs and reversed in odd runs.
const WORKER_COUNTS: [usize; 3] = [1, 2, 4];

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn accepted_name(workers: usize) -> String {
    format!(
        "cluster: {RECEIVERS} receivers, {workers} worker{}: accepted",
        plural(workers)
    )
}

fn applied_name(workers: usize) -> String {
    format!(
        "cluster: {RECEIVERS} receivers, {workers} worker{}: applied",
        plural(workers)
    )
}

fn lag_name(workers: usize) -> String {
    format!(
        "cluster: {RECEIVERS} receivers, {workers} worker{}: lag received → applied",
        plural(workers)
    )
}

/// The rows this group fills, for a failure.
pub(super) fn names() -> Vec<String> {
    WORKER_COUNTS
        .iter()
        .flat_map(|&w| [accepted_name(w), applied_name(w), lag_name(w)])
        .collect()
}

/// The order of the configurations in run `run`: 1, 2, 4, then 4, 2, 1, … so that a drift of
/// the host's speed over the runs costs every configuration alike.
fn order(run: usize) -> Vec<usize> {
    let mut counts = WORKER_COUNTS.to_vec();
    if run % 2 == 1 {
        counts.reverse();
    }
    counts
}

/// `urls` rotated left by `k`: process `k` tries node `k mod n` first, so the processes'
/// connections spread over the nodes.
fn rotated(urls: &[String], k: usize) -> String {
    let n = urls.len().max(1);
    (0..urls.len())
        .map(|i| urls[(i + k) % n].as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs `cluster.sh <args>`; its output is appended to `<logs>/cluster.log`. Returns its
/// standard output.
async fn script(logs: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = tokio::process::Command::new("bash")
        .arg(SCRIPT)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running {SCRIPT} (run the bench from the workspace root)"))?;
    let log = logs.join("cluster.log");
    let text = format!(
        "$ {SCRIPT} {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let mut previous = std::fs::read_to_string(&log).unwrap_or_default();
    previous.push_str(&text);
    std::fs::write(&log, previous).with_context(|| format!("writing {}", log.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "{SCRIPT} {} failed ({}):\n{}",
        args.join(" "),
        output.status,
        log_tail(&log, 15)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The cluster as this group found or started it.
struct Cluster {
    /// One `amqp://` URL per node, c1 first.
    urls: Vec<String>,
    /// Whether this group started it (then it stops it at the end).
    started: bool,
}

/// Starts the cluster unless one of its nodes already runs (someone else's cluster, which
/// this group then neither restarts nor stops); waits until all three answer.
async fn ensure_cluster(bench: &Bench) -> anyhow::Result<Cluster> {
    let status = script(bench.logs(), &["status"]).await?;
    let running = status.lines().filter(|l| l.contains(": running,")).count();
    let down = status.lines().filter(|l| l.contains(": down,")).count();
    let started = down == NODES.len();
    if running < NODES.len() {
        bench.progress(format!(
            "cluster: {running} of {} nodes running; {SCRIPT} start",
            NODES.len()
        ));
        script(bench.logs(), &["start"]).await?;
    }
    let urls: Vec<String> = script(bench.logs(), &["urls"])
        .await?
        .trim()
        .split(',')
        .map(str::to_owned)
        .collect();
    anyhow::ensure!(
        urls.len() == NODES.len(),
        "{SCRIPT} urls printed {} URLs, expected {}",
        urls.len(),
        NODES.len()
    );
    Ok(Cluster { urls, started })
}

/// The OS pids of the nodes' Erlang VMs (for their CPU time); a node whose pid cannot be read
/// is left out.
async fn broker_pids(bench: &Bench) -> Vec<u32> {
    let mut pids = Vec::new();
    for (node, _) in NODES {
        if let Ok(out) = script(bench.logs(), &["pid", node]).await
            && let Ok(pid) = out.trim().parse()
        {
            pids.push(pid);
        }
    }
    pids
}

/// Rolls the WAL of every node over and waits for a quiet machine (as before every load of
/// the other groups; see [`Bench::quiesce`]).
async fn quiesce(bench: &Bench, what: &str) {
    for (_, node) in NODES {
        if let Err(err) = broker::roll_over_wal_on(Some(node)).await {
            bench.progress(format!(
                "{what}: the WAL of {node} was not rolled over: {err:#}"
            ));
        }
    }
    bench.quiesce(what).await;
}

/// CPU time counters of one configuration's processes, in clock ticks.
#[derive(Debug, Clone, Copy)]
struct CpuSnap {
    machine: Option<CpuTimes>,
    receivers: u64,
    workers: u64,
    brokers: u64,
    postgres: u64,
}

impl CpuSnap {
    fn now(receivers: &[Proc], workers: &[Proc], brokers: &[u32]) -> Self {
        let sum = |pids: &mut dyn Iterator<Item = u32>, children: bool| -> u64 {
            pids.filter_map(|pid| host::process_ticks(pid, children))
                .sum()
        };
        Self {
            machine: CpuTimes::now(),
            receivers: sum(&mut receivers.iter().map(Proc::pid), false),
            workers: sum(&mut workers.iter().map(Proc::pid), false),
            brokers: sum(&mut brokers.iter().copied(), true),
            postgres: host::ticks_of_command("postgres"),
        }
    }
}

/// Shares of the machine's CPU (all cores, busy + idle + stolen) over one load.
#[derive(Debug, Default)]
struct CpuShares {
    busy: Samples,
    receivers: Samples,
    workers: Samples,
    brokers: Samples,
    postgres: Samples,
    rest: Samples,
}

impl CpuShares {
    fn push(&mut self, start: &CpuSnap, end: &CpuSnap) {
        let Some((busy, total)) = start
            .machine
            .zip(end.machine)
            .and_then(|(s, e)| e.ticks_since(&s))
            .filter(|(_, total)| *total > 0)
        else {
            return;
        };
        let share = |ticks: u64| ticks as f64 / total as f64;
        let receivers = end.receivers.saturating_sub(start.receivers);
        let workers = end.workers.saturating_sub(start.workers);
        let brokers = end.brokers.saturating_sub(start.brokers);
        let postgres = end.postgres.saturating_sub(start.postgres);
        let known = receivers + workers + brokers + postgres;
        self.busy.push(share(busy));
        self.receivers.push(share(receivers));
        self.workers.push(share(workers));
        self.brokers.push(share(brokers));
        self.postgres.push(share(postgres));
        self.rest.push(share(busy.saturating_sub(known)));
    }

    /// `CPU (…): busy 97 %: brokers 41 %, …`, medians over the runs.
    fn note(&self) -> String {
        if self.busy.is_empty() {
            return "CPU shares not measured (no /proc)".into();
        }
        let pct = |s: &Samples| format!("{:.0} %", 100.0 * s.median());
        format!(
            "CPU of both cores from the load's start to the last commit (/proc, medians): busy {} = 3 broker nodes {} + PostgreSQL {} + receivers {} + workers {} + the rest (load generator, kernel) {}",
            pct(&self.busy),
            pct(&self.brokers),
            pct(&self.postgres),
            pct(&self.receivers),
            pct(&self.workers),
            pct(&self.rest)
        )
    }
}

/// The figures of one configuration over the runs.
#[derive(Debug, Default)]
struct Config {
    accepted: Samples,
    applied: Samples,
    /// Applied over the 1-worker figure of the same run.
    to_one: Samples,
    lags: Latencies,
    cpu: CpuShares,
    duplicates: Samples,
    ignored: Samples,
    load_secs: Samples,
    mean_batch: Samples,
}

/// What one configuration measured in one run.
struct Measured {
    accepted: f64,
    applied: f64,
    lag: (f64, f64, f64),
    duplicates: i64,
    ignored: i64,
    load_secs: f64,
    /// Events per transaction: `processed_at` is the start of the lane's transaction, the same
    /// for every event of a batch.
    mean_batch: f64,
}

/// exactly once, stops the processes and deletes the prefix's queues.
async fn measure_one(
    bench: &Bench,
    cluster: &Cluster,
    workers: usize,
    run: usize,
    cpu: &mut CpuShares,
) -> anyhow::Result<Measured> {
    let plan = &bench.plan;
    let label = format!("c{workers}w{run}");
    let prefix = format!("{}-cluster-{workers}w{run}", bench.prefix);
    let all_urls = cluster.urls.join(",");
    bench.cleanup.cluster_topology(&all_urls, &prefix);
    let schema = bench.schema_for(&label).await?;
    // Declared from c1 first, so the quorum queues' leaders are on c1 in every configuration
    // (RabbitMQ 3.10 places a new quorum queue's leader on the declaring client's node).
    let settings = AmqpSettings {
        url: cluster.urls[0].clone(),
        prefix: prefix.clone(),
        connection_name: format!("paysync-bench-cluster-{}", bench.id),
        connect_timeout: Duration::from_secs(15),
        ..AmqpSettings::default()
    };
    paysync_amqp::declare(&settings)
        .await
        .context("declaring the topology on the cluster")?;

    let env = |k: usize| -> Vec<(String, String)> {
        let mut env = bench.paysync_env(&prefix);
        env.retain(|(name, _)| name != "PAYSYNC_AMQP_URL");
        env.push(("PAYSYNC_AMQP_URL".into(), rotated(&cluster.urls, k)));
        env
    };
    let owned = |pairs: Vec<(&'static str, String)>| {
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect::<Vec<_>>()
    };
    let mut receivers = Vec::new();
    let mut receiver_addrs = Vec::new();
    for k in 0..RECEIVERS {
        let http = free_addr()?;
        let mut e = env(k);
        e.extend(owned(receiver_env(bench, http)?));
        let name = format!("cluster-{label}-receiver-{k}");
        receivers.push(Proc::spawn(
            &name,
            &bench.paysync,
            &["receiver".to_owned()],
            &e,
            bench.logs(),
        )?);
        receiver_addrs.push(http);
    }
    let mut worker_procs = Vec::new();
    let mut worker_addrs = Vec::new();
    for k in 0..workers {
        let metrics = free_addr()?;
        let mut e = env(k);
        e.extend(owned(database_env(bench, &schema)));
        e.push(("PAYSYNC_METRICS_ADDR".into(), metrics.to_string()));
        let name = format!("cluster-{label}-worker-{k}");
        worker_procs.push(Proc::spawn(
            &name,
            &bench.paysync,
            &["worker".to_owned()],
            &e,
            bench.logs(),
        )?);
        worker_addrs.push(metrics);
    }
    for (process, addr) in receivers.iter_mut().zip(&receiver_addrs) {
        ready(process, *addr).await?;
    }
    for (process, addr) in worker_procs.iter_mut().zip(&worker_addrs) {
        ready(process, *addr).await?;
    }
    let client = pg::connect(&bench.db_url, Some(&schema)).await?;
    let brokers = broker_pids(bench).await;

    let urls = receiver_addrs
        .iter()
        .map(|a| format!("http://{a}/webhooks/stripe"))
        .collect::<Vec<_>>()
        .join(",");
    let tag = bench.tag(&format!("c{workers}w"), run);
    let pattern = EventFactory::new(&tag, DEFAULT_CUSTOMERS)?.id_pattern();
    let mut args = loadgen_args(bench, &urls, tag);
    args.count = Some(plan.cluster_events);
    let name = format!("loadgen-cluster-{label}");
    quiesce(bench, &name).await;
    let cpu_start = CpuSnap::now(&receivers, &worker_procs, &brokers);
    let report = procs::loadgen(&bench.exe, bench.logs(), &name, &args).await?;
    let n = report.ok();
    anyhow::ensure!(
        report.all_ok(),
        "{label}: {n} of {} requests answered 2xx ({:?}, {} errors)",
        report.sent,
        report.status,
        report.errors
    );
    let mut all: Vec<Proc> = receivers.into_iter().chain(worker_procs).collect();
    let committed = wait_committed(&client, &pattern, n, &mut all).await?;
    let (all_receivers, all_workers) = all.split_at(RECEIVERS);
    let cpu_end = CpuSnap::now(all_receivers, all_workers, &brokers);
    cpu.push(&cpu_start, &cpu_end);

    // Exactly once: one row per accepted event (the event id is the key, so a second row is
    // impossible; a missing one is not), none dead-lettered.
    let row = client
        .query_one(
            "select count(*), count(distinct event_id), \
                    count(*) filter (where outcome = 'ignored'), \
                    coalesce(sum(duplicates), 0)::bigint, \
                    extract(epoch from min(processed_at))::float8, \
                    extract(epoch from max(processed_at))::float8, \
                    count(distinct processed_at) \
             from event_log where event_id like $1",
            &[&pattern],
        )
        .await
        .context("reading the event log")?;
    let (rows, distinct, ignored, duplicates): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let first: Option<f64> = row.get(4);
    let last: Option<f64> = row.get(5);
    let transactions: i64 = row.get(6);
    let dead_rows = pg::dead_letter_count(&client).await?;
    let expected = i64::try_from(n)?;
    anyhow::ensure!(
        committed == n && rows == expected && distinct == expected && dead_rows == 0,
        "{label}: not every event applied exactly once: {rows} rows ({distinct} distinct ids) in the event log for {n} accepted events, {dead_rows} dead letters"
    );
    let lag = pg::lag_ms(&client, &pattern).await?;

    for process in all {
        process.terminate(STOP_GRACE).await?;
    }
    let dead_queue = format!("{prefix}.dead");
    let dead_msgs = match broker::connect_any(&all_urls, "paysync-bench-cluster-check").await {
        Ok(connection) => {
            let count = broker::message_count(&connection, &dead_queue).await;
            let _ = connection.close(200, "counted".into()).await;
            count?
        }
        Err(err) => return Err(err.context("counting the cluster's dead-letter queue")),
    };
    anyhow::ensure!(
        dead_msgs == 0,
        "{label}: {dead_msgs} messages in the dead-letter queue"
    );
    let failures = bench.cleanup.run_cluster().await;
    for failure in failures {
        bench.progress(format!("cluster cleanup: {failure}"));
    }

    let (first, last) = (first.unwrap_or_default(), last.unwrap_or_default());
    anyhow::ensure!(
        last > first,
        "{label}: no time between the first and the last commit"
    );
    let accepted = n as f64 / report.elapsed_secs;
    let applied = n as f64 / (last - first);
    let mean_batch = n as f64 / transactions.max(1) as f64;
    bench.progress(format!(
        "cluster, {workers} worker{}, run {}/{}: accepted {} events/s, applied {} events/s, lag p50 {} / p99 {} / max {} ms",
        plural(workers),
        run + 1,
        bench.runs,
        num(accepted),
        num(applied),
        num(lag.0),
        num(lag.1),
        num(lag.2)
    ));
    Ok(Measured {
        accepted,
        applied,
        lag,
        duplicates,
        ignored,
        load_secs: report.elapsed_secs,
        mean_batch,
    })
}

/// The group: starts the cluster if needed, measures every configuration `runs` times, and
/// stops the cluster if it started it (also after a failure).
pub(super) async fn measure(bench: &Bench) -> anyhow::Result<Vec<Row>> {
    let cluster = ensure_cluster(bench).await?;
    let measured = measure_all(bench, &cluster).await;
    // After a failure the processes are gone (killed when their handles dropped): what the
    // failed configuration declared can go now.
    for failure in bench.cleanup.run_cluster().await {
        bench.progress(format!("cluster cleanup: {failure}"));
    }
    if cluster.started {
        bench.progress(format!("{SCRIPT} stop (this run started the cluster)"));
        if let Err(err) = script(bench.logs(), &["stop"]).await {
            bench.progress(format!("stopping the cluster: {err:#}"));
        }
    }
    measured
}

/// Every configuration `runs` times. A failed measurement stops the group: its configuration and
/// those not measured yet are reported `FAILED` with the error, the others with what they got.
async fn measure_all(bench: &Bench, cluster: &Cluster) -> anyhow::Result<Vec<Row>> {
    let mut configs: Vec<Config> = WORKER_COUNTS.iter().map(|_| Config::default()).collect();
    let mut failed: Option<(usize, anyhow::Error)> = None;
    'runs: for run in 0..bench.runs {
        let mut applied_this_run = [None; WORKER_COUNTS.len()];
        for workers in order(run) {
            let i = index(workers);
            let config = &mut configs[i];
            let m = match measure_one(bench, cluster, workers, run, &mut config.cpu).await {
                Ok(m) => m,
                Err(err) => {
                    bench.progress(format!(
                        "cluster, {workers} worker{}, run {}: FAILED: {err:#}",
                        plural(workers),
                        run + 1
                    ));
                    failed = Some((workers, err));
                    break 'runs;
                }
            };
            config.accepted.push(m.accepted);
            config.applied.push(m.applied);
            config.lags.push(m.lag.0, m.lag.1, m.lag.2);
            config.duplicates.push(m.duplicates as f64);
            config.ignored.push(m.ignored as f64);
            config.load_secs.push(m.load_secs);
            config.mean_batch.push(m.mean_batch);
            applied_this_run[i] = Some(m.applied);
        }
        if let Some(one) = applied_this_run[0] {
            for (config, applied) in configs.iter_mut().zip(applied_this_run) {
                if let Some(applied) = applied {
                    config.to_one.push(applied / one);
                }
            }
        }
    }
    let plan = &bench.plan;
    let mut rows = Vec::new();
    for (&workers, config) in WORKER_COUNTS.iter().zip(&configs) {
        if let Some((failed_workers, err)) = &failed
            && (*failed_workers == workers || config.accepted.is_empty())
        {
            let err = if *failed_workers == workers {
                anyhow::anyhow!("{err:#}")
            } else {
                anyhow::anyhow!(
                    "not measured: the group stopped at {failed_workers} worker(s): {err:#}"
                )
            };
            for name in [
                accepted_name(workers),
                applied_name(workers),
                lag_name(workers),
            ] {
                rows.push(Row::failed(name, &err));
            }
            continue;
        }
        let partial = if failed.is_some() {
            format!(
                "measured in {} of {} runs (the group stopped at a failure); ",
                config.accepted.len(),
                bench.runs
            )
        } else {
            String::new()
        };
        let setup = format!(
            "{partial}{} events per run at full speed ({} connections spread over the {RECEIVERS} receivers), 3-node cluster (quorum queues on all 3, leader on c1), each process's node list rotated; workers with the default pool 8, 2 lanes, batches of up to 256, prefetch 1,024",
            num(plan.cluster_events as f64),
            plan.connections
        );
        rows.push(Row::median(
            accepted_name(workers),
            &config.accepted,
            "events/s",
            "–",
            format!(
                "answered 2xx per second of the load generator's clock (load {} s); {setup}; checked: all 2xx",
                num(config.load_secs.median())
            ),
        ));
        let ratio = if workers == 1 || config.to_one.is_empty() {
            "–".to_owned()
        } else {
            format!("×{:.2} of 1 worker", config.to_one.median())
        };
        rows.push(Row::median(
            applied_name(workers),
            &config.applied,
            "events/s",
            ratio,
            format!(
                "events / (max(processed_at) − min(processed_at)) in the event log; ratio per run, to 1 worker of the same run; {}; {}; checked (the row fails otherwise): every accepted event in the event log exactly once, no dead letter (table and queue)",
                config.cpu.note(),
                format_args!(
                    "mean batch {} events per transaction (events / distinct processed_at); redeliveries skipped as duplicates {}, events recorded as ignored {} (medians)",
                    num(config.mean_batch.median()),
                    num(config.duplicates.median()),
                    num(config.ignored.median())
                ),
            ),
        ));
        rows.push(config.lags.row(
            lag_name(workers),
            "processed_at − received_at over every event of the load (percentile_cont in SQL); at full speed, so it includes the time events waited in the work queue behind the backlog".into(),
        ));
    }
    Ok(rows)
}

fn index(workers: usize) -> usize {
    WORKER_COUNTS
        .iter()
        .position(|&w| w == workers)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_process_starts_at_another_node() {
        let urls: Vec<String> = ["a", "b", "c"].iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(rotated(&urls, 0), "a,b,c");
        assert_eq!(rotated(&urls, 1), "b,c,a");
        assert_eq!(rotated(&urls, 3), "a,b,c");
        assert_eq!(rotated(&urls, 4), "b,c,a");
    }

    #[test]
    fn configurations_alternate_their_order_between_runs() {
        assert_eq!(order(0), vec![1, 2, 4]);
        assert_eq!(order(1), vec![4, 2, 1]);
        assert_eq!(order(2), vec![1, 2, 4]);
        assert_eq!(names().len(), 9);
        assert_eq!(applied_name(1), "cluster: 2 receivers, 1 worker: applied");
    }
}
