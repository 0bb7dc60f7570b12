//! The billing and CRM handler: turns each Stripe event into account resolution, object
//! snapshots under the order key, tasks and outbox rows, all in the event's transaction. A
//! batch of events is applied with a handful of set-based statements, whatever its size.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::future::BoxFuture;
use paysync_domain::Provider;
use paysync_domain::app;
use paysync_domain::billing::{
    self, BillingError, Changes, Enrichment, Intent, Notice, ObjectKind, SideEffect,
};
use paysync_domain::writes::{SnapWrite, Writes};
use paysync_store::{NewAppEvent, Resolution, Tx};

use crate::{Event, Failure, Handler, Handlers};

/// Applies every type in [`billing::handled_types`] of every provider, each with its
/// provider's mapper. Events whose payload lacks what the mapper needs (Authorize.Net's
/// payment events name no customer) are completed from the provider's API first.
#[derive(Default)]
pub struct Billing {
    apis: ProviderApis,
}

/// The provider APIs billing completes events from; each `None` when not configured.
#[derive(Default, Clone)]
pub struct ProviderApis {
    /// Authorize.Net's transaction details (its payment events name no customer).
    pub authorizenet: Option<Arc<dyn TransactionSource>>,
    /// Stripe's objects (thin events carry only a reference to theirs).
    pub stripe: Option<Arc<dyn ObjectSource>>,
}

/// Where the current JSON of a provider object comes from (the API client, or a test's
/// stand-in).
pub trait ObjectSource: Send + Sync {
    /// The object at the API path `path`. An outage must be a retryable [`Failure`].
    fn object<'a>(
        &'a self,
        object: &'a billing::stripe::ThinObject,
    ) -> BoxFuture<'a, Result<String, Failure>>;
}

/// A Stripe thin event on a worker without a Stripe API key.
#[derive(Debug, thiserror::Error)]
#[error(
    "thin event needs Stripe object {0} but no Stripe API key is configured (PAYSYNC_STRIPE_API_KEY)"
)]
pub struct ThinEventUnconfigured(String);

/// Where Authorize.Net transaction details come from (the API client, or a test's stand-in).
pub trait TransactionSource: Send + Sync {
    /// The details of transaction `id`. An outage must be a retryable [`Failure`].
    fn transaction<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<billing::authorizenet::Transaction, Failure>>;
}

/// An Authorize.Net event that needs transaction details, on a worker without API
/// credentials.
#[derive(Debug, thiserror::Error)]
#[error(
    "event needs Authorize.Net transaction {0} but no API credentials are configured \
     (PAYSYNC_AUTHORIZENET_API_LOGIN_ID, PAYSYNC_AUTHORIZENET_TRANSACTION_KEY)"
)]
pub struct EnrichmentUnconfigured(String);

/// What billing derived from an event: the first parse, and the one completed with the
/// provider's data when the event needed it.
struct Parsed {
    first: Result<Changes, BillingError>,
    completed: std::sync::OnceLock<Result<Changes, BillingError>>,
}

/// A customer hinted to another account than the one it is linked to.
#[derive(Debug, thiserror::Error)]
#[error(
    "customer {customer} is linked to account {account} ({linked:?}) but this event names {hinted}"
)]
pub struct AccountConflict {
    customer: String,
    account: i64,
    linked: Option<String>,
    hinted: String,
}

/// A registry with the billing handler for every type it applies, without an Authorize.Net
/// API client.
pub fn handlers() -> Handlers {
    handlers_with(None)
}

/// A registry with the billing handler for every type it applies; `anet` completes
/// Authorize.Net payment events.
pub fn handlers_with(anet: Option<Arc<dyn TransactionSource>>) -> Handlers {
    handlers_for(ProviderApis {
        authorizenet: anet,
        stripe: None,
    })
}

/// A registry with the billing handler for every type it applies, Stripe's thin variants
/// (`v1.<type>`) included, completing events from `apis`.
pub fn handlers_for(apis: ProviderApis) -> Handlers {
    let mut h = Handlers::new();
    let billing: Arc<dyn Handler> = Arc::new(Billing { apis });
    for provider in Provider::ALL {
        for t in billing::handled_types(provider) {
            h.register(provider, *t, billing.clone());
        }
    }
    for t in billing::handled_types(Provider::Stripe) {
        h.register(
            Provider::Stripe,
            format!("{}{t}", billing::stripe::THIN_TYPE_PREFIX),
            billing.clone(),
        );
    }
    h
}

impl Handler for Billing {
    fn needs_prepare(&self, event: &Event) -> bool {
        matches!(&parsed_first(event), Ok(c) if c.needs.is_some())
    }

    fn prepare<'a>(&'a self, event: &'a Event) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            let Ok(Changes {
                needs: Some(needs), ..
            }) = parsed_first(event)
            else {
                return Ok(());
            };
            let Some(p) = derived(event) else {
                return Ok(());
            };
            if p.completed.get().is_some() {
                return Ok(());
            }
            let id = match needs {
                Enrichment::AuthorizeNetTransaction(id) => id,
                Enrichment::StripeObject(object) => {
                    let _ = p.completed.set(self.thin_snapshot(event, object).await?);
                    return Ok(());
                }
            };
            let source = self.apis.authorizenet.as_ref().ok_or_else(|| {
                Failure::permanent(
                    "enrichment_unconfigured",
                    EnrichmentUnconfigured(id.clone()),
                )
            })?;
            let tx = source.transaction(id).await?;
            let completed = serde_json::from_str::<serde_json_borrow::Value<'_>>(event.body())
                .map_err(|_| BillingError::NotJson)
                .and_then(|body| {
                    billing::authorizenet::changes_with_transaction(
                        &event.meta.event_type,
                        &body,
                        &tx,
                    )
                });
            let _ = p.completed.set(completed);
            Ok(())
        })
    }

    fn lock_key<'a>(&self, event: &'a Event) -> Option<&'a str> {
        parsed(event).ok()?.customer.as_deref()
    }

    fn customer<'a>(&self, event: &'a Event) -> Option<&'a str> {
        parsed(event).ok()?.customer.as_deref()
    }

    fn handle<'a>(
        &'a self,
        tx: &'a Tx<'a>,
        event: &'a Event,
    ) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move { apply(tx, &[event]).await })
    }

    fn handle_batch<'a>(
        &'a self,
        tx: &'a Tx<'a>,
        events: &'a [&'a Event],
    ) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(apply(tx, events))
    }
}

impl Billing {
    /// A thin event's changes: its object fetched from Stripe, mapped as the snapshot event
    /// the thin one stands for.
    async fn thin_snapshot(
        &self,
        event: &Event,
        thin: &billing::stripe::ThinObject,
    ) -> Result<Result<Changes, BillingError>, Failure> {
        let source = self.apis.stripe.as_ref().ok_or_else(|| {
            Failure::permanent(
                "enrichment_unconfigured",
                ThinEventUnconfigured(thin.path.clone()),
            )
        })?;
        let object = source.object(thin).await?;
        Ok(
            billing::stripe::snapshot_of_thin(event.body(), &object).and_then(|snapshot| {
                let base = billing::stripe::thin_base(&event.meta.event_type)
                    .ok_or(BillingError::Missing("type"))?;
                billing::changes_of_body(Provider::Stripe, base, &snapshot)
            }),
        )
    }
}

fn derived(event: &Event) -> Option<&Parsed> {
    event.derived(|e| Parsed {
        first: billing::changes_of_body(e.meta.provider, &e.meta.event_type, e.body()),
        completed: std::sync::OnceLock::new(),
    })
}

fn parsed_first(event: &Event) -> Result<&Changes, &BillingError> {
    derived(event)
        .map_or(&Err(BillingError::NotJson), |p| &p.first)
        .as_ref()
}

/// The event's changes, parsed from its body once (the lock key, the customer and the writes
/// all read them), completed with the provider's data when the event needed it.
fn parsed(event: &Event) -> Result<&Changes, &BillingError> {
    match derived(event) {
        Some(p) => p.completed.get().unwrap_or(&p.first).as_ref(),
        None => Err(&BillingError::NotJson),
    }
}

/// An event that still lacks the provider's data when it is applied (its preparation did not
/// run: a bug of the caller).
#[derive(Debug, thiserror::Error)]
#[error("event was applied before its provider data was fetched")]
struct NotPrepared;

/// Applies `events` in order: each event's changes (pure), its account (existing mappings in
/// one read; creating or changing a mapping one event at a time under the customer's lock),
/// then every state write of the batch folded one per row and written with one statement per
/// table. The same code applies a lone event.
async fn apply(tx: &Tx<'_>, events: &[&Event]) -> Result<(), Failure> {
    let changes = events
        .iter()
        .map(|e| parsed(e).map_err(|err| Failure::permanent("unsupported_payload", err.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    if changes.iter().any(|c| c.needs.is_some()) {
        return Err(Failure::retryable("not_prepared", NotPrepared));
    }
    let mut links: HashMap<(Provider, String), (i64, Option<String>)> = HashMap::new();
    for provider in events
        .iter()
        .map(|e| e.meta.provider)
        .collect::<HashSet<_>>()
    {
        let customers: Vec<&str> = events
            .iter()
            .zip(&changes)
            .filter(|(e, _)| e.meta.provider == provider)
            .filter_map(|(_, c)| c.customer.as_deref())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let found = tx
            .customer_links(provider.as_str(), &customers)
            .await
            .map_err(Failure::from_store)?;
        links.extend(found.into_iter().map(|(c, link)| ((provider, c), link)));
    }
    // Customers resolved the slow way in this transaction stay on it: their mapping may have
    // been made or changed after the read above.
    let mut fresh: HashSet<(Provider, &str)> = HashSet::new();
    let mut writes = Writes::new();
    // Each account the batch touched, with the provider of its last event.
    let mut touched: HashMap<i64, Provider> = HashMap::new();
    let mut via_payment: Vec<(Provider, &str)> = Vec::new();
    for (event, changes) in events.iter().zip(&changes) {
        let meta = &event.meta;
        let provider = meta.provider;
        let customer = changes.customer.as_deref();
        let hint = changes.account_hint.as_deref();
        let known = customer
            .filter(|c| !fresh.contains(&(provider, *c)))
            .and_then(|c| links.get(&(provider, c.to_owned())))
            .filter(|(_, linked)| hint.is_none() || hint == linked.as_deref());
        let resolution = match known {
            Some((id, _)) => Resolution::Account {
                id: *id,
                created: false,
            },
            None => {
                if let Some(c) = customer {
                    fresh.insert((provider, c));
                }
                tx.resolve_account(provider.as_str(), customer, hint)
                    .await
                    .map_err(Failure::from_store)?
            }
        };
        let account = match resolution {
            Resolution::Account { id, .. } => {
                // The event-log row is linked by the caller (one statement per batch).
                event.link_account(id);
                touched.insert(id, provider);
                Some(id)
            }
            Resolution::Unlinked => None,
            Resolution::Conflict {
                linked_account,
                linked_ref,
                hinted_ref,
            } => {
                return Err(Failure::permanent(
                    "customer_account_conflict",
                    AccountConflict {
                        customer: changes.customer.clone().unwrap_or_default(),
                        account: linked_account,
                        linked: linked_ref,
                        hinted: hinted_ref,
                    },
                ));
            }
        };
        // The provider's own time of the state, at its resolution (Stripe: the event's second).
        let at = changes.order_at.unwrap_or(meta.created);
        if let Some(snap) = &changes.customer_snap {
            writes.customer(provider, snap, at, &meta.event_id);
        }
        for snap in &changes.snaps {
            // A refund or dispute that names no customer (Stripe's disputes, Square's refunds)
            // still changes the account of its payment.
            if let (None, ObjectKind::Refund | ObjectKind::Dispute, Some(payment)) =
                (account, snap.kind, snap.parent.as_deref())
            {
                via_payment.push((provider, payment));
            }
            let key = billing::order_key(snap, at, &meta.event_id);
            // The first successful payment opens the (single) welcome task.
            let welcome = matches!(
                (account, snap.kind, snap.status.as_str()),
                (Some(_), ObjectKind::Payment, "succeeded")
            ) && snap.amount > 0;
            writes.snap(SnapWrite {
                provider,
                snap: snap.clone(),
                key,
                account,
                customer: changes.customer.clone(),
            });
            if let (true, Some(id)) = (welcome, account) {
                writes.effect(
                    provider,
                    Some(id),
                    SideEffect {
                        intent: Intent::Welcome,
                        source_id: format!("account:{id}"),
                        due_at: None,
                        notice: Notice::default(),
                    },
                );
            }
        }
        for effect in &changes.effects {
            writes.effect(provider, account, effect.clone());
        }
    }
    tx.write(&writes).await.map_err(Failure::from_store)?;
    if !via_payment.is_empty() {
        let (providers, payments): (Vec<&str>, Vec<&str>) =
            via_payment.iter().map(|(p, id)| (p.as_str(), *id)).unzip();
        for (provider, account) in tx
            .payment_accounts(&providers, &payments)
            .await
            .map_err(Failure::from_store)?
        {
            if let Ok(p) = provider.parse::<Provider>() {
                touched.entry(account).or_insert(p);
            }
        }
    }
    tell_app(tx, &touched).await
}

/// Compares each touched account with what the business's application was last told and
/// records an event for every real change (`paysync_domain::app`), in this transaction.
async fn tell_app(tx: &Tx<'_>, touched: &HashMap<i64, Provider>) -> Result<(), Failure> {
    if touched.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = touched.keys().copied().collect();
    let slots = tx.app_slots(&ids).await.map_err(Failure::from_store)?;
    let occurred_at = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc())
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut kept = Vec::with_capacity(slots.len());
    let mut events = Vec::new();
    for slot in &slots {
        let (changes, keep) = app::changes(slot.told.as_ref(), &slot.facts);
        if changes.is_empty() && slot.told.as_ref() == Some(&keep) {
            continue;
        }
        let provider = touched
            .get(&slot.account_id)
            .copied()
            .unwrap_or(Provider::Stripe);
        let mut seq = slot.seq;
        for change in &changes {
            seq += 1;
            events.push(NewAppEvent {
                id: app::event_id(slot.account_id, seq),
                account_id: slot.account_id,
                seq,
                kind: change.kind.as_str(),
                body: app::body(
                    change,
                    slot.account_id,
                    slot.facts.external_ref.as_deref(),
                    seq,
                    &occurred_at,
                ),
                provider,
            });
        }
        kept.push((slot.account_id, seq, keep));
    }
    let projections: Vec<(i64, i64, &app::Projection)> =
        kept.iter().map(|(a, s, p)| (*a, *s, p)).collect();
    tx.record_app(&projections, &events)
        .await
        .map_err(Failure::from_store)
}
