//! The billing/CRM read model: account resolution, snapshot upserts under the order key, tasks
//! and outbox rows, and the facts an account view is derived from.
//!
//! Rule of thumb: every write is either guarded by the order key (snapshots) or insert-only
//! and idempotent (mappings, tasks, outbox), so any order of the same events converges.
//! Resolution of one provider customer is serialized with a transaction-scoped advisory lock.

use paysync_domain::billing::{
    AccountFacts, Channel, CustomerSnap, ObjectKind, OrderKey, SideEffect, Snap,
};
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

fn table(kind: ObjectKind) -> &'static str {
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

/// The snapshot upsert of `kind`, built once. One statement does both jobs: the order key
/// decides whether the snapshot's fields replace the stored ones, and a missing account or
/// customer link is filled in whatever the key says (so links never depend on order). A row
/// is only rewritten when one of the two changes something.
fn upsert_sql(kind: ObjectKind) -> &'static str {
    static BUILT: [std::sync::OnceLock<String>; 6] = [const { std::sync::OnceLock::new() }; 6];
    let slot = match kind {
        ObjectKind::Subscription => 0,
        ObjectKind::Invoice => 1,
        ObjectKind::Payment => 2,
        ObjectKind::Refund => 3,
        ObjectKind::Dispute => 4,
        ObjectKind::Checkout => 5,
    };
    BUILT[slot].get_or_init(|| {
        let t = table(kind);
        let extra = extra_columns(kind);
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
        let sets: Vec<String> = keyed
            .iter()
            .map(|c| format!("{c} = case when {newer} then excluded.{c} else {t}.{c} end"))
            .collect();
        let cols: Vec<&str> = extra.iter().map(|(n, _)| *n).collect();
        let vals: Vec<String> = (0..extra.len()).map(|i| format!("${}", 12 + i)).collect();
        format!(
            "insert into {t} (provider, id, account_id, customer_id, status, amount, currency, \
                              key_terminal, key_created, key_rank, key_event_id, {cols}) \
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, {vals}) \
             on conflict (provider, id) do update set \
                 account_id = coalesce({t}.account_id, excluded.account_id), \
                 customer_id = coalesce({t}.customer_id, excluded.customer_id), {sets} \
             where {newer} \
                 or ({t}.account_id is null and excluded.account_id is not null) \
                 or ({t}.customer_id is null and excluded.customer_id is not null)",
            cols = cols.join(", "),
            vals = vals.join(", "),
            sets = sets.join(", "),
        )
    })
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
                        Some(other) => Ok(Resolution::Conflict {
                            linked_account: account,
                            linked_ref: None,
                            hinted_ref: format!("{h} (already account {})", other.get::<_, i64>(0)),
                        }),
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

    async fn account_by_ref(&self, external_ref: &str) -> Result<(i64, bool), StoreError> {
        let row = self.query_one_cached(
                "with ins as (insert into accounts (external_ref) values ($1) \
                              on conflict (external_ref) do nothing returning id) \
                 select id, true from ins union all select id, false from accounts where external_ref = $1 \
                 limit 1",
                &[&external_ref], "find or create account").await?;
        Ok((row.get(0), row.get(1)))
    }

    /// Applies a customer snapshot. Deletion is monotone (a deleted customer stays deleted,
    /// history kept); email and name come from the newest snapshot that carries them (by
    /// created, then event id), so a bare `{id, deleted}` snapshot erases nothing.
    pub async fn apply_customer(
        &self,
        provider: &str,
        snap: &CustomerSnap,
        key: &OrderKey,
    ) -> Result<(), StoreError> {
        if snap.deleted {
            self.exec(
                    "update provider_customers set deleted = true where provider = $1 and customer_id = $2",
                    &[&provider, &snap.id], "mark customer deleted").await?;
        }
        if snap.email.is_some() || snap.name.is_some() {
            self.exec(
                    "update provider_customers set email = $3, name = $4, key_created = $5, key_event_id = $6 \
                     where provider = $1 and customer_id = $2 and ($5, $6) > (key_created, key_event_id)",
                    &[&provider, &snap.id, &snap.email, &snap.name, &key.created, &key.event_id], "apply customer").await?;
        }
        Ok(())
    }

    /// Applies an object snapshot if its key is greater than the stored one; links the row
    /// to the account and customer whenever they are known (order-independent).
    pub async fn apply_snap(
        &self,
        provider: &str,
        snap: &Snap,
        key: &OrderKey,
        account: Option<i64>,
        customer: Option<&str>,
    ) -> Result<(), StoreError> {
        let extra = extra_columns(snap.kind);
        let text_of = |f: Field| match f {
            Field::Parent => snap.parent.as_deref(),
            Field::Detail => snap.detail.as_deref(),
            Field::At => None,
        };
        // At most three kind-specific columns (disputes); the tests cover every kind.
        let extra_text: [Option<&str>; 3] =
            [0, 1, 2].map(|i| extra.get(i).and_then(|(_, f)| text_of(*f)));
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(11 + extra.len());
        params.extend_from_slice(&[
            &provider,
            &snap.id,
            &account,
            &customer,
            &snap.status,
            &snap.amount,
            &snap.currency,
            &key.terminal,
            &key.created,
            &key.rank,
            &key.event_id,
        ]);
        for (i, (_, field)) in extra.iter().enumerate() {
            match field {
                Field::At => params.push(&snap.at),
                _ => params.push(&extra_text[i]),
            }
        }
        self.exec(upsert_sql(snap.kind), &params, "apply snapshot")
            .await?;
        if snap.kind == ObjectKind::Payment && snap.refunded > 0 {
            // Cumulative: the largest amount any event reported.
            self.exec(
                    "update payments set amount_refunded = greatest(amount_refunded, $3) where provider = $1 and id = $2",
                    &[&provider, &snap.id, &snap.refunded], "record refunded amount").await?;
        }
        Ok(())
    }

    /// Records a task or outbox row (once per kind and source).
    pub async fn add_effect(
        &self,
        account: Option<i64>,
        effect: &SideEffect,
    ) -> Result<(), StoreError> {
        let sql = match effect.channel {
            Channel::Task => {
                "insert into tasks (account_id, kind, source_id, due_at) values ($1, $2, $3, $4) \
                 on conflict (kind, source_id) do update set account_id = coalesce(tasks.account_id, excluded.account_id), \
                     due_at = coalesce(tasks.due_at, excluded.due_at)"
            }
            Channel::Outbox => {
                "insert into outbox (account_id, kind, source_id) values ($1, $2, $3) \
                 on conflict (kind, source_id) do update set account_id = coalesce(outbox.account_id, excluded.account_id)"
            }
        };
        match effect.channel {
            Channel::Task => {
                self.exec(
                    sql,
                    &[&account, &effect.kind, &effect.source_id, &effect.due_at],
                    "record side effect",
                )
                .await?
            }
            Channel::Outbox => {
                self.exec(
                    sql,
                    &[&account, &effect.kind, &effect.source_id],
                    "record side effect",
                )
                .await?
            }
        };
        Ok(())
    }
}

impl Store {
    /// The facts of account `id`, or `None`.
    pub async fn account_facts(&self, id: i64) -> Result<Option<AccountFacts>, StoreError> {
        let conn = self.conn().await?;
        let c = &conn.0;
        let db = |what| StoreError::db(what);
        let Some(acct) = c
            .query_opt(
                "select id, external_ref from accounts where id = $1",
                &[&id],
            )
            .await
            .map_err(db("read account"))?
        else {
            return Ok(None);
        };
        let mut f = AccountFacts {
            id: acct.get(0),
            external_ref: acct.get(1),
            ..AccountFacts::default()
        };
        for r in c
            .query("select provider, customer_id, email, name, deleted from provider_customers where account_id = $1 order by provider, customer_id", &[&id])
            .await
            .map_err(db("read customers"))?
        {
            f.customers.push((r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)));
        }
        for r in c
            .query(
                "select id, status, plan from subscriptions where account_id = $1 order by id",
                &[&id],
            )
            .await
            .map_err(db("read subscriptions"))?
        {
            f.subscriptions.push((r.get(0), r.get(1), r.get(2)));
        }
        for r in c
            .query(
                "select id, status, billing_reason from invoices where account_id = $1 order by id",
                &[&id],
            )
            .await
            .map_err(db("read invoices"))?
        {
            f.invoices.push((r.get(0), r.get(1), r.get(2)));
        }
        for r in c
            .query("select id, status, amount, currency, amount_refunded from payments where account_id = $1 order by id", &[&id])
            .await
            .map_err(db("read payments"))?
        {
            f.payments.push((r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)));
        }
        let payment_ids: Vec<String> = f.payments.iter().map(|p| p.0.clone()).collect();
        for r in c
            .query("select payment_id, status, amount, currency from refunds where payment_id = any($1) order by id", &[&payment_ids])
            .await
            .map_err(db("read refunds"))?
        {
            f.refunds.push((r.get(0), r.get(1), r.get(2), r.get(3)));
        }
        for r in c
            .query("select id, payment_id, status, amount, currency from disputes where payment_id = any($1) or account_id = $2 order by id", &[&payment_ids, &id])
            .await
            .map_err(db("read disputes"))?
        {
            f.disputes.push((r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)));
        }
        for r in c
            .query(
                "select status from checkout_sessions where account_id = $1 order by id",
                &[&id],
            )
            .await
            .map_err(db("read checkouts"))?
        {
            f.checkouts.push(r.get(0));
        }
        let dispute_ids: Vec<String> = f.disputes.iter().map(|d| d.0.clone()).collect();
        for r in c
            .query(
                "select kind, source_id, due_at from tasks where account_id = $1 \
                    or (kind = 'dispute_response' and source_id = any($2)) order by kind, source_id",
                &[&id, &dispute_ids],
            )
            .await
            .map_err(db("read tasks"))?
        {
            f.tasks.push((r.get(0), r.get(1), r.get(2)));
        }
        Ok(Some(f))
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
            .query_one(
                "select count(*) from event_log where outcome = 'applied' and account_id is null",
                &[],
            )
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
