//! One delivery, start to ack: decode → one transaction (event-log insert + handler) →
//! commit → ack. Failures are classified: retryable ones go to the delay levels with
//! `attempt + 1` (confirmed before the original is acked), permanent ones and exhausted
//! retries to the dead-letter queue (confirmed before the ack). Nothing is ever dropped:
//! when even that publish fails, the delivery is handed back to the queue.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::panic::AssertUnwindSafe;

use backon::BackoffBuilder as _;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use paysync_amqp::{DeadLetter, Incoming, MAX_DELAY_SECS, Publisher};
use paysync_domain::EventMeta;
use paysync_domain::message::{ReadError, header};
use paysync_domain::retry::RetryPolicy;
use paysync_store::{Conn, Inserted, NewEvent, Outcome, Store, Tx};

use crate::handler::{Event, Handler, Handlers};
use crate::metrics::WorkerMetrics;
use crate::{Failure, FailureClass};

/// Called after a commit and before the ack (tests use it to crash in between).
pub type AfterCommitHook = Arc<dyn Fn(&EventMeta) -> BoxFuture<'static, ()> + Send + Sync>;

/// What happened to an event that did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// A handler changed state.
    Applied,
    /// No handler for its type; logged as ignored.
    Ignored,
    /// Already in the event log; nothing changed.
    Duplicate,
}

impl Done {
    fn label(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Ignored => "ignored",
            Self::Duplicate => "duplicate",
        }
    }
}

/// Shared by all delivery tasks.
pub(crate) struct Processor {
    pub(crate) store: Store,
    pub(crate) publisher: Publisher,
    pub(crate) handlers: Handlers,
    pub(crate) retry: RetryPolicy,
    pub(crate) metrics: WorkerMetrics,
    pub(crate) after_commit: Option<AfterCommitHook>,
    pub(crate) unknown_types: Mutex<HashSet<String>>,
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// A handler panicked; the payload's message when it was a string.
#[derive(Debug, thiserror::Error)]
#[error("handler panicked: {0}")]
struct HandlerPanic(String);

impl From<Box<dyn std::any::Any + Send>> for HandlerPanic {
    fn from(panic: Box<dyn std::any::Any + Send>) -> Self {
        let text = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".into());
        Self(text)
    }
}

fn decode(incoming: &Incoming) -> Result<Event, Failure> {
    let read = incoming.event().map_err(|e| match e {
        ReadError::Message(e) => Failure::permanent("malformed_message", e),
        ReadError::Body(e) => Failure::permanent("malformed_body", e),
    })?;
    Ok(Event::new(
        read.meta,
        read.attempt,
        read.body,
        incoming.header_bool(header::REPLAY),
    ))
}

/// Applies one event in one transaction on `conn`: the event-log row, then its handler;
/// commit only if both succeed. A duplicate (already logged) changes nothing.
pub(crate) async fn apply_on(
    conn: &mut Conn,
    handlers: &Handlers,
    event: &Event,
) -> Result<Done, Failure> {
    let meta = &event.meta;
    event.forget_account();
    let handler = handlers.get(&meta.event_type);
    let outcome = if handler.is_some() {
        Outcome::Applied
    } else {
        Outcome::Ignored
    };
    let tx = conn.transaction().await.map_err(Failure::from_store)?;
    // A replay re-runs the handler for an event already in the log (counted there); one
    // that is not in the log is processed as new.
    let replayed = event.replay && tx.mark_replayed(meta).await.map_err(Failure::from_store)?;
    let logged = if replayed {
        // The row's account is not known here: link it whatever the handler finds.
        Inserted::New { account: None }
    } else {
        tx.insert_event(NewEvent {
            meta,
            payload: event.body(),
            outcome,
            attempt: event.attempt,
            customer: handler.and_then(|h| h.customer(event)),
        })
        .await
        .map_err(Failure::from_store)?
    };
    let Inserted::New { account: logged } = logged else {
        let _ = tx.rollback().await;
        return Ok(Done::Duplicate);
    };
    if let Some(handler) = handler {
        if let Err(failure) = run_handler(handler.as_ref(), &tx, event).await {
            let _ = tx.rollback().await;
            return Err(failure);
        }
        if let Some(account) = event.account().filter(|a| Some(*a) != logged) {
            tx.set_event_account(meta, account)
                .await
                .map_err(Failure::from_store)?;
        }
    }
    tx.commit().await.map_err(Failure::from_store)?;
    Ok(if handler.is_some() {
        Done::Applied
    } else {
        Done::Ignored
    })
}

/// Runs `handler` on `event` inside `tx`. A panicking handler must not leave its delivery
/// unacked forever: it becomes a permanent failure like any other (a person has to look at the
/// code path).
async fn run_handler(handler: &dyn Handler, tx: &Tx<'_>, event: &Event) -> Result<(), Failure> {
    caught(handler.handle(tx, event)).await
}

/// A handler's future with a panic turned into a permanent failure.
async fn caught(work: BoxFuture<'_, Result<(), Failure>>) -> Result<(), Failure> {
    AssertUnwindSafe(work)
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            Err(Failure::permanent(
                "handler_panicked",
                HandlerPanic::from(panic),
            ))
        })
}

/// Applies several events in one transaction: one statement writes all event-log rows (and
/// tells which are new), each handler applies its new events ([`Handler::handle_batch`]), one
/// statement links the rows to the accounts the handlers found, one counts the duplicate
/// deliveries, one commit. Returns what happened to each event, in the order of `events`
/// (which it sorts). Any failure rolls the whole batch back: the caller then applies the
/// events one by one, so a bad event is isolated and a good one is never held back by it.
///
/// Lock order: event-log keys first (sorted), then the handlers' rows (the billing handler
/// writes each table's rows in key order, tables in one fixed order), the same order as the
/// one-by-one path, so batches and single transactions queue behind each other instead of
/// deadlocking.
async fn apply_batch_on(
    conn: &mut Conn,
    handlers: &Handlers,
    events: &mut [Decoded<'_>],
) -> Result<Vec<Done>, Failure> {
    fn key<'e>(handlers: &Handlers, d: &'e Decoded<'_>) -> (Option<&'e str>, &'e str) {
        let lock = handlers
            .get(&d.event.meta.event_type)
            .and_then(|h| h.lock_key(&d.event));
        (lock, &d.event.meta.event_id)
    }
    events.sort_by(|a, b| key(handlers, a).cmp(&key(handlers, b)));
    let events: &[Decoded<'_>] = events;
    for d in events {
        d.event.forget_account();
    }
    // The first delivery of an event id in the batch is the candidate; later ones are
    // duplicates of it whatever happens to it.
    let mut done = vec![Done::Duplicate; events.len()];
    let mut first: Vec<usize> = Vec::with_capacity(events.len());
    {
        let mut seen = HashSet::with_capacity(events.len());
        for (i, d) in events.iter().enumerate() {
            if seen.insert((d.event.meta.provider, d.event.meta.event_id.as_str())) {
                first.push(i);
            }
        }
    }
    let new_events: Vec<NewEvent<'_>> = first
        .iter()
        .map(|&i| {
            let event = &events[i].event;
            let handler = handlers.get(&event.meta.event_type);
            NewEvent {
                meta: &event.meta,
                payload: event.body(),
                outcome: if handler.is_some() {
                    Outcome::Applied
                } else {
                    Outcome::Ignored
                },
                attempt: event.attempt,
                customer: handler.and_then(|h| h.customer(event)),
            }
        })
        .collect();
    let tx = conn.transaction().await.map_err(Failure::from_store)?;
    let fresh = tx
        .insert_events(&new_events)
        .await
        .map_err(Failure::from_store)?;
    // The new events, each handler's in batch order; a handler applies all of its events at
    // once (billing with a few set-based statements), handlers one after the other.
    let mut jobs: Vec<(&Arc<dyn Handler>, Vec<&Event>)> = Vec::new();
    // The account each new row was written with, by position.
    let mut logged: Vec<Option<i64>> = vec![None; events.len()];
    for (&i, inserted) in first.iter().zip(fresh) {
        let Inserted::New { account } = inserted else {
            continue;
        };
        logged[i] = account;
        let event = &events[i].event;
        let Some(handler) = handlers.get(&event.meta.event_type) else {
            done[i] = Done::Ignored;
            continue;
        };
        done[i] = Done::Applied;
        match jobs.iter_mut().find(|(h, _)| Arc::ptr_eq(h, handler)) {
            Some((_, batch)) => batch.push(event),
            None => jobs.push((handler, vec![event])),
        }
    }
    for (handler, batch) in &jobs {
        caught(handler.handle_batch(&tx, batch)).await?;
    }
    // Only rows written without the account the handler found (a customer mapped just now,
    // or linked through a hint) need an update.
    let links: Vec<(&EventMeta, i64)> = events
        .iter()
        .zip(&done)
        .zip(&logged)
        .filter(|((_, d), _)| **d == Done::Applied)
        .filter_map(|((e, _), logged)| {
            e.event
                .account()
                .filter(|a| Some(*a) != *logged)
                .map(|a| (&e.event.meta, a))
        })
        .collect();
    tx.set_event_accounts(&links)
        .await
        .map_err(Failure::from_store)?;
    let duplicates: Vec<&EventMeta> = events
        .iter()
        .zip(&done)
        .filter(|(_, d)| **d == Done::Duplicate)
        .map(|(e, _)| &e.event.meta)
        .collect();
    tx.record_duplicates(&duplicates)
        .await
        .map_err(Failure::from_store)?;
    tx.commit().await.map_err(Failure::from_store)?;
    Ok(done)
}

/// A delivery decoded for the batch path.
struct Decoded<'a> {
    incoming: &'a Incoming,
    event: Event,
}

/// Applies one event outside the broker path (tests, tools): the same transaction the worker
/// runs for a delivery.
pub async fn apply_event(
    store: &Store,
    handlers: &Handlers,
    event: &Event,
) -> Result<Done, Failure> {
    let mut conn = store.conn().await.map_err(Failure::from_store)?;
    apply_on(&mut conn, handlers, event).await
}

impl Processor {
    fn type_label<'a>(&self, event_type: &'a str) -> &'a str {
        if self.handlers.knows(event_type) {
            event_type
        } else {
            "other"
        }
    }

    fn count(&self, provider: &str, event_type: &str, outcome: &str) {
        self.metrics
            .processed
            .with_label_values(&[provider, self.type_label(event_type), outcome])
            .inc();
    }

    /// Processes deliveries that arrived together: in one transaction when there are several
    /// (see [`apply_batch_on`]), else one by one. Replays, undecodable deliveries, the events
    /// a permanently failing batch is split down to, and every delivery of a batch that failed
    /// transiently take the one-by-one path.
    pub(crate) async fn handle_batch(&self, batch: Vec<Incoming>) {
        let started = Instant::now();
        let size = batch.len() as i64;
        self.metrics.in_flight.add(size);
        let mut decoded = Vec::with_capacity(batch.len());
        let mut singles = Vec::new();
        if batch.len() > 1 {
            for incoming in &batch {
                match decode(incoming) {
                    Ok(event) if !event.replay => decoded.push(Decoded { incoming, event }),
                    _ => singles.push(incoming),
                }
            }
        } else {
            singles.extend(&batch);
        }
        if decoded.len() > 1 {
            self.metrics.batch_size.observe(decoded.len() as f64);
            // A batch that fails for good (a bad event in it) is split in halves, each applied
            // as a batch of its own, down to single events: one bad event among n costs about
            // 2·log2(n) transactions instead of n, and every good event is still applied. A
            // transient failure (the database, a conflict) sends the batch one by one, where
            // retries are scheduled per event.
            let mut parts: Vec<std::ops::Range<usize>> = Vec::with_capacity(16);
            parts.push(0..decoded.len());
            while let Some(part) = parts.pop() {
                if part.len() == 1 {
                    singles.push(decoded[part.start].incoming);
                    continue;
                }
                let events = &mut decoded[part.clone()];
                match self.apply_batch(events).await {
                    Ok(done) => {
                        futures::future::join_all(
                            events
                                .iter()
                                .zip(done)
                                .map(|(d, done)| self.settled(d.incoming, &d.event, done, started)),
                        )
                        .await;
                    }
                    Err(failure) => {
                        self.metrics.batch_fallbacks.inc();
                        let split = failure.class() == FailureClass::Permanent;
                        tracing::info!(
                            events = part.len(),
                            kind = failure.kind(),
                            error = %failure.chain().replace('\n', ": "),
                            "{}",
                            if split {
                                "batch failed; applying its halves as batches"
                            } else {
                                "batch failed; applying its events one by one"
                            }
                        );
                        if split {
                            let middle = part.start + part.len() / 2;
                            parts.push(middle..part.end);
                            parts.push(part.start..middle);
                        } else {
                            singles.extend(events.iter().map(|d| d.incoming));
                        }
                    }
                }
            }
        } else {
            singles.extend(decoded.iter().map(|d| d.incoming));
        }
        // Whatever is left (a lone delivery, replays, undecodable ones, the events a failed
        // batch came down to) takes the one-by-one path, which counts itself in flight.
        self.metrics.in_flight.sub(size);
        for incoming in singles {
            self.handle(incoming).await;
        }
    }

    /// A pooled connection; the wait is observed whether or not one came (timeouts are the
    /// waits that matter).
    async fn conn(&self) -> Result<Conn, Failure> {
        let waited = Instant::now();
        let conn = self.store.conn().await;
        self.metrics
            .pool_wait
            .observe(waited.elapsed().as_secs_f64());
        conn.map_err(Failure::from_store)
    }

    async fn apply_batch(&self, decoded: &mut [Decoded<'_>]) -> Result<Vec<Done>, Failure> {
        let mut conn = self.conn().await?;
        let done = apply_batch_on(&mut conn, &self.handlers, decoded).await?;
        for (d, done) in decoded.iter().zip(&done) {
            if *done == Done::Ignored {
                self.note_unknown_type(&d.event.meta.event_type);
            }
        }
        Ok(done)
    }

    /// After the commit: the crash-test hook, the lag, the ack, the count and the log line.
    async fn settled(&self, incoming: &Incoming, event: &Event, done: Done, started: Instant) {
        let meta = &event.meta;
        let provider = meta.provider.as_str();
        if let Some(hook) = &self.after_commit {
            hook(meta).await;
        }
        if done != Done::Duplicate {
            let lag = (now_ms() - meta.received_at_ms).max(0) as f64 / 1000.0;
            self.metrics.lag.with_label_values(&[provider]).observe(lag);
        }
        incoming.ack();
        self.count(provider, &meta.event_type, done.label());
        self.metrics
            .duration
            .with_label_values(&[provider])
            .observe(started.elapsed().as_secs_f64());
        tracing::info!(
            provider,
            event.id = %meta.event_id,
            event.r#type = %meta.event_type,
            account.id = event.account(),
            outcome = done.label(),
            attempt = event.attempt,
            duration_ms = started.elapsed().as_millis() as u64,
            "event processed"
        );
    }

    /// Processes one delivery to its ack (or its hand-back to the queue).
    pub(crate) async fn handle(&self, incoming: &Incoming) {
        let started = Instant::now();
        self.metrics.in_flight.inc();
        let event = match decode(incoming) {
            Ok(decoded) => decoded,
            Err(failure) => {
                let (provider, event_type) = incoming
                    .provider_and_type()
                    .unwrap_or_else(|| ("unknown".into(), String::new()));
                self.dead_letter(
                    incoming,
                    incoming.attempt_hint(),
                    failure,
                    &provider,
                    &event_type,
                )
                .await;
                self.metrics.in_flight.dec();
                return;
            }
        };
        match self.apply(&event).await {
            Ok(done) => {
                if done == Done::Duplicate
                    && let Err(err) = self.store.record_duplicate(&event.meta).await
                {
                    tracing::warn!(event.id = %event.meta.event_id, error = %err, "could not count a duplicate");
                }
                self.settled(incoming, &event, done, started).await;
            }
            Err(failure) => {
                self.fail(incoming, &event, failure).await;
                self.metrics
                    .duration
                    .with_label_values(&[event.meta.provider.as_str()])
                    .observe(started.elapsed().as_secs_f64());
            }
        }
        self.metrics.in_flight.dec();
    }

    /// The transaction: event-log row, then the handler; commit only if both succeed.
    async fn apply(&self, event: &Event) -> Result<Done, Failure> {
        let mut conn = self.conn().await?;
        // A deadlock or serialization conflict with a concurrent transaction is retried here
        // a few times before it becomes a broker retry: the other transaction has finished by
        // then, and the event need not wait a whole retry delay.
        let mut pauses = backon::ExponentialBuilder::default()
            .with_min_delay(CONFLICT_PAUSE)
            .with_max_delay(CONFLICT_PAUSE * 8)
            .with_jitter()
            .with_max_times(CONFLICT_RETRIES)
            .build();
        let done = loop {
            match apply_on(&mut conn, &self.handlers, event).await {
                Err(failure) if failure.is_conflict() => match pauses.next() {
                    Some(pause) => {
                        tracing::debug!(event.id = %event.meta.event_id, error = %failure.chain().replace('\n', ": "), "conflict with a concurrent transaction; trying again");
                        tokio::time::sleep(pause).await;
                    }
                    None => return Err(failure),
                },
                other => break other?,
            }
        };
        if done == Done::Ignored {
            self.note_unknown_type(&event.meta.event_type);
        }
        Ok(done)
    }

    fn note_unknown_type(&self, event_type: &str) {
        let mut seen = self.unknown_types.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: a flood of invented types must not grow memory without limit.
        if seen.len() < 1024 && seen.insert(event_type.to_owned()) {
            tracing::info!(event.r#type = %event_type, "no handler for this event type: recording it as ignored (logged once per type)");
        }
    }

    async fn fail(&self, incoming: &Incoming, event: &Event, failure: Failure) {
        let meta = &event.meta;
        let provider = meta.provider.as_str();
        let delay = match failure.class() {
            FailureClass::Retryable => self.retry.delay(event.attempt, rand::random::<f64>()),
            FailureClass::Permanent => None,
        };
        if let Some(delay) = delay {
            let secs = (delay.as_secs_f64().round() as u32).clamp(1, MAX_DELAY_SECS);
            let first = incoming
                .header_i64(header::FIRST_FAILURE_MS)
                .unwrap_or_else(now_ms);
            match self
                .publisher
                .publish_retry(incoming, event.attempt + 1, secs, first)
                .await
            {
                Ok(()) => {
                    incoming.ack();
                    self.count(provider, &meta.event_type, "retry_scheduled");
                    self.metrics
                        .retries
                        .with_label_values(&[&event.attempt.to_string()])
                        .inc();
                    tracing::warn!(
                        provider,
                        event.id = %meta.event_id,
                        event.r#type = %meta.event_type,
                        outcome = "retry_scheduled",
                        attempt = event.attempt,
                        delay_secs = secs,
                        kind = failure.kind(),
                        error = %failure.chain().replace('\n', ": "),
                        "event failed; retry scheduled"
                    );
                }
                Err(err) => self.hand_back(incoming, meta, &err).await,
            }
            return;
        }
        self.dead_letter(incoming, event.attempt, failure, provider, &meta.event_type)
            .await;
    }

    async fn dead_letter(
        &self,
        incoming: &Incoming,
        attempts: u32,
        failure: Failure,
        provider: &str,
        event_type: &str,
    ) {
        let now = now_ms();
        let exhausted = failure.class() == FailureClass::Retryable;
        let mut chain = failure.chain();
        if exhausted {
            chain = format!("retries exhausted after {attempts} attempts\n{chain}");
        }
        let letter = DeadLetter {
            key: uuid::Uuid::new_v4().to_string(),
            kind: failure.kind(),
            chain,
            fingerprint: failure.fingerprint(),
            attempts,
            first_failure_ms: incoming.header_i64(header::FIRST_FAILURE_MS).unwrap_or(now),
            last_failure_ms: now,
        };
        let event_id = incoming.message_id().unwrap_or_default().to_owned();
        match self.publisher.publish_dead_letter(incoming, &letter).await {
            Ok(()) => {
                incoming.ack();
                self.metrics
                    .processed
                    .with_label_values(&[provider, self.type_label(event_type), "dead_lettered"])
                    .inc();
                tracing::error!(
                    provider,
                    event.id = %event_id,
                    event.r#type = %event_type,
                    outcome = "dead_lettered",
                    attempt = attempts,
                    kind = letter.kind,
                    fingerprint = %letter.fingerprint,
                    error = %letter.chain.replace('\n', ": "),
                    "event dead-lettered"
                );
            }
            Err(err) => {
                let meta_id = event_id.clone();
                tracing::warn!(event.id = %meta_id, error = %err, "dead-letter publish failed; handing the delivery back");
                tokio::time::sleep(HAND_BACK_PAUSE).await;
                let _ = incoming.requeue().await;
            }
        }
    }

    async fn hand_back(
        &self,
        incoming: &Incoming,
        meta: &EventMeta,
        err: &paysync_amqp::PublishError,
    ) {
        tracing::warn!(event.id = %meta.event_id, error = %err, "retry publish failed; handing the delivery back");
        tokio::time::sleep(HAND_BACK_PAUSE).await;
        let _ = incoming.requeue().await;
    }
}

/// First pause before an in-process retry after a transaction conflict (doubling, jittered).
const CONFLICT_PAUSE: Duration = Duration::from_millis(10);

/// In-process retries after a transaction conflict before the broker's retry schedule.
const CONFLICT_RETRIES: usize = 3;

/// Pause before handing a delivery back after a failed publish, so a broker hiccup does not
/// turn into a hot redelivery loop (the queue's `x-delivery-limit` is the backstop).
const HAND_BACK_PAUSE: Duration = Duration::from_secs(1);
