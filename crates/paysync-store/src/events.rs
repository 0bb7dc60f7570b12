//! The event log: dedupe key, audit trail and replay source.

use paysync_domain::EventMeta;
use time::OffsetDateTime;

use crate::{Store, StoreError, Tx};

/// How an event was processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A handler changed state.
    Applied,
    /// No handler for its type; recorded so it is not processed again.
    Ignored,
}

impl Outcome {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Ignored => "ignored",
        }
    }
}

/// An event about to be recorded.
#[derive(Debug, Clone, Copy)]
pub struct NewEvent<'a> {
    /// Its metadata.
    pub meta: &'a EventMeta,
    /// The raw JSON body (valid UTF-8 JSON, checked by the caller).
    pub payload: &'a str,
    /// What happened to it.
    pub outcome: Outcome,
    /// The attempt that is committing it.
    pub attempt: u32,
    /// The provider customer it belongs to, when its handler links events to accounts through
    /// provider customers: a row whose customer is already mapped is written with that
    /// account at once (no update after the handler).
    pub customer: Option<&'a str>,
}

/// What an event-log insert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// The event is already in the log (committed by an earlier delivery): a duplicate.
    Duplicate,
    /// A new row, linked to `account` (its customer's, when the mapping existed).
    New {
        /// The account the row was written with.
        account: Option<i64>,
    },
}

impl Inserted {
    /// Whether the row is new.
    pub fn is_new(self) -> bool {
        matches!(self, Self::New { .. })
    }
}

/// What recording an operator replay found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replayed {
    /// Counted on the logged event: run the handler again.
    Counted,
    /// This replay (by its id) was applied before: a second delivery, nothing to do.
    Again,
    /// The event is not in the log: process it as new.
    NotLogged,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    /// Provider name.
    pub provider: String,
    /// Provider event id.
    pub event_id: String,
    /// Event type.
    pub event_type: String,
    /// Provider `created`, unix seconds.
    pub created: i64,
    /// Live mode.
    pub livemode: bool,
    /// Provider API version.
    pub api_version: Option<String>,
    /// The account it was linked to, when a handler did.
    pub account_id: Option<i64>,
    /// `applied` or `ignored`.
    pub outcome: String,
    /// The attempt that committed it.
    pub attempts: i32,
    /// Later deliveries that were skipped as duplicates.
    pub duplicates: i32,
    /// Operator replays.
    pub replays: i32,
    /// When our receiver accepted it.
    pub received_at: OffsetDateTime,
    /// When it was committed.
    pub processed_at: OffsetDateTime,
    /// The body (only filled by [`Store::event`]).
    pub payload: Option<serde_json::Value>,
}

/// Filters for [`Store::events`].
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only this provider's events.
    pub provider: Option<String>,
    /// Only this type.
    pub event_type: Option<String>,
    /// Only processed at or after this time.
    pub since: Option<OffsetDateTime>,
    /// At most this many (newest first).
    pub limit: i64,
}

/// The body goes into `body` as `json`, the exact text received (migration 0007); `payload`
/// (jsonb) only holds rows of earlier releases. The account is the customer's, when mapped.
pub const INSERT_EVENT: &str = "insert into event_log \
    (provider, event_id, event_type, created, livemode, api_version, body, received_at, outcome, attempts, account_id) \
    values ($1, $2, $3, $4, $5, $6, ($7::text)::json, to_timestamp($8::bigint / 1000.0), $9, $10, \
            (select pc.account_id from provider_customers pc where pc.provider = $1 and pc.customer_id = $11)) \
    on conflict (provider, event_id) do nothing \
    returning account_id";

/// The batch form of [`INSERT_EVENT`]: one row per array element, inserted in key order (so
/// concurrent batches wait on each other's rows in one order, never in a cycle). Returns the
/// keys that were new. The caller removes repeats within the batch first.
pub const INSERT_EVENTS: &str = "insert into event_log \
    (provider, event_id, event_type, created, livemode, api_version, body, received_at, outcome, attempts, account_id) \
    select p, e, t, c, l, v, j::json, to_timestamp(r / 1000.0), o, a, \
           (select pc.account_id from provider_customers pc where pc.provider = u.p and pc.customer_id = u.cu) \
    from unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::bool[], $6::text[], $7::text[], \
                $8::int8[], $9::text[], $10::int4[], $11::text[]) as u(p, e, t, c, l, v, j, r, o, a, cu) \
    order by p, e \
    on conflict (provider, event_id) do nothing \
    returning provider, event_id, account_id";

/// The batch form of the account link: one statement for every event of a batch.
const SET_ACCOUNTS: &str = "update event_log set account_id = u.a \
    from unnest($1::text[], $2::text[], $3::int8[]) as u(p, e, a) \
    where event_log.provider = u.p and event_log.event_id = u.e";

/// The batch form of [`RECORD_DUPLICATE`]; a key listed twice counts twice.
const RECORD_DUPLICATES: &str = "update event_log set duplicates = duplicates + u.n \
    from (select p, e, count(*)::int4 as n from unnest($1::text[], $2::text[]) as x(p, e) group by p, e) as u \
    where event_log.provider = u.p and event_log.event_id = u.e";

const RECORD_DUPLICATE: &str = "update event_log set duplicates = duplicates + 1 \
    where provider = $1 and event_id = $2";

pub(crate) const COLUMNS: &str = "provider, event_id, event_type, created, livemode, api_version, account_id, \
    outcome, attempts, duplicates, replays, received_at, processed_at";

impl Tx<'_> {
    /// Records the event in this transaction. [`Inserted::Duplicate`] means it is already in
    /// the log (committed by an earlier delivery), to be acked without side effects. If
    /// another transaction is inserting the same event right now, this waits for it: its
    /// commit makes this a duplicate, its rollback lets this one proceed.
    pub async fn insert_event(&self, event: NewEvent<'_>) -> Result<Inserted, StoreError> {
        let stmt = self
            .0
            .prepare_cached(INSERT_EVENT)
            .await
            .map_err(StoreError::db("prepare event insert"))?;
        let m = event.meta;
        let attempt = i32::try_from(event.attempt).unwrap_or(i32::MAX);
        let rows = self
            .0
            .query(
                &stmt,
                &[
                    &m.provider.as_str(),
                    &m.event_id,
                    &m.event_type,
                    &m.created,
                    &m.livemode,
                    &m.api_version,
                    &event.payload,
                    &m.received_at_ms,
                    &event.outcome.as_str(),
                    &attempt,
                    &event.customer,
                ],
            )
            .await
            .map_err(StoreError::db("insert event"))?;
        Ok(match rows.first() {
            Some(row) => Inserted::New {
                account: row.get(0),
            },
            None => Inserted::Duplicate,
        })
    }

    /// Records several events in one statement; for each, in order, what the insert did. The
    /// events must have distinct keys.
    pub async fn insert_events(
        &self,
        events: &[NewEvent<'_>],
    ) -> Result<Vec<Inserted>, StoreError> {
        let stmt = self
            .0
            .prepare_cached(INSERT_EVENTS)
            .await
            .map_err(StoreError::db("prepare event batch insert"))?;
        let n = events.len();
        let mut providers = Vec::with_capacity(n);
        let mut ids = Vec::with_capacity(n);
        let mut types = Vec::with_capacity(n);
        let mut created = Vec::with_capacity(n);
        let mut livemode = Vec::with_capacity(n);
        let mut versions = Vec::with_capacity(n);
        let mut payloads = Vec::with_capacity(n);
        let mut received = Vec::with_capacity(n);
        let mut outcomes = Vec::with_capacity(n);
        let mut attempts = Vec::with_capacity(n);
        let mut customers = Vec::with_capacity(n);
        for event in events {
            let m = event.meta;
            providers.push(m.provider.as_str());
            ids.push(m.event_id.as_str());
            types.push(m.event_type.as_str());
            created.push(m.created);
            livemode.push(m.livemode);
            versions.push(m.api_version.as_deref());
            payloads.push(event.payload);
            received.push(m.received_at_ms);
            outcomes.push(event.outcome.as_str());
            attempts.push(i32::try_from(event.attempt).unwrap_or(i32::MAX));
            customers.push(event.customer);
        }
        let rows = self
            .0
            .query(
                &stmt,
                &[
                    &providers, &ids, &types, &created, &livemode, &versions, &payloads, &received,
                    &outcomes, &attempts, &customers,
                ],
            )
            .await
            .map_err(StoreError::db("insert event batch"))?;
        let inserted: std::collections::HashMap<(&str, &str), Option<i64>> = rows
            .iter()
            .map(|r| ((r.get::<_, &str>(0), r.get::<_, &str>(1)), r.get(2)))
            .collect();
        Ok(events
            .iter()
            .map(
                |e| match inserted.get(&(e.meta.provider.as_str(), e.meta.event_id.as_str())) {
                    Some(account) => Inserted::New { account: *account },
                    None => Inserted::Duplicate,
                },
            )
            .collect())
    }

    /// Links several logged events to their accounts in one statement.
    pub async fn set_event_accounts(&self, links: &[(&EventMeta, i64)]) -> Result<(), StoreError> {
        if links.is_empty() {
            return Ok(());
        }
        let stmt = self
            .0
            .prepare_cached(SET_ACCOUNTS)
            .await
            .map_err(StoreError::db("prepare event accounts"))?;
        let providers: Vec<&str> = links.iter().map(|(m, _)| m.provider.as_str()).collect();
        let ids: Vec<&str> = links.iter().map(|(m, _)| m.event_id.as_str()).collect();
        let accounts: Vec<i64> = links.iter().map(|(_, a)| *a).collect();
        self.0
            .execute(&stmt, &[&providers, &ids, &accounts])
            .await
            .map_err(StoreError::db("set event accounts"))?;
        Ok(())
    }

    /// Counts skipped duplicate deliveries, in this transaction (one per element).
    pub async fn record_duplicates(&self, metas: &[&EventMeta]) -> Result<(), StoreError> {
        if metas.is_empty() {
            return Ok(());
        }
        let stmt = self
            .0
            .prepare_cached(RECORD_DUPLICATES)
            .await
            .map_err(StoreError::db("prepare duplicates"))?;
        let providers: Vec<&str> = metas.iter().map(|m| m.provider.as_str()).collect();
        let ids: Vec<&str> = metas.iter().map(|m| m.event_id.as_str()).collect();
        self.0
            .execute(&stmt, &[&providers, &ids])
            .await
            .map_err(StoreError::db("record duplicates"))?;
        Ok(())
    }

    /// For an operator replay: records its id (when it has one) and counts the replay on the
    /// logged event. [`Replayed::Again`] when this replay was already applied (a second
    /// delivery of it), [`Replayed::NotLogged`] when the event is not in the log (then it is
    /// processed as new).
    pub async fn mark_replayed(
        &self,
        meta: &EventMeta,
        replay_id: Option<&str>,
    ) -> Result<Replayed, StoreError> {
        if let Some(id) = replay_id {
            let stmt = self
                .0
                .prepare_cached(
                    "insert into event_replays (replay_id, provider, event_id) values ($1, $2, $3) \
                     on conflict (replay_id) do nothing",
                )
                .await
                .map_err(StoreError::db("prepare replay record"))?;
            let n = self
                .0
                .execute(&stmt, &[&id, &meta.provider.as_str(), &meta.event_id])
                .await
                .map_err(StoreError::db("record replay"))?;
            if n == 0 {
                return Ok(Replayed::Again);
            }
        }
        let stmt = self
            .0
            .prepare_cached(
                "update event_log set replays = replays + 1 where provider = $1 and event_id = $2",
            )
            .await
            .map_err(StoreError::db("prepare replay"))?;
        let n = self
            .0
            .execute(&stmt, &[&meta.provider.as_str(), &meta.event_id])
            .await
            .map_err(StoreError::db("mark replay"))?;
        Ok(if n == 1 {
            Replayed::Counted
        } else {
            Replayed::NotLogged
        })
    }

    /// Links the logged event to an account.
    pub async fn set_event_account(
        &self,
        meta: &EventMeta,
        account_id: i64,
    ) -> Result<(), StoreError> {
        let stmt = self
            .0
            .prepare_cached(
                "update event_log set account_id = $3 where provider = $1 and event_id = $2",
            )
            .await
            .map_err(StoreError::db("prepare event account"))?;
        self.0
            .execute(
                &stmt,
                &[&meta.provider.as_str(), &meta.event_id, &account_id],
            )
            .await
            .map_err(StoreError::db("set event account"))?;
        Ok(())
    }
}

impl Store {
    /// Counts one more skipped duplicate delivery of an event.
    pub async fn record_duplicate(&self, meta: &EventMeta) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        let stmt = conn
            .0
            .prepare_cached(RECORD_DUPLICATE)
            .await
            .map_err(StoreError::db("prepare duplicate"))?;
        conn.0
            .execute(&stmt, &[&meta.provider.as_str(), &meta.event_id])
            .await
            .map_err(StoreError::db("record duplicate"))?;
        Ok(())
    }

    /// Stored events, newest first.
    pub async fn events(&self, filter: &EventFilter) -> Result<Vec<EventRow>, StoreError> {
        let conn = self.conn().await?;
        let sql = format!(
            "select {COLUMNS} from event_log \
             where ($1::text is null or event_type = $1) and ($2::timestamptz is null or processed_at >= $2) \
               and ($4::text is null or provider = $4) \
             order by processed_at desc, id desc limit $3"
        );
        let rows = conn
            .0
            .query(
                &sql,
                &[
                    &filter.event_type,
                    &filter.since,
                    &filter.limit.max(0),
                    &filter.provider,
                ],
            )
            .await
            .map_err(StoreError::db("list events"))?;
        Ok(rows.iter().map(|r| row_to_event(r, false)).collect())
    }

    /// One stored event with its payload.
    pub async fn event(
        &self,
        provider: &str,
        event_id: &str,
    ) -> Result<Option<EventRow>, StoreError> {
        let conn = self.conn().await?;
        let sql = format!(
            "select {COLUMNS}, coalesce(body, payload::json) from event_log \
             where provider = $1 and event_id = $2"
        );
        let row = conn
            .0
            .query_opt(&sql, &[&provider, &event_id])
            .await
            .map_err(StoreError::db("show event"))?;
        Ok(row.map(|r| row_to_event(&r, true)))
    }
}

pub(crate) fn row_to_event(r: &tokio_postgres::Row, with_payload: bool) -> EventRow {
    EventRow {
        provider: r.get(0),
        event_id: r.get(1),
        event_type: r.get(2),
        created: r.get(3),
        livemode: r.get(4),
        api_version: r.get(5),
        account_id: r.get(6),
        outcome: r.get(7),
        attempts: r.get(8),
        duplicates: r.get(9),
        replays: r.get(10),
        received_at: r.get(11),
        processed_at: r.get(12),
        payload: with_payload.then(|| r.get(13)),
    }
}
