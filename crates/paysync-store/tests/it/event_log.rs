use paysync_domain::{EventMeta, Provider};
use paysync_store::{Inserted, NewEvent, Outcome, Resolution};
use paysync_testkit::{TestDb, logged_events};

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
        customer: None,
    };

    // A failed processing attempt rolls back: nothing is remembered.
    let mut conn = store.conn().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    assert!(tx.insert_event(new).await.unwrap().is_new());
    tx.rollback().await.unwrap();

    let tx = conn.transaction().await.unwrap();
    assert!(
        tx.insert_event(NewEvent { attempt: 2, ..new })
            .await
            .unwrap()
            .is_new(),
        "retry is not a duplicate"
    );
    tx.commit().await.unwrap();

    let tx = conn.transaction().await.unwrap();
    assert!(
        tx.insert_event(new).await.unwrap() == Inserted::Duplicate,
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
    let listed = logged_events(&store, 10).await.unwrap();
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
            customer: None,
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
                    customer: None,
                })
                .await
                .unwrap();
            tx.commit().await.unwrap();
            fresh.is_new()
        }
    }))
    .await;
    assert_eq!(attempts.iter().filter(|f| **f).count(), 1, "{attempts:?}");
}

#[tokio::test]
async fn a_row_is_written_with_the_account_of_its_customer_when_the_mapping_exists() {
    let db = TestDb::new();
    let store = db.store().await.unwrap();
    let mut conn = store.conn().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    let Resolution::Account { id: account, .. } = tx
        .resolve_account("stripe", Some("cus_logged"), None)
        .await
        .unwrap()
    else {
        panic!("a new customer gets an account")
    };
    let (mapped, unmapped, none) = (meta("evt_mapped"), meta("evt_unmapped"), meta("evt_none"));
    let new = |m, customer| NewEvent {
        meta: m,
        payload: "{}",
        outcome: Outcome::Applied,
        attempt: 1,
        customer,
    };
    let written = tx
        .insert_events(&[
            new(&mapped, Some("cus_logged")),
            new(&unmapped, Some("cus_unknown")),
            new(&none, None),
        ])
        .await
        .unwrap();
    assert_eq!(
        written,
        [
            Inserted::New {
                account: Some(account)
            },
            Inserted::New { account: None },
            Inserted::New { account: None },
        ]
    );
    let again = meta("evt_single");
    assert_eq!(
        tx.insert_event(new(&again, Some("cus_logged")))
            .await
            .unwrap(),
        Inserted::New {
            account: Some(account)
        }
    );
    tx.commit().await.unwrap();
    let row = store.event("stripe", "evt_mapped").await.unwrap().unwrap();
    assert_eq!(row.account_id, Some(account));
}

#[tokio::test]
async fn the_unlinked_count_reads_its_partial_index_not_the_event_log() {
    let db = TestDb::new();
    let store = db.store().await.unwrap();
    let mut conn = store.conn().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    let (a, b, c) = (
        meta("evt_unlinked_a"),
        meta("evt_unlinked_b"),
        meta("evt_ignored_c"),
    );
    for (m, outcome) in [
        (&a, Outcome::Applied),
        (&b, Outcome::Applied),
        (&c, Outcome::Ignored),
    ] {
        let new = NewEvent {
            meta: m,
            payload: r#"{"id":"x"}"#,
            outcome,
            attempt: 1,
            customer: None,
        };
        assert!(tx.insert_event(new).await.unwrap().is_new());
    }
    tx.commit().await.unwrap();
    assert_eq!(store.unlinked_event_count().await.unwrap(), 2);

    // The plan, with sequential scans priced out so that a usable index shows: without the
    // partial index of migration 11 this is a scan of the whole log.
    let client = db.client().await.unwrap();
    client
        .batch_execute("set enable_seqscan = off")
        .await
        .unwrap();
    let plan: Vec<String> = client
        .query(
            &format!("explain {}", paysync_store::statements::UNLINKED_EVENTS),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let plan = plan.join("\n");
    assert!(plan.contains("event_log_unlinked_idx"), "{plan}");
    assert!(!plan.contains("Seq Scan"), "{plan}");
}
