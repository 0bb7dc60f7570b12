//! The `e2e` group, row g: `paysync up` (the receiver and the worker in one process), its
//! sustained rate from the first request to the last commit, and its lag at a fixed rate.

use tokio_postgres::Client;

use super::common::{
    Checks, Latencies, STOP_GRACE, check_answers, database_env, fixed_rate, loadgen_args, ready,
    receiver_env, spawn_paysync, wait_committed,
};
use crate::events::{DEFAULT_CUSTOMERS, EventFactory};
use crate::loadgen::{LoadReport, LoadgenArgs};
use crate::pg;
use crate::procs::{self, Proc, free_addr};
use crate::report::{Row, Samples, num};
use crate::run::Bench;

/// The sustained row.
pub(super) const E2E: &str = "end to end, sustained (paysync up)";

/// The lag row's name.
fn lag_name(bench: &Bench) -> String {
    format!("end to end lag at {}/s", num(bench.plan.rate))
}

/// The rows this group fills, for a failure.
pub(super) fn names(bench: &Bench) -> Vec<String> {
    vec![E2E.into(), lag_name(bench)]
}

/// One load of `paysync up` on a quiet machine, its process named `name`: checks every answer
/// and that every accepted event was committed. Returns the load's report, how many were
/// committed and the pattern of its event ids.
pub(super) async fn load(
    bench: &Bench,
    run: usize,
    name: &str,
    args: LoadgenArgs,
    (client, up): (&Client, &mut Proc),
    checks: &mut Checks,
) -> anyhow::Result<(LoadReport, u64, String)> {
    let pattern = EventFactory::new(&args.tag, DEFAULT_CUSTOMERS)?.id_pattern();
    bench.quiesce(name).await;
    let report = procs::loadgen(&bench.exe, bench.logs(), name, &args).await?;
    check_answers(checks, &format!("run {run}"), &report);
    let n = report.ok();
    let committed = wait_committed(client, &pattern, n, std::slice::from_mut(up)).await?;
    checks.expect(committed == n, || {
        format!("run {run}: {committed} of {n} accepted events committed")
    });
    Ok((report, committed, pattern))
}

/// Row g: `paysync up`, the receiver and the worker in one process.
pub(super) async fn measure(bench: &Bench) -> anyhow::Result<Vec<Row>> {
    let plan = &bench.plan;
    let prefix = bench.prefix_for("e2e");
    let (mut rates, mut cross) = (Samples::new(), Samples::new());
    let mut lags = Latencies::default();
    let (mut checks, mut lag_checks) = (Checks::default(), Checks::default());
    for run in 0..bench.runs {
        let schema = format!("{}_e{run}", bench.schema_base);
        bench.cleanup.schema(&schema);
        let http = free_addr()?;
        let worker_metrics = free_addr()?;
        let mut env = database_env(bench, &schema);
        env.extend(receiver_env(bench, http)?);
        env.push(("PAYSYNC_WORKER_METRICS_ADDR", worker_metrics.to_string()));
        // `paysync up` runs the dispatcher too: a free port, not its fixed default.
        env.push(("PAYSYNC_DISPATCHER_METRICS_ADDR", free_addr()?.to_string()));
        let mut up = spawn_paysync(bench, &format!("up-{run}"), "up", &prefix, env)?;
        let url = format!("http://{http}/webhooks/stripe");
        ready(&mut up, http).await?;
        ready(&mut up, worker_metrics).await?;
        let client = pg::connect(&bench.db_url, Some(&schema)).await?;

        // The fixed rate first, on the fresh system: after the full-speed run the worker
        // is busy with that run's backlog for a while.
        let args = fixed_rate(
            loadgen_args(bench, &url, bench.tag("l", run)),
            plan.rate,
            plan.rate_secs,
        );
        let name = format!("loadgen-e2e-rate-{run}");
        let (_, _, pattern) =
            load(bench, run, &name, args, (&client, &mut up), &mut lag_checks).await?;
        let (lag50, lag99, lag_max) = pg::lag_ms(&client, &pattern).await?;
        lags.push(lag50, lag99, lag_max);

        let mut args = loadgen_args(bench, &url, bench.tag("g", run));
        args.count = Some(plan.e2e_count);
        let name = format!("loadgen-e2e-{run}");
        let (sustained, committed, pattern) =
            load(bench, run, &name, args, (&client, &mut up), &mut checks).await?;
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
        Row::median(
            E2E,
            &rates,
            "events/s",
            "–",
            format!(
                "{} events per run at full speed ({} connections), from the load generator's start to the last commit (SQL); max(processed_at) − min(received_at): {} events/s; {}",
                num(plan.e2e_count as f64),
                plan.connections,
                num(cross.median()),
                checks.note("all 2xx, every event committed")
            ),
        ),
        lags.row(
            lag_name(bench),
            format!(
                "received → committed (processed_at − received_at, percentile_cont in SQL) over {} s open loop; {}",
                plan.rate_secs,
                lag_checks.note("all 2xx, every event committed")
            ),
        ),
    ])
}
