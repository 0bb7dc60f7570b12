//! What the process-level tests share: `paysync` processes that die with the test, and a
//! provider that posts until it gets a 200.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use paysync_testkit::{TestBroker, TestDb, paysync_env, signature_now, stripe_event};

/// The Stripe signing secret the spawned receivers are given.
pub const SECRET: &str = "whsec_process_tests";

/// A child process killed when the test ends, passed or not; its log is removed unless the
/// test failed.
pub struct Killed {
    child: Child,
    log: PathBuf,
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// `paysync <role>` on the test's prefix and schema, with `extra` variables on top. Its log
/// (warnings and errors) goes to `<temp dir>/<prefix>-<role>.log`, kept when the test fails.
pub fn spawn(role: &str, broker: &TestBroker, db: &TestDb, extra: &[(&str, String)]) -> Killed {
    let log = std::env::temp_dir().join(format!("{}-{role}.log", broker.prefix()));
    eprintln!("paysync {role}: log in {}", log.display());
    let child = Command::new(env!("CARGO_BIN_EXE_paysync"))
        .arg(role)
        .envs(paysync_env(broker, db))
        .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
        .env("PAYSYNC_METRICS_ADDR", "127.0.0.1:0")
        .env("PAYSYNC_STRIPE_WEBHOOK_SECRET", SECRET)
        .env("PAYSYNC_AMQP_CONNECT_TIMEOUT_MS", "3000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Killed { child, log }
}

/// Answers other than 200: how many, and when the first and the last came.
#[derive(Default)]
pub struct Refusals {
    count: AtomicUsize,
    window: Mutex<Option<(Instant, Instant)>>,
}

impl Refusals {
    fn note(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        *window = Some(window.map_or((now, now), |(first, _)| (first, now)));
    }

    /// How many.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// From the first to the last.
    pub fn span(&self) -> Duration {
        let window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        window.map_or(Duration::ZERO, |(first, last)| last - first)
    }
}

/// Posts `id` until the receiver answers 200 (a provider retries whatever is not 2xx), every
/// 200 ms, for at most 5 minutes; notes the refusals.
pub async fn deliver(
    client: &reqwest::Client,
    url: &str,
    id: String,
    refused: &Refusals,
) -> String {
    let body = stripe_event(&id, "customer.updated", false);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        assert!(Instant::now() < deadline, "{id}: no 200 in 5 minutes");
        let answer = client
            .post(url)
            .header("content-type", "application/json")
            .header("stripe-signature", signature_now(SECRET, &body))
            .body(body.clone())
            .send()
            .await;
        match answer {
            Ok(r) if r.status() == 200 => return id,
            _ => {
                refused.note();
                // Not a wait for something to happen: the pause a provider keeps between its
                // retries, so a receiver answering 503 is not hammered in a tight loop.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// One broker connection, as `rabbitmqctl list_connections` shows it.
pub struct BrokerConnection {
    /// Over TLS.
    pub tls: bool,
    /// The broker's port it came in on, which tells the node.
    pub port: u16,
    /// The client-provided name.
    pub name: String,
}

/// Every connection of the broker or cluster that `node` belongs to (the default node, or a
/// local cluster node's name, e.g. `paysync-c2@localhost`; `list_connections` is cluster-wide).
pub fn broker_connections(node: Option<&str>) -> Vec<BrokerConnection> {
    let mut cmd = Command::new("rabbitmqctl");
    if let Some(node) = node {
        cmd.args(["-n", node]);
    }
    let out = cmd
        .args([
            "list_connections",
            "--silent",
            "ssl",
            "port",
            "client_properties",
        ])
        .output()
        .expect("rabbitmqctl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut fields = l.splitn(3, '\t');
            let tls = fields.next()? == "true";
            let port = fields.next()?.parse().ok()?;
            let (_, rest) = fields.next()?.split_once("{\"connection_name\",\"")?;
            let name = rest.split_once('"')?.0.to_owned();
            Some(BrokerConnection { tls, port, name })
        })
        .collect()
}
