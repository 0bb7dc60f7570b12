//! A schema with deliveries in it, a scripted destination, and a dispatcher running on them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use paysync_dispatcher::{
    App, FailureKind, Job, LaneConfig, SendError, Sender, Settings, Throttle, Verdict,
};
use paysync_domain::outbound::Destination;
use paysync_domain::retry::RetryPolicy;
use paysync_testkit::{RunningApp, TestDb};

/// Settings for a test: its schema, an ephemeral metrics port, short intervals.
pub fn settings(db: &TestDb, owner: &str) -> Settings {
    Settings {
        store: db.settings(),
        metrics_addr: "127.0.0.1:0".parse().expect("addr"),
        owner: owner.into(),
        lease: Duration::from_secs(5),
        poll: Duration::from_millis(200),
        reap_every: Duration::from_millis(300),
        monitor_interval: Duration::from_millis(200),
        ..Settings::default()
    }
}

/// A lane config for tests: fast retries, no rate limit to speak of.
pub fn fast_lane(destination: Destination) -> LaneConfig {
    LaneConfig {
        rate_per_second: 1_000.0,
        burst: 100,
        concurrency: 4,
        retry: RetryPolicy {
            base: Duration::from_millis(100),
            factor: 2.0,
            max_delay: Duration::from_millis(400),
            jitter: 0.0,
            max_attempts: 5,
        },
        hold: Duration::ZERO,
        ..LaneConfig::default_for(destination)
    }
}

/// What the scripted destination answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Ok,
    Fail(FailureKind),
    /// Hang for this long, then succeed (a slow destination, or one a crash interrupts).
    Hang(Duration),
}

/// One call the scripted destination saw.
#[derive(Debug, Clone)]
pub struct Call {
    pub id: i64,
    pub key: String,
    pub attempt: u32,
    pub at: Instant,
}

/// A destination answering from a script (then `Ok`), recording every call.
#[derive(Clone)]
pub struct Scripted {
    pub destination: Destination,
    script: Arc<Mutex<VecDeque<Answer>>>,
    pub calls: Arc<Mutex<Vec<Call>>>,
}

impl Scripted {
    pub fn new(destination: Destination) -> Self {
        Self {
            destination,
            script: Arc::default(),
            calls: Arc::default(),
        }
    }

    pub fn then(&self, answer: Answer, times: usize) {
        let mut s = self.script.lock().expect("script");
        for _ in 0..times {
            s.push_back(answer.clone());
        }
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls").clone()
    }
}

impl Sender for Scripted {
    fn destination(&self) -> Destination {
        self.destination
    }

    fn send<'a>(&'a self, job: &'a Job, throttle: &'a Throttle) -> BoxFuture<'a, Verdict> {
        Box::pin(async move {
            throttle.ready().await;
            self.calls.lock().expect("calls").push(Call {
                id: job.id,
                key: job.key.clone(),
                attempt: job.attempt,
                at: Instant::now(),
            });
            let answer = self
                .script
                .lock()
                .expect("script")
                .pop_front()
                .unwrap_or(Answer::Ok);
            match answer {
                Answer::Ok => Verdict::Sent {
                    external_ref: Some(format!("ref-{}", job.id)),
                },
                Answer::Hang(d) => {
                    tokio::time::sleep(d).await;
                    Verdict::Sent { external_ref: None }
                }
                Answer::Fail(kind) => Verdict::Failed(SendError::new(
                    kind,
                    Some(503),
                    "scripted",
                    "scripted failure",
                )),
            }
        })
    }
}

/// Records `n` pending deliveries of `operation` at `destination` (configured), as the worker
/// would for `n` intents. Their ids.
pub async fn seed(db: &TestDb, destination: Destination, operation: &str, n: usize) -> Vec<i64> {
    let c = db.client().await.expect("client");
    c.execute(
        "insert into outbox_destinations (name, configured) values ($1, true) \
         on conflict (name) do update set configured = true",
        &[&destination.as_str()],
    )
    .await
    .expect("destination");
    let rows = c
        .query(
            "insert into outbox_deliveries \
               (destination, operation, idempotency_key, provider, intent, source_id) \
             select $1, $2, $2 || ':' || g, 'stripe', 'trial_ending', 'sub_' || g \
             from generate_series(1, $3::int) g returning id",
            &[&destination.as_str(), &operation, &(n as i32)],
        )
        .await
        .expect("deliveries");
    let mut ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    ids.sort_unstable();
    ids
}

/// Delivery states, counted.
pub async fn states(db: &TestDb) -> Vec<(String, i64)> {
    let c = db.client().await.expect("client");
    c.query(
        "select state, count(*) from outbox_deliveries group by state order by state",
        &[],
    )
    .await
    .expect("states")
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// A dispatcher running `senders` on `db`.
pub async fn dispatcher(
    db: &TestDb,
    owner: &str,
    senders: Vec<(Arc<dyn Sender>, LaneConfig)>,
) -> (RunningApp, u16) {
    dispatcher_with(settings(db, owner), senders).await
}

/// A dispatcher with `settings`.
pub async fn dispatcher_with(
    settings: Settings,
    senders: Vec<(Arc<dyn Sender>, LaneConfig)>,
) -> (RunningApp, u16) {
    let app = App::with_senders(settings, senders)
        .await
        .expect("dispatcher builds");
    let port = app.metrics_port();
    (RunningApp::spawn(|stop| app.run_until_stopped(stop)), port)
}
