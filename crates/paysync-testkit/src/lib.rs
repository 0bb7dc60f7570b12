//! Test support against the real local services: every test gets its own AMQP prefix (and, for
//! the worker, its own PostgreSQL schema), and everything it created is removed when its guard
//! drops, so tests run in parallel and leave nothing behind.
//!
//! Rule of thumb: no mocks of our broker or database here; only helpers to isolate, observe
//! and poll the real ones.

pub mod browser;
pub mod fakes;
pub mod life;
mod message;
mod metrics;
mod proxy;
mod running;
pub mod tls;
mod webhook;

/// The WebDriver client behind [`browser::Browser`], so test crates need not depend on it.
pub use fantoccini;
pub use message::{RawProperties, TakenMessage};
pub use metrics::{sample, scrape};
pub use proxy::{Fault, FaultProxy};
pub use running::{RunningApp, STOP_DEADLINE, Shutdown};
pub use webhook::{signature_now, verified_event};

use std::future::Future;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use paysync_amqp::lapin::options::{
    BasicAckOptions, BasicGetOptions, ExchangeDeleteOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use paysync_amqp::lapin::types::FieldTable;
use paysync_amqp::lapin::{Connection, ConnectionProperties};
use paysync_amqp::{AmqpSettings, Topology};

/// The local broker the tests use (`PAYSYNC_TEST_AMQP_URL` overrides).
pub fn amqp_url() -> String {
    std::env::var("PAYSYNC_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A short random id for names.
pub fn unique_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// The repository's `fixtures/` directory.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// The bytes of `fixtures/stripe/<name>`.
pub fn stripe_fixture(name: &str) -> Vec<u8> {
    let path = fixtures_dir().join("stripe").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The names of every `fixtures/stripe/*.json`, sorted.
pub fn stripe_fixture_names() -> Vec<String> {
    let dir = fixtures_dir().join("stripe");
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()));
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    names
}

/// A Stripe-shaped event body with the given id, type and mode.
pub fn stripe_event(id: &str, event_type: &str, livemode: bool) -> Vec<u8> {
    serde_json::json!({
        "id": id,
        "object": "event",
        "api_version": "2020-03-02",
        "created": 1_700_000_000,
        "livemode": livemode,
        "type": event_type,
        "data": {"object": {"id": format!("obj_{id}"), "object": "charge", "amount": 1200}},
        "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null}
    })
    .to_string()
    .into_bytes()
}

/// The current unix time in seconds.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Polls `check` every 20 ms until it returns `Some`, or fails after `deadline`.
pub async fn poll_until<T, F, Fut>(
    deadline: Duration,
    what: &str,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if start.elapsed() > deadline {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP port on loopback with nothing listening (bound, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    let port = listener.local_addr().expect("local addr").port();
    drop(listener);
    port
}

/// One test's private corner of the broker: a unique prefix and connection name. Dropping it
/// deletes every queue and exchange of its topology.
pub struct TestBroker {
    prefix: String,
    delivery_limit: u32,
    /// The broker: one URL, or a cluster's comma-separated nodes.
    url: String,
}

impl TestBroker {
    /// A new isolated prefix `paysync-test-<id>` on the local broker.
    pub fn new() -> Self {
        Self::on(&amqp_url())
    }

    /// A new isolated prefix on the broker at `url` (a cluster: comma-separated nodes, the
    /// test's own connections going to the first that answers).
    pub fn on(url: &str) -> Self {
        Self {
            prefix: format!("paysync-test-{}", unique_id()),
            delivery_limit: AmqpSettings::default().delivery_limit,
            url: url.to_owned(),
        }
    }

    /// The broker URL (or nodes) of this prefix.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Settings for an app under this prefix; its connection is named `<prefix>-<role>`.
    pub fn settings(&self, role: &str) -> AmqpSettings {
        AmqpSettings {
            url: self.url.clone(),
            prefix: self.prefix.clone(),
            connection_name: format!("{}-{role}", self.prefix),
            // Declaring 17 quorum queues on a broker busy with a parallel test suite can take
            // seconds; a tight deadline would only turn into reconnect loops here.
            connect_timeout: std::time::Duration::from_secs(15),
            ..AmqpSettings::default()
        }
    }

    /// The topology under this prefix.
    pub fn topology(&self) -> Topology {
        Topology::new(self.prefix.clone(), self.delivery_limit)
    }

    /// A fresh connection for the test's own inspection.
    async fn connect(&self) -> anyhow::Result<Connection> {
        connect_first(&self.url, &format!("{}-inspector", self.prefix)).await
    }

    /// Messages ready in `queue` (0 if the queue does not exist).
    pub async fn message_count(&self, queue: &str) -> anyhow::Result<u32> {
        let conn = self.connect().await?;
        let channel = conn.create_channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let count = match channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
        {
            Ok(q) => q.message_count(),
            Err(_) => 0,
        };
        let _ = conn.close(200, "done".into()).await;
        Ok(count)
    }

    /// Takes (and acks) up to `max` messages from `queue`, waiting up to `deadline` for at
    /// least `max` to be there.
    pub async fn take_messages(
        &self,
        queue: &str,
        max: usize,
        deadline: Duration,
    ) -> anyhow::Result<Vec<TakenMessage>> {
        let conn = self.connect().await?;
        let channel = conn.create_channel().await?;
        let mut out = Vec::new();
        let start = Instant::now();
        while out.len() < max {
            match channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: false })
                .await?
            {
                Some(msg) => {
                    let routing_key = msg.delivery.routing_key.to_string();
                    let props = msg.delivery.properties.clone();
                    let data = msg.delivery.data.clone();
                    msg.delivery.ack(BasicAckOptions::default()).await?;
                    out.push(TakenMessage::new(data, routing_key, props));
                }
                None if start.elapsed() > deadline => break,
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        let _ = conn.close(200, "done".into()).await;
        Ok(out)
    }

    /// Publishes a raw message (with a confirm) to `exchange` — for tests that must put
    /// something on the broker that our own publisher would refuse to (malformed messages).
    pub async fn publish_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: &RawProperties,
    ) -> anyhow::Result<()> {
        use paysync_amqp::lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
        let conn = self.connect().await?;
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                props.to_amqp(),
            )
            .await?
            .await?;
        anyhow::ensure!(
            confirm.is_ack() && confirm.take_message().is_none(),
            "publish not confirmed or returned"
        );
        let _ = conn.close(200, "done".into()).await;
        Ok(())
    }

    /// Declares the whole topology (as every app does on connect).
    pub async fn declare(&self) -> anyhow::Result<()> {
        let conn = self.connect().await?;
        let channel = conn.create_channel().await?;
        paysync_amqp::declare_topology(&channel, &self.topology()).await?;
        let _ = conn.close(200, "done".into()).await;
        Ok(())
    }

    /// Deletes the prefix's queues and exchanges, one at a time, once no consumer is left on
    /// them (or after 10 s). RabbitMQ 3.10.8's quorum-queue segment writer can crash when a
    /// queue is deleted while it truncates that queue's segments after a drain, which is what
    /// deleting right after the last ack with consumers still attached does (docs/broker.md).
    async fn teardown(url: String, prefix: String, delivery_limit: u32) -> anyhow::Result<()> {
        let topology = Topology::new(prefix.clone(), delivery_limit);
        let conn = connect_first(&url, &format!("{prefix}-teardown")).await?;
        let channel = conn.create_channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        'wait: while Instant::now() < deadline {
            for queue in topology.queues() {
                let Ok(q) = channel
                    .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                    .await
                else {
                    // Absent (never declared), or the channel closed: delete below on a new one.
                    break 'wait;
                };
                if q.consumer_count() > 0 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue 'wait;
                }
            }
            break;
        }
        let channel = conn.create_channel().await?;
        for queue in topology.queues() {
            channel
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await?;
        }
        for exchange in topology.exchanges() {
            channel
                .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
                .await?;
        }
        let _ = conn.close(200, "teardown".into()).await;
        Ok(())
    }
}

impl Default for TestBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        teardown_on_helper_thread(
            "broker",
            Self::teardown(self.url.clone(), self.prefix.clone(), self.delivery_limit),
        );
    }
}

/// A connection named `name` to the first node of `url` (comma-separated) that answers.
async fn connect_first(url: &str, name: &str) -> anyhow::Result<Connection> {
    let mut last = None;
    for node in url.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let props = ConnectionProperties::default().with_connection_name(name.into());
        // amqps:// nodes are the local TLS listener: trust the local test CA.
        let tls = paysync_amqp::lapin::tcp::OwnedTLSConfig {
            identity: None,
            cert_chain: std::fs::read_to_string(tls::ca_file()).ok(),
        };
        let builder = paysync_amqp::lapin::DefaultConnectionBuilder::new()?
            .with_uri_str(node.to_owned())
            .with_properties(props)
            .with_tls_config(tls);
        match builder.connect().await {
            Ok(conn) => return Ok(conn),
            Err(err) => last = Some(err),
        }
    }
    Err(anyhow::anyhow!("{last:?}"))
        .context("test connection to RabbitMQ (is it running? deploy/local/services.sh)")
}

/// The newest `limit` rows of the event log, of every type.
pub async fn logged_events(
    store: &paysync_store::Store,
    limit: i64,
) -> anyhow::Result<Vec<paysync_store::EventRow>> {
    let filter = paysync_store::EventFilter {
        provider: None,
        limit,
        ..Default::default()
    };
    Ok(store.events(&filter).await?)
}

/// Up to `limit` open dead letters, as an operator lists them.
pub async fn open_dead_letters(
    store: &paysync_store::Store,
    limit: i64,
) -> anyhow::Result<Vec<paysync_store::DeadLetterRow>> {
    let filter = paysync_store::DeadLetterFilter {
        limit,
        ..Default::default()
    };
    Ok(store.dead_letter_list(&filter).await?)
}

/// The environment that points a `paysync` process at this test's broker prefix and schema
/// (`Command::envs`).
pub fn paysync_env(broker: &TestBroker, db: &TestDb) -> [(&'static str, String); 4] {
    [
        ("PAYSYNC_DATABASE_URL", database_url()),
        ("PAYSYNC_DATABASE_SCHEMA", db.schema().to_owned()),
        ("PAYSYNC_AMQP_URL", broker.url().to_owned()),
        ("PAYSYNC_AMQP_PREFIX", broker.prefix().to_owned()),
    ]
}

/// The local PostgreSQL the tests use (`PAYSYNC_TEST_DATABASE_URL` overrides).
pub fn database_url() -> String {
    std::env::var("PAYSYNC_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/paysync".into())
}

/// One test's private PostgreSQL schema `paysync_test_<id>`, created on demand by the
/// migration runner and dropped (cascade) when the guard drops.
pub struct TestDb {
    schema: String,
}

impl TestDb {
    /// A new isolated schema name.
    pub fn new() -> Self {
        Self {
            schema: format!("paysync_test_{}", unique_id()),
        }
    }

    /// The schema.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Store settings pointing at this schema.
    pub fn settings(&self) -> paysync_store::StoreSettings {
        paysync_store::StoreSettings {
            url: database_url(),
            schema: self.schema.clone(),
            application_name: self.schema.clone(),
            ..paysync_store::StoreSettings::default()
        }
    }

    /// A migrated store in this schema.
    pub async fn store(&self) -> anyhow::Result<paysync_store::Store> {
        let store = paysync_store::Store::new(&self.settings())?;
        store.migrate().await.context(
            "migrating the test schema (is PostgreSQL running? deploy/local/services.sh)",
        )?;
        Ok(store)
    }

    /// A plain client in this schema, for assertions in SQL. It connects with the TLS
    /// settings of [`database_url`] (`sslmode`, `sslrootcert`), as the store does.
    pub async fn client(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (mut config, tls) = paysync_store::tls::connect_config(&database_url())?;
        config.options(format!("-c search_path={}", self.schema));
        config.application_name(&self.schema);
        let (client, connection) = config.connect(tls).await?;
        tokio::spawn(connection);
        Ok(client)
    }

    async fn drop_schema(schema: String) -> anyhow::Result<()> {
        let (config, tls) = paysync_store::tls::connect_config(&database_url())?;
        let (client, connection) = config.connect(tls).await?;
        tokio::spawn(connection);
        // The test is over: end its connections first, so a transaction left open by a
        // panicking test (or one whose rollback never got sent) cannot block the drop.
        client
            .execute(
                "select pg_terminate_backend(pid) from pg_stat_activity \
                 where application_name = $1 and pid <> pg_backend_pid()",
                &[&schema],
            )
            .await?;
        client
            .batch_execute(&format!("drop schema if exists {schema} cascade"))
            .await?;
        Ok(())
    }
}

impl Default for TestDb {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        teardown_on_helper_thread("schema", Self::drop_schema(self.schema.clone()));
    }
}

/// Runs a guard's async teardown to completion from its `Drop`, which cannot be async (and
/// may run inside the test's runtime): on a helper thread with a runtime of its own. A failed
/// teardown is reported, not raised: the test's own outcome matters more.
fn teardown_on_helper_thread(
    what: &str,
    teardown: impl Future<Output = anyhow::Result<()>> + Send + 'static,
) {
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(teardown)
    });
    if let Ok(Err(err)) = handle.join() {
        eprintln!("testkit: {what} teardown failed: {err:#}");
    }
}

/// Closes every broker connection whose client-provided name is `name`, as an operator (or a
/// broker restart) would, using `rabbitmqctl`. Returns how many were closed.
pub fn close_broker_connections_named(name: &str) -> anyhow::Result<usize> {
    let out = Command::new("rabbitmqctl")
        .args(["list_connections", "--silent", "pid", "client_properties"])
        .output()
        .context("running rabbitmqctl list_connections")?;
    if !out.status.success() {
        bail!(
            "rabbitmqctl list_connections failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Each line: `<pid>\t[…,{"connection_name","name"},…]`.
    let needle = format!("{{\"connection_name\",\"{name}\"}}");
    let listing = String::from_utf8_lossy(&out.stdout);
    let mut closed = 0;
    for line in listing.lines().filter(|l| l.contains(&needle)) {
        let Some(pid) = line.split('\t').next() else {
            continue;
        };
        let status = Command::new("rabbitmqctl")
            .args(["close_connection", pid.trim(), "closed by a paysync test"])
            .output()
            .context("running rabbitmqctl close_connection")?;
        if status.status.success() {
            closed += 1;
        } else {
            eprintln!(
                "testkit: close_connection {pid}: {}",
                String::from_utf8_lossy(&status.stderr)
            );
        }
    }
    if closed == 0 {
        eprintln!("testkit: no connection named {name:?} in:\n{listing}");
    }
    Ok(closed)
}

/// What became of a stream of events: the event log and the dead letters after it, as the
/// exactly-once tests count them.
#[derive(Debug)]
pub struct Tally {
    /// Every logged event id (one per row: a repeat would be a double apply).
    pub logged: Vec<String>,
    /// The distinct logged event ids.
    pub distinct: std::collections::HashSet<String>,
    /// Redeliveries counted as duplicates.
    pub duplicates: i64,
    /// Dead letters (counted up to 10).
    pub dead_lettered: usize,
}

impl Tally {
    /// Counts the event log and dead letters of `store` now.
    pub async fn of(store: &paysync_store::Store) -> anyhow::Result<Self> {
        let rows = logged_events(store, 100_000).await?;
        let dead_lettered = store.dead_letters(None, 10).await?.len();
        Ok(Self {
            duplicates: rows.iter().map(|r| i64::from(r.duplicates)).sum(),
            distinct: rows.iter().map(|r| r.event_id.clone()).collect(),
            logged: rows.into_iter().map(|r| r.event_id).collect(),
            dead_lettered,
        })
    }

    /// Polls until at least `n` events are logged (or fails after `deadline`), then counts.
    pub async fn when_logged(
        store: &paysync_store::Store,
        n: usize,
        deadline: Duration,
    ) -> anyhow::Result<Self> {
        poll_until(deadline, &format!("{n} events logged"), || async {
            Self::of(store).await.ok().filter(|t| t.logged.len() >= n)
        })
        .await
    }

    /// `accepted …, applied …, duplicates …, dead-lettered …, lost …`, for a test's printout.
    pub fn summary(&self, accepted: usize) -> String {
        format!(
            "accepted {accepted}, applied {}, duplicates {}, dead-lettered {}, lost {}",
            self.distinct.len(),
            self.duplicates,
            self.dead_lettered,
            accepted.saturating_sub(self.distinct.len())
        )
    }

    /// Asserts that `n` events were each applied exactly once and nothing was dead-lettered.
    ///
    /// # Panics
    /// When they were not: this is a test assertion.
    pub fn assert_each_applied_once(&self, n: usize) {
        assert_eq!(self.logged.len(), n, "each exactly once");
        assert_eq!(self.distinct.len(), n);
        assert_eq!(self.dead_lettered, 0);
    }
}
