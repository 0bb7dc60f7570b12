//! A publisher with confirms, shared by all concurrent requests of a process.
//!
//! Every publish is persistent and `mandatory` on a confirm-mode channel; it succeeds only on a
//! broker ack without a returned message. Publishes are pipelined: each caller writes its frames
//! and awaits its own confirm, so many are in flight at once (bounded by a semaphore). The
//! publisher owns its connection: when the broker drops it, the next publish (or the background
//! supervisor, whichever comes first) reconnects and re-declares the topology. No process
//! restart, no lapin auto-recovery (whose replay we cannot observe or test as well).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection};
use paysync_domain::VerifiedWebhook;
use tokio::sync::{Semaphore, watch};

use lapin::types::{AMQPValue, FieldTable, LongString};
use paysync_domain::message::header;

use crate::config::{AmqpSettings, redact_url};
use crate::connect::{Connected, connect};
use crate::consumer::Incoming;
use crate::headers::event_properties;
use crate::topology::{Topology, declare_topology, delay_routing_key};

/// Why a message goes to the dead-letter queue.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Unique key of this dead-lettering (idempotent ingest).
    pub key: String,
    /// Error kind (closed set).
    pub kind: &'static str,
    /// The error and its causes, one per line.
    pub chain: String,
    /// Kind + code site digest.
    pub fingerprint: String,
    /// Attempts made.
    pub attempts: u32,
    /// First failure, unix ms.
    pub first_failure_ms: i64,
    /// Last failure, unix ms.
    pub last_failure_ms: i64,
}

/// Drops the broker's own `x-` headers (`x-death`, `x-first-death-*`, …) before a message
/// re-enters the delay levels. RabbitMQ 3.10 still interprets a client-published `x-death`:
/// a retry carrying the previous round's `x-death` for a delay queue is taken for a
/// dead-letter cycle and silently dropped when it expires from that queue again.
fn without_broker_headers(table: FieldTable) -> FieldTable {
    let mut clean = FieldTable::default();
    for (k, v) in table.inner() {
        if !k.as_str().starts_with("x-") {
            clean.insert(k.clone(), v.clone());
        }
    }
    clean
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// Why a publish did not end in a broker ack. Every variant means "not durable": the caller
/// must answer so the provider retries.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No connection to the broker, and connecting failed just now.
    #[error("broker unavailable")]
    Unavailable(#[source] Option<lapin::Error>),
    /// The broker connection or channel failed during the publish.
    #[error("broker connection failed during publish")]
    Connection(#[source] lapin::Error),
    /// The broker refused the message (basic.nack).
    #[error("broker refused the message (nack)")]
    Nacked,
    /// The message was unroutable and came back (basic.return, e.g. the work queue is gone).
    #[error("broker returned the message as unroutable ({code} {text})")]
    Returned {
        /// AMQP reply code (312 NO_ROUTE).
        code: u16,
        /// AMQP reply text.
        text: String,
    },
    /// No confirm arrived within the confirm timeout.
    #[error("no broker confirm within {0:?}")]
    Timeout(Duration),
    /// Too many publishes already waiting for confirms.
    #[error("too many publishes in flight")]
    Busy,
}

/// One live connection with its confirm-mode channels.
struct Link {
    /// Which of the settings' nodes the connection went to.
    node: usize,
    generation: u64,
    connection: Connection,
    channels: Vec<Channel>,
    next: AtomicUsize,
    /// When the link opened: the clock of `unconfirmed_since_ms`.
    opened: Instant,
    /// Milliseconds after `opened` of the first publish nacked or timed out since the last
    /// confirm; 0 when the last publish was confirmed.
    unconfirmed_since_ms: AtomicU64,
}

impl Link {
    /// Notes a confirm: the node works.
    fn confirmed(&self) {
        if self.unconfirmed_since_ms.load(Ordering::Relaxed) != 0 {
            self.unconfirmed_since_ms.store(0, Ordering::Relaxed);
        }
    }

    /// Notes a publish that was not confirmed (nacked or timed out); whether nothing has been
    /// confirmed for `limit` since the first such one.
    fn unconfirmed_for(&self, limit: Duration) -> bool {
        let now = (self.opened.elapsed().as_millis() as u64).max(1);
        let since = match self.unconfirmed_since_ms.compare_exchange(
            0,
            now,
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => now,
            Err(first) => first,
        };
        Duration::from_millis(now - since) >= limit
    }

    fn is_open(&self) -> bool {
        self.connection.status().connected() && self.channels.iter().all(|c| c.status().connected())
    }

    fn channel(&self) -> &Channel {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        &self.channels[i]
    }
}

struct Inner {
    settings: AmqpSettings,
    topology: Topology,
    /// `topology.work_queue()`, built once: the routing key of every event publish.
    work_queue: String,
    link: RwLock<Option<Arc<Link>>>,
    connecting: tokio::sync::Mutex<()>,
    last_failure: Mutex<Option<Instant>>,
    generation: AtomicU64,
    in_flight: Semaphore,
    ready: watch::Sender<bool>,
    on_connect: std::sync::OnceLock<ConnectHook>,
}

/// Called after every successful connect with the connection's generation (1 = first).
pub type ConnectHook = Arc<dyn Fn(u64) + Send + Sync>;

/// The shared confirmed publisher. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

/// The default exchange: routes a message to the queue named by its routing key.
const DEFAULT_EXCHANGE: &str = "";

/// After a failed connect, publishes fail fast for this long instead of each trying again.
const FAIL_FAST: Duration = Duration::from_millis(500);

impl Publisher {
    /// A publisher for `settings`; it connects lazily (first publish) or through
    /// [`Publisher::run_supervisor`].
    pub fn new(settings: AmqpSettings) -> Self {
        let topology = Topology::new(settings.prefix.clone(), settings.delivery_limit);
        let (ready, _) = watch::channel(false);
        Self {
            inner: Arc::new(Inner {
                work_queue: topology.work_queue(),
                in_flight: Semaphore::new(settings.max_in_flight.max(1)),
                settings,
                topology,
                link: RwLock::new(None),
                connecting: tokio::sync::Mutex::new(()),
                last_failure: Mutex::new(None),
                generation: AtomicU64::new(0),
                ready,
                on_connect: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Installs a hook called after every successful (re)connect (for metrics). Only the
    /// first call takes effect.
    pub fn set_on_connect(&self, hook: ConnectHook) {
        let _ = self.inner.on_connect.set(hook);
    }

    /// The topology this publisher declares and publishes into.
    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    /// Whether a live broker connection exists right now (for `/readyz`).
    pub fn is_ready(&self) -> bool {
        self.current().is_some()
    }

    /// Keeps a connection open until `shutdown` resolves: reconnects with exponential backoff
    /// (100 ms to 5 s) after the broker goes away, so readiness recovers even without traffic.
    pub async fn run_supervisor(&self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut ready = self.inner.ready.subscribe();
        let mut backoff = reconnect_backoff().build();
        loop {
            if self.current().is_some() {
                backoff = reconnect_backoff().build();
                // Wait for the link to be invalidated, re-checking its health periodically
                // because a dropped connection is only noticed on use otherwise.
                tokio::select! {
                    () = &mut shutdown => return,
                    _ = ready.changed() => {}
                    () = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
                continue;
            }
            let delay = match self.connect().await {
                Ok(_) => continue,
                Err(_) => backoff.next().unwrap_or(Duration::from_secs(5)),
            };
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Publishes a verified webhook and waits for the broker's confirm. `Ok` means the broker
    /// has made the message durable in the work queue.
    ///
    /// Events go straight to the work queue through the default exchange: routing through the
    /// `<p>.events` topic exchange costs the broker more CPU per message (docs/decisions.md),
    /// and the work queue is its only destination. The event's own
    /// routing key (`<provider>.<type>`) is derived from its headers where it is needed
    /// ([`Incoming::original_routing_key`]).
    pub async fn publish(&self, hook: &VerifiedWebhook) -> Result<(), PublishError> {
        let props = event_properties(hook.meta(), 1);
        self.publish_raw(DEFAULT_EXCHANGE, &self.inner.work_queue, hook.body(), props)
            .await
    }

    /// Schedules `incoming` for another attempt after `delay_secs` (whole seconds, clamped to
    /// what the delay levels express): a copy with `attempt = next_attempt` goes into the
    /// delay levels. `Ok` means the broker confirmed the copy; only then may the caller ack
    /// the original (a crash in between duplicates, never loses).
    pub async fn publish_retry(
        &self,
        incoming: &Incoming,
        next_attempt: u32,
        delay_secs: u32,
        first_failure_ms: i64,
    ) -> Result<(), PublishError> {
        let mut props = incoming.properties().clone();
        let mut table = without_broker_headers(props.headers().clone().unwrap_or_default());
        table.insert(
            header::ATTEMPT.into(),
            AMQPValue::LongLongInt(i64::from(next_attempt)),
        );
        if !table.contains_key(header::ROUTING_KEY) {
            table.insert(
                header::ROUTING_KEY.into(),
                long_string(&incoming.original_routing_key()),
            );
        }
        if !table.contains_key(header::FIRST_FAILURE_MS) {
            table.insert(
                header::FIRST_FAILURE_MS.into(),
                AMQPValue::LongLongInt(first_failure_ms),
            );
        }
        props = props.with_headers(table).with_delivery_mode(2);
        self.publish_raw(
            &self.inner.topology.delay_entry_exchange(),
            &delay_routing_key(delay_secs),
            incoming.body(),
            props,
        )
        .await
    }

    /// Sends `incoming` to the dead-letter queue with the failure described in `letter`,
    /// keeping its body, properties and headers. `Ok` means the broker confirmed it.
    pub async fn publish_dead_letter(
        &self,
        incoming: &Incoming,
        letter: &DeadLetter,
    ) -> Result<(), PublishError> {
        let mut props = incoming.properties().clone();
        let mut table = props.headers().clone().unwrap_or_default();
        let original = incoming.original_routing_key();
        table.insert(header::ROUTING_KEY.into(), long_string(&original));
        table.insert(header::DEAD_LETTER_KEY.into(), long_string(&letter.key));
        table.insert(header::ERROR_KIND.into(), long_string(letter.kind));
        table.insert(header::ERROR_CHAIN.into(), long_string(&letter.chain));
        table.insert(header::FINGERPRINT.into(), long_string(&letter.fingerprint));
        table.insert(
            header::ATTEMPT.into(),
            AMQPValue::LongLongInt(i64::from(letter.attempts)),
        );
        table.insert(
            header::FIRST_FAILURE_MS.into(),
            AMQPValue::LongLongInt(letter.first_failure_ms),
        );
        table.insert(
            header::LAST_FAILURE_MS.into(),
            AMQPValue::LongLongInt(letter.last_failure_ms),
        );
        props = props.with_headers(table).with_delivery_mode(2);
        self.publish_raw(
            &self.inner.topology.dead_letters(),
            &original,
            incoming.body(),
            props,
        )
        .await
    }

    /// Re-drives a dead letter: its exact body goes back to the work queue with a fresh attempt
    /// budget and `redrives` recorded, its original routing key kept in a header (so a second
    /// dead-lettering files it under the same key). `headers` are the stored headers; the
    /// failure and broker headers are dropped.
    pub async fn publish_redrive(
        &self,
        body: &[u8],
        headers: &serde_json::Value,
        routing_key: &str,
        event_id: Option<&str>,
        redrives: i32,
    ) -> Result<(), PublishError> {
        const DEAD_LETTER_ONLY: &[&str] = &[
            header::DEAD_LETTER_KEY,
            header::ERROR_KIND,
            header::ERROR_CHAIN,
            header::FINGERPRINT,
            header::FIRST_FAILURE_MS,
            header::LAST_FAILURE_MS,
        ];
        let mut table = FieldTable::default();
        if let Some(map) = headers.as_object() {
            for (k, v) in map {
                if !k.starts_with("paysync-") || DEAD_LETTER_ONLY.contains(&k.as_str()) {
                    continue;
                }
                let value = match v {
                    serde_json::Value::Bool(b) => AMQPValue::Boolean(*b),
                    serde_json::Value::Number(n) => match n.as_i64() {
                        Some(i) => AMQPValue::LongLongInt(i),
                        None => continue,
                    },
                    serde_json::Value::String(s) => long_string(s),
                    _ => continue,
                };
                table.insert(k.as_str().into(), value);
            }
        }
        table.insert(header::ATTEMPT.into(), AMQPValue::LongLongInt(1));
        table.insert(header::ROUTING_KEY.into(), long_string(routing_key));
        table.insert(
            header::REDRIVES.into(),
            AMQPValue::LongLongInt(i64::from(redrives)),
        );
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(paysync_domain::message::CONTENT_TYPE.into())
            .with_headers(table);
        if let Some(id) = event_id {
            props = props.with_message_id(id.into());
        }
        self.publish_raw(DEFAULT_EXCHANGE, &self.inner.work_queue, body, props)
            .await
    }

    /// Replays a logged event: `payload` goes back to the work queue marked as a replay, so
    /// the worker runs its handler again although the event is in the log, once per
    /// `replay_id` (unique per replay: a redelivery of it is a duplicate).
    pub async fn publish_replay(
        &self,
        meta: &paysync_domain::EventMeta,
        payload: &[u8],
        replay_id: &str,
    ) -> Result<(), PublishError> {
        let replay_id = long_string(replay_id);
        self.publish_marked(
            meta,
            payload,
            &[
                (header::REPLAY, AMQPValue::Boolean(true)),
                (header::REPLAY_ID, replay_id),
            ],
        )
        .await
    }

    /// Publishes an event that reconciliation fetched from the provider's API (authenticated
    /// by our credentials over TLS rather than by a webhook signature) into the work queue,
    /// marked with [`header::SOURCE`]; the worker applies it like any webhook, deduplicated
    /// against the event log.
    pub async fn publish_reconciled(
        &self,
        meta: &paysync_domain::EventMeta,
        payload: &[u8],
    ) -> Result<(), PublishError> {
        let source = long_string(paysync_domain::message::SOURCE_RECONCILE);
        self.publish_marked(meta, payload, &[(header::SOURCE, source)])
            .await
    }

    /// An event's first publish into the work queue with more headers, `marks`.
    async fn publish_marked(
        &self,
        meta: &paysync_domain::EventMeta,
        payload: &[u8],
        marks: &[(&str, AMQPValue)],
    ) -> Result<(), PublishError> {
        let props = event_properties(meta, 1);
        let mut table = props.headers().clone().unwrap_or_default();
        for (name, value) in marks {
            table.insert((*name).into(), value.clone());
        }
        self.publish_raw(
            DEFAULT_EXCHANGE,
            &self.inner.work_queue,
            payload,
            props.with_headers(table),
        )
        .await
    }

    /// Publishes `body` with `props` to `exchange`/`routing_key` with a confirm (persistent,
    /// mandatory). Only for messages that were verified on the way in.
    pub(crate) async fn publish_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), PublishError> {
        let timeout = self.inner.settings.confirm_timeout;
        // A free permit is the normal case: take it without arming a timer.
        let _permit = match self.inner.in_flight.try_acquire() {
            Ok(permit) => permit,
            Err(_) => tokio::time::timeout(timeout, self.inner.in_flight.acquire())
                .await
                .map_err(|_| PublishError::Busy)?
                .map_err(|_| PublishError::Busy)?,
        };
        let link = match self.current() {
            Some(link) => link,
            None => self.connect().await?,
        };
        let channel = link.channel();
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let outcome = tokio::time::timeout(timeout, async {
            let confirm = channel
                .basic_publish(exchange.into(), routing_key.into(), options, body, props)
                .await
                .map_err(PublishError::Connection)?;
            confirm.await.map_err(PublishError::Connection)
        })
        .await;
        let confirmation = match outcome {
            Ok(Ok(confirmation)) => confirmation,
            Ok(Err(err)) => {
                self.invalidate_if_broken(&link);
                return Err(err);
            }
            Err(_) => {
                self.invalidate_if_broken(&link);
                self.leave_if_unconfirmed(&link);
                return Err(PublishError::Timeout(timeout));
            }
        };
        match confirmation {
            Confirmation::Ack(None) => {
                link.confirmed();
                Ok(())
            }
            Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                // Unroutable: a queue or binding is gone. Reconnecting re-declares them.
                self.drop_link(
                    &link,
                    "a message came back unroutable; re-declaring the topology",
                );
                Err(PublishError::Returned {
                    code: returned.reply_code,
                    text: returned.reply_text.to_string(),
                })
            }
            Confirmation::Nack(None) => {
                self.leave_if_unconfirmed(&link);
                Err(PublishError::Nacked)
            }
            // Invariant: every publisher channel ran confirm.select before use.
            Confirmation::NotRequested => Err(PublishError::Nacked),
        }
    }

    /// After a publish that was nacked or timed out: when nothing has been confirmed on `link`
    /// for [`UNCONFIRMED_TIMEOUTS`] confirm timeouts, the connection is up but its node confirms
    /// nothing (RabbitMQ 3.10 was seen nacking every publish for minutes on a channel that
    /// published to a quorum queue during its leader election, and a node forwarding to a dead
    /// leader). Leave it, and start the next walk of the nodes after it.
    fn leave_if_unconfirmed(&self, link: &Arc<Link>) {
        if link.unconfirmed_for(self.inner.settings.confirm_timeout * UNCONFIRMED_TIMEOUTS) {
            self.inner.settings.cursor.skip(link.node);
            self.drop_link(
                link,
                "no publish confirmed on this broker connection for twice the confirm timeout; reconnecting, to the next node first",
            );
        }
    }

    /// Closes the channels, then the connection (after in-flight publishes had their chance to
    /// finish). Channels left to lapin are closed in the background, racing the connection's
    /// close, and lapin logs each refused close as an ERROR.
    pub async fn close(&self) {
        let link = self.take_link();
        if let Some(link) = link {
            for channel in &link.channels {
                if channel.status().connected() {
                    let _ = channel.close(200, "shutdown".into()).await;
                }
            }
            let _ = link.connection.close(200, "shutdown".into()).await;
        }
    }

    fn current(&self) -> Option<Arc<Link>> {
        let guard = self.inner.link.read().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().filter(|l| l.is_open()).cloned()
    }

    fn take_link(&self) -> Option<Arc<Link>> {
        let mut guard = self.inner.link.write().unwrap_or_else(|p| p.into_inner());
        let link = guard.take();
        self.inner.ready.send_replace(false);
        link
    }

    fn invalidate_if_broken(&self, link: &Arc<Link>) {
        if !link.is_open() {
            self.drop_link(link, "broker connection lost");
        }
    }

    fn drop_link(&self, link: &Arc<Link>, why: &'static str) {
        let mut guard = self.inner.link.write().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().map(|l| l.generation) == Some(link.generation) {
            *guard = None;
            self.inner.ready.send_replace(false);
            tracing::warn!(generation = link.generation, "{why}");
            let old = link.clone();
            tokio::spawn(async move {
                let _ = old.connection.close(200, "replaced".into()).await;
            });
        }
    }

    /// Connects (single flight: concurrent callers wait for one attempt), declares the
    /// topology and opens the confirm channels.
    async fn connect(&self) -> Result<Arc<Link>, PublishError> {
        let _guard = self.inner.connecting.lock().await;
        if let Some(link) = self.current() {
            return Ok(link);
        }
        {
            let last = self
                .inner
                .last_failure
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < FAIL_FAST) {
                return Err(PublishError::Unavailable(None));
            }
        }
        let settings = &self.inner.settings;
        let attempt = tokio::time::timeout(settings.attempt_timeout(), self.open_link()).await;
        match attempt {
            Ok(Ok(link)) => {
                let link = Arc::new(link);
                let mut guard = self.inner.link.write().unwrap_or_else(|p| p.into_inner());
                *guard = Some(link.clone());
                self.inner.ready.send_replace(true);
                *self
                    .inner
                    .last_failure
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = None;
                if let Some(hook) = self.inner.on_connect.get() {
                    hook(link.generation);
                }
                tracing::info!(
                    node = %redact_url(settings.nodes()[link.node]),
                    generation = link.generation,
                    "connected to the broker"
                );
                Ok(link)
            }
            Ok(Err(err)) => {
                self.note_failure();
                tracing::warn!(url = %redact_url(&settings.url), error = %err, "broker connect failed");
                Err(PublishError::Unavailable(Some(err)))
            }
            Err(_) => {
                self.note_failure();
                tracing::warn!(url = %redact_url(&settings.url), "broker connect timed out");
                Err(PublishError::Unavailable(None))
            }
        }
    }

    fn note_failure(&self) {
        *self
            .inner
            .last_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    async fn open_link(&self) -> lapin::Result<Link> {
        let settings = &self.inner.settings;
        let Connected { connection, node } = connect(settings, &settings.connection_name).await?;
        // Declare on a throwaway channel: a declaration error closes the channel it ran on.
        let setup = connection.create_channel().await?;
        declare_topology(&setup, &self.inner.topology).await?;
        let _ = setup.close(200, "topology declared".into()).await;
        let mut channels = Vec::with_capacity(settings.publisher_channels.max(1));
        for _ in 0..settings.publisher_channels.max(1) {
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            channels.push(channel);
        }
        Ok(Link {
            node,
            generation: self.inner.generation.fetch_add(1, Ordering::Relaxed) + 1,
            connection,
            channels,
            next: AtomicUsize::new(0),
            opened: Instant::now(),
            unconfirmed_since_ms: AtomicU64::new(0),
        })
    }
}

/// How many confirm timeouts long a link may go without any confirm, while its publishes are
/// nacked or time out, before it is dropped.
const UNCONFIRMED_TIMEOUTS: u32 = 2;

fn reconnect_backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
}
