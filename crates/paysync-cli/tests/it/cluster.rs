//! A three-node RabbitMQ cluster (deploy/local/cluster.sh) and real `paysync receiver` and
//! `paysync worker` processes given all three nodes: the node both are connected to is killed
//! with `kill -9` in the middle of 5,000 webhooks. Every webhook answered 200 is applied exactly
//! once; a webhook answered otherwise is sent again, as the providers do.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt as _;
use paysync_testkit::{Tally, TestBroker, TestDb, closed_port, poll_until};

use crate::support::{Refusals, broker_connections, deliver, spawn};

const EVENTS: usize = 5_000;

fn cluster_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/local/cluster.sh")
}

fn cluster(args: &[&str]) -> String {
    let out = Command::new(cluster_script())
        .args(args)
        .output()
        .expect("running deploy/local/cluster.sh");
    assert!(
        out.status.success(),
        "cluster.sh {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The names of the connections that came in on `node` (c1, c2, c3), told by their port; read
/// through a node that is up.
fn connections_on(node: &str) -> Vec<String> {
    let port = 5681 + ["c1", "c2", "c3"].iter().position(|n| *n == node).unwrap() as u16;
    broker_connections(Some("paysync-c2@localhost"))
        .into_iter()
        .filter(|c| c.port == port)
        .map(|c| c.name)
        .collect()
}

/// Stops the cluster when the test ends if the test started it.
struct StopIfStarted(bool);

impl Drop for StopIfStarted {
    fn drop(&mut self) {
        if self.0 {
            cluster(&["stop"]);
        }
    }
}

/// Brings back a killed node when the test ends, passed or not, before the prefix's queues are
/// deleted (a quorum queue with a member down is slow to delete) and for the next user.
struct RestartNodes;

impl Drop for RestartNodes {
    fn drop(&mut self) {
        cluster(&["start"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_connected_cluster_node_mid_stream_loses_and_doubles_nothing() {
    let was_running = cluster(&["status"]).lines().all(|l| l.contains("running"));
    let _stop = StopIfStarted(!was_running);
    let urls = cluster(&["start"])
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().last())
        .map(str::to_owned)
        .expect("cluster.sh start prints the URLs");
    assert_eq!(urls.split(',').count(), 3, "{urls}");
    let (broker, db) = (TestBroker::on(&urls), TestDb::new());
    let _restart = RestartNodes; // dropped before the broker
    let store = db.store().await.unwrap();
    let http = closed_port();
    let receiver = spawn(
        "receiver",
        &broker,
        &db,
        &[("PAYSYNC_HTTP_ADDR", format!("127.0.0.1:{http}"))],
    );
    let worker = spawn("worker", &broker, &db, &[]);
    let url = format!("http://127.0.0.1:{http}/webhooks/stripe");
    let client = reqwest::Client::new();
    let refused = Arc::new(Refusals::default());
    let sent = Arc::new(AtomicUsize::new(0));

    // Both processes connect to c1, the first node that answers.
    let ours = |role: &str| format!("{}-{role}", broker.prefix());
    poll_until(
        Duration::from_secs(60),
        "receiver and worker connected to c1",
        || async {
            let on_c1 = connections_on("c1");
            (on_c1.iter().any(|n| n.starts_with(&ours("receiver")))
                && on_c1.iter().any(|n| n.starts_with(&ours("worker-worker"))))
            .then_some(())
        },
    )
    .await
    .unwrap();
    let pid = cluster(&["pid", "c1"]);

    let posting = {
        let (client, url, refused, sent) =
            (client.clone(), url.clone(), refused.clone(), sent.clone());
        tokio::spawn(async move {
            futures::stream::iter((0..EVENTS).map(|i| format!("evt_cluster_{i:05}")))
                .map(|id| {
                    let (client, url, refused, sent) = (&client, &url, &refused, &sent);
                    async move {
                        let id = deliver(client, url, id, refused).await;
                        sent.fetch_add(1, Ordering::Relaxed);
                        id
                    }
                })
                .buffer_unordered(16)
                .collect::<Vec<String>>()
                .await
        })
    };

    // Mid-stream: some events accepted, most not yet sent.
    poll_until(
        Duration::from_secs(120),
        "1,000 events accepted",
        || async { (sent.load(Ordering::Relaxed) >= 1_000).then_some(()) },
    )
    .await
    .unwrap();
    let killed = Command::new("kill").args(["-9", &pid]).status().unwrap();
    assert!(killed.success());
    let at_kill = sent.load(Ordering::Relaxed);

    let accepted: HashSet<String> = posting.await.unwrap().into_iter().collect();
    assert_eq!(accepted.len(), EVENTS);
    let tally = Tally::when_logged(&store, EVENTS, Duration::from_secs(180))
        .await
        .unwrap();
    let lost = accepted.difference(&tally.distinct).count();
    println!(
        "cluster kill -9 of c1 after {at_kill} accepted: {} (lost by id {lost}; {} answers other than 200 within {:.1} s, sent again)",
        tally.summary(accepted.len()),
        refused.count(),
        refused.span().as_secs_f64()
    );
    let moved = connections_on("c2")
        .into_iter()
        .chain(connections_on("c3"))
        .filter(|n| n.starts_with(broker.prefix()))
        .count();
    assert!(moved >= 2, "receiver and worker moved to c2 or c3");
    assert_eq!(lost, 0);
    tally.assert_each_applied_once(EVENTS);

    drop((receiver, worker));
}
