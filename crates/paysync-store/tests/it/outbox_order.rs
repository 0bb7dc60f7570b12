//! The claim of a destination that keeps each account's order (the application's webhooks):
//! an account's next delivery waits while an earlier one is pending (a retry not yet due
//! included) or in flight; other accounts do not wait; a dead one no longer holds the account
//! back; and a claim without the order takes everything due, as before.

use std::time::Duration;

use paysync_domain::Provider;
use paysync_store::{AttemptRecord, Claimed, Completion, NewAppEvent, Store};
use paysync_testkit::TestDb;

const LEASE: Duration = Duration::from_secs(60);

async fn account(db: &TestDb) -> i64 {
    db.client()
        .await
        .unwrap()
        .query_one("insert into accounts default values returning id", &[])
        .await
        .unwrap()
        .get(0)
}

/// Records the application event `seq` of `account` (and its delivery) in a transaction of
/// its own; its id.
async fn record(store: &Store, account: i64, seq: i64) -> String {
    let id = format!("evt_ps_{account}_{seq}");
    let event = NewAppEvent {
        id: id.clone(),
        account_id: account,
        seq,
        kind: "payment.succeeded",
        body: format!("{{\"id\":\"{id}\",  \"seq\":{seq}, \"note\":\"caf\\u00e9\"}}"),
        provider: Provider::Stripe,
    };
    let mut conn = store.conn().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    tx.record_app(&[], &[event]).await.unwrap();
    tx.commit().await.unwrap();
    id
}

/// The source ids of `claimed`, sorted.
fn sources(claimed: &[Claimed]) -> Vec<String> {
    let mut s: Vec<String> = claimed.iter().map(|c| c.source_id.clone()).collect();
    s.sort();
    s
}

fn attempt(outcome: &str) -> AttemptRecord {
    AttemptRecord {
        owner: "test".into(),
        duration_ms: 1,
        outcome: outcome.into(),
        status: Some(200),
        error: None,
        retry_after_s: None,
    }
}

async fn complete(store: &Store, c: &Claimed, completion: Completion, outcome: &str) {
    let applied = store
        .complete(c, &completion, &attempt(outcome))
        .await
        .unwrap();
    assert!(applied.is_some(), "the claim still held {}", c.source_id);
}

#[tokio::test]
async fn an_accounts_app_deliveries_are_claimed_one_at_a_time_in_order() {
    let db = TestDb::new();
    let store = db.store().await.unwrap();
    store.register_destinations(&["app"], "test").await.unwrap();
    let (a, b) = (account(&db).await, account(&db).await);
    // Interleaved, each in its own transaction: ids a1 < b1 < a2 < a3 < b2.
    let a1 = record(&store, a, 1).await;
    let b1 = record(&store, b, 1).await;
    let a2 = record(&store, a, 2).await;
    let a3 = record(&store, a, 3).await;
    let b2 = record(&store, b, 2).await;

    let claim = || store.claim("app", 10, LEASE, "o", true);

    // Only the first of each account.
    let first = claim().await.unwrap();
    assert_eq!(sources(&first), sorted(&[&a1, &b1]));
    let ctx = store.delivery_context(first[0].id).await.unwrap();
    assert_eq!(ctx.account_id, Some(a));
    assert_eq!(
        ctx.app_body.as_deref(),
        Some(format!("{{\"id\":\"{a1}\",  \"seq\":1, \"note\":\"caf\\u00e9\"}}").as_str()),
        "the stored body, as written"
    );
    // In flight: the accounts' next ones wait.
    assert!(claim().await.unwrap().is_empty());

    let by_source = |cs: &[Claimed], s: &str| cs.iter().find(|c| c.source_id == s).cloned();
    let a1c = by_source(&first, &a1).unwrap();
    let b1c = by_source(&first, &b1).unwrap();
    // a1 fails and is retried in a minute: a2 waits for it; b1 is sent and b2 goes.
    complete(
        &store,
        &a1c,
        Completion::Retry { delay_ms: 60_000.0 },
        "retry",
    )
    .await;
    complete(
        &store,
        &b1c,
        Completion::Sent { external_ref: None },
        "sent",
    )
    .await;
    let next = claim().await.unwrap();
    assert_eq!(sources(&next), [b2.as_str()], "a2 waits for a1's retry");
    complete(
        &store,
        &next[0],
        Completion::Sent { external_ref: None },
        "sent",
    )
    .await;
    assert!(claim().await.unwrap().is_empty());

    // a1's retry comes due: a1 again, still not a2.
    db.client()
        .await
        .unwrap()
        .execute(
            "update outbox_deliveries set next_attempt_at = now() where id = $1",
            &[&a1c.id],
        )
        .await
        .unwrap();
    let retried = claim().await.unwrap();
    assert_eq!(sources(&retried), [a1.as_str()]);
    assert_eq!(retried[0].attempts, 2);
    complete(
        &store,
        &retried[0],
        Completion::Sent { external_ref: None },
        "sent",
    )
    .await;

    // Then a2 alone; once it is dead, it no longer holds a3 back.
    let second = claim().await.unwrap();
    assert_eq!(sources(&second), [a2.as_str()]);
    complete(
        &store,
        &second[0],
        Completion::Dead {
            fingerprint: "app:http_422".into(),
        },
        "dead",
    )
    .await;
    let third = claim().await.unwrap();
    assert_eq!(sources(&third), [a3.as_str()]);
    complete(
        &store,
        &third[0],
        Completion::Sent { external_ref: None },
        "sent",
    )
    .await;
    assert!(claim().await.unwrap().is_empty());
}

#[tokio::test]
async fn without_the_order_every_due_delivery_is_claimed_as_before() {
    let db = TestDb::new();
    let store = db.store().await.unwrap();
    store
        .register_destinations(&["app", "chat"], "test")
        .await
        .unwrap();
    let a = account(&db).await;
    for seq in 1..=3 {
        record(&store, a, seq).await;
    }
    // Chat deliveries of one account, as the worker writes them.
    db.client()
        .await
        .unwrap()
        .execute(
            "insert into outbox_deliveries \
               (destination, operation, idempotency_key, provider, intent, source_id, account_id) \
             select 'chat', 'chat.churn', 'chat.churn:churn:stripe:sub_' || g, 'stripe', 'churn', \
               'sub_' || g, $1 from generate_series(1, 3) g",
            &[&a],
        )
        .await
        .unwrap();
    let chat = store.claim("chat", 10, LEASE, "o", false).await.unwrap();
    assert_eq!(chat.len(), 3, "chat keeps no account order");
    // The same app rows: ordered, one; unordered, the other two.
    let ordered = store.claim("app", 10, LEASE, "o", true).await.unwrap();
    assert_eq!(sources(&ordered), [format!("evt_ps_{a}_1")]);
    let unordered = store.claim("app", 10, LEASE, "o", false).await.unwrap();
    assert_eq!(
        sources(&unordered),
        [format!("evt_ps_{a}_2"), format!("evt_ps_{a}_3")]
    );
}

fn sorted(ids: &[&String]) -> Vec<String> {
    let mut v: Vec<String> = ids.iter().map(|s| (*s).clone()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn events_recorded_together_are_claimed_in_sequence_order_past_nine() {
    let db = TestDb::new();
    let store = db.store().await.unwrap();
    store.register_destinations(&["app"], "test").await.unwrap();
    let a = account(&db).await;
    // Sequences 8 to 12 in one transaction: as text, "evt_ps_<a>_10" sorts before "_8".
    let events: Vec<NewAppEvent> = (8..=12)
        .map(|seq| NewAppEvent {
            id: format!("evt_ps_{a}_{seq}"),
            account_id: a,
            seq,
            kind: "payment.succeeded",
            body: "{}".into(),
            provider: Provider::Stripe,
        })
        .collect();
    let mut conn = store.conn().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    tx.record_app(&[], &events).await.unwrap();
    tx.commit().await.unwrap();
    let mut order = Vec::new();
    for _ in 0..events.len() {
        let claimed = store.claim("app", 10, LEASE, "o", true).await.unwrap();
        assert_eq!(claimed.len(), 1, "one at a time: {claimed:?}");
        order.push(claimed[0].source_id.clone());
        complete(
            &store,
            &claimed[0],
            Completion::Sent { external_ref: None },
            "sent",
        )
        .await;
    }
    let want: Vec<String> = (8..=12).map(|s| format!("evt_ps_{a}_{s}")).collect();
    assert_eq!(order, want);
}
