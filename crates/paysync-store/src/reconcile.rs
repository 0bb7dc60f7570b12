//! What reconciliation needs of the database: which of a provider's event ids we already hold,
//! the checkpoint of the last complete run, and the lock that keeps one reconciler per
//! provider across processes.

use std::collections::HashSet;

use time::OffsetDateTime;

use crate::{Store, StoreError};

/// Which of a page of provider event ids are already here.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KnownEvents {
    /// In the event log (applied or ignored).
    pub logged: HashSet<String>,
    /// Not in the event log but among the dead letters (received, failed; an operator's
    /// case, not a missed webhook).
    pub dead: HashSet<String>,
}

/// The last complete reconciliation of a provider.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Checkpoint {
    /// The end of the window it compared in full.
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
    /// When it finished.
    #[serde(with = "time::serde::rfc3339")]
    pub succeeded_at: OffsetDateTime,
}

/// A provider's checkpoint with the counts of the run that set it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CheckpointRow {
    /// The provider.
    pub provider: String,
    /// The checkpoint.
    #[serde(flatten)]
    pub checkpoint: Checkpoint,
    /// That run's report.
    pub report: serde_json::Value,
}

/// A session advisory lock on its own connection, outside the pool; released when dropped
/// (the connection closes) or when the connection dies.
pub struct SessionLock {
    _client: tokio_postgres::Client,
}

impl Store {
    /// Which of `ids` of `provider` the event log or the dead letters hold.
    pub async fn known_events(
        &self,
        provider: &str,
        ids: &[String],
    ) -> Result<KnownEvents, StoreError> {
        let conn = self.conn().await?;
        let rows = conn
            .0
            .query(
                "select event_id, true from event_log where provider = $1 and event_id = any($2) \
                 union all \
                 select event_id, false from dead_letters where provider = $1 and event_id = any($2)",
                &[&provider, &ids],
            )
            .await
            .map_err(StoreError::db("look up reconciled events"))?;
        let mut known = KnownEvents::default();
        for row in rows {
            let id: String = row.get(0);
            if row.get::<_, bool>(1) {
                known.dead.remove(&id);
                known.logged.insert(id);
            } else if !known.logged.contains(&id) {
                known.dead.insert(id);
            }
        }
        Ok(known)
    }

    /// The checkpoint of `provider`'s last complete reconciliation, if any.
    pub async fn reconcile_checkpoint(
        &self,
        provider: &str,
    ) -> Result<Option<Checkpoint>, StoreError> {
        let conn = self.conn().await?;
        let row = conn
            .0
            .query_opt(
                "select until_at, succeeded_at from reconcile_checkpoints where provider = $1",
                &[&provider],
            )
            .await
            .map_err(StoreError::db("read reconcile checkpoint"))?;
        Ok(row.map(|r| Checkpoint {
            until: r.get(0),
            succeeded_at: r.get(1),
        }))
    }

    /// Every provider's checkpoint, by provider.
    pub async fn reconcile_checkpoints(&self) -> Result<Vec<CheckpointRow>, StoreError> {
        let conn = self.conn().await?;
        let rows = conn
            .0
            .query(
                "select provider, until_at, succeeded_at, report from reconcile_checkpoints \
                 order by provider",
                &[],
            )
            .await
            .map_err(StoreError::db("list reconcile checkpoints"))?;
        Ok(rows
            .iter()
            .map(|r| CheckpointRow {
                provider: r.get(0),
                checkpoint: Checkpoint {
                    until: r.get(1),
                    succeeded_at: r.get(2),
                },
                report: r.get(3),
            })
            .collect())
    }

    /// Records a complete reconciliation of `provider` up to `until` (never moving the
    /// checkpoint back: an operator's run of an old window leaves it where it is).
    pub async fn record_reconcile(
        &self,
        provider: &str,
        until: OffsetDateTime,
        report: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        conn.0
            .execute(
                "insert into reconcile_checkpoints (provider, until_at, succeeded_at, report) \
                 values ($1, $2, now(), $3) \
                 on conflict (provider) do update set \
                   until_at = greatest(reconcile_checkpoints.until_at, excluded.until_at), \
                   succeeded_at = now(), report = excluded.report",
                &[&provider, &until, report],
            )
            .await
            .map_err(StoreError::db("record reconcile checkpoint"))?;
        Ok(())
    }

    /// Takes `provider`'s reconciler lock if no other process holds it.
    pub async fn try_reconcile_lock(
        &self,
        provider: &str,
    ) -> Result<Option<SessionLock>, StoreError> {
        let (client, connection) = self
            .pg
            .connect(self.tls.clone())
            .await
            .map_err(StoreError::db("open reconcile lock connection"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let key = format!("paysync.reconcile.{}.{provider}", self.schema);
        let row = client
            .query_one("select pg_try_advisory_lock(hashtext($1))", &[&key])
            .await
            .map_err(StoreError::db("take reconcile lock"))?;
        Ok(row
            .get::<_, bool>(0)
            .then_some(SessionLock { _client: client }))
    }
}
