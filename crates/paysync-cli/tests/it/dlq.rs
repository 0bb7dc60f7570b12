use std::process::{Command, Output};
use std::time::Duration;

use base64::Engine as _;
use paysync_store::NewDeadLetter;
use paysync_testkit::{TestBroker, TestDb, paysync_env, stripe_fixture};

pub(crate) fn paysync(broker: &TestBroker, db: &TestDb, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_paysync"))
        .args(args)
        .envs(paysync_env(broker, db))
        .env("USER", "ops-test")
        .env("RUST_LOG", "debug")
        .output()
        .unwrap()
}

fn letter(key: &str, body: Vec<u8>) -> NewDeadLetter {
    NewDeadLetter {
        message_key: key.into(),
        provider: Some("stripe".into()),
        event_id: Some(format!("evt_{key}")),
        event_type: Some("charge.refunded".into()),
        routing_key: "stripe.charge.refunded".into(),
        headers: serde_json::json!({
            "paysync-format": 1, "paysync-provider": "stripe", "paysync-event-type": "charge.refunded",
            "paysync-event-created": 1, "paysync-livemode": false, "paysync-received-at-ms": 1,
            "paysync-attempt": 3, "paysync-error-kind": "test_kind"
        }),
        body,
        error_kind: "test_kind".into(),
        error_chain: "it broke".into(),
        fingerprint: "f00dfeedf00dfeed".into(),
        attempts: 3,
        first_failed_at_ms: 1_700_000_000_000,
        last_failed_at_ms: 1_700_000_100_000,
        redrives: 0,
    }
}

#[tokio::test]
async fn export_writes_only_json_lines_to_stdout_and_import_replays_the_exact_bytes() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let store = db.store().await.unwrap();
    broker.declare().await.unwrap();
    let body = stripe_fixture("charge.refunded.json");
    store
        .insert_dead_letter(&letter("one", body.clone()))
        .await
        .unwrap();

    let groups = paysync(&broker, &db, &["dlq", "groups", "--json"]);
    assert!(
        groups.status.success(),
        "{}",
        String::from_utf8_lossy(&groups.stderr)
    );
    let groups: serde_json::Value = serde_json::from_slice(&groups.stdout).unwrap();
    assert_eq!(groups[0]["count"], 1);

    let export = paysync(&broker, &db, &["dlq", "export"]);
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let text = String::from_utf8(export.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "only JSON lines on stdout, logs on stderr: {text}"
    );
    let line: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    let exported = base64::engine::general_purpose::STANDARD
        .decode(line["body_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(exported, body, "the export keeps the exact bytes");

    let file = std::env::temp_dir().join(format!(
        "paysync-export-{}.jsonl",
        paysync_testkit::unique_id()
    ));
    std::fs::write(&file, &text).unwrap();
    let import = paysync(&broker, &db, &["dlq", "import", file.to_str().unwrap()]);
    std::fs::remove_file(&file).unwrap();
    assert!(
        import.status.success(),
        "{}",
        String::from_utf8_lossy(&import.stderr)
    );
    let queued = broker
        .take_messages(&broker.topology().work_queue(), 1, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].body, body, "replayed byte for byte");

    let purge = paysync(
        &broker,
        &db,
        &["dlq", "purge", "--archived", "--older-than", "0s"],
    );
    assert!(purge.status.success());
    let history = paysync(&broker, &db, &["dlq", "history", "--json"]);
    let history: serde_json::Value = serde_json::from_slice(&history.stdout).unwrap();
    let actions: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["dlq.purge", "dlq.import", "dlq.export"]);
    assert_eq!(history[0]["actor"], "cli:ops-test");
}
