//! The business KPIs end to end: signed Stripe webhooks through the real receiver, the broker
//! and a worker with the billing handlers into PostgreSQL; then the worker's own /metrics
//! (`paysync_business_*`, refreshed by its monitor) and its console's overview must show the
//! numbers the scripted mix makes, in both windows, and promtool must accept the scrape.

use std::process::{Command, Stdio};
use std::time::Duration;

use paysync_domain::Provider;
use paysync_testkit::{TestBroker, TestDb, now_secs, poll_until, sample};
use paysync_worker::App;
use reqwest::header::{COOKIE, SET_COOKIE};
use serde_json::{Value, json};

use crate::helpers::*;

const SECRET: &str = "whsec_kpis";
const TOKEN: &str = "kpis-console-admin-token";
const WINDOWS: [&str; 2] = ["24h", "7d"];

/// A Stripe event as Stripe signs it, with `object` as its `data.object`.
fn stripe(id: &str, event_type: &str, created: i64, object: Value) -> Vec<u8> {
    json!({
        "id": id, "object": "event", "api_version": "2020-03-02", "created": created,
        "livemode": false, "type": event_type, "data": {"object": object},
        "pending_webhooks": 1, "request": {"id": null, "idempotency_key": null},
    })
    .to_string()
    .into_bytes()
}

/// Checkout session `i` of account `acct_kpi_<i>`: completed and paid (with its payment
/// intent), or expired unpaid.
fn checkout(i: usize, completed: bool, created: i64) -> (String, Vec<u8>) {
    let id = format!("evt_kpi_cs_{i}");
    let mut session = json!({
        "id": format!("cs_kpi_{i}"), "object": "checkout.session",
        "customer": format!("cus_kpi_{i}"), "client_reference_id": format!("acct_kpi_{i}"),
        "mode": "payment", "amount_total": 1500, "currency": "usd",
        "payment_status": if completed { "paid" } else { "unpaid" },
        "status": if completed { "complete" } else { "expired" },
    });
    let event_type = if completed {
        session["payment_intent"] = Value::from(format!("pi_kpi_cs_{i}"));
        "checkout.session.completed"
    } else {
        "checkout.session.expired"
    };
    let body = stripe(&id, event_type, created, session);
    (id, body)
}

/// Payment intent `pi_kpi_dun_<i>` failing, or succeeding (a later attempt of the same intent).
fn intent(i: usize, succeeded: bool, created: i64) -> (String, Vec<u8>) {
    let pi = format!("pi_kpi_dun_{i}");
    let (id, event_type, object) = if succeeded {
        (
            format!("evt_kpi_pi_ok_{i}"),
            "payment_intent.succeeded",
            json!({"id": pi, "object": "payment_intent", "amount": 2000,
                   "amount_received": 2000, "currency": "usd", "status": "succeeded"}),
        )
    } else {
        (
            format!("evt_kpi_pi_fail_{i}"),
            "payment_intent.payment_failed",
            json!({"id": pi, "object": "payment_intent", "amount": 2000, "currency": "usd",
                   "status": "requires_payment_method",
                   "last_payment_error": {"code": "card_declined"}}),
        )
    };
    let body = stripe(&id, event_type, created, object);
    (id, body)
}

/// The subscription of account `acct_kpi_0` (the first completed checkout's customer).
fn subscription(event_type: &str, status: &str, created: i64) -> (String, Vec<u8>) {
    let id = format!("evt_kpi_{event_type}");
    let body = stripe(
        &id,
        event_type,
        created,
        json!({"id": "sub_kpi_0", "object": "subscription", "customer": "cus_kpi_0",
               "status": status, "metadata": {"account_id": "acct_kpi_0"},
               "items": {"data": [{"price": {"id": "price_pro"}, "current_period_end": 1_800_000_000}]}}),
    );
    (id, body)
}

/// A series and the value it must have: (metric, labels, value).
type Want = (&'static str, Vec<(&'static str, &'static str)>, f64);

/// What the mix below must show in each window.
fn expected() -> Vec<Want> {
    let mut out = Vec::new();
    for window in WINDOWS {
        let w = ("window", window);
        for (outcome, n) in [("completed", 7.0), ("expired", 3.0), ("failed", 0.0)] {
            out.push((
                "paysync_business_checkouts",
                vec![("outcome", outcome), w],
                n,
            ));
        }
        // 7 payments of completed checkouts and 2 recovered intents succeeded; 5 intents failed.
        for (provider, succeeded, failed, recovered, refunds, disputes) in [
            ("stripe", 9.0, 5.0, 2.0, 1.0, 1.0),
            ("square", 0.0, 0.0, 0.0, 0.0, 0.0),
            ("authorizenet", 0.0, 0.0, 0.0, 0.0, 0.0),
            ("paypal", 0.0, 0.0, 0.0, 0.0, 0.0),
        ] {
            let p = ("provider", provider);
            out.push((
                "paysync_business_payments",
                vec![p, ("outcome", "succeeded"), w],
                succeeded,
            ));
            out.push((
                "paysync_business_payments",
                vec![p, ("outcome", "failed"), w],
                failed,
            ));
            out.push(("paysync_business_payments_recovered", vec![p, w], recovered));
            out.push(("paysync_business_refunds", vec![p, w], refunds));
            out.push(("paysync_business_disputes", vec![p, w], disputes));
        }
        // 7 accounts won by their checkout; acct_kpi_0's subscription granted, then canceled.
        out.push((
            "paysync_business_customers",
            vec![("change", "new"), w],
            7.0,
        ));
        out.push((
            "paysync_business_customers",
            vec![("change", "churned"), w],
            1.0,
        ));
        for (to, n) in [("granted", 1.0), ("grace", 0.0), ("denied", 1.0)] {
            out.push((
                "paysync_business_entitlement_changes",
                vec![("to", to), w],
                n,
            ));
        }
    }
    out
}

/// Whether `scrape` holds a sample of `metric` with exactly `labels`, whatever its value.
/// (`sample` reads a missing series as 0; with every value set to 1 it reads 1 only for a
/// series that is there.)
fn present(scrape: &str, metric: &str, labels: &[(&str, &str)]) -> bool {
    let ones: String = scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(series, _)| format!("{series} 1\n"))
        .collect();
    sample(&ones, metric, labels) == 1.0
}

/// Posts `events` through the receiver (each must be answered 200) and waits until each is
/// applied in the event log.
async fn post_and_apply(receiver: &Receiver, db: &TestDb, events: &[(String, Vec<u8>)]) {
    for (id, body) in events {
        assert_eq!(receiver.post(body, SECRET).await, 200, "{id}");
    }
    for (id, _) in events {
        let row = logged(db, id).await;
        assert_eq!(row.outcome, "applied", "{id}");
    }
}

/// The overview's business row `measure`: its last-24-h and last-7-d cells.
fn business_row(page: &str, measure: &str) -> (String, String) {
    let start = format!("<td data-label=\"Measure\">{measure}</td>");
    let at = page
        .find(&start)
        .unwrap_or_else(|| panic!("no business row {measure:?} in\n{page}"))
        + start.len();
    let row = &page[at..at + page[at..].find("</tr>").unwrap()];
    let cells: Vec<String> = row
        .split("class=\"num\">")
        .skip(1)
        .map(|c| c[..c.find("</td>").unwrap()].to_owned())
        .collect();
    assert_eq!(cells.len(), 2, "{measure}: {row}");
    (cells[0].clone(), cells[1].clone())
}

fn promtool_check_metrics(scrape: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`; deploy/local/services.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn a_scripted_mix_of_stripe_webhooks_shows_as_business_kpis_in_the_metrics_and_the_console() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    db.store().await.unwrap();
    let mut s = settings(&broker, &db, fast_retry(3));
    s.monitor_interval = Duration::from_millis(200);
    s.kpi_interval = Duration::from_millis(200);
    s.admin_token = Some(secrecy::SecretString::from(TOKEN.to_owned()));
    let worker = spawn(
        App::build(s, paysync_worker::billing::handlers())
            .await
            .unwrap(),
    )
    .await;
    let receiver = spawn_receiver(receiver_settings(SECRET, broker.settings("receiver"))).await;

    // Before any event every series exists, at zero.
    let first = worker.scrape().await;
    let business: Vec<&str> = first
        .lines()
        .filter(|l| l.starts_with("paysync_business_"))
        .collect();
    assert_eq!(business.len(), 2 * 28, "{business:#?}");
    assert!(business.iter().all(|l| l.ends_with(" 0")), "{business:#?}");

    let t = now_secs();
    // 10 checkouts (7 completed, 3 expired) and 5 failed payment intents.
    let mut first_wave: Vec<(String, Vec<u8>)> = (0..10).map(|i| checkout(i, i < 7, t)).collect();
    first_wave.extend((0..5).map(|i| intent(i, false, t)));
    post_and_apply(&receiver, &db, &first_wave).await;
    // Then 2 of the failed intents succeed on a later attempt, acct_kpi_0 subscribes, one
    // payment is refunded and one disputed.
    let mut second_wave: Vec<(String, Vec<u8>)> = (0..2).map(|i| intent(i, true, t + 60)).collect();
    second_wave.push(subscription(
        "customer.subscription.created",
        "active",
        t + 60,
    ));
    second_wave.push((
        "evt_kpi_refund".into(),
        stripe(
            "evt_kpi_refund",
            "refund.created",
            t + 60,
            json!({"id": "re_kpi_0", "object": "refund", "status": "succeeded", "amount": 500,
                   "currency": "usd", "payment_intent": "pi_kpi_cs_0"}),
        ),
    ));
    second_wave.push((
        "evt_kpi_dispute".into(),
        stripe(
            "evt_kpi_dispute",
            "charge.dispute.created",
            t + 60,
            json!({"id": "dp_kpi_0", "object": "dispute", "status": "needs_response",
                   "amount": 1500, "currency": "usd", "payment_intent": "pi_kpi_cs_1",
                   "reason": "fraudulent"}),
        ),
    ));
    post_and_apply(&receiver, &db, &second_wave).await;
    // Last, the subscription is canceled: acct_kpi_0 churns.
    post_and_apply(
        &receiver,
        &db,
        &[subscription(
            "customer.subscription.deleted",
            "canceled",
            t + 120,
        )],
    )
    .await;

    let want = expected();
    let polled = poll_until(
        Duration::from_secs(30),
        "the business KPI gauges",
        || async {
            let scrape = worker.scrape().await;
            want.iter()
                .all(|(metric, labels, v)| sample(&scrape, metric, labels) == *v)
                .then_some(scrape)
        },
    )
    .await;
    let scrape = match polled {
        Ok(scrape) => scrape,
        Err(e) => {
            let scrape = worker.scrape().await;
            let wrong: Vec<String> = want
                .iter()
                .filter(|(m, l, v)| sample(&scrape, m, l) != *v)
                .map(|(m, l, v)| format!("{m}{l:?}: {} (want {v})", sample(&scrape, m, l)))
                .collect();
            panic!("{e:#}: {wrong:#?}")
        }
    };
    // Zeros are exported series, not absent ones.
    for (metric, labels, _) in &want {
        assert!(present(&scrape, metric, labels), "{metric}{labels:?}");
    }
    assert_eq!(
        scrape
            .lines()
            .filter(|l| l.starts_with("paysync_business_"))
            .count(),
        2 * 28
    );

    // promtool accepts the scrape and has nothing to say about the business metrics.
    let (ok, report) = promtool_check_metrics(&scrape);
    assert!(ok, "promtool check metrics rejected the scrape:\n{report}");
    assert!(!report.contains("paysync_business"), "{report}");

    // The console's overview shows the same numbers, for both windows, with the rates.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = &worker.metrics_base;
    let login = client
        .post(format!("{base}/console/login"))
        .form(&[("token", TOKEN), ("next", "/console")])
        .send()
        .await
        .unwrap();
    let cookie = login.headers()[SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let page = client
        .get(format!("{base}/console"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(page.contains("Business, last 24 h / last 7 d"), "{page}");
    let both = |v: &str| (v.to_owned(), v.to_owned());
    for (measure, cells) in [
        ("Checkouts completed", both("7")),
        ("Checkouts expired", both("3")),
        ("Checkouts failed", both("0")),
        ("Checkout completion rate", both("70.0 %")),
        ("Payments succeeded (stripe)", both("9")),
        ("Payments failed (stripe)", both("5")),
        ("Payments recovered (stripe)", both("2")),
        ("Dunning recovery rate (stripe)", both("40.0 %")),
        ("Refunds (stripe)", both("1")),
        ("Disputes (stripe)", both("1")),
        ("New customers", both("7")),
        ("Churned customers", both("1")),
        ("Entitlement changes to granted", both("1")),
        ("Entitlement changes to grace", both("0")),
        ("Entitlement changes to denied", both("1")),
    ] {
        assert_eq!(business_row(&page, measure), cells, "{measure}");
    }
    // Only providers with anything counted get rows.
    for provider in Provider::ALL.into_iter().skip(1) {
        let row = format!("Payments succeeded ({})", provider.as_str());
        assert!(!page.contains(&row), "{row}");
    }
    // The rates the dashboard computes from the gauges are the console's.
    let gauge = |m: &str, l: &[(&str, &str)]| sample(&scrape, m, l);
    let completed = gauge(
        "paysync_business_checkouts",
        &[("outcome", "completed"), ("window", "24h")],
    );
    let ended: f64 = ["completed", "expired", "failed"]
        .iter()
        .map(|o| {
            gauge(
                "paysync_business_checkouts",
                &[("outcome", o), ("window", "24h")],
            )
        })
        .sum();
    assert_eq!(format!("{:.1} %", completed / ended * 100.0), "70.0 %");

    receiver.stop().await;
    worker.stop().await;
}
