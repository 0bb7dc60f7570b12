use paysync_store::{MIGRATIONS, Store};
use paysync_testkit::TestDb;

#[tokio::test]
async fn migrations_apply_once_in_order_even_when_two_processes_race() {
    let db = TestDb::new();
    let a = Store::new(&db.settings()).unwrap();
    let b = Store::new(&db.settings()).unwrap();
    let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let all: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
    // Exactly one of the two applied everything; the other found nothing to do.
    assert!(
        (ra == all && rb.is_empty()) || (rb == all && ra.is_empty()),
        "a={ra:?} b={rb:?}"
    );
    assert!(a.migrate().await.unwrap().is_empty());
    let client = db.client().await.unwrap();
    let recorded: Vec<i32> = client
        .query(
            "select version from paysync_migrations order by version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(recorded, all);
}

#[tokio::test]
async fn a_changed_migration_is_refused() {
    let db = TestDb::new();
    let store = db.store().await.unwrap();
    let client = db.client().await.unwrap();
    client
        .execute(
            "update paysync_migrations set checksum = 'edited' where version = 1",
            &[],
        )
        .await
        .unwrap();
    let err = store.migrate().await.unwrap_err();
    assert!(
        err.to_string().contains("changed after it was applied"),
        "{err}"
    );
    assert!(!err.is_transient());
}
