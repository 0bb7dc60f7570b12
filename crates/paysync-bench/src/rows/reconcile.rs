//! The `reconcile` group: how fast `paysync reconcile stripe` lists a provider's events,
//! compares them with the event log and publishes the missing ones, against a local fake of
//! Stripe's `GET /v1/events` in the bench process, with the API client's default rate limit.

use std::time::Instant;

use paysync_testkit::fakes::provider_api::FakeStripeApi;
use serde_json::json;

use super::common::{Checks, database_env};
use crate::broker;
use crate::report::{Row, Samples, num};
use crate::run::Bench;

/// The row at the default rate limit.
const ROW: &str = "reconcile (paysync reconcile stripe, half of the events missing)";
/// The row with the rate limit out of the way: the reconciler's own cost.
const ROW_FAST: &str = "reconcile, API rate limit raised to 1,000 requests/s";

/// The raised limit of [`ROW_FAST`].
const FAST_RATE: u32 = 1000;

/// The ceiling the client's defaults allow: 20 requests a second, 100 events a page.
const CEILING: f64 = 20.0 * 100.0;

/// The key the fake accepts.
const KEY: &str = "sk_test_bench_reconcile";

/// The rows this group fills, for a failure.
pub(super) fn names() -> Vec<String> {
    vec![ROW.into(), ROW_FAST.into()]
}

/// Both rows, `bench.runs` times each.
pub(super) async fn measure(bench: &Bench) -> anyhow::Result<Vec<Row>> {
    let n = bench.plan.reconcile_events;
    let mut rows = Vec::new();
    for (name, rate) in [(ROW, None), (ROW_FAST, Some(FAST_RATE))] {
        let mut rates = Samples::new();
        let mut checks = Checks::default();
        for run in 0..bench.runs {
            let (per_sec, secs) = once(bench, run, rate, &mut checks).await?;
            bench.progress(format!(
                "{name}, run {}/{}: {} events/s listed ({} s for {n} events)",
                run + 1,
                bench.runs,
                num(per_sec),
                num(secs),
            ));
            rates.push(per_sec);
        }
        let (ratio, limit) = match rate {
            None => (
                format!(
                    "×{:.2} of the rate limit's {}",
                    rates.median() / CEILING,
                    num(CEILING)
                ),
                "the API client's default limit of 20 requests/s (2,000 events/s) is the ceiling"
                    .to_owned(),
            ),
            Some(r) => (
                "–".to_owned(),
                format!("PAYSYNC_PROVIDER_API_RATE={r}, so the limit does not bind"),
            ),
        };
        rows.push(Row::median(
            name,
            &rates,
            "events/s",
            ratio,
            format!(
                "{} Stripe events listed 100 a page from a fake in the bench process, half of them already in the event log; the process's whole run (start, listing, lookups, confirmed publishes of the missing half, exit); {limit}; {}",
                num(n as f64),
                checks.note("every missing event published once, none of the logged ones")
            ),
        ));
    }
    Ok(rows)
}

/// One run: a schema with half the events logged, a fake listing all of them, `paysync
/// reconcile` from start to exit. Returns events listed per second and the seconds it took.
async fn once(
    bench: &Bench,
    run: usize,
    rate: Option<u32>,
    checks: &mut Checks,
) -> anyhow::Result<(f64, f64)> {
    let n = bench.plan.reconcile_events;
    let row = if rate.is_some() { "rf" } else { "rc" };
    let tag = bench.tag(row, run);
    let schema = bench.schema_for(&format!("{row}{run}")).await?;
    let client = crate::pg::connect(&bench.db_url, Some(&schema)).await?;
    // The even-numbered events were received as webhooks.
    client
        .batch_execute(&format!(
            "insert into event_log (provider, event_id, event_type, created, livemode, body, \
               received_at, outcome, attempts) \
             select 'stripe', 'evt_{tag}_' || (2 * g), 'payment_intent.succeeded', 0, false, \
               '{{}}'::json, now(), 'applied', 1 \
             from generate_series(0, {} - 1) g",
            n / 2
        ))
        .await?;
    let fake = FakeStripeApi::start(KEY).await;
    let now = paysync_testkit::now_secs();
    fake.add_events((0..n).map(|i| {
        json!({"id": format!("evt_{tag}_{i}"), "object": "event", "type": "payment_intent.succeeded",
               "created": now - 600 + (i % 600) as i64, "livemode": false, "api_version": "2024-06-20",
               "data": {"object": {"id": format!("pi_{tag}_{i}"), "object": "payment_intent",
               "amount": 1000, "amount_received": 1000, "currency": "usd", "customer": format!("cus_{}", i % 500)}}})
    }));
    let prefix = bench.prefix_for(&format!("{row}{run}"));
    let mut env = bench.paysync_env(&prefix);
    env.extend(
        database_env(bench, &schema)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v)),
    );
    env.push(("PAYSYNC_STRIPE_API_KEY".into(), KEY.into()));
    env.push(("PAYSYNC_STRIPE_API_BASE".into(), fake.base()));
    if let Some(r) = rate {
        env.push(("PAYSYNC_PROVIDER_API_RATE".into(), r.to_string()));
    }
    let paysync = bench.paysync.clone();
    bench.quiesce("reconcile").await;
    let started = Instant::now();
    // Off the runtime's threads: the fake answers on them meanwhile.
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(paysync)
            .args(["reconcile", "stripe", "--since", "1h", "--json"])
            .envs(env)
            .output()
    })
    .await??;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        output.status.success(),
        "paysync reconcile failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let queued = broker::message_count(&bench.amqp, &format!("{prefix}.work")).await?;
    checks.expect(
        report["listed"] == n && report["published"] == n / 2 && u64::from(queued) == n / 2,
        || {
            format!(
                "run {run}: listed {}, published {}, queued {queued}, of {n} with {} missing",
                report["listed"],
                report["published"],
                n / 2
            )
        },
    );
    Ok((n as f64 / secs, secs))
}
