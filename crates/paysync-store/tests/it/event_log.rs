use paysync_domain::{EventMeta, Provider};
use paysync_store::{EventFilter, NewEvent, Outcome};
use paysync_testkit::TestDb;

fn meta(id: &str) -> EventMeta {
    EventMeta {
        provider: Provider::Stripe,
        event_id: id.into(),
        event_type: "invoice.paid".into(),
        created: 1_600_000_000,
        livemode: false,
        api_version: None,
        received_at_ms: 1_700_000_000_500,
    }
}

#[tokio::test]
async fn an_event_is_logged_once_and_a_rolled_back_insert_is_not_a_duplicate() {
    let db = TestDb::new();
    let store = db.store().await.unwrap();
    let m = meta("evt_store_1");
    let new = NewEvent {
        meta: &m,
        payload: r#"{"id":"evt_store_1"}"#,
        outcome: Outcome::Applied,
        attempt: 1,
    };

    // A failed processing attempt rolls back: nothing is remembered.
    let mut conn = store.conn().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    assert!(tx.insert_event(new).await.unwrap());
    tx.rollback().await.unwrap();

    let tx = conn.transaction().await.unwrap();
    assert!(
        tx.insert_event(NewEvent { attempt: 2, ..new })
            .await
            .unwrap(),
        "retry is not a duplicate"
    );
    tx.commit().await.unwrap();

    let tx = conn.transaction().await.unwrap();
    assert!(
        !tx.insert_event(new).await.unwrap(),
        "second commit attempt is a duplicate"
    );
    tx.rollback().await.unwrap();
    store.record_duplicate(&m).await.unwrap();

    let row = store.event("stripe", "evt_store_1").await.unwrap().unwrap();
    assert_eq!(row.attempts, 2);
    assert_eq!(row.duplicates, 1);
    assert_eq!(row.outcome, "applied");
    assert_eq!(row.payload.unwrap()["id"], "evt_store_1");
    assert_eq!(row.received_at.unix_timestamp(), 1_700_000_000);
    let listed = store
        .events(&EventFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
}

#[tokio::test]
async fn invalid_json_payload_is_a_permanent_error() {
    let db = TestDb::new();
    let store = db.store().await.unwrap();
    let m = meta("evt_store_bad");
    let mut conn = store.conn().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    let err = tx
        .insert_event(NewEvent {
            meta: &m,
            payload: "{oops",
            outcome: Outcome::Applied,
            attempt: 1,
        })
        .await
        .unwrap_err();
    assert!(!err.is_transient(), "{err:?}");
    assert_eq!(err.sqlstate(), Some("22P02"));
}

#[tokio::test]
async fn concurrent_inserts_of_one_event_commit_exactly_once() {
    let db = TestDb::new();
    let store = db.store().await.unwrap();
    let m = meta("evt_race");
    let attempts = futures::future::join_all((0..8).map(|_| {
        let store = store.clone();
        let m = m.clone();
        async move {
            let mut conn = store.conn().await.unwrap();
            let tx = conn.transaction().await.unwrap();
            let fresh = tx
                .insert_event(NewEvent {
                    meta: &m,
                    payload: "{}",
                    outcome: Outcome::Applied,
                    attempt: 1,
                })
                .await
                .unwrap();
            tx.commit().await.unwrap();
            fresh
        }
    }))
    .await;
    assert_eq!(attempts.iter().filter(|f| **f).count(), 1, "{attempts:?}");
}
