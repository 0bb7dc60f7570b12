//! The apply stage: the transactions that write events to the event log and run their
//! handlers, for one event ([`apply_on`]) or a batch ([`apply_batch_on`]).
//!
//! Rule of thumb: the per-event steps (look up the handler, write the row as applied or
//! ignored, link the account the handler found) are [`Step`]'s, shared by both paths, so a
//! batch has the effect of applying its events one by one.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use paysync_domain::EventMeta;
use paysync_store::{Conn, Inserted, NewEvent, Outcome, Replayed, Store};

use super::{Decoded, Done};
use crate::Failure;
use crate::handler::{Event, Handler, Handlers};

/// One event on its way through a transaction: the steps the single and the batch path share.
struct Step<'e> {
    event: &'e Event,
    handler: Option<&'e Arc<dyn Handler>>,
}

impl<'e> Step<'e> {
    /// Looks up the event's handler and forgets any account an earlier attempt linked (its
    /// rollback undid the link).
    fn new(handlers: &'e Handlers, event: &'e Event) -> Self {
        event.forget_account();
        Self {
            event,
            handler: handlers.get(event.meta.provider, &event.meta.event_type),
        }
    }

    /// What a new row of this event comes to: applied by its handler, or ignored (none).
    fn done(&self) -> Done {
        if self.handler.is_some() {
            Done::Applied
        } else {
            Done::Ignored
        }
    }

    /// Its event-log row, written with its customer's account when the handler names a
    /// customer whose mapping exists.
    fn row(&self) -> NewEvent<'e> {
        let event = self.event;
        NewEvent {
            meta: &event.meta,
            payload: event.body(),
            outcome: match self.done() {
                Done::Applied => Outcome::Applied,
                _ => Outcome::Ignored,
            },
            attempt: event.attempt,
            customer: self.handler.and_then(|h| h.customer(event)),
        }
    }

    /// After its handler ran: the account to link the row to, when the handler found one the
    /// row was not written with (`logged`). `None` for an ignored event.
    fn relink(&self, logged: Option<i64>) -> Option<i64> {
        self.handler?;
        self.event.account().filter(|a| Some(*a) != logged)
    }
}

/// Applies one event in one transaction on `conn`: the event-log row, then its handler;
/// commit only if both succeed. A duplicate (already logged) changes nothing.
pub(crate) async fn apply_on(
    conn: &mut Conn,
    handlers: &Handlers,
    event: &Event,
) -> Result<Done, Failure> {
    let step = Step::new(handlers, event);
    let meta = &event.meta;
    let tx = conn.transaction().await.map_err(Failure::from_store)?;
    // A replay re-runs the handler for an event already in the log (counted there), once per
    // replay id; one that is not in the log is processed as new.
    let replayed = if event.replay {
        tx.mark_replayed(meta, event.replay_id.as_deref())
            .await
            .map_err(Failure::from_store)?
    } else {
        Replayed::NotLogged
    };
    if replayed == Replayed::Again {
        let _ = tx.rollback().await;
        return Ok(Done::Duplicate);
    }
    let logged = if replayed == Replayed::Counted {
        // The row's account is not known here: link it whatever the handler finds.
        Inserted::New { account: None }
    } else {
        tx.insert_event(step.row())
            .await
            .map_err(Failure::from_store)?
    };
    let Inserted::New { account: logged } = logged else {
        let _ = tx.rollback().await;
        return Ok(Done::Duplicate);
    };
    if let Some(handler) = step.handler {
        if let Err(failure) = caught(handler.handle(&tx, event)).await {
            let _ = tx.rollback().await;
            return Err(failure);
        }
        if let Some(account) = step.relink(logged) {
            tx.set_event_account(meta, account)
                .await
                .map_err(Failure::from_store)?;
        }
    }
    tx.commit().await.map_err(Failure::from_store)?;
    Ok(step.done())
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

/// A handler's future with a panic turned into a permanent failure: a panicking handler must
/// not leave its delivery unacked forever (a person has to look at the code path).
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
/// (which it sorts). Any failure rolls the whole batch back: the caller then splits it or
/// applies its events one by one, so a bad event is isolated and a good one is never held
/// back by it.
///
/// Lock order: event-log keys first (sorted), then the handlers' rows (the billing handler
/// writes each table's rows in key order, tables in one fixed order), the same order as the
/// one-by-one path, so batches and single transactions queue behind each other instead of
/// deadlocking.
pub(super) async fn apply_batch_on(
    conn: &mut Conn,
    handlers: &Handlers,
    events: &mut [Decoded<'_>],
) -> Result<Vec<Done>, Failure> {
    fn key<'e>(handlers: &Handlers, d: &'e Decoded<'_>) -> (Option<&'e str>, &'e str) {
        let lock = handlers
            .get(d.event.meta.provider, &d.event.meta.event_type)
            .and_then(|h| h.lock_key(&d.event));
        (lock, &d.event.meta.event_id)
    }
    events.sort_by(|a, b| key(handlers, a).cmp(&key(handlers, b)));
    let steps: Vec<Step<'_>> = events
        .iter()
        .map(|d| Step::new(handlers, &d.event))
        .collect();
    // The first delivery of an event id in the batch is the candidate; later ones are
    // duplicates of it whatever happens to it.
    let mut done = vec![Done::Duplicate; steps.len()];
    let mut first: Vec<usize> = Vec::with_capacity(steps.len());
    {
        let mut seen = HashSet::with_capacity(steps.len());
        for (i, step) in steps.iter().enumerate() {
            let meta = &step.event.meta;
            if seen.insert((meta.provider, meta.event_id.as_str())) {
                first.push(i);
            }
        }
    }
    let rows: Vec<NewEvent<'_>> = first.iter().map(|&i| steps[i].row()).collect();
    let tx = conn.transaction().await.map_err(Failure::from_store)?;
    let fresh = tx.insert_events(&rows).await.map_err(Failure::from_store)?;
    // The new events, each handler's in batch order; a handler applies all of its events at
    // once (billing with a few set-based statements), handlers one after the other.
    let mut jobs: Vec<(&Arc<dyn Handler>, Vec<&Event>)> = Vec::new();
    // The account each new row was written with, by position.
    let mut logged: Vec<Option<i64>> = vec![None; steps.len()];
    for (&i, inserted) in first.iter().zip(fresh) {
        let Inserted::New { account } = inserted else {
            continue;
        };
        logged[i] = account;
        let step = &steps[i];
        done[i] = step.done();
        if let Some(handler) = step.handler {
            match jobs.iter_mut().find(|(h, _)| Arc::ptr_eq(h, handler)) {
                Some((_, batch)) => batch.push(step.event),
                None => jobs.push((handler, vec![step.event])),
            }
        }
    }
    for (handler, batch) in &jobs {
        caught(handler.handle_batch(&tx, batch)).await?;
    }
    // Only rows written without the account the handler found (a customer mapped just now,
    // or linked through a hint) need an update.
    let links: Vec<(&EventMeta, i64)> = steps
        .iter()
        .zip(&done)
        .zip(&logged)
        .filter(|((_, d), _)| **d == Done::Applied)
        .filter_map(|((step, _), logged)| step.relink(*logged).map(|a| (&step.event.meta, a)))
        .collect();
    tx.set_event_accounts(&links)
        .await
        .map_err(Failure::from_store)?;
    let duplicates: Vec<&EventMeta> = steps
        .iter()
        .zip(&done)
        .filter(|(_, d)| **d == Done::Duplicate)
        .map(|(step, _)| &step.event.meta)
        .collect();
    tx.record_duplicates(&duplicates)
        .await
        .map_err(Failure::from_store)?;
    tx.commit().await.map_err(Failure::from_store)?;
    Ok(done)
}

/// Applies one event outside the broker path (tests, tools): the same transaction the worker
/// runs for a delivery.
pub async fn apply_event(
    store: &Store,
    handlers: &Handlers,
    event: &Event,
) -> Result<Done, Failure> {
    if let Some(handler) = handlers.get(event.meta.provider, &event.meta.event_type) {
        handler.prepare(event).await?;
    }
    let mut conn = store.conn().await.map_err(Failure::from_store)?;
    apply_on(&mut conn, handlers, event).await
}
