//! What operators see: traffic moves the counters on both /metrics endpoints, promtool accepts
//! the scrapes and the alert rules, every metric the dashboard and the rules name exists, and a
//! real Prometheus scrapes a running receiver and worker.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use paysync_testkit::{poll_until, sample, stripe_event};

use crate::stack::{SECRET, Stack};

/// `paysync_events_processed_total` for a Stripe event type and outcome, as a metric name and
/// its labels.
fn processed_total<'a>(
    event_type: &'a str,
    outcome: &'a str,
) -> (&'static str, Vec<(&'static str, &'a str)>) {
    (
        "paysync_events_processed_total",
        vec![
            ("event_type", event_type),
            ("outcome", outcome),
            ("provider", "stripe"),
        ],
    )
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`; deploy/local/services.sh installs it)");
    if let Some(input) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Metric families in a scrape, histograms under their base name.
fn families(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Every `paysync_*` metric an expression names, with histogram suffixes folded.
fn named_metrics(text: &str, histograms: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("paysync_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        let name = &text[start..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| histograms.contains(*b)))
            .unwrap_or(name);
        out.insert(base.to_owned());
        i = end;
    }
    out
}

#[tokio::test]
async fn traffic_moves_the_counters_and_every_dashboard_and_alert_metric_exists_in_the_scrape() {
    let stack = Stack::start().await;
    let paid = stripe_event("evt_obs_paid", "invoice.paid", false);
    assert_eq!(stack.post(&paid, SECRET).await, 200);
    assert_eq!(stack.post(&paid, SECRET).await, 200, "duplicate delivery");
    assert_eq!(stack.post(&paid, "whsec_wrong").await, 400, "bad signature");
    assert_eq!(
        stack
            .post(
                &stripe_event("evt_obs_retry", "charge.failed", false),
                SECRET
            )
            .await,
        200
    );
    assert_eq!(
        stack
            .post(
                &stripe_event("evt_obs_dead", "charge.dispute.created", false),
                SECRET
            )
            .await,
        200
    );

    let expected = [
        (processed_total("invoice.paid", "applied"), 1.0),
        (processed_total("invoice.paid", "duplicate"), 1.0),
        (processed_total("charge.failed", "retry_scheduled"), 1.0),
        (processed_total("charge.failed", "applied"), 1.0),
        (
            processed_total("charge.dispute.created", "dead_lettered"),
            1.0,
        ),
        (
            ("paysync_retries_scheduled_total", vec![("attempt", "1")]),
            1.0,
        ),
        (
            (
                "paysync_dead_letters_ingested_total",
                vec![("kind", "test_contradiction")],
            ),
            1.0,
        ),
        (("paysync_dead_letters", vec![("state", "open")]), 1.0),
        (
            (
                "paysync_event_lag_seconds_count",
                vec![("provider", "stripe"), ("path", "direct")],
            ),
            1.0,
        ),
        // charge.failed committed on its second attempt: its lag includes the retry delay.
        (
            (
                "paysync_event_lag_seconds_count",
                vec![("provider", "stripe"), ("path", "delayed")],
            ),
            1.0,
        ),
    ];
    let worker_scrape = poll_until(Duration::from_secs(30), "worker counters", || async {
        let scrape = stack.worker.scrape().await;
        expected
            .iter()
            .all(|((metric, labels), v)| sample(&scrape, metric, labels) == *v)
            .then_some(scrape)
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(sample(&worker_scrape, "paysync_db_pool_max_connections", &[]) >= 1.0);
    assert!(
        worker_scrape.contains(r#"paysync_queue_messages{queue="work"}"#),
        "queue depth read from the broker"
    );

    let receiver_scrape = stack.receiver.scrape().await;
    let received = |o: &str| {
        sample(
            &receiver_scrape,
            "paysync_webhooks_received_total",
            &[("outcome", o), ("provider", "stripe")],
        )
    };
    assert_eq!(received("accepted"), 4.0);
    assert_eq!(received("bad_signature"), 1.0);
    assert_eq!(
        sample(
            &receiver_scrape,
            "paysync_publish_confirm_duration_seconds_count",
            &[]
        ),
        4.0
    );

    let (dispatcher, _db) = dispatcher_with_every_destination().await;
    let dispatcher_scrape = paysync_testkit::scrape(dispatcher.1).await.unwrap();
    for (name, scrape) in [
        ("receiver", &receiver_scrape),
        ("worker", &worker_scrape),
        ("dispatcher", &dispatcher_scrape),
    ] {
        let (ok, report) = promtool(&["check", "metrics"], Some(scrape));
        assert!(
            ok,
            "promtool check metrics rejected the {name} scrape:\n{report}"
        );
    }

    // No dead panels, no alerts on absent series.
    let scraped: BTreeSet<String> = families(&receiver_scrape)
        .union(&families(&worker_scrape))
        .cloned()
        .collect::<BTreeSet<_>>()
        .union(&families(&dispatcher_scrape))
        .cloned()
        .collect();
    let histograms: BTreeSet<String> =
        format!("{receiver_scrape}\n{worker_scrape}\n{dispatcher_scrape}")
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter(|l| l.ends_with(" histogram"))
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect();
    let dashboard =
        std::fs::read_to_string(repo().join("deploy/grafana/dashboards/paysync.json")).unwrap();
    let rules = std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yml")).unwrap();
    let named: BTreeSet<String> = named_metrics(&dashboard, &histograms)
        .union(&named_metrics(&rules, &histograms))
        .cloned()
        .collect();
    assert!(named.len() >= 15, "the dashboard and rules name {named:?}");
    // The "Business" row's panels read every business KPI gauge, which the worker exports
    // (zeros included) before any traffic of the kind.
    for metric in [
        "paysync_business_checkouts",
        "paysync_business_payments",
        "paysync_business_payments_recovered",
        "paysync_business_refunds",
        "paysync_business_disputes",
        "paysync_business_customers",
        "paysync_business_entitlement_changes",
    ] {
        assert!(named.contains(metric), "the dashboard names {metric}");
        assert!(
            families(&worker_scrape).contains(metric),
            "the worker exports {metric}"
        );
    }
    let missing: Vec<&String> = named.difference(&scraped).collect();
    assert!(
        missing.is_empty(),
        "named in the dashboard or rules but not exported: {missing:?}"
    );
    dispatcher.0.stop().await.unwrap();
    stack.stop().await;
}

/// A destination that accepts everything (the test only reads the dispatcher's metrics).
struct Accepting(paysync_domain::outbound::Destination);

impl paysync_dispatcher::Sender for Accepting {
    fn destination(&self) -> paysync_domain::outbound::Destination {
        self.0
    }

    fn send<'a>(
        &'a self,
        _job: &'a paysync_dispatcher::Job,
        _throttle: &'a paysync_dispatcher::Throttle,
    ) -> futures::future::BoxFuture<'a, paysync_dispatcher::Verdict> {
        Box::pin(async { paysync_dispatcher::Verdict::Sent { external_ref: None } })
    }
}

/// A dispatcher with every destination, on a schema of its own, and its metrics port.
async fn dispatcher_with_every_destination()
-> ((paysync_testkit::RunningApp, u16), paysync_testkit::TestDb) {
    use paysync_domain::outbound::Destination;
    let db = paysync_testkit::TestDb::new();
    db.store().await.unwrap();
    let settings = paysync_dispatcher::Settings {
        store: db.settings(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        owner: "observability".into(),
        ..paysync_dispatcher::Settings::default()
    };
    let senders: Vec<(
        std::sync::Arc<dyn paysync_dispatcher::Sender>,
        paysync_dispatcher::LaneConfig,
    )> = Destination::ALL
        .into_iter()
        .map(|d| {
            (
                std::sync::Arc::new(Accepting(d)) as std::sync::Arc<dyn paysync_dispatcher::Sender>,
                paysync_dispatcher::LaneConfig::default_for(d),
            )
        })
        .collect();
    let app = paysync_dispatcher::App::with_senders(settings, senders)
        .await
        .unwrap();
    let port = app.metrics_port();
    let running = paysync_testkit::RunningApp::spawn(|stop| app.run_until_stopped(stop));
    ((running, port), db)
}

#[test]
fn promtool_accepts_the_rules_and_their_unit_tests_pass() {
    let rules = repo().join("deploy/prometheus/alerts.yml");
    let tests = repo().join("deploy/prometheus/alerts.test.yml");
    let (ok, report) = promtool(&["check", "rules", rules.to_str().unwrap()], None);
    assert!(ok, "{report}");
    assert!(report.contains("SUCCESS: 17 rules found"), "{report}");
    let (ok, report) = promtool(&["test", "rules", tests.to_str().unwrap()], None);
    assert!(ok, "{report}");
    let config = repo().join("deploy/prometheus/prometheus.yml");
    let (ok, report) = promtool(&["check", "config", config.to_str().unwrap()], None);
    assert!(ok, "{report}");
}

/// A Prometheus server that is killed when dropped.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    base: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_prometheus(targets: &[&str]) -> Prometheus {
    let dir = std::env::temp_dir().join(format!("paysync-prom-{}", paysync_testkit::unique_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let list = targets
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: paysync\n    static_configs:\n      - targets: [{list}]\n"
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let port = paysync_testkit::closed_port();
    let child = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (Debian package `prometheus`; deploy/local/services.sh installs it)");
    Prometheus {
        child,
        dir,
        base: format!("http://127.0.0.1:{port}"),
    }
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn a_real_prometheus_scrapes_receiver_and_worker_and_sees_the_processed_rate() {
    let stack = Stack::start().await;
    let receiver_target = stack
        .receiver
        .metrics_base
        .trim_start_matches("http://")
        .to_owned();
    let worker_target = stack
        .worker
        .metrics_base
        .trim_start_matches("http://")
        .to_owned();
    let prometheus = start_prometheus(&[&receiver_target, &worker_target]);
    let query = encode("sum(rate(paysync_events_processed_total[5s]))");
    let mut n = 0;
    let value = poll_until(
        Duration::from_secs(60),
        "a processed rate from Prometheus",
        || {
            n += 1;
            let body = stripe_event(&format!("evt_prom_{n}"), "invoice.paid", false);
            let url = format!("{}/api/v1/query?query={query}", prometheus.base);
            let stack = &stack;
            async move {
                assert_eq!(stack.post(&body, SECRET).await, 200);
                let answer: serde_json::Value = reqwest::get(&url).await.ok()?.json().await.ok()?;
                let value = answer["data"]["result"][0]["value"][1]
                    .as_str()?
                    .parse::<f64>()
                    .ok()?;
                (value > 0.0).then_some(value)
            }
        },
    )
    .await
    .unwrap();
    assert!(value > 0.0);
    drop(prometheus);
    stack.stop().await;
}

/// Before any event, retry or reconciliation, every series with a closed label set is in the
/// scrape at zero: `rate()` and `increase()` alerts and the dashboard see them from the start
/// (Prometheus' "avoid missing metrics").
#[tokio::test]
async fn every_series_with_a_closed_label_set_is_scraped_at_zero_from_start_up() {
    use crate::helpers::{fast_retry, spawn_worker};
    let (broker, db) = (
        paysync_testkit::TestBroker::new(),
        paysync_testkit::TestDb::new(),
    );
    let handlers = paysync_worker::billing::handlers();
    let worker = spawn_worker(&broker, &db, fast_retry(4), handlers).await;
    let scrape = worker.scrape().await;
    let zero = |metric: &str, labels: &[(&str, &str)]| {
        let line = scrape.lines().filter(|l| !l.starts_with('#')).find(|l| {
            l.split_once('{').is_some_and(|(name, rest)| {
                name == metric
                    && labels
                        .iter()
                        .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            })
        });
        assert_eq!(
            line.and_then(|l| l.rsplit_once(' ')).map(|(_, v)| v),
            Some("0"),
            "{metric}{labels:?} at zero in the scrape"
        );
    };
    for attempt in ["1", "2", "3"] {
        zero("paysync_retries_scheduled_total", &[("attempt", attempt)]);
    }
    for provider in ["stripe", "square", "authorizenet", "paypal"] {
        for outcome in ["ok", "failed"] {
            zero(
                "paysync_reconcile_runs_total",
                &[("provider", provider), ("outcome", outcome)],
            );
        }
        zero("paysync_event_lag_seconds_count", &[("provider", provider)]);
        zero(
            "paysync_event_processing_duration_seconds_count",
            &[("provider", provider)],
        );
    }
    // The monitor's first pass stamps its reading of the queue depths (0 until then).
    poll_until(Duration::from_secs(30), "the queue depths read", || async {
        let scrape = worker.scrape().await;
        let read = sample(&scrape, "paysync_queue_depths_read_timestamp_seconds", &[]);
        (read > 1_700_000_000.0).then_some(())
    })
    .await
    .unwrap();
    for outcome in [
        "applied",
        "duplicate",
        "ignored",
        "retry_scheduled",
        "dead_lettered",
    ] {
        zero(
            "paysync_events_processed_total",
            &[
                ("provider", "stripe"),
                ("event_type", "invoice.paid"),
                ("outcome", outcome),
            ],
        );
        zero(
            "paysync_events_processed_total",
            &[
                ("provider", "square"),
                ("event_type", "payment.updated"),
                ("outcome", outcome),
            ],
        );
    }
    worker.stop().await;
}
