//! Accounts' facts read in one round of statements, and the application's side: the
//! projection each account was last told, its events, and their deliveries.

use std::collections::{BTreeMap, HashMap};

use paysync_domain::app::Projection;
use paysync_domain::billing::{
    AccountFacts, CustomerFact, DisputeFact, Intent, InvoiceFact, PaymentFact, RefundFact,
    SubscriptionFact, TaskFact,
};
use paysync_domain::outbound;
use paysync_domain::webhook::Provider;
use tokio_postgres::GenericClient;

use crate::{StoreError, Tx};

const ACCOUNTS: &str = "select id, external_ref from accounts where id = any($1) order by id";
const CUSTOMERS: &str = "select account_id, provider, customer_id, email, name, deleted \
    from provider_customers where account_id = any($1) order by account_id, provider, customer_id";
const SUBSCRIPTIONS: &str = "select account_id, id, status, plan from subscriptions \
    where account_id = any($1) order by account_id, id";
const INVOICES: &str = "select account_id, id, status, billing_reason from invoices \
    where account_id = any($1) order by account_id, id";
const PAYMENTS: &str = "select account_id, provider, id, status, amount, currency, amount_refunded \
    from payments where account_id = any($1) order by account_id, id, provider";
/// Refunds belong to an account through their payment.
const REFUNDS: &str = "select p.account_id, r.payment_id, r.status, r.amount, r.currency \
    from payments p join refunds r on r.provider = p.provider and r.payment_id = p.id \
    where p.account_id = any($1) order by p.account_id, r.id";
/// Disputes belong to an account directly or through their payment.
const DISPUTES: &str = "select account_id, provider, id, payment_id, status, amount, currency from ( \
      select d.account_id, d.provider, d.id, d.payment_id, d.status, d.amount, d.currency \
      from disputes d where d.account_id = any($1) \
      union \
      select p.account_id, d.provider, d.id, d.payment_id, d.status, d.amount, d.currency \
      from payments p join disputes d on d.provider = p.provider and d.payment_id = p.id \
      where p.account_id = any($1)) x \
    order by account_id, id";
const CHECKOUTS: &str = "select account_id, status from checkout_sessions \
    where account_id = any($1) order by account_id, id";
const TASKS: &str = "select account_id, kind, source_id, due_at from tasks \
    where account_id = any($1) or (kind = 'dispute_response' and source_id = any($2)) \
    order by kind, source_id";

/// The facts of each account of `ids` that exists, in id order: nine statements, whatever the
/// number of accounts (eight without the tasks, which the projection does not need).
pub(crate) async fn facts_of<C: GenericClient + Sync>(
    c: &C,
    ids: &[i64],
    with_tasks: bool,
) -> Result<Vec<AccountFacts>, StoreError> {
    let db = StoreError::db;
    let mut out: BTreeMap<i64, AccountFacts> = c
        .query(ACCOUNTS, &[&ids])
        .await
        .map_err(db("read accounts"))?
        .iter()
        .map(|r| {
            let id: i64 = r.get(0);
            (
                id,
                AccountFacts {
                    id,
                    external_ref: r.get(1),
                    ..AccountFacts::default()
                },
            )
        })
        .collect();
    if out.is_empty() {
        return Ok(Vec::new());
    }
    let (customers, subscriptions, invoices, payments, refunds, disputes, checkouts) = futures::try_join!(
        async {
            c.query(CUSTOMERS, &[&ids])
                .await
                .map_err(db("read customers"))
        },
        async {
            c.query(SUBSCRIPTIONS, &[&ids])
                .await
                .map_err(db("read subscriptions"))
        },
        async {
            c.query(INVOICES, &[&ids])
                .await
                .map_err(db("read invoices"))
        },
        async {
            c.query(PAYMENTS, &[&ids])
                .await
                .map_err(db("read payments"))
        },
        async { c.query(REFUNDS, &[&ids]).await.map_err(db("read refunds")) },
        async {
            c.query(DISPUTES, &[&ids])
                .await
                .map_err(db("read disputes"))
        },
        async {
            c.query(CHECKOUTS, &[&ids])
                .await
                .map_err(db("read checkouts"))
        },
    )?;
    for r in &customers {
        if let Some(f) = out.get_mut(&r.get::<_, i64>(0)) {
            f.customers.push(CustomerFact {
                provider: r.get(1),
                customer_id: r.get(2),
                email: r.get(3),
                name: r.get(4),
                deleted: r.get(5),
            });
        }
    }
    for r in &subscriptions {
        if let Some(f) = out.get_mut(&r.get::<_, i64>(0)) {
            f.subscriptions.push(SubscriptionFact {
                id: r.get(1),
                status: r.get(2),
                plan: r.get(3),
            });
        }
    }
    for r in &invoices {
        if let Some(f) = out.get_mut(&r.get::<_, i64>(0)) {
            f.invoices.push(InvoiceFact {
                id: r.get(1),
                status: r.get(2),
                billing_reason: r.get(3),
            });
        }
    }
    for r in &payments {
        if let Some(f) = out.get_mut(&r.get::<_, i64>(0)) {
            f.payments.push(PaymentFact {
                provider: r.get(1),
                id: r.get(2),
                status: r.get(3),
                amount: r.get(4),
                currency: r.get(5),
                amount_refunded: r.get(6),
            });
        }
    }
    for r in &refunds {
        if let Some(f) = out.get_mut(&r.get::<_, i64>(0)) {
            f.refunds.push(RefundFact {
                payment_id: r.get(1),
                status: r.get(2),
                amount: r.get(3),
                currency: r.get(4),
            });
        }
    }
    let mut dispute_owner: HashMap<String, Vec<i64>> = HashMap::new();
    for r in &disputes {
        let account: i64 = r.get(0);
        if let Some(f) = out.get_mut(&account) {
            let d = DisputeFact {
                provider: r.get(1),
                id: r.get(2),
                payment_id: r.get(3),
                status: r.get(4),
                amount: r.get(5),
                currency: r.get(6),
            };
            dispute_owner.entry(d.id.clone()).or_default().push(account);
            f.disputes.push(d);
        }
    }
    for r in &checkouts {
        if let Some(f) = out.get_mut(&r.get::<_, i64>(0)) {
            f.checkouts.push(r.get(1));
        }
    }
    if !with_tasks {
        return Ok(out.into_values().collect());
    }
    let dispute_ids: Vec<&str> = dispute_owner.keys().map(String::as_str).collect();
    let tasks = c
        .query(TASKS, &[&ids, &dispute_ids])
        .await
        .map_err(db("read tasks"))?;
    for r in &tasks {
        let account: Option<i64> = r.get(0);
        let task = TaskFact {
            kind: r.get(1),
            source_id: r.get(2),
            due_at: r.get(3),
        };
        let mut owners: Vec<i64> = account.into_iter().collect();
        if task.kind == "dispute_response" {
            owners.extend(dispute_owner.get(&task.source_id).into_iter().flatten());
        }
        owners.sort_unstable();
        owners.dedup();
        for a in owners {
            if let Some(f) = out.get_mut(&a) {
                f.tasks.push(task.clone());
            }
        }
    }
    Ok(out.into_values().collect())
}

/// An account the application may have to be told about: what it was last told, the last
/// sequence number, and the account's facts now (read after the transaction's writes).
#[derive(Debug, Clone)]
pub struct AppSlot {
    /// The account.
    pub account_id: i64,
    /// Its last event's sequence number (0: none yet).
    pub seq: i64,
    /// What it was last told (`None`: never projected).
    pub told: Option<Projection>,
    /// The account now (its tasks left out: the projection does not read them).
    pub facts: AccountFacts,
}

/// An event for the application, written with its delivery.
#[derive(Debug, Clone)]
pub struct NewAppEvent {
    /// `evt_ps_<account>_<seq>`.
    pub id: String,
    /// The account.
    pub account_id: i64,
    /// Its sequence number.
    pub seq: i64,
    /// `payment.succeeded`, …
    pub kind: &'static str,
    /// The exact text that is signed and sent.
    pub body: String,
    /// The provider of the event that made the change.
    pub provider: Provider,
}

const PAYMENT_ACCOUNTS: &str = "select distinct p.provider, p.account_id \
    from unnest($1::text[], $2::text[]) as u(p, i) \
    join payments p on p.provider = u.p and p.id = u.i where p.account_id is not null";

const LOCK_PROJECTIONS: &str = "insert into app_projections (account_id) \
    select a from unnest($1::int8[]) as u(a) order by a on conflict do nothing";
const READ_PROJECTIONS: &str = "select account_id, seq, state from app_projections \
    where account_id = any($1) order by account_id for update";
const WRITE_PROJECTIONS: &str = "update app_projections p set seq = u.s, state = u.j \
    from unnest($1::int8[], $2::int8[], $3::jsonb[]) as u(a, s, j) where p.account_id = u.a";
const INSERT_APP_EVENTS: &str = "insert into app_events (id, account_id, seq, type, body) \
    select * from unnest($1::text[], $2::int8[], $3::int8[], $4::text[], $5::text[])";

impl Tx<'_> {
    /// Locks the projections of `accounts` (in id order, so two transactions never wait on
    /// each other in a cycle) and reads the accounts' facts as this transaction sees them.
    /// Until the transaction ends, no other one can tell these accounts anything.
    pub async fn app_slots(&self, accounts: &[i64]) -> Result<Vec<AppSlot>, StoreError> {
        let mut ids = accounts.to_vec();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.exec(LOCK_PROJECTIONS, &[&ids], "create app projections")
            .await?;
        let rows = self
            .0
            .query(READ_PROJECTIONS, &[&ids])
            .await
            .map_err(StoreError::db("lock app projections"))?;
        let mut told: HashMap<i64, (i64, Option<Projection>)> = HashMap::new();
        for r in &rows {
            let state: Option<serde_json::Value> = r.get(2);
            // A projection this release cannot read is treated as never sent: the account is
            // announced again rather than left silent.
            let state = state.and_then(|s| serde_json::from_value(s).ok());
            told.insert(r.get(0), (r.get(1), state));
        }
        let facts = facts_of(&*self.0, &ids, false).await?;
        Ok(facts
            .into_iter()
            .map(|f| {
                let (seq, state) = told.remove(&f.id).unwrap_or((0, None));
                AppSlot {
                    account_id: f.id,
                    seq,
                    told: state,
                    facts: f,
                }
            })
            .collect())
    }

    /// The accounts of the payments `(providers[i], payments[i])`, with their provider.
    pub async fn payment_accounts(
        &self,
        providers: &[&str],
        payments: &[&str],
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = self
            .0
            .query(PAYMENT_ACCOUNTS, &[&providers, &payments])
            .await
            .map_err(StoreError::db("read payment accounts"))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Keeps what each account was told, and writes the events with one delivery each to
    /// the application (when a dispatcher configured it).
    pub async fn record_app(
        &self,
        projections: &[(i64, i64, &Projection)],
        events: &[NewAppEvent],
    ) -> Result<(), StoreError> {
        if !projections.is_empty() {
            let ids: Vec<i64> = projections.iter().map(|p| p.0).collect();
            let seqs: Vec<i64> = projections.iter().map(|p| p.1).collect();
            let states: Vec<serde_json::Value> = projections
                .iter()
                .map(|p| serde_json::to_value(p.2).unwrap_or_default())
                .collect();
            self.exec(
                WRITE_PROJECTIONS,
                &[&ids, &seqs, &states],
                "keep app projections",
            )
            .await?;
        }
        if events.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        let accounts: Vec<i64> = events.iter().map(|e| e.account_id).collect();
        let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind).collect();
        let bodies: Vec<&str> = events.iter().map(|e| e.body.as_str()).collect();
        self.exec(
            INSERT_APP_EVENTS,
            &[&ids, &accounts, &seqs, &kinds, &bodies],
            "record app events",
        )
        .await?;
        let mut r = crate::billing::Routes::default();
        for e in events {
            for route in outbound::routes(e.provider, Intent::AppEvent, &e.id) {
                r.push(
                    route,
                    e.provider,
                    Intent::AppEvent,
                    &e.id,
                    Some(e.account_id),
                );
            }
        }
        if !r.destinations.is_empty() {
            self.write_routes(r).await?;
        }
        Ok(())
    }
}
