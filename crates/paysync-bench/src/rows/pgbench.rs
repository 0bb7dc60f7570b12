//! The `pgbench` group, row e: the database ceilings, pgbench running the worker's own
//! statements (`pgbench/event-1.sql` and `pgbench/events-n.sql`, tied to the store's text by
//! the test in `pg/tie.rs`) for one event and for a batch per transaction.

use crate::pg;
use crate::report::{Row, Samples, num};
use crate::run::Bench;

/// The one-event row.
pub(super) const PG_ONE: &str = "pgbench, 1 event/tx";

/// The batch row's name.
fn many_name(bench: &Bench) -> String {
    format!("pgbench, {} events/tx", bench.plan.batch)
}

/// The rows this group fills, for a failure.
pub(super) fn names(bench: &Bench) -> Vec<String> {
    vec![PG_ONE.into(), many_name(bench)]
}

/// The group's rows, and its figures per run for the worker's ratios.
pub(super) struct PgbenchOut {
    /// The two rows.
    pub(super) rows: Vec<Row>,
    /// Events per second, one event per transaction, per run.
    pub(super) one: Vec<f64>,
    /// Events per second, `batch` events per transaction, per run.
    pub(super) many: Vec<f64>,
}

/// Row e: the database ceilings, pgbench with the worker's statements.
pub(super) async fn measure(bench: &Bench) -> anyhow::Result<PgbenchOut> {
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
    let (s_one, s_many) = (Samples::from(&one[..]), Samples::from(&many[..]));
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
        Row::median(
            PG_ONE,
            &s_one,
            "events/s",
            "–",
            format!("{how}; events/s = tps; {failures}"),
        ),
        Row::median(
            many_name(bench),
            &s_many,
            "events/s",
            "–",
            format!(
                "the worker's statements for a batch (crates/paysync-bench/pgbench/events-n.sql, -D n={}): one statement per kind of row for {} such events in one transaction, each client on its own customers (no lock waits between clients); events/s = {} × tps; {failures}",
                plan.batch, plan.batch, plan.batch
            ),
        ),
    ];
    Ok(PgbenchOut { rows, one, many })
}
