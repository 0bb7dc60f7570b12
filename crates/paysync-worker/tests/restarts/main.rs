//! Restarts of the real RabbitMQ and PostgreSQL while events stream through receiver and
//! worker. Serial and separate (`test = false` in Cargo.toml): it stops the shared services, so
//! `.ci/run` runs it alone after the parallel suite:
//!   cargo test -p paysync-worker --test restarts -- --test-threads=1
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use paysync_domain::retry::RetryPolicy;
use paysync_domain::stripe::signature::sign_header;
use paysync_store::EventFilter;
use paysync_testkit::{TestBroker, TestDb, now_secs, poll_until, stripe_event};
use secrecy::SecretString;

const SECRET: &str = "whsec_restarts";

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn services_script() -> String {
    format!(
        "{}/../../deploy/local/services.sh",
        env!("CARGO_MANIFEST_DIR")
    )
}

async fn post(client: &reqwest::Client, url: &str, id: &str) -> u16 {
    let body = stripe_event(id, "customer.updated", false);
    let header = sign_header(SECRET, now_secs(), &body);
    match client
        .post(url)
        .header("Stripe-Signature", header)
        .body(body)
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_rabbitmq_and_postgresql_mid_stream_loses_nothing() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let store = db.store().await.unwrap();
    let worker_settings = paysync_worker::Settings {
        metrics_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        retry: RetryPolicy {
            base: Duration::from_secs(1),
            factor: 2.0,
            max_delay: Duration::from_secs(30),
            jitter: 0.2,
            max_attempts: 15,
        },
        amqp: broker.settings("worker"),
        store: db.settings(),
        ..paysync_worker::Settings::default()
    };
    let worker = paysync_worker::App::build(worker_settings, paysync_worker::billing::handlers())
        .await
        .unwrap();
    let (stop_worker, worker_stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(worker.run_until_stopped(async move {
        let _ = worker_stopped.await;
    }));
    let mut rs = paysync_receiver::Settings::local(vec![SecretString::from(SECRET.to_owned())]);
    rs.http_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    rs.metrics_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    rs.amqp = broker.settings("receiver");
    let receiver = paysync_receiver::App::build(rs).await.unwrap();
    let url = format!("http://127.0.0.1:{}/webhooks/stripe", receiver.port());
    let (stop_receiver, receiver_stopped) = tokio::sync::oneshot::channel::<()>();
    let receiver = tokio::spawn(receiver.run_until_stopped(async move {
        let _ = receiver_stopped.await;
    }));
    let client = reqwest::Client::new();

    let ids: Vec<String> = (0..3000).map(|i| format!("evt_restart_{i:05}")).collect();
    let mut accepted = HashSet::new();
    for (n, chunk) in ids.chunks(100).enumerate() {
        if n == 8 {
            let version = std::fs::read_dir("/etc/postgresql")
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .file_name();
            run(
                "pg_ctlcluster",
                &[
                    "--skip-systemctl-redirect",
                    version.to_str().unwrap(),
                    "main",
                    "restart",
                ],
            );
        }
        if n == 16 {
            run("rabbitmqctl", &["stop"]);
        }
        if n == 20 {
            run(&services_script(), &[]);
        }
        let statuses =
            futures::future::join_all(chunk.iter().map(|id| post(&client, &url, id))).await;
        for (id, status) in chunk.iter().zip(statuses) {
            if status == 200 {
                accepted.insert(id.clone());
            } else {
                assert!(status == 503 || status == 0, "{id}: {status}");
            }
        }
    }
    // What was refused while the broker was down, the provider sends again.
    for id in &ids {
        if !accepted.contains(id) {
            poll_until(
                Duration::from_secs(60),
                "a 200 after the restart",
                || async { (post(&client, &url, id).await == 200).then_some(()) },
            )
            .await
            .unwrap();
            accepted.insert(id.clone());
        }
    }
    let rows = poll_until(
        Duration::from_secs(240),
        "every accepted event applied",
        || async {
            let rows = store
                .events(&EventFilter {
                    limit: 10_000,
                    ..Default::default()
                })
                .await
                .ok()?;
            (rows.len() >= ids.len()).then_some(rows)
        },
    )
    .await
    .unwrap();
    let applied: HashSet<&str> = rows.iter().map(|r| r.event_id.as_str()).collect();
    let duplicates: i32 = rows.iter().map(|r| r.duplicates).sum();
    let dead = store.dead_letters(None, 10).await.unwrap().len();
    println!(
        "restarts: accepted {}, applied {}, duplicates {duplicates}, dead-lettered {dead}, lost {}",
        accepted.len(),
        applied.len(),
        accepted.len() - applied.len()
    );
    assert_eq!(rows.len(), ids.len(), "each exactly once");
    assert_eq!(applied.len(), ids.len());
    assert_eq!(dead, 0);
    let _ = stop_receiver.send(());
    let _ = stop_worker.send(());
    let _ = receiver.await;
    let _ = worker.await;
}
