//! The `broker` group, row a: the broker's ceiling, bare confirmed publishes of 2 KB
//! persistent messages into a quorum queue (no paysync code in the path).

use crate::broker;
use crate::report::{Row, Samples, num};
use crate::run::Bench;

/// The row's name.
pub(super) const BROKER: &str = "broker ceiling (bare lapin, quorum)";

/// Measures the broker ceiling `bench.runs` times.
pub(super) async fn measure(bench: &Bench) -> anyhow::Result<Row> {
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
    Ok(Row::median(
        BROKER,
        &rates,
        "msg/s",
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
