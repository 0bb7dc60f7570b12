//! The billing/CRM read model: account resolution, snapshot upserts under the order key, tasks
//! and outbox rows, and the facts an account view is derived from.
//!
//! Rule of thumb: every write is either guarded by the order key (snapshots) or insert-only
//! and idempotent (mappings, tasks, outbox), so any order of the same events converges.
//! Creating or changing a provider customer's mapping is serialized with a
//! transaction-scoped advisory lock; reading an existing mapping needs none (a mapping is
//! never changed once made).
//!
//! A batch's writes arrive folded one per row ([`Writes`]) and go out as one `unnest`
//! statement per table, rows in key order (so concurrent batches lock rows in one order),
//! all sent at once on the connection.

use std::collections::HashMap;

use futures::future::{BoxFuture, FutureExt as _};
use paysync_domain::Provider;
use paysync_domain::billing::{AccountFacts, Channel, Intent, ObjectKind};
use paysync_domain::outbound;
use paysync_domain::writes::{EffectWrite, SnapWrite, Writes};
use tokio_postgres::types::ToSql;

use crate::{Store, StoreError, Tx};

/// How an event's customer maps to an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// This account (created now when `created`).
    Account {
        /// Account id.
        id: i64,
        /// Whether resolution created it.
        created: bool,
    },
    /// No customer and no hint: a guest payment, recorded unlinked.
    Unlinked,
    /// The customer is already linked to another external reference: a person must decide.
    Conflict {
        /// The account the customer is linked to.
        linked_account: i64,
        /// Its external reference.
        linked_ref: Option<String>,
        /// The reference this event hints at.
        hinted_ref: String,
    },
}

pub(crate) fn table(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Subscription => "subscriptions",
        ObjectKind::Invoice => "invoices",
        ObjectKind::Payment => "payments",
        ObjectKind::Refund => "refunds",
        ObjectKind::Dispute => "disputes",
        ObjectKind::Checkout => "checkout_sessions",
    }
}

/// The kind-specific columns and where their values come from in a [`Snap`].
fn extra_columns(kind: ObjectKind) -> &'static [(&'static str, Field)] {
    match kind {
        ObjectKind::Subscription => &[("plan", Field::Detail), ("current_period_end", Field::At)],
        ObjectKind::Invoice => &[
            ("subscription_id", Field::Parent),
            ("billing_reason", Field::Detail),
        ],
        ObjectKind::Payment => &[("failure_code", Field::Detail)],
        ObjectKind::Refund => &[("payment_id", Field::Parent)],
        ObjectKind::Dispute => &[
            ("payment_id", Field::Parent),
            ("reason", Field::Detail),
            ("evidence_due_by", Field::At),
        ],
        ObjectKind::Checkout => &[("subscription_id", Field::Parent), ("mode", Field::Detail)],
    }
}

/// Every object kind, in the order a batch writes them (one global order of row locks).
const KINDS: [ObjectKind; 6] = [
    ObjectKind::Subscription,
    ObjectKind::Invoice,
    ObjectKind::Payment,
    ObjectKind::Refund,
    ObjectKind::Dispute,
    ObjectKind::Checkout,
];

/// The count behind `paysync_events_unlinked`, which the worker's monitor runs every pass: it
/// reads the partial index `event_log_unlinked_idx` (migration 11), never the whole log.
pub const UNLINKED_EVENTS: &str =
    "select count(*) from event_log where outcome = 'applied' and account_id is null";

/// The snapshot upsert of `kind` for any number of rows (arrays, one element per row), built
/// once. One statement does both jobs: the order key decides whether a snapshot's fields
/// replace the stored ones, and a missing account or customer link is filled in whatever the
/// key says (so links never depend on order); for payments the refunded amount only grows. A
/// row is only rewritten when one of these changes something. Rows go in in key order; the
/// caller passes at most one write per row (a statement cannot update a row twice).
pub fn upsert_sql(kind: ObjectKind) -> &'static str {
    static BUILT: [std::sync::OnceLock<String>; 6] = [const { std::sync::OnceLock::new() }; 6];
    let slot = KINDS.iter().position(|k| *k == kind).unwrap_or_default();
    BUILT[slot].get_or_init(|| {
        let t = table(kind);
        let extra = extra_columns(kind);
        let refunds = kind == ObjectKind::Payment;
        let newer = format!(
            "(excluded.key_terminal, excluded.key_created, excluded.key_rank, excluded.key_event_id) \
             > ({t}.key_terminal, {t}.key_created, {t}.key_rank, {t}.key_event_id)"
        );
        let keyed: Vec<&str> = [
            "status",
            "amount",
            "currency",
            "key_terminal",
            "key_created",
            "key_rank",
            "key_event_id",
        ]
        .into_iter()
        .chain(extra.iter().map(|(n, _)| *n))
        .collect();
        let mut sets: Vec<String> = keyed
            .iter()
            .map(|c| format!("{c} = case when {newer} then excluded.{c} else {t}.{c} end"))
            .collect();
        let mut cols: Vec<&str> = extra.iter().map(|(n, _)| *n).collect();
        let mut arrays: Vec<String> = extra
            .iter()
            .enumerate()
            .map(|(i, (_, f))| {
                let ty = match f {
                    Field::At => "int8",
                    Field::Parent | Field::Detail => "text",
                };
                format!("${}::{ty}[]", 12 + i)
            })
            .collect();
        let mut names: Vec<String> = (0..extra.len()).map(|i| format!("x{i}")).collect();
        // When the state was first learned (the KPIs' windows): set once, whatever the order.
        sets.push(format!(
            "settled_at = coalesce({t}.settled_at, case when {newer} and excluded.key_terminal \
             then now() end)"
        ));
        let mut guard = String::new();
        let mut computed = String::new();
        if refunds {
            cols.push("amount_refunded");
            arrays.push(format!("${}::int8[]", 12 + extra.len()));
            names.push("r".into());
            cols.push("failed_at");
            computed = ", case when s = 'failed' then now() end".into();
            sets.push(format!(
                "amount_refunded = greatest({t}.amount_refunded, excluded.amount_refunded)"
            ));
            sets.push(format!(
                "failed_at = coalesce({t}.failed_at, case when excluded.status = 'failed' \
                 then now() end)"
            ));
            guard = format!(
                " or {t}.amount_refunded < excluded.amount_refunded \
                 or ({t}.failed_at is null and excluded.status = 'failed')"
            );
        }
        format!(
            "insert into {t} (provider, id, account_id, customer_id, status, amount, currency, \
                              key_terminal, key_created, key_rank, key_event_id, settled_at, \
                              {cols}) \
             select p, i, a, c, s, m, cur, kt, kc, kr, ke, case when kt then now() end, {names}{computed} \
             from unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[], $6::int8[], \
                         $7::text[], $8::bool[], $9::int8[], $10::int2[], $11::text[], {arrays}) \
                  as u(p, i, a, c, s, m, cur, kt, kc, kr, ke, {names}) \
             order by p, i \
             on conflict (provider, id) do update set \
                 account_id = coalesce({t}.account_id, excluded.account_id), \
                 customer_id = coalesce({t}.customer_id, excluded.customer_id), {sets} \
             where {newer} \
                 or ({t}.account_id is null and excluded.account_id is not null) \
                 or ({t}.customer_id is null and excluded.customer_id is not null){guard}",
            cols = cols.join(", "),
            names = names.join(", "),
            arrays = arrays.join(", "),
            sets = sets.join(", "),
        )
    })
}

/// Contact details and deletion of provider customers, one row per element. Deletion is
/// sticky; email and name come with their key and replace the stored ones only under a
/// greater key, so a bare `{id, deleted}` snapshot erases nothing. Only existing mappings are
/// touched (resolution made them earlier in the transaction).
const UPDATE_CUSTOMERS: &str = "update provider_customers pc set \
        deleted = pc.deleted or u.d, \
        email = case when u.h and (u.kc, u.ke) > (pc.key_created, pc.key_event_id) then u.em else pc.email end, \
        name = case when u.h and (u.kc, u.ke) > (pc.key_created, pc.key_event_id) then u.nm else pc.name end, \
        key_created = case when u.h and (u.kc, u.ke) > (pc.key_created, pc.key_event_id) then u.kc else pc.key_created end, \
        key_event_id = case when u.h and (u.kc, u.ke) > (pc.key_created, pc.key_event_id) then u.ke else pc.key_event_id end \
    from unnest($1::text[], $2::text[], $3::bool[], $4::bool[], $5::int8[], $6::text[], $7::text[], $8::text[]) \
         as u(p, c, d, h, kc, ke, em, nm) \
    where pc.provider = u.p and pc.customer_id = u.c \
      and ((u.d and not pc.deleted) or (u.h and (u.kc, u.ke) > (pc.key_created, pc.key_event_id)))";

/// Tasks, once per provider, kind and source: a later write only fills in a missing account or
/// due date.
pub const INSERT_TASKS: &str = "insert into tasks (account_id, kind, source_id, due_at, provider) \
    select a, k, s, d, p from unnest($1::int8[], $2::text[], $3::text[], $4::int8[], $5::text[]) \
        as u(a, k, s, d, p) \
    order by p, k, s \
    on conflict (provider, kind, source_id) do update set \
        account_id = coalesce(tasks.account_id, excluded.account_id), \
        due_at = coalesce(tasks.due_at, excluded.due_at) \
    where (tasks.account_id is null and excluded.account_id is not null) \
       or (tasks.due_at is null and excluded.due_at is not null)";

/// Outbox rows, once per provider, kind and source: a later write only fills in a missing
/// account and the notice's missing fields (the stored ones win).
pub const INSERT_OUTBOX: &str = "insert into outbox (account_id, kind, source_id, provider, notice) \
    select a, k, s, p, n from unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::jsonb[]) \
        as u(a, k, s, p, n) \
    order by p, k, s \
    on conflict (provider, kind, source_id) do update set \
        account_id = coalesce(outbox.account_id, excluded.account_id), \
        notice = excluded.notice || outbox.notice \
    where (outbox.account_id is null and excluded.account_id is not null) \
       or not (outbox.notice ?& array(select jsonb_object_keys(excluded.notice)))";

/// The deliveries of a batch's intents, for the destinations a dispatcher configured; once per
/// destination and key. Rows go in in one total order (every transaction locks keys in the
/// same order); shorter keys first, so an account's application events
/// (`app.webhook:evt_ps_<account>_<seq>`) get ids in sequence order, which the ordered claim
/// follows. Wakes the dispatchers' lanes of the destinations that got new work (a
/// notification is sent at commit, once per destination).
pub const INSERT_DELIVERIES: &str = "with ins as ( \
    insert into outbox_deliveries \
        (destination, operation, idempotency_key, provider, intent, source_id, account_id, \
         next_attempt_at) \
    select u.d, u.o, u.k, u.p, u.i, u.s, u.a, now() + od.hold_ms * interval '1 millisecond' \
    from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int8[]) \
        as u(d, o, k, p, i, s, a) \
    join outbox_destinations od on od.name = u.d and od.configured \
    order by u.d, length(u.k), u.k \
    on conflict (destination, idempotency_key) do nothing \
    returning destination) \
  select pg_notify('paysync_outbox', current_schema() || '.' || d) from (select distinct destination as d from ins) x";

/// The accounts (and their external references) the given customers are mapped to: one
/// primary-key lookup per customer. (Written as a lateral lookup on purpose: with `= any()`
/// or a plain join, a table without statistics yet got a plan that scanned every customer of
/// the provider for each batch.)
pub const CUSTOMER_LINKS: &str = "select u.c, m.account_id, a.external_ref \
    from unnest($2::text[]) as u(c) \
    cross join lateral (select pc.account_id from provider_customers pc \
                        where pc.provider = $1 and pc.customer_id = u.c limit 1) as m \
    join accounts a on a.id = m.account_id";

/// The deliveries a batch's intents call for, as the columns of [`INSERT_DELIVERIES`].
#[derive(Default)]
pub(crate) struct Routes<'w> {
    pub(crate) destinations: Vec<&'static str>,
    operations: Vec<&'static str>,
    keys: Vec<String>,
    providers: Vec<&'static str>,
    intents: Vec<&'static str>,
    sources: Vec<&'w str>,
    accounts: Vec<Option<i64>>,
}

impl<'w> Routes<'w> {
    fn of(writes: &'w Writes) -> Self {
        let mut r = Routes::default();
        for channel in [Channel::Task, Channel::Outbox] {
            for w in writes.effects(channel) {
                let e = &w.effect;
                for route in outbound::routes(w.provider, e.intent, &e.source_id) {
                    r.push(route, w.provider, e.intent, &e.source_id, w.account);
                }
            }
        }
        r
    }

    pub(crate) fn push(
        &mut self,
        route: outbound::Route,
        provider: Provider,
        intent: Intent,
        source: &'w str,
        account: Option<i64>,
    ) {
        self.destinations.push(route.destination.as_str());
        self.operations.push(route.operation.as_str());
        self.keys.push(route.key);
        self.providers.push(provider.as_str());
        self.intents.push(intent.as_str());
        self.sources.push(source);
        self.accounts.push(account);
    }
}

#[derive(Clone, Copy)]
enum Field {
    Parent,
    Detail,
    At,
}

impl Tx<'_> {
    /// Resolves the account of `customer` (with our `hint`, if the event carried one):
    /// existing mapping → hint (find or create the account by external reference) → a new
    /// account for the customer. Never by email. Creates the mapping.
    pub async fn resolve_account(
        &self,
        provider: &str,
        customer: Option<&str>,
        hint: Option<&str>,
    ) -> Result<Resolution, StoreError> {
        let Some(customer) = customer else {
            return match hint {
                Some(h) => {
                    let (id, created) = self.account_by_ref(h).await?;
                    Ok(Resolution::Account { id, created })
                }
                None => Ok(Resolution::Unlinked),
            };
        };
        // One resolution per customer at a time (concurrent workers, same customer).
        self.exec(
            "select pg_advisory_xact_lock(hashtext('paysync-customer:' || $1 || ':' || $2))",
            &[&provider, &customer],
            "resolve account",
        )
        .await?;
        let mapped = self.query_opt_cached(
                "select c.account_id, a.external_ref from provider_customers c \
                 join accounts a on a.id = c.account_id where c.provider = $1 and c.customer_id = $2",
                &[&provider, &customer], "read customer mapping").await?;
        if let Some(row) = mapped {
            let (account, linked_ref): (i64, Option<String>) = (row.get(0), row.get(1));
            return match (hint, linked_ref) {
                (None, _) => Ok(Resolution::Account {
                    id: account,
                    created: false,
                }),
                (Some(h), Some(r)) if r == h => Ok(Resolution::Account {
                    id: account,
                    created: false,
                }),
                (Some(h), None) => {
                    // Adopt the reference unless another account already has it.
                    let taken = self
                        .query_opt_cached(
                            "select id from accounts where external_ref = $1",
                            &[&h],
                            "read account by reference",
                        )
                        .await?;
                    match taken {
                        // The customer's account was made for it alone (no reference yet),
                        // and another provider's customer already brought the reference: the
                        // same person, met first through a provider that named no reference.
                        // The unreferenced account merges into the referenced one, so the
                        // result does not depend on which provider's event came first.
                        Some(other) => {
                            let target: i64 = other.get(0);
                            self.merge_account(account, target).await?;
                            Ok(Resolution::Account {
                                id: target,
                                created: false,
                            })
                        }
                        None => {
                            self.exec(
                                "update accounts set external_ref = $2 where id = $1",
                                &[&account, &h],
                                "adopt account reference",
                            )
                            .await?;
                            Ok(Resolution::Account {
                                id: account,
                                created: false,
                            })
                        }
                    }
                }
                (Some(h), Some(r)) => Ok(Resolution::Conflict {
                    linked_account: account,
                    linked_ref: Some(r),
                    hinted_ref: h.to_owned(),
                }),
            };
        }
        let (account, created) = match hint {
            Some(h) => self.account_by_ref(h).await?,
            None => {
                let row = self
                    .query_one_cached(
                        "insert into accounts default values returning id",
                        &[],
                        "create account",
                    )
                    .await?;
                (row.get(0), true)
            }
        };
        self.exec(
                "insert into provider_customers (provider, customer_id, account_id) values ($1, $2, $3) \
                 on conflict do nothing",
                &[&provider, &customer, &account], "map customer").await?;
        Ok(Resolution::Account {
            id: account,
            created,
        })
    }

    /// Moves everything of account `from` (which has no external reference) to `into`, then
    /// deletes `from`.
    async fn merge_account(&self, from: i64, into: i64) -> Result<(), StoreError> {
        for table in [
            "provider_customers",
            "subscriptions",
            "invoices",
            "payments",
            "refunds",
            "disputes",
            "checkout_sessions",
            "tasks",
            "outbox",
            "outbox_deliveries",
            "event_log",
        ] {
            self.exec(
                &format!("update {table} set account_id = $2 where account_id = $1"),
                &[&from, &into],
                "merge account",
            )
            .await?;
        }
        // The merged account is projected afresh on its next change: what was told under
        // the old id is not carried over (docs/app-webhooks.md).
        self.exec(
            "delete from app_projections where account_id = $1",
            &[&from],
            "merge account",
        )
        .await?;
        self.exec(
            "delete from accounts where id = $1 and external_ref is null",
            &[&from],
            "merge account",
        )
        .await?;
        tracing::info!(
            from,
            into,
            "merged an account without reference into the referenced one"
        );
        Ok(())
    }

    async fn account_by_ref(&self, external_ref: &str) -> Result<(i64, bool), StoreError> {
        let row = self.query_one_cached(
                "with ins as (insert into accounts (external_ref) values ($1) \
                              on conflict (external_ref) do nothing returning id) \
                 select id, true from ins union all select id, false from accounts where external_ref = $1 \
                 limit 1",
                &[&external_ref], "find or create account").await?;
        Ok((row.get(0), row.get(1)))
    }

    /// The existing mappings of `customers` of `provider`: customer → (account, its external
    /// reference). Read without a lock: a mapping, once made, never changes.
    pub async fn customer_links(
        &self,
        provider: &str,
        customers: &[&str],
    ) -> Result<HashMap<String, (i64, Option<String>)>, StoreError> {
        if customers.is_empty() {
            return Ok(HashMap::new());
        }
        let stmt = self
            .0
            .prepare_cached(CUSTOMER_LINKS)
            .await
            .map_err(StoreError::db("read customer mappings"))?;
        let rows = self
            .0
            .query(&stmt, &[&provider, &customers])
            .await
            .map_err(StoreError::db("read customer mappings"))?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2))))
            .collect())
    }

    /// Writes a batch's folded state changes: one statement per table that has rows, sent
    /// together, in one fixed order of tables.
    pub async fn write(&self, writes: &Writes) -> Result<(), StoreError> {
        let mut statements: Vec<BoxFuture<'_, Result<u64, StoreError>>> = Vec::new();
        if !writes.customers().is_empty() {
            statements.push(self.write_customers(writes).boxed());
        }
        for kind in KINDS {
            let rows: Vec<&SnapWrite> = writes.snaps(kind).collect();
            if !rows.is_empty() {
                statements.push(self.write_snaps(kind, rows).boxed());
            }
        }
        for channel in [Channel::Task, Channel::Outbox] {
            let rows: Vec<&EffectWrite> = writes.effects(channel).collect();
            if !rows.is_empty() {
                statements.push(self.write_effects(channel, rows).boxed());
            }
        }
        let routes = Routes::of(writes);
        if !routes.destinations.is_empty() {
            statements.push(self.write_deliveries(routes).boxed());
        }
        futures::future::try_join_all(statements).await?;
        Ok(())
    }

    async fn write_customers(&self, writes: &Writes) -> Result<u64, StoreError> {
        let mut rows: Vec<_> = writes.customers().iter().collect();
        rows.sort_by(|a, b| (a.provider.as_str(), &a.id).cmp(&(b.provider.as_str(), &b.id)));
        let providers: Vec<&str> = rows.iter().map(|w| w.provider.as_str()).collect();
        let ids: Vec<&str> = rows.iter().map(|w| w.id.as_str()).collect();
        let deleted: Vec<bool> = rows.iter().map(|w| w.deleted).collect();
        let has: Vec<bool> = rows.iter().map(|w| w.contact.is_some()).collect();
        let created: Vec<i64> = rows
            .iter()
            .map(|w| w.contact.as_ref().map_or(0, |c| c.created))
            .collect();
        let events: Vec<&str> = rows
            .iter()
            .map(|w| w.contact.as_ref().map_or("", |c| c.event_id.as_str()))
            .collect();
        let emails: Vec<Option<&str>> = rows
            .iter()
            .map(|w| w.contact.as_ref().and_then(|c| c.email.as_deref()))
            .collect();
        let names: Vec<Option<&str>> = rows
            .iter()
            .map(|w| w.contact.as_ref().and_then(|c| c.name.as_deref()))
            .collect();
        self.exec(
            UPDATE_CUSTOMERS,
            &[
                &providers, &ids, &deleted, &has, &created, &events, &emails, &names,
            ],
            "apply customers",
        )
        .await
    }

    async fn write_snaps(
        &self,
        kind: ObjectKind,
        rows: Vec<&SnapWrite>,
    ) -> Result<u64, StoreError> {
        let n = rows.len();
        let mut providers = Vec::with_capacity(n);
        let mut ids = Vec::with_capacity(n);
        let mut accounts = Vec::with_capacity(n);
        let mut customers = Vec::with_capacity(n);
        let mut statuses = Vec::with_capacity(n);
        let mut amounts = Vec::with_capacity(n);
        let mut currencies = Vec::with_capacity(n);
        let mut terminal = Vec::with_capacity(n);
        let mut created = Vec::with_capacity(n);
        let mut rank = Vec::with_capacity(n);
        let mut events = Vec::with_capacity(n);
        let mut refunded = Vec::with_capacity(n);
        let extra = extra_columns(kind);
        // At most three kind-specific columns (disputes); the tests cover every kind.
        let mut texts: [Vec<Option<&str>>; 3] = Default::default();
        let mut ats: [Vec<Option<i64>>; 3] = Default::default();
        for w in rows {
            let s = &w.snap;
            providers.push(w.provider.as_str());
            ids.push(s.id.as_str());
            accounts.push(w.account);
            customers.push(w.customer.as_deref());
            statuses.push(s.status.as_str());
            amounts.push(s.amount);
            currencies.push(s.currency.as_str());
            terminal.push(w.key.terminal);
            created.push(w.key.created);
            rank.push(w.key.rank);
            events.push(w.key.event_id.as_str());
            refunded.push(s.refunded);
            for (i, (_, field)) in extra.iter().enumerate() {
                match field {
                    Field::Parent => texts[i].push(s.parent.as_deref()),
                    Field::Detail => texts[i].push(s.detail.as_deref()),
                    Field::At => ats[i].push(s.at),
                }
            }
        }
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![
            &providers,
            &ids,
            &accounts,
            &customers,
            &statuses,
            &amounts,
            &currencies,
            &terminal,
            &created,
            &rank,
            &events,
        ];
        for (i, (_, field)) in extra.iter().enumerate() {
            match field {
                Field::At => params.push(&ats[i]),
                _ => params.push(&texts[i]),
            }
        }
        if kind == ObjectKind::Payment {
            params.push(&refunded);
        }
        self.exec(upsert_sql(kind), &params, "apply snapshots")
            .await
    }

    async fn write_effects(
        &self,
        channel: Channel,
        rows: Vec<&EffectWrite>,
    ) -> Result<u64, StoreError> {
        let accounts: Vec<Option<i64>> = rows.iter().map(|w| w.account).collect();
        let kinds: Vec<&str> = rows.iter().map(|w| w.effect.intent.as_str()).collect();
        let sources: Vec<&str> = rows.iter().map(|w| w.effect.source_id.as_str()).collect();
        let providers: Vec<&str> = rows.iter().map(|w| w.provider.as_str()).collect();
        match channel {
            Channel::Task => {
                let due: Vec<Option<i64>> = rows.iter().map(|w| w.effect.due_at).collect();
                self.exec(
                    INSERT_TASKS,
                    &[&accounts, &kinds, &sources, &due, &providers],
                    "record tasks",
                )
                .await
            }
            Channel::Outbox => {
                // A struct of optional strings and numbers always encodes.
                let notices: Vec<serde_json::Value> = rows
                    .iter()
                    .map(|w| serde_json::to_value(&w.effect.notice).unwrap_or_default())
                    .collect();
                self.exec(
                    INSERT_OUTBOX,
                    &[&accounts, &kinds, &sources, &providers, &notices],
                    "record outbox messages",
                )
                .await
            }
            // Application events are made after the writes, from the projection
            // (`Tx::record_app`); a mapper never asks for one.
            Channel::App => Ok(0),
        }
    }

    pub(crate) async fn write_routes(&self, r: Routes<'_>) -> Result<u64, StoreError> {
        self.write_deliveries(r).await
    }

    async fn write_deliveries(&self, r: Routes<'_>) -> Result<u64, StoreError> {
        self.exec(
            INSERT_DELIVERIES,
            &[
                &r.destinations,
                &r.operations,
                &r.keys,
                &r.providers,
                &r.intents,
                &r.sources,
                &r.accounts,
            ],
            "record deliveries",
        )
        .await
    }
}

impl Store {
    /// The facts of account `id`, or `None`.
    pub async fn account_facts(&self, id: i64) -> Result<Option<AccountFacts>, StoreError> {
        let conn = self.conn().await?;
        let client: &tokio_postgres::Client = &conn.0;
        Ok(crate::app::facts_of(client, &[id], true).await?.pop())
    }

    /// The account with this external reference, or linked to this provider customer.
    pub async fn find_account(
        &self,
        external_ref: Option<&str>,
        customer: Option<(&str, &str)>,
    ) -> Result<Option<i64>, StoreError> {
        let conn = self.conn().await?;
        let row = match (external_ref, customer) {
            (Some(r), _) => conn.0.query_opt("select id from accounts where external_ref = $1", &[&r]).await,
            (None, Some((p, cus))) => {
                conn.0
                    .query_opt("select account_id from provider_customers where provider = $1 and customer_id = $2", &[&p, &cus])
                    .await
            }
            (None, None) => return Ok(None),
        };
        Ok(row
            .map_err(StoreError::db("find account"))?
            .map(|r| r.get(0)))
    }

    /// Applied events that belong to no account (guest payments, objects without a customer).
    pub async fn unlinked_event_count(&self) -> Result<i64, StoreError> {
        let conn = self.conn().await?;
        let row = conn
            .0
            .query_one(UNLINKED_EVENTS, &[])
            .await
            .map_err(StoreError::db("count unlinked events"))?;
        Ok(row.get(0))
    }

    /// Account ids, oldest first.
    pub async fn account_ids(&self, limit: i64) -> Result<Vec<i64>, StoreError> {
        let conn = self.conn().await?;
        let rows = conn
            .0
            .query(
                "select id from accounts order by id limit $1",
                &[&limit.max(0)],
            )
            .await
            .map_err(StoreError::db("list accounts"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}
