//! Operators working the dead-letter queue: groups, retry with the cause fixed, redrive
//! counts, archive and purge, export and replay byte for byte, the audit trail, and the admin
//! API giving the same answers as the CLI's operations.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use paysync_store::{DeadLetterFilter, EventFilter, PurgeState, Store};
use paysync_testkit::{
    TestBroker, TestDb, open_dead_letters, poll_until, stripe_fixture, verified_event,
};
use paysync_worker::ops::{Ops, ReplaySelection, Selection};
use paysync_worker::{App, Handlers};
use serde_json::Value;

use crate::helpers::*;

/// An operator result as the CLI and the admin API print it.
fn as_json(v: impl serde::Serialize) -> Value {
    serde_json::to_value(v).unwrap()
}

/// Adds a scripted handler for `event_type` to `h`; the calls it sees.
fn register(h: &mut Handlers, event_type: &str, script: Script) -> Arc<Calls> {
    let (one, calls) = handlers(event_type, script);
    h.register(
        paysync_domain::Provider::Stripe,
        event_type,
        one.get(paysync_domain::Provider::Stripe, event_type)
            .unwrap()
            .clone(),
    );
    calls
}

/// The handlers the first test's worker starts with: `invoice.paid` failing permanently or,
/// once its cause is fixed, succeeding; the other two groups failing still.
fn three_groups(invoice_paid: Script) -> (Handlers, Arc<Calls>) {
    let mut h = Handlers::new();
    let calls = register(&mut h, "invoice.paid", invoice_paid);
    register(&mut h, "charge.failed", Script::FailPermanentlyElsewhere);
    register(
        &mut h,
        "customer.updated",
        Script::FailTransiently(u32::MAX),
    );
    (h, calls)
}

/// The admin API of a worker, called with a token.
struct Admin<'a> {
    client: reqwest::Client,
    base: &'a str,
    token: &'a str,
}

impl Admin<'_> {
    async fn get(&self, path: &str) -> Value {
        let request = self.client.get(format!("{}{path}", self.base));
        Self::json(request.bearer_auth(self.token)).await
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let request = self.client.post(format!("{}{path}", self.base));
        Self::json(request.bearer_auth(self.token).json(&body)).await
    }

    async fn json(request: reqwest::RequestBuilder) -> Value {
        request.send().await.unwrap().json().await.unwrap()
    }
}

async fn open_letters(store: &Store, n: usize) {
    poll_until(
        Duration::from_secs(90),
        &format!("{n} open dead letters"),
        || async {
            let rows = open_dead_letters(store, 100_000).await.unwrap();
            (rows.len() >= n).then_some(())
        },
    )
    .await
    .unwrap();
}

fn ops_for(broker: &TestBroker, store: &Store) -> Ops {
    Ops::new(
        store.clone(),
        paysync_amqp::Publisher::new(broker.settings("operator")),
    )
}

#[tokio::test]
async fn a_thousand_dead_letters_in_three_groups_and_one_group_retried_with_its_cause_fixed() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let store = db.store().await.unwrap();
    let (failing, _) = three_groups(Script::FailPermanently);
    // One attempt only: the transient failures are exhausted at once (a third fingerprint).
    let worker = spawn_worker(&broker, &db, fast_retry(1), failing).await;
    let publisher = publisher(&broker);
    let plan = [
        ("invoice.paid", 400),
        ("charge.failed", 350),
        ("customer.updated", 250),
    ];
    for (event_type, n) in plan {
        let ids: Vec<String> = (0..n)
            .map(|i| format!("evt_{}_{i:04}", event_type.replace('.', "_")))
            .collect();
        for chunk in ids.chunks(100) {
            futures::future::join_all(
                chunk
                    .iter()
                    .map(|id| publish_event(&publisher, id, event_type)),
            )
            .await;
        }
    }
    open_letters(&store, 1000).await;
    worker.stop().await;

    let ops = ops_for(&broker, &store);
    let groups = as_json(ops.groups().await.unwrap());
    let groups = groups.as_array().unwrap();
    assert_eq!(groups.len(), 3, "{groups:#?}");
    let counts: Vec<i64> = groups
        .iter()
        .map(|g| g["count"].as_i64().unwrap())
        .collect();
    assert_eq!(counts, [400, 350, 250]);
    let group_of = |t: &str| {
        groups
            .iter()
            .find(|g| g["event_types"][0] == t)
            .map(|g| g["group"].as_str().unwrap().to_owned())
            .unwrap()
    };
    let title = groups[0]["title"].as_str().unwrap();
    assert!(
        title.starts_with("test_contradiction: contradiction in evt_invoice_paid_"),
        "{title}"
    );
    assert_eq!(groups[2]["error_kind"], "test_dependency_down");

    // The cause of the invoice.paid group is fixed; the other two still fail.
    let (fixed, calls) = three_groups(Script::Succeed);
    let worker = spawn_worker(&broker, &db, fast_retry(1), fixed).await;
    let report = ops
        .retry(
            &Selection::Group(group_of("invoice.paid")),
            false,
            "test",
            &|_, _| {},
        )
        .await
        .unwrap();
    assert_eq!(as_json(&report)["retried"], 400);
    let applied = poll_until(
        Duration::from_secs(90),
        "400 invoice.paid applied",
        || async {
            let rows = store
                .events(&EventFilter {
                    provider: None,
                    event_type: Some("invoice.paid".into()),
                    limit: 10_000,
                    ..Default::default()
                })
                .await
                .unwrap();
            (rows.len() == 400).then_some(rows)
        },
    )
    .await
    .unwrap();
    assert_eq!(
        applied
            .iter()
            .map(|r| r.event_id.as_str())
            .collect::<HashSet<_>>()
            .len(),
        400
    );
    assert!(
        applied
            .iter()
            .all(|r| r.duplicates == 0 && r.outcome == "applied")
    );
    assert_eq!(
        calls.count.load(std::sync::atomic::Ordering::SeqCst),
        400,
        "each applied exactly once"
    );

    let after = as_json(ops.groups().await.unwrap());
    let after: Vec<(String, i64)> = after
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["group"].as_str().unwrap().to_owned(),
                g["count"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        after,
        [
            (group_of("charge.failed"), 350),
            (group_of("customer.updated"), 250)
        ]
    );

    // A retry whose cause is not fixed comes back as a dead letter with redrives = 1.
    let one = store
        .dead_letter_list(&DeadLetterFilter {
            group: Some(group_of("charge.failed")),
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap()[0]
        .id;
    ops.retry(&Selection::Ids(vec![one]), false, "test", &|_, _| {})
        .await
        .unwrap();
    let back = poll_until(Duration::from_secs(30), "the re-failed letter", || async {
        let rows = store
            .dead_letter_list(&DeadLetterFilter {
                group: Some(group_of("charge.failed")),
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap();
        rows.into_iter().find(|d| d.redrives == 1)
    })
    .await
    .unwrap();
    assert_eq!(back.attempts, 1);
    assert_eq!(
        store.dead_letter(one).await.unwrap().unwrap().state,
        "retried"
    );
    let history = as_json(ops.history(10).await.unwrap());
    assert_eq!(
        history
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["action"] == "dlq.retry")
            .count(),
        2
    );
    worker.stop().await;
}

#[tokio::test]
async fn export_then_import_replays_the_exact_bodies() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let store = db.store().await.unwrap();
    let files = [
        "charge.refunded.json",
        "invoice.paid.json",
        "customer.deleted.json",
    ];
    let mut failing = Handlers::new();
    for t in ["charge.refunded", "invoice.paid", "customer.deleted"] {
        register(&mut failing, t, Script::FailPermanently);
    }
    let worker = spawn_worker(&broker, &db, fast_retry(3), failing).await;
    let publisher = publisher(&broker);
    for f in files {
        let hook = verified_event(stripe_fixture(f));
        publisher.publish(&hook).await.unwrap();
    }
    open_letters(&store, 3).await;
    worker.stop().await;

    let ops = ops_for(&broker, &store);
    let lines = ops
        .export(
            &DeadLetterFilter {
                limit: 100,
                ..Default::default()
            },
            "test",
        )
        .await
        .unwrap();
    assert_eq!(lines.len(), 3);
    // The export file is loss-free: the import publishes the exact bodies again.
    let report = ops.import(&lines, 0, "test", &|_, _| {}).await.unwrap();
    assert_eq!(as_json(&report)["published"], 3);
    let queued = broker
        .take_messages(&broker.topology().work_queue(), 3, Duration::from_secs(10))
        .await
        .unwrap();
    let bodies: HashSet<Vec<u8>> = queued.iter().map(|m| m.body.clone()).collect();
    let originals: HashSet<Vec<u8>> = files.iter().map(|f| stripe_fixture(f)).collect();
    assert_eq!(bodies, originals, "byte for byte");
    for message in &queued {
        let read = message.read_event().unwrap();
        assert_eq!(
            read.attempt, 1,
            "fresh attempt budget for {}",
            read.meta.event_id
        );
    }
    let history = as_json(ops.history(10).await.unwrap());
    let actions: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["dlq.import", "dlq.export"]);

    // An import that cannot publish says where to continue; the skip continues it there.
    let unreachable = Ops::new(store.clone(), unreachable_publisher(&broker));
    let err = unreachable
        .import(&lines, 0, "test", &|_, _| {})
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("republish not confirmed after 0 of 3; continue with --skip 0"),
        "{err}"
    );
    let report = ops.import(&lines, 2, "test", &|_, _| {}).await.unwrap();
    assert_eq!(report.published, 1);
    let queued = broker
        .take_messages(&broker.topology().work_queue(), 1, Duration::from_secs(10))
        .await
        .unwrap();
    let third: Value = serde_json::from_str(&lines[2]).unwrap();
    assert_eq!(
        queued[0].read_event().unwrap().meta.event_id,
        third["event_id"].as_str().unwrap(),
        "only the line after the skipped two"
    );
}

/// An operator publisher whose broker cannot be reached.
fn unreachable_publisher(broker: &TestBroker) -> paysync_amqp::Publisher {
    let mut settings = broker.settings("operator-unreachable");
    settings.url = format!(
        "amqp://guest:guest@127.0.0.1:{}/%2f",
        paysync_testkit::closed_port()
    );
    settings.connect_timeout = Duration::from_secs(2);
    paysync_amqp::Publisher::new(settings)
}

#[tokio::test]
async fn an_interrupted_replay_says_where_to_continue_and_the_skip_continues_it() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let store = db.store().await.unwrap();
    let (ok, _) = handlers("invoice.paid", Script::Succeed);
    let worker = spawn_worker(&broker, &db, fast_retry(3), ok).await;
    let ids: Vec<String> = (1..=4).map(|i| format!("evt_resume_{i}")).collect();
    for id in &ids {
        publish_one(&broker, id, "invoice.paid").await;
        logged(&db, id).await;
    }
    let invoices = ReplaySelection {
        provider: paysync_domain::Provider::Stripe,
        ids: None,
        event_type: Some("invoice.paid"),
        since: Some(time::OffsetDateTime::UNIX_EPOCH),
    };
    let unreachable = Ops::new(store.clone(), unreachable_publisher(&broker));
    let err = unreachable
        .replay(&invoices, 0, false, "test", &|_, _| {})
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("republish not confirmed after 0 of 4; continue with --skip 0"),
        "{err}"
    );
    // Continued after the first three (as if they had been confirmed): only the fourth, the
    // newest in the log, is replayed.
    let report = ops_for(&broker, &store)
        .replay(&invoices, 3, false, "test", &|_, _| {})
        .await
        .unwrap();
    assert_eq!((report.published, report.selected), (1, 4));
    poll_until(Duration::from_secs(30), "the fourth replayed", || async {
        let row = store.event("stripe", "evt_resume_4").await.unwrap()?;
        (row.replays == 1).then_some(())
    })
    .await
    .unwrap();
    for id in &ids[..3] {
        assert_eq!(
            store.event("stripe", id).await.unwrap().unwrap().replays,
            0,
            "{id}"
        );
    }
    worker.stop().await;
}

#[tokio::test]
async fn archive_hides_purge_needs_yes_and_every_action_is_in_the_history() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let store = db.store().await.unwrap();
    let mut failing = Handlers::new();
    register(&mut failing, "invoice.paid", Script::FailPermanently);
    let worker = spawn_worker(&broker, &db, fast_retry(3), failing).await;
    let publisher = publisher(&broker);
    for id in ["evt_arch_1", "evt_arch_2"] {
        publish_event(&publisher, id, "invoice.paid").await;
    }
    open_letters(&store, 2).await;
    worker.stop().await;

    let ops = ops_for(&broker, &store);
    let first = store
        .dead_letter_list(&DeadLetterFilter {
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap()[0]
        .id;
    assert_eq!(
        as_json(
            ops.archive(&Selection::Ids(vec![first]), "test")
                .await
                .unwrap()
        )["archived"],
        1
    );
    let open = ops
        .list(&DeadLetterFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(open.len(), 1, "archived letters leave the default view");
    let archived = ops
        .list(&DeadLetterFilter {
            state: Some("archived".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(archived.len(), 1, "but remain countable");
    assert_eq!(as_json(ops.groups().await.unwrap())[0]["count"], 1);

    let dry = ops
        .purge(PurgeState::Archived, 0, false, "test")
        .await
        .unwrap();
    assert_eq!(as_json(&dry)["would_delete"], 1);
    assert_eq!(as_json(&dry)["deleted"], 0);
    assert!(
        store.dead_letter(first).await.unwrap().is_some(),
        "nothing deleted without --yes"
    );
    assert_eq!(
        as_json(
            ops.purge(PurgeState::Archived, 0, true, "test")
                .await
                .unwrap()
        )["deleted"],
        1
    );
    assert!(store.dead_letter(first).await.unwrap().is_none());
    assert_eq!(
        ops.list(&DeadLetterFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .len(),
        1
    );

    let history = as_json(ops.history(10).await.unwrap());
    let actions: Vec<(&str, bool)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["action"].as_str().unwrap(),
                a["dry_run"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("dlq.purge", false),
            ("dlq.purge", true),
            ("dlq.archive", false)
        ]
    );
}

/// A worker with the admin API on (its token returned) whose `invoice.paid` always fails
/// permanently, so each one published becomes an open dead letter.
async fn admin_worker(broker: &TestBroker, db: &TestDb) -> (Running, &'static str) {
    let mut failing = Handlers::new();
    register(&mut failing, "invoice.paid", Script::FailPermanently);
    let token = "an-admin-token-long-enough";
    let mut s = settings(broker, db, fast_retry(3));
    s.admin_token = Some(secrecy::SecretString::from(token.to_owned()));
    (spawn(App::build(s, failing).await.unwrap()).await, token)
}

#[tokio::test]
async fn the_admin_api_refuses_missing_or_wrong_tokens_and_answers_like_the_cli() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let store = db.store().await.unwrap();
    let (worker, token) = admin_worker(&broker, &db).await;
    publish_one(&broker, "evt_admin_1", "invoice.paid").await;
    open_letters(&store, 1).await;

    let client = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", worker.metrics_base);
    let no_token = client.get(url("/admin/dlq/groups")).send().await.unwrap();
    assert_eq!(no_token.status(), 401);
    let wrong = client
        .get(url("/admin/dlq/groups"))
        .bearer_auth("an-admin-token-long-enougX")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let short = client
        .get(url("/admin/dlq/groups"))
        .bearer_auth("short")
        .send()
        .await
        .unwrap();
    assert_eq!(short.status(), 401);

    let ops = ops_for(&broker, &store);
    let admin = Admin {
        client: client.clone(),
        base: &worker.metrics_base,
        token,
    };
    let api = admin.get("/admin/dlq/groups").await;
    assert_eq!(api, as_json(ops.groups().await.unwrap()));
    let api = admin.get("/admin/dlq?limit=10").await;
    assert_eq!(
        api,
        as_json(
            ops.list(&DeadLetterFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap()
        )
    );
    let id = api[0]["id"].as_i64().unwrap();
    let api = admin.get(&format!("/admin/dlq/{id}")).await;
    assert_eq!(Some(api), ops.show(id).await.unwrap().map(as_json));
    let archived = admin
        .post("/admin/dlq/archive", serde_json::json!({"ids": [id]}))
        .await;
    assert_eq!(archived["archived"], 1);
    let api = admin.get("/admin/dlq/history").await;
    assert_eq!(api, as_json(ops.history(100).await.unwrap()));
    assert_eq!(api[0]["actor"], "admin-api");
    // Purge, export and replay are there too.
    let purge = admin
        .post(
            "/admin/dlq/purge",
            serde_json::json!({"older_than_secs": 3600}),
        )
        .await;
    assert_eq!(purge["deleted"], 0, "nothing deleted without yes");
    let export = client
        .get(url("/admin/dlq/export?state=archived"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(export.headers()["content-type"], "application/x-ndjson");
    let exported = export.text().await.unwrap();
    assert_eq!(exported.lines().count(), 1);
    let replay = admin
        .post(
            "/admin/events/replay",
            serde_json::json!({"event_ids": ["evt_unknown"], "dry_run": true}),
        )
        .await;
    assert_eq!(replay["selected"], 0);
    let no_token = client
        .post(url("/admin/events/replay"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.status(), 401);
    // The public receiver port has no admin routes; a worker without a token has none either.
    let (broker2, db2) = (TestBroker::new(), TestDb::new());
    let plain = spawn_worker(&broker2, &db2, fast_retry(3), Handlers::new()).await;
    let off = client
        .get(format!("{}/admin/dlq/groups", plain.metrics_base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(off.status(), 404);
    plain.stop().await;
    worker.stop().await;
}

#[tokio::test]
async fn a_replay_reruns_the_handler_for_a_logged_event_and_counts_it() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let store = db.store().await.unwrap();
    let (ok, calls) = handlers("invoice.paid", Script::Succeed);
    let worker = spawn_worker(&broker, &db, fast_retry(3), ok).await;
    publish_one(&broker, "evt_replayed", "invoice.paid").await;
    logged(&db, "evt_replayed").await;

    let ops = ops_for(&broker, &store);
    let ids = ["evt_replayed".to_owned()];
    let replayed = ReplaySelection {
        provider: paysync_domain::Provider::Stripe,
        ids: Some(&ids),
        event_type: None,
        since: None,
    };
    let dry = ops
        .replay(&replayed, 0, true, "test", &|_, _| {})
        .await
        .unwrap();
    assert_eq!(
        (
            as_json(&dry)["selected"].as_i64(),
            as_json(&dry)["published"].as_i64()
        ),
        (Some(1), Some(0))
    );
    let report = ops
        .replay(&replayed, 0, false, "test", &|_, _| {})
        .await
        .unwrap();
    assert_eq!(as_json(&report)["published"], 1);
    let row = poll_until(Duration::from_secs(20), "the replay applied", || async {
        let row = store.event("stripe", "evt_replayed").await.unwrap()?;
        (row.replays == 1).then_some(row)
    })
    .await
    .unwrap();
    assert_eq!(row.duplicates, 0, "a replay is not a duplicate");
    assert_eq!(
        calls.count.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the handler really ran again"
    );
    worker.stop().await;
}

#[tokio::test]
async fn retried_dead_letters_are_purged_by_age_and_open_ones_never() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let store = db.store().await.unwrap();
    let (worker, token) = admin_worker(&broker, &db).await;
    let publisher = publisher(&broker);
    for id in ["evt_purge_1", "evt_purge_2"] {
        publish_event(&publisher, id, "invoice.paid").await;
    }
    open_letters(&store, 2).await;
    let ops = ops_for(&broker, &store);
    let first = open_dead_letters(&store, 10).await.unwrap()[0].id;
    // Retried: its copy is confirmed in the work queue (where it fails again, as a new letter
    // of the same event, once the worker takes it).
    let retried = ops
        .retry(&Selection::Ids(vec![first]), false, "test", &|_, _| {})
        .await
        .unwrap();
    assert_eq!(retried.retried, 1);
    assert_eq!(
        store.dead_letter(first).await.unwrap().unwrap().state,
        "retried"
    );

    let young = ops
        .purge(PurgeState::Retried, 3600, true, "test")
        .await
        .unwrap();
    assert_eq!(young.deleted, 0, "retried less than an hour ago");
    let dry = ops
        .purge(PurgeState::Retried, 0, false, "test")
        .await
        .unwrap();
    assert_eq!(dry.would_delete, Some(1));
    assert!(store.dead_letter(first).await.unwrap().is_some());
    let done = ops
        .purge(PurgeState::Retried, 0, true, "test")
        .await
        .unwrap();
    assert_eq!(done.deleted, 1);
    assert!(store.dead_letter(first).await.unwrap().is_none());
    let open: Vec<String> = open_dead_letters(&store, 10)
        .await
        .unwrap()
        .iter()
        .filter_map(|d| d.event_id.clone())
        .collect();
    assert!(open.contains(&"evt_purge_2".to_owned()), "{open:?}");

    // The admin API takes the state; an open letter is never a purge's.
    let client = reqwest::Client::new();
    let purge = |state: &'static str| {
        client
            .post(format!("{}/admin/dlq/purge", worker.metrics_base))
            .bearer_auth(token)
            .json(&serde_json::json!({"older_than_secs": 0, "state": state}))
            .send()
    };
    let r = purge("open").await.unwrap();
    assert_eq!(r.status(), 400);
    let r = purge("retried").await.unwrap();
    assert_eq!(r.status(), 200);
    let targets: Vec<String> = store
        .actions(10)
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.action == "dlq.purge")
        .map(|a| a.target)
        .collect();
    assert_eq!(
        targets,
        [
            "retried older than 0 s",
            "retried older than 0 s",
            "retried older than 0 s",
            "retried older than 3600 s"
        ]
    );
    worker.stop().await;
}
