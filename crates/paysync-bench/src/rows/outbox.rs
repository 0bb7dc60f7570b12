//! The `outbox` group: how fast the dispatcher drains a backlog against a destination that
//! enforces a rate limit (and how often it overruns it), and the sustained end-to-end rate of
//! `paysync up` while its dispatcher delivers what the events ask for.

use std::time::{Duration, Instant};

use paysync_testkit::fakes::hubspot::FakeHubspot;
use paysync_testkit::fakes::slack::FakeSlack;

use super::common::{
    Checks, STOP_GRACE, database_env, loadgen_args, ready, receiver_env, spawn_paysync,
};
use super::e2e::load;
use crate::pg;
use crate::procs::free_addr;
use crate::report::{Row, Samples, num};
use crate::run::Bench;

/// The drain row.
const DRAIN: &str = "outbox drain (chat, fake limited to 400 req/s)";
/// The end-to-end row with the dispatcher.
const E2E_DISPATCH: &str = "end to end, sustained, dispatcher delivering (paysync up)";

/// The fake's limit, requests per rolling second (Slack allows one message a second per
/// webhook; a rate this high makes the drain measurable in seconds).
const LIMIT: u32 = 400;
/// The dispatcher's configured rate: 95 % of the limit. A token bucket at exactly the limit
/// admits one request more than a rolling one-second window in some windows.
const CONFIGURED: f64 = LIMIT as f64 * 0.95;
/// The HubSpot token the fake accepts.
const TOKEN: &str = "pat-bench-token";

/// The rows this group fills, for a failure.
pub(super) fn names() -> Vec<String> {
    vec![DRAIN.into(), E2E_DISPATCH.into()]
}

/// Both rows, `bench.runs` times each.
pub(super) async fn measure(bench: &Bench) -> anyhow::Result<Vec<Row>> {
    let (mut rates, mut shares) = (Samples::new(), Samples::new());
    let mut checks = Checks::default();
    for run in 0..bench.runs {
        let (rate, share) = drain(bench, run, &mut checks).await?;
        bench.progress(format!(
            "outbox drain, run {}/{}: {} deliveries/s ({} % of the limit), {} % answered 429",
            run + 1,
            bench.runs,
            num(rate),
            num(100.0 * rate / f64::from(LIMIT)),
            num(100.0 * share)
        ));
        rates.push(rate);
        shares.push(share);
    }
    let mut e2e_rates = Samples::new();
    let mut e2e_checks = Checks::default();
    let mut delivered = Vec::new();
    for run in 0..bench.runs {
        let (rate, sent, created) = sustained(bench, run, &mut e2e_checks).await?;
        bench.progress(format!(
            "end to end with the dispatcher, run {}/{}: {} events/s; {sent} of {created} deliveries sent by the end",
            run + 1,
            bench.runs,
            num(rate)
        ));
        e2e_rates.push(rate);
        delivered.push(format!("{sent}/{created}"));
    }
    Ok(vec![
        Row::median(
            DRAIN,
            &rates,
            "deliveries/s",
            format!("×{:.2} of the limit", rates.median() / f64::from(LIMIT)),
            format!(
                "{} chat deliveries, dispatcher rate {} req/s, 32 at once; first to last request at the fake; 429 share median {} % (target < 1 %), ratio target ≥ 0.90; {}",
                num(bench.plan.outbox_backlog as f64),
                num(CONFIGURED),
                num(100.0 * shares.median()),
                checks.note("every delivery sent exactly once")
            ),
        ),
        Row::median(
            E2E_DISPATCH,
            &e2e_rates,
            "events/s",
            "–",
            format!(
                "as the end-to-end row, with team chat and HubSpot configured against fakes in the bench process, at their default rates (chat 1/s, HubSpot 9 requests/s): every first payment records a new-customer message and a deal upsert in its transaction; deliveries sent/created when the load ended: {}; {}",
                delivered.join(", "),
                e2e_checks.note("all 2xx, every event committed")
            ),
        ),
    ])
}

/// One drain: a backlog seeded in a fresh schema, a dispatcher started on it, until every
/// delivery is sent. Returns deliveries per second (first to last request at the fake) and
/// the share of requests answered 429.
async fn drain(bench: &Bench, run: usize, checks: &mut Checks) -> anyhow::Result<(f64, f64)> {
    let n = bench.plan.outbox_backlog;
    let schema = format!("{}_o{run}", bench.schema_base);
    bench.cleanup.schema(&schema);
    pg::migrate(&bench.paysync, &bench.db_url, &schema, bench.logs()).await?;
    let client = pg::connect(&bench.db_url, Some(&schema)).await?;
    client
        .batch_execute(&format!(
            "insert into outbox_destinations (name, configured) values ('chat', true); \
             insert into outbox_deliveries \
               (destination, operation, idempotency_key, provider, intent, source_id) \
             select 'chat', 'chat.churn', 'bench:' || g, 'stripe', 'churn', 'sub_' || g \
             from generate_series(1, {n}) g"
        ))
        .await?;
    let slack = FakeSlack::start().await;
    slack.set_rate_limit(Some(LIMIT));
    let metrics = free_addr()?;
    let mut env = database_env(bench, &schema);
    env.extend([
        ("PAYSYNC_CHAT_WEBHOOK_URL", slack.webhook_url()),
        ("PAYSYNC_CHAT_RATE", CONFIGURED.to_string()),
        ("PAYSYNC_CHAT_CONCURRENCY", "32".to_owned()),
        ("PAYSYNC_CHAT_MAX_AGE_SECS", "86400".to_owned()),
        ("PAYSYNC_METRICS_ADDR", metrics.to_string()),
    ]);
    bench.quiesce("outbox-drain").await;
    let prefix = bench.prefix_for("outbox");
    let mut dispatcher = spawn_paysync(
        bench,
        &format!("dispatcher-{run}"),
        "dispatcher",
        &prefix,
        env,
    )?;
    ready(&mut dispatcher, metrics).await?;
    let deadline =
        Instant::now() + Duration::from_secs(60) + Duration::from_secs_f64(n as f64 / 50.0);
    loop {
        let sent: i64 = client
            .query_one(
                "select count(*) from outbox_deliveries where state = 'sent'",
                &[],
            )
            .await?
            .get(0);
        if sent as u64 >= n {
            break;
        }
        dispatcher.ensure_running()?;
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {sent} of {n} deliveries sent in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    dispatcher.terminate(STOP_GRACE).await?;
    let requests = slack.requests();
    let delivered: std::collections::BTreeSet<String> = slack
        .delivered()
        .iter()
        .filter_map(|b| b["blocks"][0]["block_id"].as_str().map(str::to_owned))
        .collect();
    checks.expect(
        delivered.len() as u64 == n && slack.delivered().len() as u64 == n,
        || {
            format!(
                "run {run}: {} accepted, {} distinct, of {n}",
                slack.delivered().len(),
                delivered.len()
            )
        },
    );
    let (first, last) = match (requests.first(), requests.last()) {
        (Some(f), Some(l)) if l.at > f.at => (f.at, l.at),
        _ => anyhow::bail!("no requests reached the fake"),
    };
    let rate = n as f64 / (last - first).as_secs_f64();
    let share = slack.throttled() as f64 / requests.len() as f64;
    Ok((rate, share))
}

/// One sustained load of `paysync up` with chat and HubSpot configured against fakes. Returns
/// events per second (load start to last commit) and the deliveries sent and created.
async fn sustained(
    bench: &Bench,
    run: usize,
    checks: &mut Checks,
) -> anyhow::Result<(f64, i64, i64)> {
    let schema = format!("{}_od{run}", bench.schema_base);
    bench.cleanup.schema(&schema);
    let slack = FakeSlack::start().await;
    let hubspot = FakeHubspot::start(TOKEN).await;
    let http = free_addr()?;
    let worker_metrics = free_addr()?;
    let dispatcher_metrics = free_addr()?;
    let mut env = database_env(bench, &schema);
    env.extend(receiver_env(bench, http)?);
    env.extend([
        ("PAYSYNC_WORKER_METRICS_ADDR", worker_metrics.to_string()),
        (
            "PAYSYNC_DISPATCHER_METRICS_ADDR",
            dispatcher_metrics.to_string(),
        ),
        ("PAYSYNC_CHAT_WEBHOOK_URL", slack.webhook_url()),
        // The destinations' production rates (Slack 1 message/s, HubSpot 9 requests/s).
        ("PAYSYNC_HUBSPOT_TOKEN", TOKEN.to_owned()),
        ("PAYSYNC_HUBSPOT_API_BASE", hubspot.api_base()),
        // The bench has no mail catcher: email off (`paysync up` would use the local one).
        ("PAYSYNC_SMTP_URL", "smtp://127.0.0.1:1".to_owned()),
        (
            "PAYSYNC_EMAIL_FROM",
            "bench <bench@paysync.localhost>".to_owned(),
        ),
    ]);
    let prefix = bench.prefix_for("outbox-e2e");
    let mut up = spawn_paysync(bench, &format!("up-dispatch-{run}"), "up", &prefix, env)?;
    ready(&mut up, http).await?;
    ready(&mut up, worker_metrics).await?;
    ready(&mut up, dispatcher_metrics).await?;
    let client = pg::connect(&bench.db_url, Some(&schema)).await?;
    let url = format!("http://{http}/webhooks/stripe");
    let mut args = loadgen_args(bench, &url, bench.tag("od", run));
    args.count = Some(bench.plan.e2e_count);
    let name = format!("loadgen-e2e-dispatch-{run}");
    let (sustained, committed, pattern) =
        load(bench, run, &name, args, (&client, &mut up), checks).await?;
    let (_, _, last_commit) = pg::spans(&client, &pattern).await?;
    let start = sustained.start_unix_ms as f64 / 1000.0;
    let rate = committed as f64 / (last_commit - start);
    let row = client
        .query_one(
            "select count(*) filter (where state = 'sent'), count(*) from outbox_deliveries",
            &[],
        )
        .await?;
    up.terminate(STOP_GRACE).await?;
    Ok((rate, row.get(0), row.get(1)))
}
