//! RabbitMQ: the broker ceiling (bare confirmed publishes) and the queue plumbing of the
//! benchmark (declare, count, purge, delete).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use paysync_amqp::Topology;
use paysync_amqp::lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeclareOptions,
    QueueDeleteOptions, QueuePurgeOptions,
};
use paysync_amqp::lapin::types::{AMQPValue, FieldTable, LongString};
use paysync_amqp::lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties,
};

/// The local broker (the services script's and paysync's default).
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Opens a connection named `name`.
pub async fn connect(url: &str, name: &str) -> anyhow::Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url, props)
        .await
        .context("connecting to RabbitMQ (is it running? deploy/local/services.sh)")
}

/// Opens a connection named `name` to the first node of `urls` (comma-separated) that
/// answers; the error of the last one otherwise.
pub async fn connect_any(urls: &str, name: &str) -> anyhow::Result<Connection> {
    let mut last = None;
    for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        match connect(url, name).await {
            Ok(connection) => return Ok(connection),
            Err(err) => last = Some(err),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no AMQP URL in {urls:?}")))
}

/// Declares `queue` as a durable quorum queue (idempotent).
pub async fn declare_quorum(channel: &Channel, queue: &str) -> anyhow::Result<()> {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .with_context(|| format!("declaring the quorum queue {queue}"))?;
    Ok(())
}

/// Messages in `queue` (passive declare on a channel of its own: a missing queue closes it).
pub async fn message_count(connection: &Connection, queue: &str) -> anyhow::Result<u32> {
    let channel = connection.create_channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let q = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .with_context(|| format!("reading the depth of {queue}"))?;
    let _ = channel.close(200, "counted".into()).await;
    Ok(q.message_count())
}

/// Polls the depth of `queue` until it is `expected` (quorum queues report appended messages
/// with a short lag) or `deadline` passes; returns the last depth read.
pub async fn settled_count(
    connection: &Connection,
    queue: &str,
    expected: u64,
    deadline: Duration,
) -> anyhow::Result<u64> {
    let start = Instant::now();
    loop {
        let n = u64::from(message_count(connection, queue).await?);
        if n == expected || start.elapsed() > deadline {
            return Ok(n);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts a new Raft write-ahead log on the local broker (`rabbitmqctl eval
/// 'ra_log_wal:force_roll_over(ra_log_wal).'`), so that the next load does not pay for a
/// rollover an earlier one caused.
///
/// Quorum queues share one WAL; when it reaches `raft.wal_max_size_bytes` (512 MiB) the broker
/// opens a new one and copies the entries of messages still queued into segment files. Here
/// that took 0.2–0.3 s after a purge and 1.8–2.2 s with a full-speed load's ~100k messages
/// queued: whichever load it lands in loses that much broker CPU. Only the local node is
/// reachable this way; an error says why (no `rabbitmqctl`, no Erlang cookie for this user).
pub async fn roll_over_wal() -> anyhow::Result<()> {
    roll_over_wal_on(None).await
}

/// [`roll_over_wal`] on the node `node` (`rabbitmqctl -n <node>`), or the local default node.
/// The nodes of `deploy/local/cluster.sh` share the default node's Erlang cookie, so they are
/// reachable the same way.
pub async fn roll_over_wal_on(node: Option<&str>) -> anyhow::Result<()> {
    let mut command = tokio::process::Command::new("rabbitmqctl");
    command.arg("-q");
    if let Some(node) = node {
        command.args(["-n", node]);
    }
    let output = command
        .args(["eval", "ra_log_wal:force_roll_over(ra_log_wal)."])
        .kill_on_drop(true)
        .output()
        .await
        .context("running rabbitmqctl")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success() && stdout.trim() == "ok",
        "rabbitmqctl eval: {}{}",
        output.status,
        first_line(&String::from_utf8_lossy(&output.stderr))
            .or_else(|| first_line(&stdout))
            .map(|l| format!(": {l}"))
            .unwrap_or_default()
    );
    Ok(())
}

fn first_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).find(|l| !l.is_empty())
}

/// Empties `queue`.
pub async fn purge(connection: &Connection, queue: &str) -> anyhow::Result<()> {
    let channel = connection.create_channel().await?;
    channel
        .queue_purge(queue.into(), QueuePurgeOptions::default())
        .await
        .with_context(|| format!("purging {queue}"))?;
    let _ = channel.close(200, "purged".into()).await;
    Ok(())
}

/// A queue or an exchange the benchmark declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    Queue(String),
    Exchange(String),
}

impl std::fmt::Display for Object {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Queue(name) => write!(f, "queue {name}"),
            Self::Exchange(name) => write!(f, "exchange {name}"),
        }
    }
}

impl Object {
    /// Deletes it (a missing one counts as deleted), on a channel of its own.
    pub async fn delete(&self, connection: &Connection) -> anyhow::Result<()> {
        let channel = connection.create_channel().await?;
        match self {
            Self::Queue(name) => {
                channel
                    .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                    .await?;
            }
            Self::Exchange(name) => {
                channel
                    .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
                    .await?;
            }
        }
        let _ = channel.close(200, "deleted".into()).await;
        Ok(())
    }
}

/// Deletes `queues`; returns what could not be deleted, with why.
pub async fn delete_queues(connection: &Connection, queues: &[String]) -> Vec<String> {
    let mut failures = Vec::new();
    for queue in queues {
        let object = Object::Queue(queue.clone());
        if let Err(err) = object.delete(connection).await {
            failures.push(format!("{object}: {err:#}"));
        }
    }
    failures
}

/// Every queue and exchange of paysync's topology under `prefix`.
pub fn topology_objects(prefix: &str) -> (Vec<String>, Vec<String>) {
    let topology = Topology::new(prefix, paysync_amqp::AmqpSettings::default().delivery_limit);
    (topology.queues(), topology.exchanges())
}

/// The broker's version, from `rabbitmqctl version` (empty if it cannot be run).
pub async fn version() -> String {
    let out = tokio::process::Command::new("rabbitmqctl")
        .arg("version")
        .output()
        .await;
    match out {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        _ => "unknown (rabbitmqctl version failed)".to_owned(),
    }
}

/// How the broker ceiling publishes.
#[derive(Debug, Clone, Copy)]
pub struct CeilingPlan {
    /// Messages per run.
    pub messages: u64,
    /// Body size in bytes.
    pub size: usize,
    /// Confirm-mode channels, one publishing task each.
    pub channels: usize,
    /// Unconfirmed publishes allowed in flight, over all channels.
    pub window: usize,
}

/// The broker ceiling: `plan.messages` persistent messages of `plan.size` bytes into the quorum
/// queue `queue` through the default exchange, pipelined on confirm-mode channels; returns
/// confirmed messages per second. Every confirm must be a plain ack.
pub async fn publish_ceiling(
    connection: &Connection,
    queue: &str,
    plan: CeilingPlan,
) -> anyhow::Result<f64> {
    let body = Bytes::from(vec![b'x'; plan.size]);
    let channels = plan.channels.max(1);
    let mut opened = Vec::with_capacity(channels);
    for _ in 0..channels {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        opened.push(channel);
    }
    let window = (plan.window / channels).max(1);
    let start = Instant::now();
    let tasks: Vec<_> = opened
        .into_iter()
        .enumerate()
        .map(|(k, channel)| {
            let share = plan.messages / channels as u64
                + u64::from((k as u64) < plan.messages % channels as u64);
            let body = body.clone();
            let queue = queue.to_owned();
            tokio::spawn(async move { publish_share(channel, queue, body, share, window).await })
        })
        .collect();
    for task in tasks {
        task.await.context("a publishing task panicked")??;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(plan.messages as f64 / secs)
}

async fn publish_share(
    channel: Channel,
    queue: String,
    body: Bytes,
    count: u64,
    window: usize,
) -> anyhow::Result<()> {
    let options = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let props = BasicProperties::default().with_delivery_mode(2);
    let mut in_flight = FuturesUnordered::new();
    for _ in 0..count {
        if in_flight.len() >= window
            && let Some(confirmed) = in_flight.next().await
        {
            acked(confirmed)?;
        }
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                options,
                &body,
                props.clone(),
            )
            .await
            .context("basic.publish")?;
        in_flight.push(confirm);
    }
    while let Some(confirmed) = in_flight.next().await {
        acked(confirmed)?;
    }
    let _ = channel.close(200, "done".into()).await;
    Ok(())
}

fn acked(confirmed: paysync_amqp::lapin::Result<Confirmation>) -> anyhow::Result<()> {
    match confirmed.context("waiting for a confirm")? {
        Confirmation::Ack(None) => Ok(()),
        other => anyhow::bail!("publish not acked: {other:?}"),
    }
}
