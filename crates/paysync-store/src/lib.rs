//! The only crate that writes SQL: the connection pool, the migration runner and the
//! repositories (event log, dead letters).
//!
//! Rule of thumb: every statement is a constant string prepared once per connection
//! (`prepare_cached`); callers get typed rows, never a `tokio_postgres::Row`. Errors say
//! whether they are transient ([`StoreError::is_transient`]) so the worker can decide between
//! a retry and the dead-letter queue without string matching.

mod app;
mod billing;
mod console;
mod dead_letters;
mod error;
mod events;
mod kpis;
mod lane;
mod migrate;
mod operators;
mod outbox;
mod reconcile;
mod settings;
pub mod tls;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};

pub use app::{AppSlot, NewAppEvent};
pub use billing::Resolution;
pub use console::{AccountHit, EventRate, EventSearch, Page};
pub use dead_letters::{DeadLetterRow, NewDeadLetter};
pub use error::StoreError;
pub use events::{EventFilter, EventRow, Inserted, NewEvent, Outcome, Replayed};
pub use kpis::{BusinessKpis, CheckoutCounts, EntitlementCounts, ProviderKpis};
pub use lane::{CHANNEL as OUTBOX_CHANNEL, LaneConnection};
pub use migrate::{MIGRATIONS, Migration};
pub use operators::{DeadLetterFilter, DeadLetterGroup, OperatorAction, PurgeState, ReplayEvent};
pub use outbox::{
    AttemptRecord, AttemptRow, Claimed, Completion, DeliveryContext, DeliveryFilter, DeliveryRow,
    DestinationControl, DestinationRow,
};
pub use paysync_domain::billing::AccountFacts;
pub use reconcile::{Checkpoint, CheckpointRow, KnownEvents, SessionLock};
pub use settings::{StoreSettings, StoreSettingsError, valid_schema};

/// The text of the statements the worker runs for an event, for the bench's pgbench scripts
/// (a test in `paysync-bench` fails when a script no longer matches them), and of the monitor's
/// unlinked count and the business KPIs, whose plans tests check.
pub mod statements {
    pub use crate::billing::{CUSTOMER_LINKS, INSERT_TASKS, UNLINKED_EVENTS, upsert_sql};
    pub use crate::events::{INSERT_EVENT, INSERT_EVENTS};
    pub use crate::kpis::BUSINESS_KPIS;
}

/// The database: a pool plus the schema it works in. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    schema: String,
    pg: tokio_postgres::Config,
    tls: tls::DatabaseTls,
}

/// A pooled connection. Returned to the pool on drop.
pub struct Conn(deadpool_postgres::Object);

/// An open transaction: handlers get it, so their state changes commit or roll back together
/// with the event-log row.
pub struct Tx<'a>(deadpool_postgres::Transaction<'a>);

/// Pool occupancy, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    /// Maximum connections.
    pub max_size: usize,
    /// Connections open now.
    pub size: usize,
    /// Idle connections.
    pub available: usize,
    /// Tasks waiting for a connection.
    pub waiting: usize,
}

impl Store {
    /// Builds the pool; connects lazily.
    pub fn new(settings: &StoreSettings) -> Result<Self, StoreError> {
        let (pg, tls) = settings.pg_config()?;
        let manager = Manager::from_config(
            pg.clone(),
            tls.clone(),
            ManagerConfig {
                // Fast: only checks the connection is not closed; a broken one fails its next
                // statement, which is classified transient and retried.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(settings.max_connections)
            .wait_timeout(Some(settings.wait_timeout))
            .create_timeout(Some(settings.create_timeout))
            .recycle_timeout(Some(settings.recycle_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Config(e.to_string()))?;
        Ok(Self {
            pool,
            schema: settings.schema.clone(),
            pg,
            tls,
        })
    }

    /// The schema this store works in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// A connection from the pool.
    pub async fn conn(&self) -> Result<Conn, StoreError> {
        Ok(Conn(self.pool.get().await?))
    }

    /// Checks the database answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        conn.0
            .simple_query("select 1")
            .await
            .map_err(StoreError::db("ping"))?;
        Ok(())
    }

    /// Pool occupancy now.
    pub fn pool_status(&self) -> PoolStatus {
        let s = self.pool.status();
        PoolStatus {
            max_size: s.max_size,
            size: s.size,
            available: s.available,
            waiting: s.waiting,
        }
    }

    /// Forgets every connection's prepared statements (after a migration changed tables).
    pub fn clear_statement_caches(&self) {
        self.pool.manager().statement_caches.clear();
    }
}

impl Conn {
    /// Starts a transaction.
    pub async fn transaction(&mut self) -> Result<Tx<'_>, StoreError> {
        Ok(Tx(self
            .0
            .transaction()
            .await
            .map_err(StoreError::db("begin"))?))
    }
}

impl Tx<'_> {
    /// Runs `sql` as a statement prepared once per connection (one round trip after the
    /// first use, instead of a parse round trip every time).
    async fn exec(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        what: &'static str,
    ) -> Result<u64, StoreError> {
        let stmt = self
            .0
            .prepare_cached(sql)
            .await
            .map_err(StoreError::db(what))?;
        self.0
            .execute(&stmt, params)
            .await
            .map_err(StoreError::db(what))
    }

    /// [`Tx::exec`] for a statement returning at most one row.
    async fn query_opt_cached(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        what: &'static str,
    ) -> Result<Option<tokio_postgres::Row>, StoreError> {
        let stmt = self
            .0
            .prepare_cached(sql)
            .await
            .map_err(StoreError::db(what))?;
        self.0
            .query_opt(&stmt, params)
            .await
            .map_err(StoreError::db(what))
    }

    /// [`Tx::exec`] for a statement returning exactly one row.
    async fn query_one_cached(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        what: &'static str,
    ) -> Result<tokio_postgres::Row, StoreError> {
        let stmt = self
            .0
            .prepare_cached(sql)
            .await
            .map_err(StoreError::db(what))?;
        self.0
            .query_one(&stmt, params)
            .await
            .map_err(StoreError::db(what))
    }

    /// Commits.
    pub async fn commit(self) -> Result<(), StoreError> {
        self.0.commit().await.map_err(StoreError::db("commit"))
    }

    /// Rolls back (also what dropping does).
    pub async fn rollback(self) -> Result<(), StoreError> {
        self.0.rollback().await.map_err(StoreError::db("rollback"))
    }
}
