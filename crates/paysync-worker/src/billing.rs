//! The billing and CRM handler: turns each Stripe event into account resolution, object
//! snapshots under the order key, tasks and outbox rows, all in the event's transaction.

use std::sync::Arc;

use futures::future::BoxFuture;
use paysync_domain::billing::{self, Channel, ObjectKind, OrderKey, SideEffect};
use paysync_store::{Resolution, Tx};

use crate::{Event, Failure, Handler, Handlers};

/// Applies every type in [`billing::HANDLED_TYPES`].
pub struct Billing;

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

/// A registry with the billing handler for every type it applies.
pub fn handlers() -> Handlers {
    let mut h = Handlers::new();
    let billing: Arc<dyn Handler> = Arc::new(Billing);
    for t in billing::HANDLED_TYPES {
        h.register(*t, billing.clone());
    }
    h
}

impl Handler for Billing {
    fn lock_key<'a>(&self, event: &'a Event) -> Option<&'a str> {
        billing::customer_of(&event.meta.event_type, &event.payload)
    }

    fn handle<'a>(
        &'a self,
        tx: &'a Tx<'a>,
        event: &'a Event,
    ) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            let meta = &event.meta;
            let provider = meta.provider.as_str();
            let changes = billing::changes(&meta.event_type, &event.payload)
                .map_err(|e| Failure::permanent("unsupported_payload", e))?;
            let resolution = tx
                .resolve_account(
                    provider,
                    changes.customer.as_deref(),
                    changes.account_hint.as_deref(),
                )
                .await
                .map_err(Failure::from_store)?;
            let account = match resolution {
                Resolution::Account { id, created } => {
                    if created {
                        let note = SideEffect {
                            channel: Channel::Outbox,
                            kind: "new_customer_notification",
                            source_id: format!("account:{id}"),
                            due_at: None,
                        };
                        tx.add_effect(Some(id), &note)
                            .await
                            .map_err(Failure::from_store)?;
                    }
                    // The event-log row is linked by the caller (one statement per batch).
                    event.link_account(id);
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
            if let Some(snap) = &changes.customer_snap {
                let key = OrderKey {
                    terminal: snap.deleted,
                    created: meta.created,
                    rank: 0,
                    event_id: meta.event_id.clone(),
                };
                tx.apply_customer(provider, snap, &key)
                    .await
                    .map_err(Failure::from_store)?;
            }
            for snap in &changes.snaps {
                let key = billing::order_key(snap, meta.created, &meta.event_id);
                tx.apply_snap(provider, snap, &key, account, changes.customer.as_deref())
                    .await
                    .map_err(Failure::from_store)?;
                // The first successful payment opens the (single) welcome task.
                if let (Some(id), ObjectKind::Payment, "succeeded") =
                    (account, snap.kind, snap.status.as_str())
                    && snap.amount > 0
                {
                    let welcome = SideEffect {
                        channel: Channel::Task,
                        kind: "welcome",
                        source_id: format!("account:{id}"),
                        due_at: None,
                    };
                    tx.add_effect(Some(id), &welcome)
                        .await
                        .map_err(Failure::from_store)?;
                }
            }
            for effect in &changes.effects {
                tx.add_effect(account, effect)
                    .await
                    .map_err(Failure::from_store)?;
            }
            Ok(())
        })
    }
}
