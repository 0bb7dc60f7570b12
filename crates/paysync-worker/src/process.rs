//! The work queue's pipeline, from a lane's batch of deliveries to their acks, in three
//! stages: decode (here), apply (`apply`: the transactions, for a batch or one event) and
//! settle (`settle`: ack, retry or dead-letter). A batch of several decodable deliveries is
//! applied in one transaction; a batch that fails for good is split in halves, one that fails
//! transiently goes one by one, as do lone deliveries, replays and undecodable ones.
//!
//! Rule of thumb: commit, then ack. Retryable failures go to the delay levels with
//! `attempt + 1`, permanent ones and exhausted retries to the dead-letter queue, each copy
//! confirmed before the original is acked; when even that publish fails, the delivery is
//! handed back to the queue. Nothing is ever dropped.

mod apply;
mod settle;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use backon::BackoffBuilder as _;
use futures::future::BoxFuture;
use paysync_amqp::{Incoming, Publisher};
use paysync_domain::EventMeta;
use paysync_domain::message::{ReadError, header};
use paysync_domain::retry::RetryPolicy;
use paysync_store::{Conn, Store};

use crate::handler::{Event, Handlers};
use crate::metrics::WorkerMetrics;
use crate::{Failure, FailureClass};

pub use apply::apply_event;
pub(crate) use settle::hand_back;

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

fn decode(incoming: &Incoming) -> Result<Event, Failure> {
    let read = incoming.event().map_err(|e| match e {
        ReadError::Message(e) => Failure::permanent("malformed_message", e),
        ReadError::Body(e) => Failure::permanent("malformed_body", e),
    })?;
    let mut event = Event::new(
        read.meta,
        read.attempt,
        read.body,
        incoming.header_bool(header::REPLAY),
    );
    if event.replay {
        event.replay_id = incoming.header_str(header::REPLAY_ID);
    }
    Ok(event)
}

/// A delivery decoded for the batch path.
struct Decoded<'a> {
    incoming: &'a Incoming,
    event: Event,
}

impl Processor {
    fn type_label<'a>(&self, provider: &str, event_type: &'a str) -> &'a str {
        let known = provider
            .parse()
            .is_ok_and(|p| self.handlers.knows(p, event_type));
        if known { event_type } else { "other" }
    }

    fn count(&self, provider: &str, event_type: &str, outcome: &str) {
        self.metrics
            .processed
            .with_label_values(&[provider, self.type_label(provider, event_type), outcome])
            .inc();
    }

    /// Processes deliveries that arrived together: in one transaction when there are several
    /// (see `apply::apply_batch_on`), else one by one. Replays, undecodable deliveries, the events
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
                    Ok(event) if !event.replay && !self.needs_prepare(&event) => {
                        decoded.push(Decoded { incoming, event })
                    }
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
                            error = %failure.chain_line(),
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
        let done = apply::apply_batch_on(&mut conn, &self.handlers, decoded).await?;
        for (d, done) in decoded.iter().zip(&done) {
            if *done == Done::Ignored {
                self.note_unknown_type(&d.event.meta.event_type);
            }
        }
        Ok(done)
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

    fn needs_prepare(&self, event: &Event) -> bool {
        self.handlers
            .get(event.meta.provider, &event.meta.event_type)
            .is_some_and(|h| h.needs_prepare(event))
    }

    /// The handler's preparation (outside any transaction), then the transaction: event-log
    /// row, then the handler; commit only if both succeed.
    async fn apply(&self, event: &Event) -> Result<Done, Failure> {
        if let Some(handler) = self
            .handlers
            .get(event.meta.provider, &event.meta.event_type)
        {
            handler.prepare(event).await?;
        }
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
            match apply::apply_on(&mut conn, &self.handlers, event).await {
                Err(failure) if failure.is_conflict() => match pauses.next() {
                    Some(pause) => {
                        tracing::debug!(event.id = %event.meta.event_id, error = %failure.chain_line(), "conflict with a concurrent transaction; trying again");
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
}

/// First pause before an in-process retry after a transaction conflict (doubling, jittered).
const CONFLICT_PAUSE: Duration = Duration::from_millis(10);

/// In-process retries after a transaction conflict before the broker's retry schedule.
const CONFLICT_RETRIES: usize = 3;
