//! Production's way of reaching the services, on the local ones: a receiver and a worker given a
//! node list whose first node is a closed port and whose second is the broker's TLS listener
//! (`amqps://`, the test CA in `PAYSYNC_AMQP_CA_FILE`), and PostgreSQL with
//! `sslmode=verify-full` against the test CA.

use std::process::Command;
use std::time::Duration;

use paysync_testkit::{Tally, TestBroker, TestDb, closed_port, database_url, poll_until, tls};

use crate::support::{Refusals, broker_connections, deliver, spawn};

/// The test database's URL with libpq's TLS parameters.
fn database_url_tls(ca: &std::path::Path) -> String {
    let url = database_url().replace("127.0.0.1", "localhost");
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}sslmode=verify-full&sslrootcert={}", ca.display())
}

/// Names of the broker's connections that are TLS.
fn tls_connections() -> Vec<String> {
    broker_connections(None)
        .into_iter()
        .filter(|c| c.tls)
        .map(|c| c.name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_and_worker_work_over_amqps_after_a_dead_first_node_and_verify_full_postgres() {
    let amqp = format!(
        "amqp://guest:guest@127.0.0.1:{}/%2f,{}",
        closed_port(),
        tls::amqps_url()
    );
    let (broker, db) = (TestBroker::on(&amqp), TestDb::new());
    let store = db.store().await.unwrap();
    let ca = tls::ca_file();
    let tls_env = |extra: Vec<(&'static str, String)>| {
        let mut env = vec![
            ("PAYSYNC_AMQP_CA_FILE", ca.display().to_string()),
            ("PAYSYNC_DATABASE_URL", database_url_tls(&ca)),
        ];
        env.extend(extra);
        env
    };

    // The wrong CA for the database: refused at start, naming the setting.
    let migrate = Command::new(env!("CARGO_BIN_EXE_paysync"))
        .arg("migrate")
        .env(
            "PAYSYNC_DATABASE_URL",
            database_url_tls(&tls::other_ca_file()),
        )
        .env("PAYSYNC_DATABASE_SCHEMA", db.schema())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&migrate.stderr);
    assert!(!migrate.status.success(), "{err}");
    assert!(
        err.contains("sslrootcert") && err.contains("verify-full"),
        "{err}"
    );

    let http = closed_port();
    let _receiver = spawn(
        "receiver",
        &broker,
        &db,
        &tls_env(vec![("PAYSYNC_HTTP_ADDR", format!("127.0.0.1:{http}"))]),
    );
    let _worker = spawn("worker", &broker, &db, &tls_env(vec![]));
    let url = format!("http://127.0.0.1:{http}/webhooks/stripe");
    let client = reqwest::Client::new();
    let refused = Refusals::default();
    let mut accepted = Vec::new();
    for i in 0..50 {
        accepted.push(deliver(&client, &url, format!("evt_tls_{i:03}"), &refused).await);
    }
    let tally = Tally::when_logged(&store, accepted.len(), Duration::from_secs(60))
        .await
        .unwrap();
    tally.assert_each_applied_once(accepted.len());

    let ours = poll_until(
        Duration::from_secs(10),
        "our connections listed",
        || async {
            let ours: Vec<String> = tls_connections()
                .into_iter()
                .filter(|n| n.starts_with(broker.prefix()))
                .collect();
            (ours.iter().any(|n| n.ends_with("-receiver"))
                && ours.iter().any(|n| n.ends_with("-worker-worker")))
            .then_some(ours)
        },
    )
    .await
    .unwrap();
    println!("TLS connections of the receiver and worker: {ours:?}");
}
