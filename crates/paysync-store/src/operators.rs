//! What operators read and change: dead-letter groups and selections, state changes, purges,
//! the audit trail, and events selected for replay.

use time::OffsetDateTime;

use crate::{DeadLetterRow, Store, StoreError};

/// Open dead letters sharing a fingerprint.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetterGroup {
    /// The fingerprint (kind + code site digest).
    pub fingerprint: String,
    /// The error kind.
    pub error_kind: String,
    /// A readable title: the kind and the first line of the oldest letter's error.
    pub title: String,
    /// Open letters in the group.
    pub count: i64,
    /// Earliest first failure.
    pub first_failed_at: OffsetDateTime,
    /// Latest last failure.
    pub last_failed_at: OffsetDateTime,
    /// Event types involved.
    pub event_types: Vec<String>,
}

/// Which dead letters a listing shows.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    /// Only this fingerprint.
    pub group: Option<String>,
    /// Only this event type.
    pub event_type: Option<String>,
    /// Only letters whose last failure is at or after this time.
    pub since: Option<OffsetDateTime>,
    /// `open` (the default view), `retried` or `archived`.
    pub state: Option<String>,
    /// At most this many (oldest first).
    pub limit: i64,
}

/// Which dead letters a purge deletes: never open ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeState {
    /// Archived letters, by the time they were archived.
    Archived,
    /// Letters retried (their copy was confirmed back in the work queue), by the time of the
    /// retry. A copy that fails again comes back as a dead letter of its own.
    Retried,
}

impl PurgeState {
    /// The state's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Archived => "archived",
            Self::Retried => "retried",
        }
    }
}

/// An operator action for the audit trail.
#[derive(Debug, Clone, PartialEq)]
pub struct OperatorAction {
    /// Row id.
    pub id: i64,
    /// When.
    pub at: OffsetDateTime,
    /// Who (`cli:<user>`, `admin-api`).
    pub actor: String,
    /// What (`dlq.retry`, `dlq.archive`, …).
    pub action: String,
    /// On what (ids, a group, `all`).
    pub target: String,
    /// How many items.
    pub affected: i32,
    /// Whether it only showed what it would do.
    pub dry_run: bool,
    /// Anything else worth keeping.
    pub details: serde_json::Value,
}

/// A logged event to replay.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayEvent {
    /// Provider.
    pub provider: String,
    /// Event id.
    pub event_id: String,
    /// Event type.
    pub event_type: String,
    /// Provider `created`.
    pub created: i64,
    /// Live mode.
    pub livemode: bool,
    /// API version.
    pub api_version: Option<String>,
    /// Receipt time, unix ms.
    pub received_at_ms: i64,
    /// The stored payload as JSON text.
    pub payload: String,
}

pub(crate) const LETTER_COLUMNS: &str = "id, event_id, event_type, error_kind, error_chain, fingerprint, attempts, \
    first_failed_at, last_failed_at, state, redrives, routing_key, headers, body";

/// An `operator_actions` row read as `id, at, actor, action, target, affected, dry_run, details`.
pub(crate) fn action(r: &tokio_postgres::Row) -> OperatorAction {
    OperatorAction {
        id: r.get(0),
        at: r.get(1),
        actor: r.get(2),
        action: r.get(3),
        target: r.get(4),
        affected: r.get(5),
        dry_run: r.get(6),
        details: r.get(7),
    }
}

pub(crate) fn letter(r: &tokio_postgres::Row) -> DeadLetterRow {
    DeadLetterRow {
        id: r.get(0),
        event_id: r.get(1),
        event_type: r.get(2),
        error_kind: r.get(3),
        error_chain: r.get(4),
        fingerprint: r.get(5),
        attempts: r.get(6),
        first_failed_at: r.get(7),
        last_failed_at: r.get(8),
        state: r.get(9),
        redrives: r.get(10),
        routing_key: r.get(11),
        headers: r.get(12),
        body: r.get(13),
    }
}

impl Store {
    /// Open dead letters grouped by fingerprint, largest group first.
    pub async fn dead_letter_groups(&self) -> Result<Vec<DeadLetterGroup>, StoreError> {
        self.groups_where("", &[]).await
    }

    /// The open dead letters of one fingerprint as a group, or `None` when none is open.
    pub async fn dead_letter_group(
        &self,
        fingerprint: &str,
    ) -> Result<Option<DeadLetterGroup>, StoreError> {
        let groups = self
            .groups_where("and fingerprint = $1", &[&fingerprint])
            .await?;
        Ok(groups.into_iter().next())
    }

    /// The groups of the open letters that `filter` (an `and …` clause) keeps. The title is cut
    /// from the oldest letter's chain only, so the cost is one pass over the group's rows.
    async fn groups_where(
        &self,
        filter: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<DeadLetterGroup>, StoreError> {
        let conn = self.conn().await?;
        let sql = format!(
            "with g as ( \
               select fingerprint, min(error_kind) as kind, min(id) as first_id, count(*) as n, \
                      min(first_failed_at) as first_at, max(last_failed_at) as last_at, \
                      array_remove(array_agg(distinct event_type), null) as types \
               from dead_letters where state = 'open' {filter} group by fingerprint) \
             select g.fingerprint, g.kind, \
                    g.kind || ': ' || split_part(regexp_replace(d.error_chain, \
                        '^retries exhausted[^\\n]*\\n', ''), E'\\n', 1), \
                    g.n, g.first_at, g.last_at, g.types \
             from g join dead_letters d on d.id = g.first_id \
             order by g.n desc, g.fingerprint"
        );
        let rows = conn
            .0
            .query(&sql, params)
            .await
            .map_err(StoreError::db("group dead letters"))?;
        Ok(rows
            .iter()
            .map(|r| DeadLetterGroup {
                fingerprint: r.get(0),
                error_kind: r.get(1),
                title: r.get(2),
                count: r.get(3),
                first_failed_at: r.get(4),
                last_failed_at: r.get(5),
                event_types: r.get(6),
            })
            .collect())
    }

    /// Dead letters matching `filter` (state `open` unless given), oldest first.
    pub async fn dead_letter_list(
        &self,
        filter: &DeadLetterFilter,
    ) -> Result<Vec<DeadLetterRow>, StoreError> {
        let conn = self.conn().await?;
        let state = filter.state.clone().unwrap_or_else(|| "open".into());
        let sql = format!(
            "select {LETTER_COLUMNS} from dead_letters \
             where state = $1 and ($2::text is null or fingerprint = $2) \
               and ($3::text is null or event_type = $3) \
               and ($4::timestamptz is null or last_failed_at >= $4) \
             order by id limit $5"
        );
        let rows = conn
            .0
            .query(
                &sql,
                &[
                    &state,
                    &filter.group,
                    &filter.event_type,
                    &filter.since,
                    &filter.limit.max(0),
                ],
            )
            .await
            .map_err(StoreError::db("list dead letters"))?;
        Ok(rows.iter().map(letter).collect())
    }

    /// One dead letter.
    pub async fn dead_letter(&self, id: i64) -> Result<Option<DeadLetterRow>, StoreError> {
        let conn = self.conn().await?;
        let sql = format!("select {LETTER_COLUMNS} from dead_letters where id = $1");
        let row = conn
            .0
            .query_opt(&sql, &[&id])
            .await
            .map_err(StoreError::db("show dead letter"))?;
        Ok(row.as_ref().map(letter))
    }

    /// Ids of open dead letters: the given ones, a group, or all.
    pub async fn open_dead_letter_ids(
        &self,
        ids: Option<&[i64]>,
        group: Option<&str>,
    ) -> Result<Vec<i64>, StoreError> {
        let conn = self.conn().await?;
        let rows = conn
            .0
            .query(
                "select id from dead_letters where state = 'open' \
                 and ($1::bigint[] is null or id = any($1)) and ($2::text is null or fingerprint = $2) \
                 order by id",
                &[&ids.map(<[i64]>::to_vec), &group],
            )
            .await
            .map_err(StoreError::db("select dead letters"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Marks an open dead letter retried (after its republish was confirmed). `false` when it
    /// was no longer open (someone else retried or archived it).
    pub async fn mark_dead_letter_retried(&self, id: i64) -> Result<bool, StoreError> {
        let conn = self.conn().await?;
        let n = conn
            .0
            .execute(
                "update dead_letters set state = 'retried', retried_at = now() where id = $1 and state = 'open'",
                &[&id],
            )
            .await
            .map_err(StoreError::db("mark dead letter retried"))?;
        Ok(n == 1)
    }

    /// Archives open dead letters; returns how many changed.
    pub async fn archive_dead_letters(&self, ids: &[i64]) -> Result<u64, StoreError> {
        let conn = self.conn().await?;
        conn.0
            .execute(
                "update dead_letters set state = 'archived', archived_at = now() \
                 where state = 'open' and id = any($1)",
                &[&ids.to_vec()],
            )
            .await
            .map_err(StoreError::db("archive dead letters"))
    }

    /// Letters in `state` that entered it more than `older_than_secs` ago: counted, and
    /// deleted only when `delete` is true.
    pub async fn purge_dead_letters(
        &self,
        state: PurgeState,
        older_than_secs: i64,
        delete: bool,
    ) -> Result<u64, StoreError> {
        let conn = self.conn().await?;
        let (name, since) = match state {
            PurgeState::Archived => ("archived", "archived_at"),
            PurgeState::Retried => ("retried", "retried_at"),
        };
        let filter = format!(
            "state = '{name}' and {since} < now() - make_interval(secs => $1::bigint::double precision)"
        );
        let n = if delete {
            conn.0
                .execute(
                    &format!("delete from dead_letters where {filter}"),
                    &[&older_than_secs],
                )
                .await
        } else {
            conn.0
                .query_one(
                    &format!("select count(*) from dead_letters where {filter}"),
                    &[&older_than_secs],
                )
                .await
                .map(|r| r.get::<_, i64>(0) as u64)
        };
        n.map_err(StoreError::db("purge dead letters"))
    }

    /// Records an operator action.
    pub async fn record_action(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        affected: i64,
        dry_run: bool,
        details: serde_json::Value,
    ) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        let affected = i32::try_from(affected).unwrap_or(i32::MAX);
        conn.0
            .execute(
                "insert into operator_actions (actor, action, target, affected, dry_run, details) \
                 values ($1, $2, $3, $4, $5, $6)",
                &[&actor, &action, &target, &affected, &dry_run, &details],
            )
            .await
            .map_err(StoreError::db("record operator action"))?;
        Ok(())
    }

    /// The audit trail, newest first.
    pub async fn actions(&self, limit: i64) -> Result<Vec<OperatorAction>, StoreError> {
        let conn = self.conn().await?;
        let rows = conn
            .0
            .query(
                "select id, at, actor, action, target, affected, dry_run, details \
                 from operator_actions order by id desc limit $1",
                &[&limit.max(0)],
            )
            .await
            .map_err(StoreError::db("read operator actions"))?;
        Ok(rows.iter().map(action).collect())
    }

    /// Logged events to replay: the given ids, or a type since a time.
    pub async fn events_for_replay(
        &self,
        provider: &str,
        ids: Option<&[String]>,
        event_type: Option<&str>,
        since: Option<OffsetDateTime>,
    ) -> Result<Vec<ReplayEvent>, StoreError> {
        let conn = self.conn().await?;
        let rows = conn
            .0
            .query(
                "select provider, event_id, event_type, created, livemode, api_version, \
                        (extract(epoch from received_at) * 1000)::bigint, coalesce(body::text, payload::text) \
                 from event_log where provider = $1 \
                   and ($2::text[] is null or event_id = any($2)) \
                   and ($3::text is null or event_type = $3) \
                   and ($4::timestamptz is null or processed_at >= $4) \
                 order by id",
                &[&provider, &ids.map(<[String]>::to_vec), &event_type, &since],
            )
            .await
            .map_err(StoreError::db("select events to replay"))?;
        Ok(rows
            .iter()
            .map(|r| ReplayEvent {
                provider: r.get(0),
                event_id: r.get(1),
                event_type: r.get(2),
                created: r.get(3),
                livemode: r.get(4),
                api_version: r.get(5),
                received_at_ms: r.get(6),
                payload: r.get(7),
            })
            .collect())
    }
}
