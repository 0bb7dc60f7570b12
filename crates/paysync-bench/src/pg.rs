//! PostgreSQL: schemas migrated with the real migrations, the pgbench ceilings with the
//! worker's own statements, and the SQL checks of the worker and end-to-end rows.
//!
//! The pgbench scripts (`pgbench/*.sql`) write out the store's statements; the test in `tie`
//! fails when they no longer match the store's text.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tokio_postgres::Client;

use crate::procs::log_tail;

/// The local database (the services script's server, its default database).
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Connections of the worker's pool by default (`PAYSYNC_DATABASE_MAX_CONNECTIONS`): pgbench
/// runs with as many clients.
pub const POOL_SIZE: u32 = 8;

/// One event per transaction: the worker's statements for a typical event alone (see the file).
pub const EVENT_SCRIPT: &str = include_str!("../pgbench/event-1.sql");

/// `n` events per transaction (`pgbench -D n=<n>`): the worker's statements for a batch of
/// such events (see the file).
pub const EVENTS_SCRIPT: &str = include_str!("../pgbench/events-n.sql");

/// Customers the pgbench scripts draw from (`cus_bench0` … `cus_bench999`).
pub const SCRIPT_CUSTOMERS: u64 = 1000;

/// Connects to `url`, in `schema` if given, with the URL's TLS settings (`sslmode`,
/// `sslrootcert`) as `paysync` reads them.
pub async fn connect(url: &str, schema: Option<&str>) -> anyhow::Result<Client> {
    let (mut config, tls) = paysync_store::tls::connect_config(url).context("database URL")?;
    config.application_name("paysync-bench");
    if let Some(schema) = schema {
        config.options(format!("-c search_path={schema}"));
    }
    let (client, connection) = config
        .connect(tls)
        .await
        .context("connecting to PostgreSQL (is it running? deploy/local/services.sh)")?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// `select version()`.
pub async fn version(url: &str) -> anyhow::Result<String> {
    let client = connect(url, None).await?;
    let row = client.query_one("select version()", &[]).await?;
    Ok(row.get(0))
}

/// Creates and migrates `schema` with the real migrations: `paysync migrate`.
pub async fn migrate(paysync: &Path, url: &str, schema: &str, logs: &Path) -> anyhow::Result<()> {
    let log = logs.join(format!("migrate-{schema}.log"));
    let file =
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let status = tokio::process::Command::new(paysync)
        .arg("migrate")
        .env("PAYSYNC_DATABASE_URL", url)
        .env("PAYSYNC_DATABASE_SCHEMA", schema)
        .env("RUST_LOG", "warn")
        .stdout(file.try_clone()?)
        .stderr(file)
        .kill_on_drop(true)
        .status()
        .await
        .with_context(|| format!("running {} migrate", paysync.display()))?;
    anyhow::ensure!(
        status.success(),
        "paysync migrate failed ({status}):\n{}",
        log_tail(&log, 15)
    );
    Ok(())
}

/// Maps `cus_bench0` … `cus_bench<n-1>` to `n` new accounts, in order (account ids grow
/// with the customer number).
pub async fn seed_customers(client: &Client, n: u64) -> anyhow::Result<()> {
    let n = i64::try_from(n)?;
    client
        .execute(
            "insert into accounts (external_ref) select 'bench-' || g from generate_series(0, $1::bigint - 1) g order by g",
            &[&n],
        )
        .await
        .context("seeding accounts")?;
    client
        .execute(
            "insert into provider_customers (provider, customer_id, account_id) \
             select 'stripe', 'cus_bench' || substr(external_ref, 7), id from accounts where external_ref like 'bench-%'",
            &[],
        )
        .await
        .context("seeding provider customers")?;
    Ok(())
}

/// Drops `schema` and everything in it.
pub async fn drop_schema(url: &str, schema: &str) -> anyhow::Result<()> {
    let client = connect(url, None).await?;
    client
        .batch_execute(&format!(
            "set statement_timeout = '30s'; drop schema if exists {schema} cascade"
        ))
        .await
        .with_context(|| format!("dropping schema {schema}"))?;
    Ok(())
}

/// `(events in the log, duplicate deliveries counted)`.
pub async fn event_counts(client: &Client) -> anyhow::Result<(i64, i64)> {
    let row = client
        .query_one(
            "select count(*), coalesce(sum(duplicates), 0)::bigint from event_log",
            &[],
        )
        .await
        .context("counting the event log")?;
    Ok((row.get(0), row.get(1)))
}

/// Events in the log whose id matches `pattern` (SQL `like`).
pub async fn count_like(client: &Client, pattern: &str) -> anyhow::Result<i64> {
    let row = client
        .query_one(
            "select count(*) from event_log where event_id like $1",
            &[&pattern],
        )
        .await
        .context("counting events")?;
    Ok(row.get(0))
}

/// Time spans of the events matching `pattern`, in seconds since the epoch:
/// `(min received_at, min processed_at, max processed_at)`.
pub async fn spans(client: &Client, pattern: &str) -> anyhow::Result<(f64, f64, f64)> {
    let row = client
        .query_one(
            "select extract(epoch from min(received_at))::float8, \
                    extract(epoch from min(processed_at))::float8, \
                    extract(epoch from max(processed_at))::float8 \
             from event_log where event_id like $1",
            &[&pattern],
        )
        .await
        .context("reading event times")?;
    Ok(three_floats(&row))
}

/// Lag from receipt to commit of the events matching `pattern`, in milliseconds:
/// `(p50, p99, max)`.
pub async fn lag_ms(client: &Client, pattern: &str) -> anyhow::Result<(f64, f64, f64)> {
    let row = client
        .query_one(
            "select percentile_cont(0.5) within group (order by lag), \
                    percentile_cont(0.99) within group (order by lag), \
                    max(lag) \
             from (select extract(epoch from processed_at - received_at)::float8 * 1000 as lag \
                   from event_log where event_id like $1) l",
            &[&pattern],
        )
        .await
        .context("computing the lag percentiles")?;
    Ok(three_floats(&row))
}

/// The first three columns of `row`, nullable `float8`s, a null as 0.
fn three_floats(row: &tokio_postgres::Row) -> (f64, f64, f64) {
    let float = |i| row.get::<_, Option<f64>>(i).unwrap_or_default();
    (float(0), float(1), float(2))
}

/// Rows in `dead_letters`.
pub async fn dead_letter_count(client: &Client) -> anyhow::Result<i64> {
    let row = client
        .query_one("select count(*) from dead_letters", &[])
        .await
        .context("counting dead letters")?;
    Ok(row.get(0))
}

/// Writes the one-event script and the batch script into `dir`.
pub fn write_scripts(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let one = dir.join("event-1.sql");
    let many = dir.join("events-n.sql");
    std::fs::write(&one, EVENT_SCRIPT).with_context(|| format!("writing {}", one.display()))?;
    std::fs::write(&many, EVENTS_SCRIPT).with_context(|| format!("writing {}", many.display()))?;
    Ok((one, many))
}

/// What pgbench reported.
#[derive(Debug, Clone, Copy)]
pub struct PgbenchResult {
    /// Transactions per second, without the initial connection time.
    pub tps: f64,
    /// Failed transactions.
    pub failed: u64,
}

/// `pgbench -n -M prepared -c <clients> -j 2 -T <secs> [-D <define>…] -f <script>` in `schema`;
/// its output goes to `log`.
pub async fn pgbench(
    url: &str,
    schema: &str,
    script: &Path,
    defines: &[String],
    clients: u32,
    secs: u64,
    log: &Path,
) -> anyhow::Result<PgbenchResult> {
    let output = tokio::process::Command::new("pgbench")
        .args([
            "-n",
            "-M",
            "prepared",
            "-c",
            &clients.to_string(),
            "-j",
            "2",
        ])
        .args(["-T", &secs.to_string()])
        .args(defines.iter().flat_map(|d| ["-D", d.as_str()]))
        .arg("-f")
        .arg(script)
        .arg(url)
        .env("PGOPTIONS", format!("-c search_path={schema}"))
        .kill_on_drop(true)
        .output()
        .await
        .context("running pgbench (Debian's postgresql-client)")?;
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::write(log, &text).with_context(|| format!("writing {}", log.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "pgbench failed ({}):\n{}",
        output.status,
        log_tail(log, 15)
    );
    parse_pgbench(&text)
}

fn parse_pgbench(text: &str) -> anyhow::Result<PgbenchResult> {
    let tps = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("tps = ")?
                .strip_suffix("(without initial connection time)")?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .context("no `tps = … (without initial connection time)` in pgbench's output")?;
    let failed = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("number of failed transactions: ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    Ok(PgbenchResult { tps, failed })
}

#[cfg(test)]
mod tie;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scripts_run_the_worker_statements_once_per_transaction() {
        for script in [EVENT_SCRIPT, EVENTS_SCRIPT] {
            for statement in [
                "insert into event_log",
                "cross join lateral (select pc.account_id from provider_customers pc",
                "insert into payments",
                "insert into tasks",
            ] {
                assert_eq!(script.matches(statement).count(), 1, "{statement}");
            }
            assert_eq!(script.matches("BEGIN;").count(), 1);
            assert_eq!(script.matches("COMMIT;").count(), 1);
            assert!(
                !script.contains("update event_log"),
                "rows carry their account"
            );
        }
        assert!(EVENTS_SCRIPT.contains("generate_series(1, :n)"));
        assert!(EVENTS_SCRIPT.contains(":client_id + 8 * ((:base + g) % 125)"));
    }

    #[test]
    fn pgbench_output_is_parsed() {
        let out = "number of failed transactions: 3 (0.1%)\nlatency average = 6.5 ms\n\
                   initial connection time = 47.360 ms\ntps = 1217.488477 (without initial connection time)\n";
        let r = parse_pgbench(out).unwrap();
        assert!((r.tps - 1217.488477).abs() < 1e-9);
        assert_eq!(r.failed, 3);
    }
}
