//! `paysync outbox …` end to end: deliveries and destinations seeded with plain SQL, as a
//! dispatcher leaves them, then read and changed by the binary.

use paysync_testkit::{TestBroker, TestDb, unique_id};
use serde_json::Value;

use crate::dlq::paysync;

async fn delivery(
    c: &tokio_postgres::Client,
    destination: &str,
    operation: &str,
    state: &str,
) -> i64 {
    c.query_one(
        "insert into outbox_deliveries (destination, operation, idempotency_key, provider, \
           intent, source_id, state, attempts, fingerprint, done_at) \
         values ($1, $2, $3, 'stripe', 'payment_succeeded', $4, $5, \
           case when $5 = 'dead' then 8 else 0 end, \
           case when $5 = 'dead' then $1 || ':http:503' end, \
           case when $5 = 'dead' then now() end) \
         returning id",
        &[
            &destination,
            &operation,
            &format!("{operation}:{}", unique_id()),
            &format!("in_{}", unique_id()),
            &state,
        ],
    )
    .await
    .unwrap()
    .get(0)
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[tokio::test]
async fn outbox_list_destinations_retry_and_pause_run_end_to_end_and_are_audited() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    db.store().await.unwrap();
    let c = db.client().await.unwrap();
    c.execute(
        "insert into outbox_destinations (name, configured) values ('email', true), ('chat', true)",
        &[],
    )
    .await
    .unwrap();
    let dead = [
        delivery(&c, "email", "email.receipt", "dead").await,
        delivery(&c, "email", "email.receipt", "dead").await,
    ];
    let pending = delivery(&c, "chat", "chat.churn", "pending").await;

    let list = ok(&paysync(
        &broker,
        &db,
        &["outbox", "list", "--state", "dead", "--json"],
    ));
    let list: Value = serde_json::from_str(&list).unwrap();
    let ids: Vec<i64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [dead[1], dead[0]], "newest first, dead only");
    assert_eq!(list[0]["fingerprint"], "email:http:503");

    let table = ok(&paysync(&broker, &db, &["outbox", "list"]));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines[0].trim_start().starts_with("ID"), "{table}");
    assert!(
        lines[1].contains("chat.churn") && lines[1].contains("pending"),
        "{table}"
    );

    let unknown = paysync(&broker, &db, &["outbox", "list", "--destination", "sms"]);
    assert!(!unknown.status.success());
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(stderr.contains("known: email, chat, hubspot"), "{stderr}");

    let destinations = ok(&paysync(&broker, &db, &["outbox", "destinations"]));
    let lines: Vec<&str> = destinations.lines().collect();
    assert_eq!(lines.len(), 3, "{destinations}");
    let header = lines[0];
    for label in [
        "NAME",
        "BREAKER",
        "FORCED",
        "PAUSED UNTIL",
        "PENDING",
        "IN FLIGHT",
        "DEAD",
    ] {
        assert!(header.contains(label), "{header}");
    }
    // Numbers right-aligned under their headers.
    let end = header.find("DEAD").unwrap() + "DEAD".len();
    assert_eq!(
        &lines[2][end - 4..end],
        "   2",
        "email's dead: {destinations}"
    );
    let end = header.find("PENDING").unwrap() + "PENDING".len();
    assert_eq!(
        &lines[1][end - 7..end],
        "      1",
        "chat's pending: {destinations}"
    );

    let dry = ok(&paysync(
        &broker,
        &db,
        &[
            "outbox",
            "retry",
            "--state",
            "dead",
            "--destination",
            "email",
            "--dry-run",
        ],
    ));
    let dry: Value = serde_json::from_str(&dry).unwrap();
    assert_eq!(
        (dry["count"].as_i64(), dry["dry_run"].as_bool()),
        (Some(2), Some(true))
    );
    let refused = paysync(
        &broker,
        &db,
        &["outbox", "skip", &pending.to_string(), "--reason", " "],
    );
    assert!(!refused.status.success(), "a blank reason is refused");

    let paused = ok(&paysync(
        &broker,
        &db,
        &[
            "outbox",
            "pause",
            "chat",
            "--for",
            "10m",
            "--reason",
            "webhook rotated",
        ],
    ));
    let paused: Value = serde_json::from_str(&paused).unwrap();
    assert_eq!(paused["destination"]["pause_reason"], "webhook rotated");
    let views = ok(&paysync(
        &broker,
        &db,
        &["outbox", "destinations", "--json"],
    ));
    let views: Value = serde_json::from_str(&views).unwrap();
    assert_eq!(views[0]["name"], "chat");
    assert!(views[0]["paused_until"].is_string());
    assert_eq!(views[0]["updated_by"], "cli:ops-test");
    let table = ok(&paysync(&broker, &db, &["outbox", "destinations"]));
    assert!(
        table
            .lines()
            .nth(1)
            .unwrap()
            .ends_with("paused: webhook rotated"),
        "{table}"
    );
    ok(&paysync(&broker, &db, &["outbox", "force-open", "email"]));

    let history = ok(&paysync(&broker, &db, &["dlq", "history", "--json"]));
    let history: Value = serde_json::from_str(&history).unwrap();
    let actions: Vec<(&str, &str, bool)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["action"].as_str().unwrap(),
                a["actor"].as_str().unwrap(),
                a["dry_run"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("outbox.force", "cli:ops-test", false),
            ("outbox.pause", "cli:ops-test", false),
            ("outbox.retry", "cli:ops-test", true),
        ]
    );
}
