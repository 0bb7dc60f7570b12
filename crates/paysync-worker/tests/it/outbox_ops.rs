//! Operators working the outbox: listing and showing deliveries, retrying them spread at the
//! destination's rate, skipping with a reason, pausing, resuming and forcing destinations; the
//! audit trail of each action, and the admin API answering like the operations. Deliveries are
//! seeded with plain SQL, as a dispatcher would have left them.

use std::time::Duration;

use paysync_store::{DeliveryFilter, Store};
use paysync_testkit::{TestBroker, TestDb, unique_id};
use paysync_worker::App;
use paysync_worker::ops::outbox::{DeliverySelection, EXCERPT_MAX, ForcedBreaker};
use paysync_worker::ops::{Ops, OpsError};
use serde_json::{Value, json};
use tokio_postgres::Client;

use crate::helpers::*;

fn as_json(v: impl serde::Serialize) -> Value {
    serde_json::to_value(v).unwrap()
}

fn ops_for(broker: &TestBroker, store: &Store) -> Ops {
    Ops::new(
        store.clone(),
        paysync_amqp::Publisher::new(broker.settings("operator")),
    )
}

/// Destination rows for `names`, configured, as a dispatcher registers them.
async fn destinations(c: &Client, names: &[&str]) {
    c.execute(
        "insert into outbox_destinations (name, configured, updated_by) \
         select n, true, 'dispatcher' from unnest($1::text[]) as n",
        &[&names],
    )
    .await
    .unwrap();
}

/// A delivery in `state`, with what a dispatcher leaves on a row in that state; its id.
async fn delivery(c: &Client, destination: &str, operation: &str, state: &str) -> i64 {
    c.query_one(
        "insert into outbox_deliveries (destination, operation, idempotency_key, provider, \
           intent, source_id, state, attempts, fingerprint, reason, last_error, last_status, \
           done_at, lease_token, lease_owner, lease_expires_at) \
         values ($1, $2, $3, 'stripe', 'payment_succeeded', $4, $5, \
           case $5 when 'pending' then 0 when 'dead' then 8 else 1 end, \
           case when $5 = 'dead' then $1 || ':http:503' end, \
           case when $5 in ('skipped', 'expired') then 'no_recipient' end, \
           case when $5 = 'dead' then 'HTTP 503 from upstream' end, \
           case when $5 = 'dead' then 503 end, \
           case when $5 in ('sent', 'dead', 'skipped', 'expired') then now() end, \
           case when $5 = 'in_flight' then nextval('outbox_lease_seq') end, \
           case when $5 = 'in_flight' then 'dispatcher-1' end, \
           case when $5 = 'in_flight' then now() + interval '1 hour' end) \
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

/// (state, attempts, fingerprint, reason) of a delivery.
async fn row(c: &Client, id: i64) -> (String, i32, Option<String>, Option<String>) {
    let r = c
        .query_one(
            "select state, attempts, fingerprint, reason from outbox_deliveries where id = $1",
            &[&id],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

/// Seconds between the times `b` and `a` are due.
async fn due_gap(c: &Client, a: i64, b: i64) -> f64 {
    c.query_one(
        "select extract(epoch from (select next_attempt_at from outbox_deliveries where id = $2) \
           - (select next_attempt_at from outbox_deliveries where id = $1))::float8",
        &[&a, &b],
    )
    .await
    .unwrap()
    .get(0)
}

/// The audit trail, oldest first: (action, actor, target, affected, dry run, details).
async fn audit(ops: &Ops) -> Vec<(String, String, String, i32, bool, Value)> {
    let mut all: Vec<_> = ops
        .history(1000)
        .await
        .unwrap()
        .into_iter()
        .map(|a| {
            (
                a.action, a.actor, a.target, a.affected, a.dry_run, a.details,
            )
        })
        .collect();
    all.reverse();
    all
}

fn ids(list: &[paysync_worker::ops::outbox::DeliveryView]) -> Vec<i64> {
    list.iter().map(|d| d.id).collect()
}

fn filter(
    state: Option<&str>,
    destination: Option<&str>,
    operation: Option<&str>,
) -> DeliveryFilter {
    DeliveryFilter {
        ids: Vec::new(),
        state: state.map(str::to_owned),
        destination: destination.map(str::to_owned),
        operation: operation.map(str::to_owned),
        limit: 100,
    }
}

#[tokio::test]
async fn outbox_list_filters_and_show_gives_the_attempts_with_capped_excerpts() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let store = db.store().await.unwrap();
    let c = db.client().await.unwrap();
    destinations(&c, &["email", "chat", "hubspot"]).await;
    let receipt_dead = delivery(&c, "email", "email.receipt", "dead").await;
    let refund_pending = delivery(&c, "email", "email.refund", "pending").await;
    let receipt_dead2 = delivery(&c, "email", "email.receipt", "dead").await;
    let chat_dead = delivery(&c, "chat", "chat.new_customer", "dead").await;
    let deal_sent = delivery(&c, "hubspot", "crm.deal", "sent").await;
    let churn_skipped = delivery(&c, "chat", "chat.churn", "skipped").await;
    let ops = ops_for(&broker, &store);

    let list = |s, d, o| {
        let ops = ops.clone();
        async move { ids(&ops.outbox_list(&filter(s, d, o)).await.unwrap()) }
    };
    assert_eq!(
        list(None, None, None).await,
        [
            churn_skipped,
            deal_sent,
            chat_dead,
            receipt_dead2,
            refund_pending,
            receipt_dead
        ],
        "newest first"
    );
    assert_eq!(
        list(Some("dead"), None, None).await,
        [chat_dead, receipt_dead2, receipt_dead]
    );
    assert_eq!(
        list(None, Some("email"), None).await,
        [receipt_dead2, refund_pending, receipt_dead]
    );
    assert_eq!(
        list(Some("dead"), Some("email"), Some("email.receipt")).await,
        [receipt_dead2, receipt_dead]
    );
    assert_eq!(
        list(Some("sent"), Some("chat"), None).await,
        Vec::<i64>::new()
    );
    let limited = ops
        .outbox_list(&DeliveryFilter {
            limit: 2,
            ..filter(None, None, None)
        })
        .await
        .unwrap();
    assert_eq!(ids(&limited), [churn_skipped, deal_sent]);
    let dead = &ops
        .outbox_list(&filter(Some("dead"), Some("chat"), None))
        .await
        .unwrap()[0];
    assert_eq!(
        (dead.fingerprint.as_deref(), dead.last_status, dead.attempts),
        (Some("chat:http:503"), Some(503), 8)
    );
    let unknown = ops
        .outbox_list(&filter(None, Some("sms"), None))
        .await
        .expect_err("an unknown destination is refused");
    assert!(matches!(unknown, OpsError::Refused(_)), "{unknown:?}");
    assert!(
        unknown.to_string().contains("known: email, chat, hubspot"),
        "{unknown}"
    );
    assert!(
        ops.outbox_list(&filter(Some("lost"), None, None))
            .await
            .is_err()
    );

    // Two attempts, the second with an excerpt longer than the cap.
    let long = format!("HTTP 503 {}", "x".repeat(5000));
    c.execute(
        "insert into outbox_attempts (delivery_id, attempt, lease_token, owner, started_at, \
           duration_ms, outcome, status, error, retry_after_s) values \
         ($1, 1, 101, 'dispatcher-1', now() - interval '2 minutes', 120, 'retry', 503, \
          'HTTP 503 from upstream', 3.0), \
         ($1, 2, 102, 'dispatcher-2', now() - interval '1 minute', 95, 'dead', 503, $2, null)",
        &[&chat_dead, &long],
    )
    .await
    .unwrap();
    let shown = ops
        .outbox_show(chat_dead)
        .await
        .unwrap()
        .expect("it exists");
    assert_eq!(shown.delivery.id, chat_dead);
    assert_eq!(shown.delivery.operation, "chat.new_customer");
    let attempts: Vec<(i32, &str, &str)> = shown
        .attempts
        .iter()
        .map(|a| (a.attempt, a.outcome.as_str(), a.owner.as_str()))
        .collect();
    assert_eq!(
        attempts,
        [(1, "retry", "dispatcher-1"), (2, "dead", "dispatcher-2")]
    );
    assert_eq!(shown.attempts[0].retry_after_s, Some(3.0));
    let cut = shown.attempts[1].error.as_deref().unwrap();
    assert!(
        cut.len() <= EXCERPT_MAX && cut.ends_with('…'),
        "{}",
        cut.len()
    );
    assert!(cut.starts_with("HTTP 503 xxx"));
    let json = as_json(&shown);
    assert_eq!(json["attempts"][1]["status"], 503);
    assert_eq!(json["delivery"]["state"], "dead");
    assert!(ops.outbox_show(deal_sent + 1000).await.unwrap().is_none());
    assert!(
        audit(&ops).await.is_empty(),
        "reads are not operator actions"
    );
}

#[tokio::test]
async fn outbox_retry_dry_run_changes_nothing_and_a_retry_spreads_at_the_destination_rate() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let store = db.store().await.unwrap();
    let c = db.client().await.unwrap();
    destinations(&c, &["email", "chat", "hubspot"]).await;
    let email = [
        delivery(&c, "email", "email.receipt", "dead").await,
        delivery(&c, "email", "email.receipt", "dead").await,
    ];
    let email_refund = delivery(&c, "email", "email.refund", "dead").await;
    let chat = [
        delivery(&c, "chat", "chat.churn", "dead").await,
        delivery(&c, "chat", "chat.churn", "dead").await,
    ];
    let hubspot = [
        delivery(&c, "hubspot", "crm.deal", "dead").await,
        delivery(&c, "hubspot", "crm.deal", "dead").await,
    ];
    let pending = delivery(&c, "email", "email.receipt", "pending").await;
    let ops = ops_for(&broker, &store);

    let by_filter = DeliverySelection::from_parts(
        vec![],
        Some("dead".into()),
        Some("email".into()),
        Some("email.receipt".into()),
    )
    .unwrap();
    let dry = ops
        .outbox_retry(&by_filter, None, true, "test")
        .await
        .unwrap();
    assert_eq!((dry.count, dry.dry_run), (2, true));
    assert_eq!(dry.ids, email);
    for id in email {
        assert_eq!(
            row(&c, id).await,
            ("dead".into(), 8, Some("email:http:503".into()), None),
            "a dry run changes nothing"
        );
    }

    let done = ops
        .outbox_retry(&by_filter, None, false, "test")
        .await
        .unwrap();
    assert_eq!((done.count, done.dry_run), (2, false));
    assert_eq!(done.ids, email);
    assert_eq!(done.spread_seconds, 0.25, "email goes at 4 a second");
    for id in email {
        assert_eq!(row(&c, id).await, ("pending".into(), 0, None, None));
    }
    let gap = due_gap(&c, email[0], email[1]).await;
    assert!(
        gap >= 0.25 - 1e-6,
        "the second is due 1/4 s after the first: {gap}"
    );
    assert_eq!(row(&c, email_refund).await.0, "dead", "another operation");

    // Ids across destinations: each spreads at its own rate; a pending one is left alone.
    let mixed = DeliverySelection::Ids(vec![chat[0], chat[1], email_refund, pending]);
    let done = ops.outbox_retry(&mixed, None, false, "test").await.unwrap();
    assert_eq!(done.ids, [email_refund, chat[0], chat[1]]);
    assert_eq!(done.spread_seconds, 1.0, "chat goes at 1 a second");
    let gap = due_gap(&c, chat[0], chat[1]).await;
    assert!(gap >= 1.0 - 1e-6, "{gap}");
    assert_eq!(row(&c, pending).await.0, "pending");

    // An operator's rate overrides the default.
    let slow =
        DeliverySelection::from_parts(vec![], Some("dead".into()), Some("hubspot".into()), None)
            .unwrap();
    let done = ops
        .outbox_retry(&slow, Some(0.5), false, "test")
        .await
        .unwrap();
    assert_eq!(
        (done.ids.as_slice(), done.spread_seconds),
        (&hubspot[..], 2.0)
    );
    let gap = due_gap(&c, hubspot[0], hubspot[1]).await;
    assert!(gap >= 2.0 - 1e-6, "{gap}");
    assert!(matches!(
        ops.outbox_retry(&slow, Some(0.0), false, "test").await,
        Err(OpsError::Refused(_))
    ));
    let sent = DeliverySelection::from_parts(vec![], Some("sent".into()), None, None).unwrap();
    assert!(matches!(
        ops.outbox_retry(&sent, None, false, "test").await,
        Err(OpsError::Refused(_))
    ));

    let trail = audit(&ops).await;
    let actions: Vec<(&str, &str, i32, bool)> = trail
        .iter()
        .map(|(a, _, t, n, d, _)| (a.as_str(), t.as_str(), *n, *d))
        .collect();
    let mixed_target = format!("deliveries {:?}", [chat[0], chat[1], email_refund, pending]);
    assert_eq!(
        actions,
        [
            (
                "outbox.retry",
                "state=dead destination=email operation=email.receipt",
                2,
                true
            ),
            (
                "outbox.retry",
                "state=dead destination=email operation=email.receipt",
                2,
                false
            ),
            ("outbox.retry", mixed_target.as_str(), 3, false),
            (
                "outbox.retry",
                "state=dead destination=hubspot operation=*",
                2,
                false
            ),
        ]
    );
    assert_eq!(trail[2].5["per_second"], json!({"chat": 1.0, "email": 4.0}));
    assert_eq!(trail[3].5["per_second"], json!({"hubspot": 0.5}));
}

#[tokio::test]
async fn outbox_skip_needs_a_reason_and_only_touches_pending_and_dead() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let store = db.store().await.unwrap();
    let c = db.client().await.unwrap();
    destinations(&c, &["email"]).await;
    let pending = delivery(&c, "email", "email.receipt", "pending").await;
    let dead = delivery(&c, "email", "email.receipt", "dead").await;
    let sent = delivery(&c, "email", "email.receipt", "sent").await;
    let in_flight = delivery(&c, "email", "email.receipt", "in_flight").await;
    let ops = ops_for(&broker, &store);
    let all = [pending, dead, sent, in_flight];

    for blank in ["", "   "] {
        let refused = ops
            .outbox_skip(&all, blank, "test")
            .await
            .expect_err("no reason");
        assert!(refused.to_string().contains("reason"), "{refused}");
    }
    assert_eq!(
        row(&c, pending).await.0,
        "pending",
        "a refused skip does nothing"
    );
    assert!(audit(&ops).await.is_empty());

    let report = ops
        .outbox_skip(&all, " already emailed by hand ", "cli:ada")
        .await
        .unwrap();
    assert_eq!(report.skipped, [pending, dead]);
    assert_eq!(report.not_skipped, [sent, in_flight]);
    assert_eq!(report.reason, "already emailed by hand");
    for id in [pending, dead] {
        let (state, _, _, reason) = row(&c, id).await;
        assert_eq!(
            (state.as_str(), reason.as_deref()),
            ("skipped", Some("already emailed by hand"))
        );
    }
    assert_eq!(row(&c, sent).await.0, "sent");
    assert_eq!(row(&c, in_flight).await.0, "in_flight");

    let trail = audit(&ops).await;
    assert_eq!(trail.len(), 1);
    let (action, actor, _, affected, dry_run, details) = &trail[0];
    assert_eq!(
        (action.as_str(), actor.as_str(), *affected, *dry_run),
        ("outbox.skip", "cli:ada", 2, false)
    );
    assert_eq!(details["reason"], "already emailed by hand");
}

#[tokio::test]
async fn outbox_destinations_pause_resume_and_force_change_the_row_and_are_audited() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let store = db.store().await.unwrap();
    let c = db.client().await.unwrap();
    destinations(&c, &["chat", "email"]).await;
    delivery(&c, "email", "email.receipt", "pending").await;
    delivery(&c, "email", "email.receipt", "pending").await;
    delivery(&c, "email", "email.receipt", "in_flight").await;
    delivery(&c, "email", "email.receipt", "dead").await;
    delivery(&c, "email", "email.receipt", "sent").await;
    let ops = ops_for(&broker, &store);

    let listed = ops.outbox_destinations().await.unwrap();
    let names: Vec<&str> = listed.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["chat", "email"]);
    let email = &listed[1];
    assert_eq!(
        (email.pending, email.in_flight, email.dead),
        (2, 1, 1),
        "{email:?}"
    );
    assert!(email.oldest_pending_s.is_some());
    assert_eq!((email.forced.as_str(), email.configured), ("auto", true));
    assert_eq!(listed[0].oldest_pending_s, None, "chat has nothing waiting");

    let paused = ops
        .destination_pause(
            "email",
            Duration::from_secs(600),
            "relay maintenance",
            "cli:ada",
        )
        .await
        .unwrap();
    assert_eq!(paused.action, "pause");
    let view = &paused.destination;
    assert_eq!(view.pause_reason.as_deref(), Some("relay maintenance"));
    assert_eq!(view.updated_by.as_deref(), Some("cli:ada"));
    let left: f64 = c
        .query_one(
            "select extract(epoch from paused_until - now())::float8 from outbox_destinations \
             where name = 'email'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(left > 500.0 && left <= 600.0, "{left}");
    assert!(
        ops.destination_pause("email", Duration::from_secs(60), "", "cli:ada")
            .await
            .is_err(),
        "a pause needs a reason"
    );

    let forced = ops
        .destination_force("chat", ForcedBreaker::Open, "cli:ada")
        .await
        .unwrap();
    assert_eq!(forced.destination.forced, "open");
    let forced: String = c
        .query_one(
            "select forced from outbox_destinations where name = 'chat'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(forced, "open");
    ops.destination_force("chat", ForcedBreaker::Closed, "cli:ada")
        .await
        .unwrap();
    let auto = ops
        .destination_force("chat", ForcedBreaker::Auto, "cli:bob")
        .await
        .unwrap();
    assert_eq!(
        (
            auto.destination.forced.as_str(),
            auto.destination.updated_by.as_deref()
        ),
        ("auto", Some("cli:bob"))
    );

    let resumed = ops.destination_resume("email", "cli:ada").await.unwrap();
    assert_eq!(
        (
            resumed.destination.paused_until,
            resumed.destination.pause_reason
        ),
        (None, None)
    );
    let paused_until: Option<time::OffsetDateTime> = c
        .query_one(
            "select paused_until from outbox_destinations where name = 'email'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(paused_until, None);

    let unknown = ops
        .destination_resume("sms", "cli:ada")
        .await
        .expect_err("unknown destination");
    assert_eq!(
        unknown.to_string(),
        "unknown destination \"sms\"; known: email, chat, hubspot, app"
    );
    let missing = ops
        .destination_force("hubspot", ForcedBreaker::Open, "cli:ada")
        .await
        .expect_err("no row for hubspot");
    assert!(matches!(missing, OpsError::NotFound(_)), "{missing:?}");

    let trail = audit(&ops).await;
    let actions: Vec<(&str, &str, &str, Value)> = trail
        .iter()
        .map(|(a, who, t, _, _, d)| {
            let detail = d
                .get("mode")
                .or(d.get("reason"))
                .cloned()
                .unwrap_or(Value::Null);
            (a.as_str(), who.as_str(), t.as_str(), detail)
        })
        .collect();
    assert_eq!(
        actions,
        [
            (
                "outbox.pause",
                "cli:ada",
                "email",
                json!("relay maintenance")
            ),
            ("outbox.force", "cli:ada", "chat", json!("open")),
            ("outbox.force", "cli:ada", "chat", json!("closed")),
            ("outbox.force", "cli:bob", "chat", json!("auto")),
            ("outbox.resume", "cli:ada", "email", Value::Null),
        ]
    );
    assert_eq!(trail[4].5["was_disabled"], Value::Null);
    assert!(trail[4].5["was_paused_until"].is_string());
}

#[tokio::test]
async fn the_admin_outbox_api_needs_the_token_and_answers_like_the_operations() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let store = db.store().await.unwrap();
    let c = db.client().await.unwrap();
    destinations(&c, &["email", "chat", "hubspot"]).await;
    let dead = [
        delivery(&c, "chat", "chat.churn", "dead").await,
        delivery(&c, "chat", "chat.churn", "dead").await,
    ];
    let pending = delivery(&c, "email", "email.receipt", "pending").await;
    let token = "an-admin-token-long-enough";
    let mut s = settings(&broker, &db, fast_retry(3));
    s.admin_token = Some(secrecy::SecretString::from(token.to_owned()));
    let worker = spawn(
        App::build(s, paysync_worker::Handlers::new())
            .await
            .unwrap(),
    )
    .await;
    let ops = ops_for(&broker, &store);
    let client = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", worker.metrics_base);

    for (get, path) in [
        (true, "/admin/outbox/deliveries"),
        (true, "/admin/outbox/deliveries/1"),
        (true, "/admin/outbox/destinations"),
        (false, "/admin/outbox/retry"),
        (false, "/admin/outbox/skip"),
        (false, "/admin/outbox/destinations/email/pause"),
        (false, "/admin/outbox/destinations/email/resume"),
        (false, "/admin/outbox/destinations/email/force"),
    ] {
        let request = || {
            if get {
                client.get(url(path))
            } else {
                client
                    .post(url(path))
                    .json(&json!({"ids": [1], "reason": "r", "seconds": 60, "mode": "open"}))
            }
        };
        let wrong = request().bearer_auth("not-the-admin-token-at-all");
        assert_eq!(request().send().await.unwrap().status(), 401, "{path}");
        assert_eq!(wrong.send().await.unwrap().status(), 401, "{path}");
    }
    assert!(audit(&ops).await.is_empty(), "nothing done without a token");

    let call = |post: Option<Value>, path: &str| {
        let request = match &post {
            Some(body) => client.post(url(path)).json(body),
            None => client.get(url(path)),
        };
        let request = request.bearer_auth(token);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };

    let (status, api) = call(None, "/admin/outbox/deliveries?state=dead&destination=chat").await;
    assert_eq!(status, 200);
    assert_eq!(
        api,
        as_json(
            ops.outbox_list(&filter(Some("dead"), Some("chat"), None))
                .await
                .unwrap()
        )
    );
    assert_eq!(api.as_array().unwrap().len(), 2);
    let (_, api) = call(None, "/admin/outbox/deliveries?limit=1").await;
    assert_eq!(api[0]["id"], pending);
    let (status, api) = call(None, "/admin/outbox/deliveries?destination=sms").await;
    assert_eq!(status, 400);
    assert!(
        api["error"]
            .as_str()
            .unwrap()
            .contains("known: email, chat, hubspot"),
        "{api}"
    );
    let (status, api) = call(None, &format!("/admin/outbox/deliveries/{}", dead[0])).await;
    assert_eq!(status, 200);
    assert_eq!(
        Some(api),
        ops.outbox_show(dead[0]).await.unwrap().map(as_json)
    );
    let (status, api) = call(None, "/admin/outbox/deliveries/999999").await;
    assert_eq!(
        (status, api["error"].as_str()),
        (404, Some("no delivery 999999"))
    );

    let (status, api) = call(
        Some(json!({"state": "dead", "destination": "chat", "dry_run": true})),
        "/admin/outbox/retry",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        api,
        json!({"count": 2, "dry_run": true, "ids": dead, "spread_seconds": 1.0})
    );
    let (status, _) = call(
        Some(json!({"ids": [dead[0]], "state": "dead"})),
        "/admin/outbox/retry",
    )
    .await;
    assert_eq!(status, 400, "ids or a filter, not both");
    let (status, api) = call(Some(json!({"ids": [dead[1]]})), "/admin/outbox/retry").await;
    assert_eq!((status, api["ids"].clone()), (200, json!([dead[1]])));
    assert_eq!(row(&c, dead[1]).await.0, "pending");

    let (status, api) = call(Some(json!({"ids": [dead[0]]})), "/admin/outbox/skip").await;
    assert_eq!(status, 400, "{api}");
    let (status, api) = call(
        Some(json!({"ids": [dead[0], pending], "reason": "customer asked"})),
        "/admin/outbox/skip",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        api,
        json!({"not_skipped": [], "reason": "customer asked", "skipped": [dead[0], pending]})
    );

    let (status, api) = call(None, "/admin/outbox/destinations").await;
    assert_eq!(status, 200);
    // The same views, but for the age of the oldest pending delivery, which grows.
    let ages = |mut v: Value| {
        let mut ages = Vec::new();
        for d in v.as_array_mut().unwrap() {
            ages.push(d["oldest_pending_s"].take().is_number());
        }
        (v, ages)
    };
    let (api, api_ages) = ages(api);
    let (local, local_ages) = ages(as_json(ops.outbox_destinations().await.unwrap()));
    assert_eq!(api, local);
    assert_eq!(
        api_ages,
        [true, false, false],
        "only chat has a pending delivery"
    );
    assert_eq!(api_ages, local_ages);
    let (status, api) = call(
        Some(json!({"seconds": 300, "reason": "quota"})),
        "/admin/outbox/destinations/hubspot/pause",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(api["action"], "pause");
    assert_eq!(api["destination"]["pause_reason"], "quota");
    assert!(api["destination"]["paused_until"].is_string());
    let (status, api) = call(
        Some(json!({"mode": "open"})),
        "/admin/outbox/destinations/hubspot/force",
    )
    .await;
    assert_eq!(
        (status, api["destination"]["forced"].clone()),
        (200, json!("open"))
    );
    let (status, api) = call(Some(json!({})), "/admin/outbox/destinations/hubspot/resume").await;
    assert_eq!(status, 200);
    assert_eq!(api["destination"]["paused_until"], Value::Null);
    let (status, api) = call(
        Some(json!({"mode": "closed"})),
        "/admin/outbox/destinations/sms/force",
    )
    .await;
    assert_eq!(status, 400, "{api}");
    let bad_mode = client
        .post(url("/admin/outbox/destinations/hubspot/force"))
        .bearer_auth(token)
        .json(&json!({"mode": "half"}))
        .send()
        .await
        .unwrap();
    assert!(bad_mode.status().is_client_error());

    let trail = audit(&ops).await;
    let actions: Vec<(&str, &str, bool)> = trail
        .iter()
        .map(|(a, who, _, _, d, _)| (a.as_str(), who.as_str(), *d))
        .collect();
    assert_eq!(
        actions,
        [
            ("outbox.retry", "admin-api", true),
            ("outbox.retry", "admin-api", false),
            ("outbox.skip", "admin-api", false),
            ("outbox.pause", "admin-api", false),
            ("outbox.force", "admin-api", false),
            ("outbox.resume", "admin-api", false),
        ]
    );
    worker.stop().await;
}
