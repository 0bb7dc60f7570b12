//! What the rows share: the checks that go into a row's notes, the load generator's arguments,
//! starting `paysync` processes, waiting for commits and the latency row.
//!
//! Rule of thumb: a helper lives here once two groups use it; what one group alone needs stays
//! in its module.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::events::DEFAULT_CUSTOMERS;
use crate::loadgen::{LoadReport, LoadgenArgs};
use crate::pg;
use crate::procs::{Proc, free_addr};
use crate::report::{Row, Samples, num};
use crate::run::Bench;

/// How long a process may take to answer its readiness probe.
const READY_DEADLINE: Duration = Duration::from_secs(60);

/// How long a process may take to stop after SIGTERM.
pub(super) const STOP_GRACE: Duration = Duration::from_secs(30);

/// Checks that do not stop a measurement; their failures go into the row's notes.
#[derive(Debug, Default)]
pub(super) struct Checks(Vec<String>);

impl Checks {
    /// Records `failure()` unless `ok`.
    pub(super) fn expect(&mut self, ok: bool, failure: impl FnOnce() -> String) {
        if !ok {
            self.0.push(failure());
        }
    }

    /// Whether every check held.
    pub(super) fn is_ok(&self) -> bool {
        self.0.is_empty()
    }

    /// `checked: <verified>`, or `CHECK FAILED: …` with every failure.
    pub(super) fn note(&self, verified: &str) -> String {
        if self.0.is_empty() {
            format!("checked: {verified}")
        } else {
            format!("CHECK FAILED: {}", self.0.join("; "))
        }
    }
}

/// KiB to MiB.
pub(super) fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The median of per-run ratios, formatted as `×r`.
pub(super) fn ratio(samples: &Samples) -> String {
    if samples.is_empty() {
        "n/a".into()
    } else {
        format!("×{:.2}", samples.median())
    }
}

/// The load generator at full speed: `plan.http_count` requests to `url`.
pub(super) fn loadgen_args(bench: &Bench, url: &str, tag: String) -> LoadgenArgs {
    LoadgenArgs {
        url: url.to_owned(),
        secret: bench.secret.clone(),
        count: Some(bench.plan.http_count),
        connections: bench.plan.connections,
        rate: None,
        duration_secs: None,
        tag,
        customers: DEFAULT_CUSTOMERS,
        provider: "stripe".into(),
        cert_url: None,
    }
}

/// `args` as an open loop at `rate` per second for `secs`.
pub(super) fn fixed_rate(mut args: LoadgenArgs, rate: f64, secs: f64) -> LoadgenArgs {
    args.count = None;
    args.rate = Some(rate);
    args.duration_secs = Some(secs);
    args
}

/// Requests an open loop at `rate` for `secs` is due to send.
pub(super) fn expected_count(rate: f64, secs: f64) -> u64 {
    (rate * secs).round() as u64
}

/// Checks that every request of `report` was answered with a 2xx.
pub(super) fn check_answers(checks: &mut Checks, what: &str, report: &LoadReport) {
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

/// The environment of a receiver listening on `http` (its metrics on a free port).
pub(super) fn receiver_env(
    bench: &Bench,
    http: SocketAddr,
) -> anyhow::Result<Vec<(&'static str, String)>> {
    Ok(vec![
        ("PAYSYNC_HTTP_ADDR", http.to_string()),
        ("PAYSYNC_METRICS_ADDR", free_addr()?.to_string()),
        ("PAYSYNC_STRIPE_WEBHOOK_SECRET", bench.secret.clone()),
    ])
}

/// The environment of a process that writes to the database, in `schema`.
pub(super) fn database_env(bench: &Bench, schema: &str) -> Vec<(&'static str, String)> {
    vec![
        ("PAYSYNC_DATABASE_URL", bench.db_url.clone()),
        ("PAYSYNC_DATABASE_SCHEMA", schema.to_owned()),
    ]
}

/// Starts `paysync <subcommand>` under the AMQP `prefix` with `extra` environment; its logs
/// are `<name>.stdout.log` and `<name>.stderr.log`.
pub(super) fn spawn_paysync(
    bench: &Bench,
    name: &str,
    subcommand: &str,
    prefix: &str,
    extra: Vec<(&'static str, String)>,
) -> anyhow::Result<Proc> {
    let mut env = bench.paysync_env(prefix);
    env.extend(extra.into_iter().map(|(k, v)| (k.to_owned(), v)));
    Proc::spawn(
        name,
        &bench.paysync,
        &[subcommand.to_owned()],
        &env,
        bench.logs(),
    )
}

/// Waits until `process` answers 200 on `http://<addr>/readyz`.
pub(super) async fn ready(process: &mut Proc, addr: SocketAddr) -> anyhow::Result<()> {
    process.wait_ready(addr, "/readyz", READY_DEADLINE).await?;
    Ok(())
}

/// How long to wait for `n` events to be processed: a minute plus 1 ms per event.
pub(super) fn drain_deadline(n: u64) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(n)
}

/// Waits until `expected` events matching `pattern` are in the log (or their
/// [`drain_deadline`]); returns how many are. Fails if one of `procs` exits meanwhile.
pub(super) async fn wait_committed(
    client: &Client,
    pattern: &str,
    expected: u64,
    procs: &mut [Proc],
) -> anyhow::Result<u64> {
    let deadline = drain_deadline(expected);
    let start = Instant::now();
    loop {
        let n = u64::try_from(pg::count_like(client, pattern).await?)?;
        if n >= expected || start.elapsed() > deadline {
            return Ok(n);
        }
        for process in procs.iter_mut() {
            process.ensure_running()?;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The latencies of one row over the runs: p50, p99 and max of each run.
#[derive(Debug, Default)]
pub(super) struct Latencies {
    p50: Samples,
    p99: Samples,
    max: Samples,
}

impl Latencies {
    /// Adds one run's percentiles, in milliseconds.
    pub(super) fn push(&mut self, p50: f64, p99: f64, max: f64) {
        self.p50.push(p50);
        self.p99.push(p99);
        self.max.push(max);
    }

    /// A latency row: the medians of p50, p99 and max, the spread of p99 across runs.
    pub(super) fn row(&self, name: String, notes: String) -> Row {
        Row::new(
            name,
            format!(
                "p50 {} / p99 {} / max {} ms",
                num(self.p50.median()),
                num(self.p99.median()),
                num(self.max.median())
            ),
            if self.p99.len() < 2 {
                "–".into()
            } else {
                format!("p99 {}", self.p99.range(" ms"))
            },
            "–",
            notes,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_list_every_failure_or_what_was_verified() {
        let mut checks = Checks::default();
        checks.expect(true, || "not listed".into());
        assert_eq!(checks.note("all 2xx"), "checked: all 2xx");
        checks.expect(false, || "run 0: 1 of 2".into());
        checks.expect(false, || "run 1: 0 of 2".into());
        assert_eq!(
            checks.note("all 2xx"),
            "CHECK FAILED: run 0: 1 of 2; run 1: 0 of 2"
        );
    }

    #[test]
    fn ratios_are_the_median_of_the_runs() {
        assert_eq!(ratio(&Samples::new()), "n/a");
        let mut s = Samples::new();
        for v in [0.5, 0.9, 0.7] {
            s.push(v);
        }
        assert_eq!(ratio(&s), "×0.70");
    }

    #[test]
    fn latency_rows_show_the_spread_of_p99_only_over_several_runs() {
        let mut lat = Latencies::default();
        lat.push(1.0, 5.0, 9.0);
        let one = lat.row("lat".into(), "n".into());
        assert_eq!(one.figure, "p50 1.00 / p99 5.00 / max 9.00 ms");
        assert_eq!(one.range, "–");
        lat.push(3.0, 7.0, 11.0);
        lat.push(2.0, 6.0, 10.0);
        let three = lat.row("lat".into(), "n".into());
        assert_eq!(three.figure, "p50 2.00 / p99 6.00 / max 10.0 ms");
        assert_eq!(three.range, "p99 5.00–7.00 ms");
    }

    #[test]
    fn an_open_loop_is_due_rate_times_duration_requests() {
        assert_eq!(expected_count(2000.0, 5.0), 10_000);
        assert_eq!(expected_count(333.3, 3.0), 1000);
        assert_eq!(drain_deadline(20_000), Duration::from_secs(80));
    }
}
