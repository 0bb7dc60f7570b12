//! `paysync reconcile` as an operator runs it, against a fake Stripe API: a dry run counts and
//! publishes nothing; a run publishes the missing events into the work queue, marked as found
//! by reconciliation; an outage or missing credentials end with a clear error and a non-zero
//! exit, never showing the key.

use std::process::Output;

use paysync_testkit::fakes::provider_api::FakeStripeApi;
use paysync_testkit::{TestBroker, TestDb, now_secs, paysync_env};
use serde_json::{Value, json};

const KEY: &str = "rk_test_reconcile_cli_0123456789";

async fn reconcile(
    broker: &TestBroker,
    db: &TestDb,
    base: &str,
    key: Option<&str>,
    args: &[&str],
) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_paysync"));
    cmd.arg("reconcile")
        .args(args)
        .envs(paysync_env(broker, db))
        .env("USER", "ops-test")
        .env("PAYSYNC_STRIPE_API_BASE", base)
        .env_remove("PAYSYNC_STRIPE_API_KEY");
    if let Some(key) = key {
        cmd.env("PAYSYNC_STRIPE_API_KEY", key);
    }
    // Off the runtime's thread: the fake API answers on it meanwhile.
    tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap()
}

fn events(n: usize) -> Vec<Value> {
    let t = now_secs() - 600;
    (0..n)
        .map(|i| {
            json!({"id": format!("evt_cli_{i}"), "object": "event", "type": "payment_intent.succeeded",
                   "created": t + i as i64, "livemode": false, "api_version": "2024-06-20",
                   "data": {"object": {"id": format!("pi_cli_{i}"), "object": "payment_intent",
                   "amount": 100, "amount_received": 100, "currency": "usd"}}})
        })
        .collect()
}

fn stdout_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn a_dry_run_counts_and_a_run_publishes_the_missing_events_marked_as_reconciled() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    db.store().await.unwrap();
    broker.declare().await.unwrap();
    let work = broker.topology().work_queue();
    let fake = FakeStripeApi::start(KEY).await;
    fake.add_events(events(7));
    // An event type nothing applies is listed and skipped, never published.
    fake.add_events([
        json!({"id": "evt_cli_other", "object": "event", "type": "balance.available",
        "created": now_secs() - 300, "livemode": false, "data": {"object": {"object": "balance"}}}),
    ]);

    let dry = stdout_json(
        &reconcile(
            &broker,
            &db,
            &fake.base(),
            Some(KEY),
            &["stripe", "--since", "1h", "--dry-run", "--json"],
        )
        .await,
    );
    assert_eq!(dry["dry_run"], true);
    assert_eq!(
        (dry["listed"].as_u64(), dry["published"].as_u64()),
        (Some(8), Some(7)),
        "{dry}"
    );
    assert_eq!(dry["skipped"]["unhandled_type"], 1);
    assert_eq!(
        broker.message_count(&work).await.unwrap(),
        0,
        "a dry run publishes nothing"
    );

    let run = reconcile(
        &broker,
        &db,
        &fake.base(),
        Some(KEY),
        &["stripe", "--since", "1h"],
    )
    .await;
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let text = String::from_utf8_lossy(&run.stdout);
    assert!(
        text.contains("listed 8, already logged 0, published 7, skipped 1"),
        "{text}"
    );
    let taken = broker
        .take_messages(&work, 7, std::time::Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(taken.len(), 7);
    for m in &taken {
        assert!(
            m.header_names().contains(&"paysync-source"),
            "{:?}",
            m.header_names()
        );
        let read = m.read_event().unwrap();
        assert!(read.meta.event_id.starts_with("evt_cli_"));
        assert_eq!(read.meta.event_type, "payment_intent.succeeded");
    }
    // The operator's action is in the audit trail.
    let client = db.client().await.unwrap();
    let row = client
        .query_one(
            &format!(
                "select actor, affected, dry_run from {}.operator_actions where action = 'events.reconcile' and not dry_run",
                db.schema()
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "cli:ops-test");
    assert_eq!(row.get::<_, i32>(1), 7);
}

#[tokio::test]
async fn an_outage_or_missing_credentials_end_with_a_clear_error_and_a_failure_exit() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    db.store().await.unwrap();
    broker.declare().await.unwrap();
    let fake = FakeStripeApi::start(KEY).await;
    fake.add_events(events(3));
    fake.script().always(FakeStripeApi::api_error());
    let out = reconcile(
        &broker,
        &db,
        &fake.base(),
        Some(KEY),
        &["stripe", "--since", "1h"],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("stripe API unavailable") && stderr.contains("run the same command again"),
        "{stderr}"
    );
    assert!(!stderr.contains(KEY) && !String::from_utf8_lossy(&out.stdout).contains(KEY));

    // Refused before any call: each names what is wrong.
    for (key, args, expected) in [
        (None, ["stripe", "--since", "1h"], "PAYSYNC_STRIPE_API_KEY"),
        (
            Some(KEY),
            ["authorizenet", "--since", "1h"],
            "PAYSYNC_AUTHORIZENET_API_LOGIN_ID",
        ),
        (Some(KEY), ["stripe", "--since", "yesterday"], "--since"),
        (Some(KEY), ["stripe", "--since", "1h"], "--until"),
    ] {
        let mut args = args.to_vec();
        if expected == "--until" {
            args.extend(["--until", "2h"]);
        }
        let out = reconcile(&broker, &db, &fake.base(), key, &args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
