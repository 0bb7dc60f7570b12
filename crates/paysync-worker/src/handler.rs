//! The handler registry: one handler per event type, each given the open transaction in which
//! the event-log row was just inserted, so its state changes commit or roll back with it.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};

use futures::future::BoxFuture;
use paysync_domain::{EventMeta, Provider};
use paysync_store::Tx;

use crate::Failure;

/// An event as handlers see it.
#[derive(Debug)]
pub struct Event {
    /// Metadata from the message headers.
    pub meta: EventMeta,
    /// Which attempt this is (1 for the first delivery).
    pub attempt: u32,
    /// The body, exactly as received: JSON whose `id` is the event id (checked before any
    /// handler sees it).
    body: Box<str>,
    /// An operator replay from the event log: the handler runs again on purpose.
    pub replay: bool,
    /// The replay's own id (`paysync-replay-id`), when the replay has one: a second delivery of
    /// it is a duplicate.
    pub replay_id: Option<String>,
    /// The account a handler linked the event to; [`NO_ACCOUNT`] for none.
    account: AtomicI64,
    /// What the handler derived from the body, kept so it is parsed once (see
    /// [`Event::derived`]).
    derived: OnceLock<Box<dyn Any + Send + Sync>>,
}

/// "No account linked" in [`Event::account`]'s cell (account ids are positive).
const NO_ACCOUNT: i64 = i64::MIN;

impl Event {
    /// An event as decoded from a delivery; `body` must be JSON whose `id` is the event id.
    pub fn new(meta: EventMeta, attempt: u32, body: impl Into<Box<str>>, replay: bool) -> Self {
        Self {
            meta,
            attempt,
            body: body.into(),
            replay,
            replay_id: None,
            account: AtomicI64::new(NO_ACCOUNT),
            derived: OnceLock::new(),
        }
    }

    /// The body, exactly as received.
    pub fn body(&self) -> &str {
        &self.body
    }

    /// What `derive` makes of this event, computed on the first call and kept: the lock key,
    /// the customer and the writes of a handler all come from one parse of the body. `None`
    /// when another type was derived first (an event has one handler, so that is a bug).
    pub fn derived<T: Any + Send + Sync>(&self, derive: impl FnOnce(&Event) -> T) -> Option<&T> {
        self.derived
            .get_or_init(|| Box::new(derive(self)))
            .downcast_ref()
    }

    /// Records the account the handler linked the event to (for the processed-event log line).
    pub fn link_account(&self, account: i64) {
        self.account.store(account, Ordering::Relaxed);
    }

    /// The account the handler linked the event to, if any.
    pub fn account(&self) -> Option<i64> {
        Some(self.account.load(Ordering::Relaxed)).filter(|a| *a != NO_ACCOUNT)
    }

    /// Forgets the link before the handler runs (again): a rolled-back attempt may have
    /// linked an account that its rollback undid.
    pub(crate) fn forget_account(&self) {
        self.account.store(NO_ACCOUNT, Ordering::Relaxed);
    }
}

/// Applies one event type to the state. Must be idempotent within the transaction's effect:
/// an operator replay runs it again on purpose.
pub trait Handler: Send + Sync {
    /// Applies `event` inside `tx`. An error rolls back the whole transaction, event-log row
    /// included, so a retry is not mistaken for a duplicate.
    fn handle<'a>(&'a self, tx: &'a Tx<'a>, event: &'a Event)
    -> BoxFuture<'a, Result<(), Failure>>;

    /// Applies several events of this handler's types inside `tx`, with the effect of applying
    /// them one after the other in the given order (sorted by [`Handler::lock_key`], then
    /// event id). An error rolls back the whole batch; the worker then applies its events one
    /// by one, so a bad event is isolated.
    ///
    /// The default runs [`Handler::handle`] for each event: the events of one lock key one
    /// after the other, those of different keys concurrently on the transaction's connection
    /// (their statements are pipelined). A handler that can write a whole batch with a few
    /// set-based statements overrides it.
    fn handle_batch<'a>(
        &'a self,
        tx: &'a Tx<'a>,
        events: &'a [&'a Event],
    ) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            let mut groups: Vec<(Option<&str>, Vec<&Event>)> = Vec::new();
            for &event in events {
                let key = self.lock_key(event);
                match groups.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, group)) => group.push(event),
                    None => groups.push((key, vec![event])),
                }
            }
            let ran = futures::future::join_all(groups.iter().map(|(_, group)| async move {
                for event in group {
                    self.handle(tx, event).await?;
                }
                Ok::<(), Failure>(())
            }))
            .await;
            ran.into_iter().collect()
        })
    }

    /// Whether `event` needs [`Handler::prepare`] before its transaction (a lookup at the
    /// provider). Such events are applied one by one, never in a batch.
    fn needs_prepare(&self, event: &Event) -> bool {
        let _ = event;
        false
    }

    /// Runs before the event's transaction opens, outside it: fetches what the event lacks
    /// from the provider's API, so no transaction is held open across a network call. An
    /// outage is a retryable failure.
    fn prepare<'a>(&'a self, event: &'a Event) -> BoxFuture<'a, Result<(), Failure>> {
        let _ = event;
        Box::pin(async { Ok(()) })
    }

    /// The provider customer `event` belongs to, for a handler that links events to accounts
    /// through provider customers (billing). The event-log row is then written with that
    /// customer's account when the mapping already exists, instead of being updated after the
    /// handler. `None` (the default): the row is linked to whatever account the handler finds.
    fn customer<'a>(&self, event: &'a Event) -> Option<&'a str> {
        let _ = event;
        None
    }

    /// The key of the rows `event` locks first (for billing: its provider customer). A batch
    /// applies its events in key order, so concurrent batches take their locks in one order
    /// and do not deadlock each other. `None` (the default) sorts first.
    fn lock_key<'a>(&self, event: &'a Event) -> Option<&'a str> {
        let _ = event;
        None
    }
}

/// Handlers by provider and event type (two providers share type names: `customer.created`
/// is a Stripe and a Square event of different shapes). Types without a handler are recorded
/// as `ignored` and acked.
#[derive(Clone, Default)]
pub struct Handlers {
    by_type: HashMap<Provider, HashMap<String, Arc<dyn Handler>>>,
}

impl Handlers {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` for `provider`'s `event_type` (replacing any earlier one).
    pub fn register(
        &mut self,
        provider: Provider,
        event_type: impl Into<String>,
        handler: Arc<dyn Handler>,
    ) -> &mut Self {
        self.by_type
            .entry(provider)
            .or_default()
            .insert(event_type.into(), handler);
        self
    }

    /// The handler for `provider`'s `event_type`.
    pub fn get(&self, provider: Provider, event_type: &str) -> Option<&Arc<dyn Handler>> {
        self.by_type.get(&provider)?.get(event_type)
    }

    /// Every registered provider and event type.
    pub fn types(&self) -> impl Iterator<Item = (Provider, &str)> {
        self.by_type
            .iter()
            .flat_map(|(p, types)| types.keys().map(move |t| (*p, t.as_str())))
    }

    /// Whether a handler exists for `provider`'s `event_type` (also: whether it may be a
    /// metric label).
    pub fn knows(&self, provider: Provider, event_type: &str) -> bool {
        self.get(provider, event_type).is_some()
    }
}
