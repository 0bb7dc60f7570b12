//! TLS to the local PostgreSQL, which serves a certificate for `localhost` and `127.0.0.1`
//! signed by the local test CA (`deploy/local/tls.sh`).

use std::path::Path;

use paysync_domain::{EventMeta, Provider};
use paysync_store::{NewEvent, Outcome, Store, StoreSettings, StoreSettingsError};
use paysync_testkit::{TestDb, database_url, tls};

/// The test database's URL at `host`, with `params` as its query.
fn url_at(host: &str, params: &str) -> String {
    let (config, _) = paysync_store::tls::connect_config(&database_url()).unwrap();
    let user = config.get_user().unwrap_or("postgres");
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let dbname = config.get_dbname().unwrap_or("paysync");
    format!("postgres://{user}@{host}:{port}/{dbname}?{params}")
}

fn verify_full(host: &str, ca: &Path) -> String {
    url_at(
        host,
        &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
    )
}

/// Connects with `url`'s settings, as the store does.
async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (config, tls) = paysync_store::tls::connect_config(url).unwrap();
    let (client, connection) = config.connect(tls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Whether this session runs over TLS, as the server sees it.
async fn session_ssl(client: &tokio_postgres::Client) -> bool {
    client
        .query_one(
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn verify_full_with_the_test_ca_connects_to_localhost_over_tls() {
    let client = connect(&verify_full("localhost", &tls::ca_file()))
        .await
        .unwrap();
    assert!(session_ssl(&client).await);
}

#[tokio::test]
async fn verify_full_accepts_the_ip_address_in_the_certificate() {
    let client = connect(&verify_full("127.0.0.1", &tls::ca_file()))
        .await
        .unwrap();
    assert!(session_ssl(&client).await);
}

#[tokio::test]
async fn verify_full_with_the_wrong_ca_fails_naming_the_settings_and_not_the_password() {
    let other = tls::other_ca_file();
    let url = verify_full("localhost", &other).replace("postgres@", "postgres:hunter2-pw@");
    let err = connect(&url).await.map(|_| ()).unwrap_err();
    let shown = format!("{:#}", anyhow::Error::from(err));
    let expected = format!(
        "database TLS (sslmode=verify-full, sslrootcert={}): certificate not signed by a trusted CA",
        other.display()
    );
    assert!(shown.contains(&expected), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[tokio::test]
async fn a_refused_certificate_is_a_permanent_store_error() {
    let db = TestDb::new();
    let settings = StoreSettings {
        url: verify_full("localhost", &tls::other_ca_file()),
        ..db.settings()
    };
    assert_eq!(settings.validate(), Ok(()));
    let store = Store::new(&settings).unwrap();
    let err = store.ping().await.unwrap_err();
    assert!(err.is_certificate_refused(), "{err:?}");
    assert!(!err.is_transient(), "{err:?}");
    let shown = format!("{:#}", anyhow::Error::from(err));
    assert!(shown.contains("not signed by a trusted CA"), "{shown}");
}

#[tokio::test]
async fn verify_full_checks_the_host_name_and_verify_ca_does_not() {
    // Connect to 127.0.0.1 but check the certificate against a name it does not hold.
    let ca = tls::ca_file();
    let at = |mode: &str| {
        url_at(
            "db.example",
            &format!(
                "hostaddr=127.0.0.1&sslmode={mode}&sslrootcert={}",
                ca.display()
            ),
        )
    };
    let err = connect(&at("verify-full")).await.map(|_| ()).unwrap_err();
    let shown = format!("{:#}", anyhow::Error::from(err));
    assert!(
        shown.contains("certificate not valid for host db.example"),
        "{shown}"
    );
    let client = connect(&at("verify-ca")).await.unwrap();
    assert!(session_ssl(&client).await);
}

#[tokio::test]
async fn disable_connects_in_plain_text() {
    let client = connect(&url_at("localhost", "sslmode=disable"))
        .await
        .unwrap();
    assert!(!session_ssl(&client).await);
}

#[tokio::test]
async fn require_without_a_root_file_encrypts_without_checking() {
    let client = connect(&url_at("localhost", "sslmode=require"))
        .await
        .unwrap();
    assert!(session_ssl(&client).await);
}

#[tokio::test]
async fn no_sslmode_prefers_tls_like_libpq() {
    let client = connect(&url_at("localhost", "application_name=x"))
        .await
        .unwrap();
    assert!(session_ssl(&client).await);
}

#[tokio::test]
async fn require_with_a_root_file_checks_the_chain_like_libpq() {
    let url = url_at(
        "localhost",
        &format!(
            "sslmode=require&sslrootcert={}",
            tls::other_ca_file().display()
        ),
    );
    let err = connect(&url).await.map(|_| ()).unwrap_err();
    let shown = format!("{:#}", anyhow::Error::from(err));
    assert!(shown.contains("sslmode=require"), "{shown}");
    assert!(shown.contains("not signed by a trusted CA"), "{shown}");
}

#[tokio::test]
async fn a_client_certificate_is_loaded_and_the_key_form_works_too() {
    let (cert, key) = tls::client_cert_files();
    let (config, _) = paysync_store::tls::connect_config(&database_url()).unwrap();
    let url = format!(
        "host=localhost user={} dbname={} sslmode=verify-full sslrootcert='{}' sslcert='{}' sslkey='{}'",
        config.get_user().unwrap_or("postgres"),
        config.get_dbname().unwrap_or("paysync"),
        tls::ca_file().display(),
        cert.display(),
        key.display()
    );
    let client = connect(&url).await.unwrap();
    assert!(session_ssl(&client).await);
}

#[tokio::test]
async fn a_missing_root_file_is_a_settings_error_naming_sslrootcert_and_the_path() {
    let db = TestDb::new();
    let settings = StoreSettings {
        url: verify_full("localhost", Path::new("/nonexistent/paysync-ca.pem")),
        ..db.settings()
    };
    let err = settings.validate().unwrap_err();
    assert!(matches!(err, StoreSettingsError::Tls(_)), "{err:?}");
    let shown = err.to_string();
    assert!(
        shown.contains("sslrootcert=/nonexistent/paysync-ca.pem: cannot be read"),
        "{shown}"
    );
    assert!(Store::new(&settings).is_err());
}

#[tokio::test]
async fn a_whole_store_works_over_verify_full() {
    let db = TestDb::new();
    let settings = StoreSettings {
        url: verify_full("localhost", &tls::ca_file()),
        ..db.settings()
    };
    settings.validate().unwrap();
    let store = Store::new(&settings).unwrap();
    store.migrate().await.unwrap();
    let meta = EventMeta {
        provider: Provider::Stripe,
        event_id: "evt_tls_1".into(),
        event_type: "invoice.paid".into(),
        created: 1_600_000_000,
        livemode: false,
        api_version: None,
        received_at_ms: 1_700_000_000_500,
    };
    let mut conn = store.conn().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    let inserted = tx
        .insert_event(NewEvent {
            meta: &meta,
            payload: r#"{"id":"evt_tls_1"}"#,
            outcome: Outcome::Applied,
            attempt: 1,
            customer: None,
        })
        .await
        .unwrap();
    assert!(inserted.is_new());
    tx.commit().await.unwrap();
    let row = store.event("stripe", "evt_tls_1").await.unwrap().unwrap();
    assert_eq!(row.outcome, "applied");

    // The connections outside the pool use the same settings.
    let lane = store.lane_connection("email").await.unwrap();
    assert!(lane.try_lock().await.unwrap());
    let lock = store.try_reconcile_lock("stripe").await.unwrap();
    assert!(lock.is_some());

    // Every session of this store (pool, lane, lock) runs over TLS.
    let client = db.client().await.unwrap();
    let rows = client
        .query(
            "select s.ssl from pg_stat_ssl s join pg_stat_activity a using (pid) \
             where a.application_name = $1",
            &[&db.schema()],
        )
        .await
        .unwrap();
    let ssl: Vec<bool> = rows.iter().map(|r| r.get(0)).collect();
    assert!(ssl.len() >= 3, "{ssl:?}");
    assert!(ssl.iter().all(|s| *s), "{ssl:?}");
}
