//! Restarts of the real RabbitMQ and PostgreSQL while events stream through receiver and
//! worker. Serial and separate (`test = false` in Cargo.toml): it stops the shared services, so
//! `.ci/run` runs it alone after the parallel suite:
//!   cargo test -p paysync-worker --test restarts -- --test-threads=1
#![allow(clippy::unwrap_used, missing_docs, dead_code)]

#[path = "../it/helpers.rs"]
mod helpers;

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use paysync_testkit::{Tally, TestBroker, TestDb, stripe_event};

use crate::helpers::*;

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

async fn post(receiver: &Receiver, id: &str) -> u16 {
    receiver
        .post(&stripe_event(id, "customer.updated", false), SECRET)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_rabbitmq_and_postgresql_mid_stream_loses_nothing() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let store = db.store().await.unwrap();
    let mut worker_settings = settings(&broker, &db, fast_retry(15));
    worker_settings.retry.max_delay = Duration::from_secs(30);
    // The production shutdown grace, not the tests' shorter one.
    worker_settings.shutdown_grace = paysync_worker::Settings::default().shutdown_grace;
    let worker = spawn(
        paysync_worker::App::build(worker_settings, paysync_worker::billing::handlers())
            .await
            .unwrap(),
    )
    .await;
    let receiver = spawn_receiver(receiver_settings(SECRET, broker.settings("receiver"))).await;

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
        let statuses = futures::future::join_all(chunk.iter().map(|id| post(&receiver, id))).await;
        for (id, status) in chunk.iter().zip(statuses) {
            if status == 200 {
                accepted.insert(id.clone());
            } else {
                assert!(status == 503 || status == 0, "{id}: {status}");
            }
        }
    }
    // What was refused while the broker was down, the provider sends again.
    receiver
        .resend_refused(
            &ids,
            &mut accepted,
            "customer.updated",
            SECRET,
            Duration::from_secs(60),
        )
        .await;
    let tally = Tally::when_logged(&store, ids.len(), Duration::from_secs(240))
        .await
        .unwrap();
    println!("restarts: {}", tally.summary(accepted.len()));
    tally.assert_each_applied_once(ids.len());
    // Both are asked to stop; how they exit after the restarts is not what this test checks.
    drop(receiver);
    let _ = worker.try_stop().await;
}
