//! The rows of the table, each measured `runs` times (except the long memory run): one module
//! per group of rows that `--only` selects (`broker`, `receiver`, `pgbench`, `worker`, `e2e`,
//! `outbox`, `reconcile`, `console`, `memory`, and `cluster`, measured only when named), what they share in `common`, and here the order
//! of the table.
//!
//! A row that fails is reported as `FAILED` with its error, and the others still run. Checks
//! that do not stop a measurement (every answer 2xx, every message in the queue, every event
//! committed, no dead letter) are listed in the row's notes, as `CHECK FAILED: …` when one
//! did not hold.

mod broker;
mod cluster;
mod common;
mod console;
mod e2e;
mod memory;
mod outbox;
mod pgbench;
mod receiver;
mod reconcile;
mod worker;

use crate::report::Row;
use crate::run::{Bench, Group};

/// A group's rows, and its process's peak RSS row, which the table lists with the memory rows.
struct WithPeak {
    rows: Vec<Row>,
    peak: Row,
}

/// Measures every row (or the groups `--only` selected), in the table's order.
pub async fn all(bench: &Bench) -> Vec<Row> {
    let mut rows = Vec::new();
    if bench.measures(Group::Broker) {
        let measured = broker::measure(bench).await.map(|row| vec![row]);
        rows.extend(or_failed(bench, measured, vec![broker::BROKER.into()]));
    }
    let mut receiver_peak = None;
    if bench.measures(Group::Receiver) {
        let measured = receiver::measure(bench).await;
        let (measured, peak) = split_peak(measured, receiver::RECEIVER_PEAK, "receiver");
        rows.extend(or_failed(bench, measured, receiver::names(bench)));
        receiver_peak = Some(peak);
    }
    let mut pgbench_out = None;
    if bench.measures(Group::Providers) {
        let measured = receiver::measure_providers(bench).await;
        rows.extend(or_failed(bench, measured, receiver::provider_names()));
    }
    if bench.measures(Group::Pgbench) {
        match pgbench::measure(bench).await {
            Ok(out) => {
                rows.extend(out.rows.iter().cloned());
                pgbench_out = Some(out);
            }
            Err(e) => rows.extend(or_failed(bench, Err(e), pgbench::names(bench))),
        }
    }
    let mut worker_peak = None;
    if bench.measures(Group::Worker) {
        let measured = worker::measure(bench, pgbench_out.as_ref()).await;
        let (measured, peak) = split_peak(measured, worker::WORKER_PEAK, "worker");
        rows.extend(or_failed(bench, measured, vec![worker::WORKER.into()]));
        worker_peak = Some(peak);
    }
    if bench.measures(Group::E2e) {
        let measured = e2e::measure(bench).await;
        rows.extend(or_failed(bench, measured, e2e::names(bench)));
    }
    if bench.measures(Group::Outbox) {
        let measured = outbox::measure(bench).await;
        rows.extend(or_failed(bench, measured, outbox::names()));
    }
    if bench.measures(Group::Reconcile) {
        let measured = reconcile::measure(bench).await;
        rows.extend(or_failed(bench, measured, reconcile::names()));
    }
    if bench.measures(Group::Console) {
        let measured = console::measure(bench).await;
        rows.extend(or_failed(bench, measured, console::names()));
    }
    if bench.measures(Group::Cluster) {
        let measured = cluster::measure(bench).await;
        rows.extend(or_failed(bench, measured, cluster::names()));
    }
    rows.extend(receiver_peak);
    rows.extend(worker_peak);
    if bench.measures(Group::Memory) {
        let measured = memory::measure(bench).await;
        rows.extend(or_failed(bench, measured, memory::names()));
    }
    rows
}

/// The group's rows and its peak RSS row; when the group failed, the peak row says so (named
/// `peak`, the group's main row being `what`).
fn split_peak(
    measured: anyhow::Result<WithPeak>,
    peak: &str,
    what: &str,
) -> (anyhow::Result<Vec<Row>>, Row) {
    match measured {
        Ok(out) => (Ok(out.rows), out.peak),
        Err(e) => (
            Err(e),
            Row::new(peak, "n/a", "–", "–", format!("the {what} row failed")),
        ),
    }
}

/// The rows measured, or each of `names` as `FAILED` with the error (said once on standard
/// error).
fn or_failed(bench: &Bench, measured: anyhow::Result<Vec<Row>>, names: Vec<String>) -> Vec<Row> {
    match measured {
        Ok(rows) => rows,
        Err(error) => {
            bench.progress(format!("FAILED: {error:#}"));
            let error = anyhow::anyhow!("{error:#}");
            names
                .into_iter()
                .map(|name| Row::failed(name, &error))
                .collect()
        }
    }
}
