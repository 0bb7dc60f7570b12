//! The load generator: signed Stripe events POSTed over keep-alive HTTP/1.1 connections.
//!
//! It runs as its own process (the orchestrator never generates load itself), so its CPU use
//! is visible and comparable between rows. Before the clock starts it builds and signs every
//! event (`t=<now>,v1=<hex>`, as Stripe does) and opens every connection; during the run a
//! request costs a refcount and a header copy. Only a run longer than the signature tolerance
//! allows (over two minutes) builds each event just before sending it instead.
//!
//! Two modes:
//! - full speed: every connection sends requests back to back;
//! - `--rate R`: open loop. Request `i` is due at `start + i/R`; whichever connection is free
//!   takes the next due request, and its latency is measured from when it was due, not from
//!   when it was sent, so a slow server cannot hide its queueing (no coordinated omission).
//!
//! At the end it prints one JSON line ([`LoadReport`]) on standard output.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST, HeaderName, HeaderValue};
use hyper::{Request, StatusCode};
use paysync_domain::stripe::signature::sign_header;
use serde::{Deserialize, Serialize};

use crate::events::{DEFAULT_CUSTOMERS, EventFactory};
use crate::http::{Body, Target, connect};

/// Runs longer than this build events on the fly: a signature made before the start would be
/// older than the receiver's tolerance (300 s) by the end.
const PREBUILD_MAX_SECS: f64 = 120.0;

/// Latencies above this (in µs) are recorded as this value.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Arguments of `paysync-bench loadgen`.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadgenArgs {
    /// Where to POST, e.g. `http://127.0.0.1:8080/webhooks/stripe`. Several comma-separated
    /// URLs spread the connections over them in turn (connection `k` goes to URL `k mod n`),
    /// as a load balancer spreads clients over receivers.
    #[arg(long)]
    pub url: String,
    /// The signing secret (`whsec_…`).
    #[arg(long)]
    pub secret: String,
    /// How many requests. With `--rate` and `--duration-secs`, rate × duration instead.
    #[arg(long)]
    pub count: Option<u64>,
    /// Keep-alive connections, one task each.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Requests per second, open loop (default: full speed).
    #[arg(long)]
    pub rate: Option<f64>,
    /// With `--rate`: how long to send.
    #[arg(long)]
    pub duration_secs: Option<f64>,
    /// Event ids are `evt_<tag>_<i>`: a tag unique to the run keeps them distinct.
    #[arg(long, default_value = "loadgen")]
    pub tag: String,
    /// How many customers the events belong to.
    #[arg(long, default_value_t = DEFAULT_CUSTOMERS)]
    pub customers: u64,
    /// Which provider's envelope and signature: stripe, square, authorizenet or paypal. The
    /// others wrap the Stripe event in their envelope (as `data`, `payload`, `resource`), so
    /// every provider's body is about the same size.
    #[arg(long, default_value = "stripe")]
    pub provider: String,
    /// PayPal: the certificate URL to name (the bench serves the local test leaf there).
    #[arg(long)]
    pub cert_url: Option<String>,
}

/// The Authorize.Net signature key of the bench (public test material).
pub const ANET_KEY: &str = "BE7CBE7CBE7CBE7CBE7CBE7CBE7CBE7CBE7CBE7CBE7CBE7CBE7CBE7CBE7CBE7CBE7CBE7CBE7CBE7CBE7CBE7CBE7CBE7CBE7CBE7CBE7CBE7CBE7CBE7CBE7CBE7C";
/// The PayPal webhook id of the bench.
pub const PAYPAL_WEBHOOK_ID: &str = "WH-BENCH";
/// The local test leaf's key, which signs PayPal requests (fixtures/paypal-local).
const PAYPAL_KEY: &[u8] = include_bytes!("../../../fixtures/paypal-local/leaf.key.pem");

/// How one provider signs.
#[derive(Clone)]
struct Signer {
    provider: String,
    secret: String,
    url: String,
    cert_url: String,
    tag: String,
}

impl Signer {
    fn new(args: &LoadgenArgs) -> Self {
        Self {
            provider: args.provider.clone(),
            secret: args.secret.clone(),
            url: urls(&args.url).next().unwrap_or_default().to_owned(),
            cert_url: args.cert_url.clone().unwrap_or_default(),
            tag: args.tag.clone(),
        }
    }

    /// The body of request `i` (a Stripe event, in the provider's envelope) and its headers.
    fn sign(&self, stripe: Vec<u8>, i: u64, t: i64) -> anyhow::Result<Prepared> {
        let header =
            |name: &'static str, value: String| -> anyhow::Result<(HeaderName, HeaderValue)> {
                Ok((
                    HeaderName::from_static(name),
                    HeaderValue::from_str(&value)?,
                ))
            };
        let inner = || String::from_utf8_lossy(&stripe).into_owned();
        let id = format!("{}-{i}", self.tag);
        let (body, headers) = match self.provider.as_str() {
            "stripe" => {
                let sig = sign_header(&self.secret, t, &stripe);
                (stripe, vec![header("stripe-signature", sig)?])
            }
            "square" => {
                let body = format!(
                    r#"{{"merchant_id":"MBENCH","type":"payment.updated","event_id":"sq-{id}","created_at":"2024-01-01T00:00:00.000Z","data":{}}}"#,
                    inner()
                )
                .into_bytes();
                let sig = paysync_domain::square::sign(&self.secret, &self.url, &body);
                (body, vec![header("x-square-hmacsha256-signature", sig)?])
            }
            "authorizenet" => {
                let body = format!(
                    r#"{{"notificationId":"an-{id}","eventType":"net.authorize.payment.authcapture.created","eventDate":"2024-01-01T00:00:00.1234567Z","webhookId":"w","payload":{}}}"#,
                    inner()
                )
                .into_bytes();
                let sig = paysync_domain::authorizenet::sign(ANET_KEY, &body);
                (body, vec![header("x-anet-signature", sig)?])
            }
            "paypal" => {
                let body = format!(
                    r#"{{"id":"WH-{id}","event_version":"1.0","create_time":"2024-01-01T00:00:00.000Z","event_type":"PAYMENT.CAPTURE.COMPLETED","resource":{}}}"#,
                    inner()
                )
                .into_bytes();
                let time = time::OffsetDateTime::from_unix_timestamp(t)?
                    .format(&time::format_description::well_known::Rfc3339)?;
                let transmission = format!("tx-{t}-{id}");
                let sig = paysync_domain::paypal::signature::sign_local(
                    PAYPAL_KEY,
                    &ring::rand::SystemRandom::new(),
                    &transmission,
                    &time,
                    PAYPAL_WEBHOOK_ID,
                    &body,
                )?;
                (
                    body,
                    vec![
                        header("paypal-transmission-id", transmission)?,
                        header("paypal-transmission-time", time)?,
                        header("paypal-transmission-sig", sig)?,
                        header("paypal-auth-algo", "SHA256withRSA".into())?,
                        header("paypal-cert-url", self.cert_url.clone())?,
                    ],
                )
            }
            other => anyhow::bail!("unknown provider {other}"),
        };
        Ok(Prepared {
            body: Bytes::from(body),
            headers,
        })
    }
}

/// What the load generator measured: its one line of JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadReport {
    /// Requests sent (answered or failed).
    pub sent: u64,
    /// Answers per HTTP status code.
    pub status: BTreeMap<String, u64>,
    /// Requests that got no answer (connection errors).
    pub errors: u64,
    /// From the start of the clock to the last answer.
    pub elapsed_secs: f64,
    /// Answers per second.
    pub rps: f64,
    /// Median latency (full speed: from sending; with a rate: from when the request was due).
    pub p50_ms: f64,
    /// 99th percentile latency.
    pub p99_ms: f64,
    /// Largest latency.
    pub max_ms: f64,
    /// Wall-clock start of the clock, unix milliseconds.
    pub start_unix_ms: i64,
    /// Mean request body size.
    pub body_bytes_mean: f64,
    /// Whether every event was built and signed before the clock started.
    pub prebuilt: bool,
}

impl LoadReport {
    /// Answers with a 2xx status.
    pub fn ok(&self) -> u64 {
        self.status
            .iter()
            .filter(|(code, _)| code.starts_with('2'))
            .map(|(_, n)| n)
            .sum()
    }

    /// Whether every request was answered with a 2xx.
    pub fn all_ok(&self) -> bool {
        self.errors == 0 && self.ok() == self.sent
    }
}

/// One signed request, ready to send.
#[derive(Clone)]
struct Prepared {
    body: Bytes,
    headers: Vec<(HeaderName, HeaderValue)>,
}

enum Source {
    Prebuilt(Vec<Prepared>),
    Lazy {
        factory: EventFactory,
        signer: Signer,
    },
}

impl Source {
    fn get(&self, i: u64) -> anyhow::Result<Prepared> {
        match self {
            Self::Prebuilt(all) => all
                .get(usize::try_from(i)?)
                .cloned()
                .context("request index out of range"),
            Self::Lazy { factory, signer } => prepare(factory, signer, i, now_secs()),
        }
    }
}

fn prepare(factory: &EventFactory, signer: &Signer, i: u64, t: i64) -> anyhow::Result<Prepared> {
    signer.sign(factory.event(i), i, t)
}

/// Builds and signs requests `0..count` on every core.
fn prebuild(factory: &EventFactory, signer: &Signer, count: u64) -> anyhow::Result<Vec<Prepared>> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let per = count.div_ceil(threads.max(1)).max(1);
    let t = now_secs();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..count)
            .step_by(usize::try_from(per)?)
            .map(|from| {
                let to = (from + per).min(count);
                scope.spawn(move || {
                    (from..to)
                        .map(|i| prepare(factory, signer, i, t))
                        .collect::<anyhow::Result<Vec<_>>>()
                })
            })
            .collect();
        let mut all = Vec::with_capacity(usize::try_from(count)?);
        for handle in handles {
            let part = handle
                .join()
                .map_err(|_| anyhow::anyhow!("a build thread panicked"))??;
            all.extend(part);
        }
        Ok(all)
    })
}

struct Shared {
    source: Source,
    count: u64,
    next: AtomicU64,
    start: Instant,
    rate: Option<f64>,
}

struct TaskStats {
    status: HashMap<u16, u64>,
    errors: u64,
    sent: u64,
    latency_us: Histogram<u64>,
    last: Instant,
}

/// `paysync-bench loadgen`.
pub async fn run(args: LoadgenArgs) -> anyhow::Result<()> {
    let report = generate(&args).await?;
    println!(
        "{}",
        serde_json::to_string(&report).context("serializing the report")?
    );
    Ok(())
}

/// The URLs of a `--url` list, trimmed, empty entries skipped.
fn urls(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|u| !u.is_empty())
}

async fn generate(args: &LoadgenArgs) -> anyhow::Result<LoadReport> {
    let mut targets = Vec::new();
    for url in urls(&args.url) {
        targets.push(Target::parse(url).await?);
    }
    anyhow::ensure!(!targets.is_empty(), "--url names no URL");
    let count = match (args.rate, args.duration_secs, args.count) {
        (Some(rate), Some(secs), _) => (rate * secs).round() as u64,
        (_, _, Some(count)) => count,
        _ => anyhow::bail!("give --count, or --rate with --duration-secs"),
    };
    anyhow::ensure!(count > 0, "nothing to send");
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    if let Some(rate) = args.rate {
        anyhow::ensure!(rate > 0.0 && rate.is_finite(), "--rate must be positive");
    }
    let factory = EventFactory::new(&args.tag, args.customers)?;
    let planned_secs = args.rate.map_or(0.0, |rate| count as f64 / rate);
    let prebuilt = planned_secs <= PREBUILD_MAX_SECS;
    let build_started = Instant::now();
    let (source, body_bytes_mean) = if prebuilt {
        let all = prebuild(&factory, &Signer::new(args), count)?;
        let mean = all.iter().map(|p| p.body.len() as f64).sum::<f64>() / all.len() as f64;
        (Source::Prebuilt(all), mean)
    } else {
        let sample = 1000.min(count);
        let mean = (0..sample)
            .map(|i| factory.event(i).len() as f64)
            .sum::<f64>()
            / sample as f64;
        (
            Source::Lazy {
                factory,
                signer: Signer::new(args),
            },
            mean,
        )
    };
    let mut senders = Vec::with_capacity(args.connections);
    for k in 0..args.connections {
        let target = targets[k % targets.len()].clone();
        let sender = connect::<Body>(target.addr).await?;
        senders.push((target, sender));
    }
    eprintln!(
        "loadgen: {count} requests to {} over {} connections ({}), built in {:.1} s",
        args.url,
        args.connections,
        args.rate
            .map_or_else(|| "full speed".to_owned(), |r| format!("{r}/s")),
        build_started.elapsed().as_secs_f64()
    );
    let start_unix_ms = i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or_default();
    let shared = Arc::new(Shared {
        source,
        count,
        next: AtomicU64::new(0),
        start: Instant::now(),
        rate: args.rate,
    });
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|(target, sender)| tokio::spawn(connection_task(shared.clone(), target, sender)))
        .collect();
    let mut status: BTreeMap<String, u64> = BTreeMap::new();
    let mut errors = 0;
    let mut sent = 0;
    let mut latency = new_histogram()?;
    let mut last = shared.start;
    for task in tasks {
        let stats = task.await.context("a connection task panicked")??;
        for (code, n) in stats.status {
            *status.entry(code.to_string()).or_default() += n;
        }
        errors += stats.errors;
        sent += stats.sent;
        latency
            .add(&stats.latency_us)
            .map_err(|e| anyhow::anyhow!("merging latency histograms: {e:?}"))?;
        last = last.max(stats.last);
    }
    let elapsed_secs = last.duration_since(shared.start).as_secs_f64().max(1e-9);
    let ms = |us: u64| us as f64 / 1000.0;
    let report = LoadReport {
        sent,
        status,
        errors,
        elapsed_secs,
        rps: (sent - errors) as f64 / elapsed_secs,
        p50_ms: ms(latency.value_at_quantile(0.50)),
        p99_ms: ms(latency.value_at_quantile(0.99)),
        max_ms: ms(latency.max()),
        start_unix_ms,
        body_bytes_mean,
        prebuilt,
    };
    eprintln!(
        "loadgen: {} sent, {} errors, {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        report.sent, report.errors, report.rps, report.p50_ms, report.p99_ms, report.max_ms
    );
    Ok(report)
}

/// An HdrHistogram of microseconds with 3 significant digits: recording is constant time and
/// its memory is fixed whatever the number of requests (a ten-minute run included), and the
/// connections' histograms add up exactly.
fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
        .map_err(|e| anyhow::anyhow!("creating a histogram: {e:?}"))
}

async fn connection_task(
    shared: Arc<Shared>,
    target: Target,
    mut sender: SendRequest<Body>,
) -> anyhow::Result<TaskStats> {
    let mut stats = TaskStats {
        status: HashMap::new(),
        errors: 0,
        sent: 0,
        latency_us: new_histogram()?,
        last: shared.start,
    };
    let mut consecutive_errors = 0u32;
    loop {
        let i = shared.next.fetch_add(1, Ordering::Relaxed);
        if i >= shared.count {
            break;
        }
        let due = shared
            .rate
            .map(|rate| shared.start + Duration::from_secs_f64(i as f64 / rate));
        if let Some(due) = due {
            tokio::time::sleep_until(due.into()).await;
        }
        let prepared = shared.source.get(i)?;
        let origin = due.unwrap_or_else(Instant::now);
        stats.sent += 1;
        match send(&mut sender, &target, prepared).await {
            Ok(code) => {
                consecutive_errors = 0;
                *stats.status.entry(code.as_u16()).or_default() += 1;
                let us = u64::try_from(origin.elapsed().as_micros()).unwrap_or(u64::MAX);
                stats
                    .latency_us
                    .saturating_record(us.clamp(1, MAX_LATENCY_US));
            }
            Err(err) => {
                stats.errors += 1;
                consecutive_errors += 1;
                if consecutive_errors == 1 {
                    eprintln!("loadgen: request failed: {err:#}");
                }
                if consecutive_errors > 100 {
                    anyhow::bail!("100 requests in a row failed on one connection: {err:#}");
                }
                if let Ok(fresh) = connect::<Body>(target.addr).await {
                    sender = fresh;
                }
            }
        }
        stats.last = Instant::now();
    }
    Ok(stats)
}

async fn send(
    sender: &mut SendRequest<Body>,
    target: &Target,
    prepared: Prepared,
) -> anyhow::Result<StatusCode> {
    let request = Request::post(target.path.as_str())
        .header(HOST, target.authority.as_str())
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(prepared.body))
        .context("building a request")?;
    let mut request = request;
    request.headers_mut().extend(prepared.headers);
    sender.ready().await.context("connection not ready")?;
    let response = sender
        .send_request(request)
        .await
        .context("sending a request")?;
    let status = response.status();
    response
        .into_body()
        .collect()
        .await
        .context("reading a response body")?;
    Ok(status)
}

fn now_secs() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs(),
    )
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_list_names_each_receiver_once_in_order() {
        let list = "http://127.0.0.1:1/webhooks/stripe, http://127.0.0.1:2/webhooks/stripe,";
        assert_eq!(
            urls(list).collect::<Vec<_>>(),
            [
                "http://127.0.0.1:1/webhooks/stripe",
                "http://127.0.0.1:2/webhooks/stripe"
            ]
        );
        assert_eq!(urls("").count(), 0);
    }
}
