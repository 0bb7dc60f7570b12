//! The `memory` group, row h: the long run, `paysync receiver` and `paysync worker` at a
//! moderate fixed rate with their RSS sampled every few seconds (written to `soak-rss.csv`).
//! Not repeated.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;

use super::common::{
    Checks, STOP_GRACE, check_answers, database_env, fixed_rate, loadgen_args, mib, ready,
    receiver_env, spawn_paysync, wait_committed,
};
use crate::events::{DEFAULT_CUSTOMERS, EventFactory};
use crate::pg;
use crate::procs::{self, free_addr};
use crate::report::{Row, num};
use crate::run::Bench;

/// The receiver's row.
pub(super) const RECEIVER_SOAK: &str = "receiver RSS over a long run";
/// The worker's row.
pub(super) const WORKER_SOAK: &str = "worker RSS over a long run";

/// The rows this group fills, for a failure.
pub(super) fn names() -> Vec<String> {
    vec![RECEIVER_SOAK.into(), WORKER_SOAK.into()]
}

/// One RSS sample: seconds since the load started, the receiver's and the worker's KiB.
type Sample = (f64, u64, u64);

/// Row h, the long run.
pub(super) async fn measure(bench: &Bench) -> anyhow::Result<Vec<Row>> {
    let plan = &bench.plan;
    let schema = bench.schema_for("soak").await?;
    let prefix = bench.prefix_for("soak");
    let http = free_addr()?;
    let worker_metrics = free_addr()?;
    let mut receiver = spawn_paysync(
        bench,
        "soak-receiver",
        "receiver",
        &prefix,
        receiver_env(bench, http)?,
    )?;
    let mut env = database_env(bench, &schema);
    env.push(("PAYSYNC_METRICS_ADDR", worker_metrics.to_string()));
    let mut worker = spawn_paysync(bench, "soak-worker", "worker", &prefix, env)?;
    ready(&mut receiver, http).await?;
    ready(&mut worker, worker_metrics).await?;
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
    let mut samples: Vec<Sample> = Vec::new();
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
    let committed = wait_committed(&client, &pattern, n, std::slice::from_mut(&mut worker)).await?;
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
    let row = |name: &str, pick: fn(&Sample) -> u64, peak: u64| {
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

/// Writes the samples to `<bench dir>/soak-rss.csv`.
fn write_samples(bench: &Bench, samples: &[Sample]) -> anyhow::Result<PathBuf> {
    let path = bench.dir.join("soak-rss.csv");
    std::fs::write(&path, samples_csv(samples))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The samples as CSV, with a header line.
fn samples_csv(samples: &[Sample]) -> String {
    let mut text = String::from("secs,receiver_rss_kib,worker_rss_kib\n");
    for (t, r, w) in samples {
        text.push_str(&format!("{t:.1},{r},{w}\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_samples_are_written_as_csv_with_a_header() {
        assert_eq!(
            samples_csv(&[(5.04, 10_240, 20_480), (10.0, 10_300, 20_000)]),
            "secs,receiver_rss_kib,worker_rss_kib\n5.0,10240,20480\n10.0,10300,20000\n"
        );
    }
}
