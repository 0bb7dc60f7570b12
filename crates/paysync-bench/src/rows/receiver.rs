//! The `receiver` group, rows b and c: the minimal receiver (the ceiling) and `paysync
//! receiver`, at full speed in ABBA blocks and at a fixed rate for the latency, plus the
//! receiver's peak RSS.
//!
//! Rule of thumb: every load starts on an empty queue and a quiet machine, and the two
//! receivers take turns, so neither always meets what the other left behind.

use std::time::Duration;

use super::WithPeak;
use super::common::{
    Checks, Latencies, STOP_GRACE, check_answers, expected_count, fixed_rate, loadgen_args, mib,
    ratio, ready, receiver_env, spawn_paysync,
};
use crate::broker;
use crate::loadgen::{LoadReport, LoadgenArgs};
use crate::procs::{self, Proc, free_addr};
use crate::report::{Row, Samples, num};
use crate::run::Bench;

/// The minimal receiver's row.
pub(super) const MINI: &str = "receiver ceiling (minimal receiver)";
/// The receiver's full-speed row.
pub(super) const RECEIVER: &str = "receiver, full speed";
/// The receiver's peak RSS row.
pub(super) const RECEIVER_PEAK: &str = "receiver peak RSS (VmHWM)";

/// How long a receiver row's queue count may take to settle after its load.
const RECEIVER_SETTLE: Duration = Duration::from_secs(15);

/// The latency row's name.
pub(super) fn latency_name(bench: &Bench) -> String {
    format!("receiver latency at {}/s", num(bench.plan.rate))
}

/// The rows this group fills, for a failure.
pub(super) fn names(bench: &Bench) -> Vec<String> {
    vec![MINI.into(), RECEIVER.into(), latency_name(bench)]
}

/// Answers and seconds over several loads of one receiver.
#[derive(Debug, Default)]
struct Throughput {
    answers: f64,
    secs: f64,
}

impl Throughput {
    fn add(&mut self, report: &LoadReport) {
        self.answers += report.rps * report.elapsed_secs;
        self.secs += report.elapsed_secs;
    }

    fn rps(&self) -> f64 {
        if self.secs > 0.0 {
            self.answers / self.secs
        } else {
            0.0
        }
    }
}

/// Whether the minimal receiver takes block `block` (0–3) of run `run`: ABBA in even runs,
/// BAAB in odd ones, the minimal receiver being A.
fn mini_turn(run: usize, block: usize) -> bool {
    (block == 0 || block == 3) == run.is_multiple_of(2)
}

/// How a receiver load sends its requests.
#[derive(Debug, Clone, Copy)]
enum LoadMode {
    /// This many at full speed.
    Count(u64),
    /// An open loop at `rate` per second for `secs`.
    Rate { rate: f64, secs: f64 },
}

/// One of the two receivers under test, and the queue it publishes into.
struct Target<'a> {
    /// In the load generator's process name: `loadgen-<label>-…`.
    label: &'static str,
    url: &'a str,
    queue: &'a str,
    /// What the queue holds, for the check's message.
    what: &'static str,
    /// Whose requests the load generator signs.
    provider: &'static str,
    /// PayPal: the certificate URL the requests name.
    cert_url: Option<&'a str>,
}

impl<'a> Target<'a> {
    /// A load of this receiver, its process named `loadgen-<label>-<suffix>`.
    fn load(&'a self, suffix: String, tag: String, mode: LoadMode) -> ReceiverLoad<'a> {
        ReceiverLoad {
            target: self,
            name: format!("loadgen-{}-{suffix}", self.label),
            tag,
            mode,
        }
    }
}

/// One load of a receiver (minimal or real) into its queue.
struct ReceiverLoad<'a> {
    target: &'a Target<'a>,
    name: String,
    tag: String,
    mode: LoadMode,
}

/// Runs `load` on an empty queue and a quiet machine, checks every answer (and, at a fixed
/// rate, that every due request was sent) and that the queue holds every accepted message,
/// and empties the queue again.
async fn receiver_load(
    bench: &Bench,
    run: usize,
    load: ReceiverLoad<'_>,
    checks: &mut Checks,
) -> anyhow::Result<LoadReport> {
    let target = load.target;
    broker::purge(&bench.amqp, target.queue).await?;
    bench.quiesce(&load.name).await;
    let args = LoadgenArgs {
        provider: target.provider.to_owned(),
        cert_url: target.cert_url.map(str::to_owned),
        ..loadgen_args(bench, target.url, load.tag)
    };
    let (args, due) = match load.mode {
        LoadMode::Count(count) => (
            LoadgenArgs {
                count: Some(count),
                ..args
            },
            count,
        ),
        LoadMode::Rate { rate, secs } => (fixed_rate(args, rate, secs), expected_count(rate, secs)),
    };
    let report = procs::loadgen(&bench.exe, bench.logs(), &load.name, &args).await?;
    check_answers(checks, &format!("run {run}"), &report);
    let held =
        broker::settled_count(&bench.amqp, target.queue, report.ok(), RECEIVER_SETTLE).await?;
    checks.expect(held == report.ok() && report.sent == due, || {
        format!(
            "run {run}: {} of {due} requests sent, the queue holds {held} of {} accepted {}",
            report.sent,
            report.ok(),
            target.what
        )
    });
    broker::purge(&bench.amqp, target.queue).await?;
    Ok(report)
}

/// Starts the minimal receiver publishing into `queue`; returns it and its address.
async fn start_mini(bench: &Bench, queue: &str) -> anyhow::Result<(Proc, std::net::SocketAddr)> {
    let addr = free_addr()?;
    let mut mini = Proc::spawn(
        "mini-receiver",
        &bench.exe,
        &[
            "mini-receiver".to_owned(),
            "--listen".to_owned(),
            addr.to_string(),
            "--queue".to_owned(),
            queue.to_owned(),
            "--secret".to_owned(),
            bench.secret.clone(),
            "--amqp-url".to_owned(),
            bench.amqp_url.clone(),
        ],
        &[],
        bench.logs(),
    )?;
    ready(&mut mini, addr).await?;
    Ok((mini, addr))
}

/// Rows b and c: the minimal receiver and the real one, paired per run.
pub(super) async fn measure(bench: &Bench) -> anyhow::Result<WithPeak> {
    let plan = &bench.plan;
    let mini_queue = format!("{}.bench.mini", bench.prefix);
    bench.cleanup.queue(&mini_queue);
    let (mini, mini_addr) = start_mini(bench, &mini_queue).await?;

    let prefix = bench.prefix_for("recv");
    let work_queue = format!("{prefix}.work");
    let http = free_addr()?;
    let mut receiver = spawn_paysync(
        bench,
        "receiver",
        "receiver",
        &prefix,
        receiver_env(bench, http)?,
    )?;
    ready(&mut receiver, http).await?;

    let mini_url = format!("http://{mini_addr}/webhooks/stripe");
    let url = format!("http://{http}/webhooks/stripe");
    let (mut mini_rps, mut rps, mut ratios) = (Samples::new(), Samples::new(), Samples::new());
    let mut latencies = Latencies::default();
    let (mut mini_checks, mut checks, mut rate_checks) =
        (Checks::default(), Checks::default(), Checks::default());
    let mut body_bytes = 0.0;
    let mini_target = Target {
        label: "mini",
        url: &mini_url,
        queue: &mini_queue,
        what: "messages",
        provider: "stripe",
        cert_url: None,
    };
    let real_target = Target {
        label: "receiver",
        url: &url,
        queue: &work_queue,
        what: "events",
        provider: "stripe",
        cert_url: None,
    };
    // The fixed-rate runs first, on an empty queue and a settled broker: after a full-speed
    // run the broker is still digesting its backlog for a while, and the latency would time
    // that instead. The minimal receiver takes the same rate, in turn with paysync's (first
    // in one run, second in the next), as the reference for what the broker and the host
    // cost at that rate.
    let mut fixed_runs = Vec::with_capacity(bench.runs);
    let mut mini_p99 = Samples::new();
    let mut mini_rate_checks = Checks::default();
    let fixed = LoadMode::Rate {
        rate: plan.rate,
        secs: plan.rate_secs,
    };
    for run in 0..bench.runs {
        let real_load = real_target.load(format!("rate-{run}"), bench.tag("d", run), fixed);
        let mini_load = mini_target.load(format!("rate-{run}"), bench.tag("e", run), fixed);
        let (real_report, mini_report) = if run % 2 == 0 {
            let real_report = receiver_load(bench, run, real_load, &mut rate_checks).await?;
            let mini_report = receiver_load(bench, run, mini_load, &mut mini_rate_checks).await?;
            (real_report, mini_report)
        } else {
            let mini_report = receiver_load(bench, run, mini_load, &mut mini_rate_checks).await?;
            let real_report = receiver_load(bench, run, real_load, &mut rate_checks).await?;
            (real_report, mini_report)
        };
        latencies.push(real_report.p50_ms, real_report.p99_ms, real_report.max_ms);
        mini_p99.push(mini_report.p99_ms);
        fixed_runs.push((real_report, mini_report));
    }
    // Each run measures the two receivers in four blocks of half the count, in the order
    // ABBA (BAAB in the next run): a drift of the host's speed over the run then costs both
    // the same, and neither always meets what the other left behind.
    let block_count = (plan.http_count / 2).max(1);
    for (run, (fixed, mini_fixed)) in fixed_runs.iter().enumerate() {
        let (mut mini_total, mut real_total) = (Throughput::default(), Throughput::default());
        for block in 0..4 {
            let mini_turn = mini_turn(run, block);
            let (target, letter, checks, total) = if mini_turn {
                (&mini_target, "b", &mut mini_checks, &mut mini_total)
            } else {
                (&real_target, "c", &mut checks, &mut real_total)
            };
            let load = target.load(
                format!("{run}-{block}"),
                bench.tag(&format!("{letter}{block}"), run),
                LoadMode::Count(block_count),
            );
            let report = receiver_load(bench, run, load, checks).await?;
            total.add(&report);
            if mini_turn {
                body_bytes = report.body_bytes_mean;
            }
        }
        let (ceiling, full) = (mini_total.rps(), real_total.rps());
        mini_rps.push(ceiling);
        rps.push(full);
        ratios.push(full / ceiling);
        bench.progress(format!(
            "receivers, run {}/{}: minimal {} req/s, receiver {} req/s (×{:.2}), at {}/s p50 {} ms p99 {} ms max {} ms (minimal receiver p99 {} ms)",
            run + 1,
            bench.runs,
            num(ceiling),
            num(full),
            full / ceiling,
            num(plan.rate),
            num(fixed.p50_ms),
            num(fixed.p99_ms),
            num(fixed.max_ms),
            num(mini_fixed.p99_ms)
        ));
    }
    let receiver_peak = receiver.peak_rss_kib()?;
    let mini_peak = mini.peak_rss_kib()?;
    receiver.terminate(STOP_GRACE).await?;
    mini.terminate(STOP_GRACE).await?;
    let load = format!(
        "{} signed events (mean {} B) per run in two blocks, the two receivers' blocks in the order ABBA (BAAB in the next run), {} keep-alive connections",
        num((2 * block_count) as f64),
        num(body_bytes),
        plan.connections
    );
    let rows = vec![
        Row::median(
            MINI,
            &mini_rps,
            "req/s",
            "–",
            format!(
                "{load}; axum + HMAC check + confirmed publish (2 channels) into a quorum queue; {}",
                mini_checks.note("all 2xx, the queue held every message")
            ),
        ),
        Row::median(
            RECEIVER,
            &rps,
            "req/s",
            format!("{} of the minimal receiver", ratio(&ratios)),
            format!(
                "{load}; ratio per run, to the minimal receiver of the same run; {}",
                checks.note("all 2xx, the work queue held every event")
            ),
        ),
        latencies.row(
            latency_name(bench),
            format!(
                "open loop for {} s, latency from each request's scheduled time; {}; the minimal receiver at the same rate, in turn with it: p99 {} ms{}, {}",
                plan.rate_secs,
                rate_checks.note("all 2xx, the work queue held every event"),
                num(mini_p99.median()),
                if mini_p99.len() < 2 {
                    String::new()
                } else {
                    format!(" (runs {})", mini_p99.range(" ms"))
                },
                mini_rate_checks.note("all 2xx, the queue held every message")
            ),
        ),
    ];
    let peak = Row::new(
        RECEIVER_PEAK,
        format!("{} MiB", num(mib(receiver_peak))),
        "–",
        "–",
        format!(
            "paysync receiver over all runs of its rows (one process); minimal receiver {} MiB",
            num(mib(mini_peak))
        ),
    );
    Ok(WithPeak { rows, peak })
}

/// The providers with a receiver row of their own (Stripe's is [`RECEIVER`]).
const PROVIDERS: [&str; 3] = ["square", "authorizenet", "paypal"];

/// The full-speed row of `provider`.
fn provider_row(provider: &str) -> String {
    format!("receiver, {provider} full speed")
}

/// The rows of the providers group, for a failure.
pub(super) fn provider_names() -> Vec<String> {
    PROVIDERS.iter().map(|p| provider_row(p)).collect()
}

/// The providers group: `paysync receiver` with Square, Authorize.Net and PayPal configured,
/// each provider's signed requests at full speed against the minimal receiver (Stripe's HMAC)
/// in ABBA blocks, the ratio per run. PayPal's certificate is served by this process and
/// cached by the receiver after the first request, so its row times the RSA check.
pub(super) async fn measure_providers(bench: &Bench) -> anyhow::Result<Vec<Row>> {
    let plan = &bench.plan;
    let mini_queue = format!("{}.bench.mini-providers", bench.prefix);
    bench.cleanup.queue(&mini_queue);
    let (mini, mini_addr) = start_mini(bench, &mini_queue).await?;

    let leaf: &'static [u8] = include_bytes!("../../../../fixtures/paypal-local/leaf.pem");
    let cert_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let cert_addr = cert_listener.local_addr()?;
    let cert_server = tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/v1/notifications/certs/CERT-bench",
            axum::routing::get(move || async move { leaf }),
        );
        let _ = axum::serve(cert_listener, app).await;
    });
    let ca_file = bench.logs().join("paypal-local-ca.pem");
    std::fs::write(
        &ca_file,
        include_bytes!("../../../../fixtures/paypal-local/ca.pem"),
    )?;
    let cert_url = format!("http://{cert_addr}/v1/notifications/certs/CERT-bench");

    let prefix = bench.prefix_for("recv-providers");
    let work_queue = format!("{prefix}.work");
    let http = free_addr()?;
    let square_url = format!("http://{http}/webhooks/square");
    let mut env = receiver_env(bench, http)?;
    env.extend([
        ("PAYSYNC_SQUARE_SIGNATURE_KEY", bench.secret.clone()),
        ("PAYSYNC_SQUARE_NOTIFICATION_URL", square_url),
        (
            "PAYSYNC_AUTHORIZENET_SIGNATURE_KEY",
            crate::loadgen::ANET_KEY.to_owned(),
        ),
        (
            "PAYSYNC_PAYPAL_WEBHOOK_ID",
            crate::loadgen::PAYPAL_WEBHOOK_ID.to_owned(),
        ),
        ("PAYSYNC_PAYPAL_CERT_HOSTS", cert_addr.to_string()),
        ("PAYSYNC_PAYPAL_CA_FILE", ca_file.display().to_string()),
    ]);
    let mut receiver = spawn_paysync(bench, "receiver-providers", "receiver", &prefix, env)?;
    ready(&mut receiver, http).await?;

    let mini_url = format!("http://{mini_addr}/webhooks/stripe");
    let mini_target = Target {
        label: "mini",
        url: &mini_url,
        queue: &mini_queue,
        what: "messages",
        provider: "stripe",
        cert_url: None,
    };
    let urls: Vec<String> = PROVIDERS
        .iter()
        .map(|p| format!("http://{http}/webhooks/{p}"))
        .collect();
    let block_count = (plan.http_count / 2).max(1);
    let mut rows = Vec::new();
    for (provider, url) in PROVIDERS.iter().zip(&urls) {
        let target = Target {
            label: provider,
            url,
            queue: &work_queue,
            what: "events",
            provider,
            cert_url: (*provider == "paypal").then_some(cert_url.as_str()),
        };
        let (mut rps, mut ratios) = (Samples::new(), Samples::new());
        let (mut mini_checks, mut checks) = (Checks::default(), Checks::default());
        for run in 0..bench.runs {
            let (mut mini_total, mut real_total) = (Throughput::default(), Throughput::default());
            for block in 0..4 {
                let mini_turn = mini_turn(run, block);
                let (t, checks, total) = if mini_turn {
                    (&mini_target, &mut mini_checks, &mut mini_total)
                } else {
                    (&target, &mut checks, &mut real_total)
                };
                let load = t.load(
                    format!("{provider}-{run}-{block}"),
                    bench.tag(&format!("p{}{block}", &provider[..2]), run),
                    LoadMode::Count(block_count),
                );
                total.add(&receiver_load(bench, run, load, checks).await?);
            }
            let (ceiling, full) = (mini_total.rps(), real_total.rps());
            rps.push(full);
            ratios.push(full / ceiling);
            bench.progress(format!(
                "receiver {provider}, run {}/{}: minimal {} req/s, {provider} {} req/s (×{:.2})",
                run + 1,
                bench.runs,
                num(ceiling),
                num(full),
                full / ceiling
            ));
        }
        rows.push(Row::median(
            provider_row(provider),
            &rps,
            "req/s",
            format!("{} of the minimal receiver", ratio(&ratios)),
            format!(
                "{} signed events per run in two blocks, ABBA against the minimal receiver of the same run, {} keep-alive connections; {}; {}",
                num((2 * block_count) as f64),
                plan.connections,
                if *provider == "paypal" {
                    "RSA-2048 check with the cached certificate"
                } else {
                    "HMAC check"
                },
                checks.note("all 2xx, the work queue held every event")
            ),
        ));
    }
    receiver.terminate(STOP_GRACE).await?;
    mini.terminate(STOP_GRACE).await?;
    cert_server.abort();
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_receivers_take_their_blocks_abba_then_baab() {
        let order = |run| {
            (0..4)
                .map(|block| mini_turn(run, block))
                .collect::<Vec<_>>()
        };
        assert_eq!(order(0), [true, false, false, true]);
        assert_eq!(order(1), [false, true, true, false]);
        assert_eq!(order(2), order(0));
    }

    #[test]
    fn throughput_is_answers_over_seconds_across_loads() {
        let report = |rps, elapsed_secs| LoadReport {
            sent: 0,
            status: Default::default(),
            errors: 0,
            elapsed_secs,
            rps,
            p50_ms: 0.0,
            p99_ms: 0.0,
            max_ms: 0.0,
            start_unix_ms: 0,
            body_bytes_mean: 0.0,
            prebuilt: true,
        };
        let mut total = Throughput::default();
        assert_eq!(total.rps(), 0.0);
        total.add(&report(1000.0, 1.0));
        total.add(&report(2000.0, 3.0));
        assert_eq!(total.rps(), 1750.0);
    }
}
