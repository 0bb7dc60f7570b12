//! The operator console's reads: searches and pages over the event log, the dead letters, the
//! deliveries, the accounts and the audit trail, and the figures of the overview.
//!
//! Rule of thumb: every list is a page of at most `limit` rows behind a keyset cursor (a row id),
//! so a page costs the same on the first screen and the hundredth; no page counts a whole table.

use time::OffsetDateTime;
use tokio_postgres::types::ToSql;

use crate::events::{COLUMNS as EVENT_COLUMNS, row_to_event};
use crate::operators::{LETTER_COLUMNS, action, letter};
use crate::outbox::{COLUMNS as DELIVERY_COLUMNS, delivery_row};
use crate::{DeadLetterFilter, DeadLetterRow, DeliveryFilter, DeliveryRow, EventRow, Store};
use crate::{OperatorAction, StoreError};

/// The providers an event id is looked up under when the search names none (so the lookup uses
/// the `(provider, event_id)` key).
const PROVIDERS: [&str; 4] = ["stripe", "square", "authorizenet", "paypal"];

/// A page of rows and the cursor of the next one (`None` on the last page).
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The rows, in the listing's order.
    pub rows: Vec<T>,
    /// The id to pass as the cursor for the next page.
    pub next: Option<i64>,
}

impl<T> Page<T> {
    /// `rows` as read with one extra row: the page and whether there is more.
    fn of(mut rows: Vec<(i64, T)>, limit: i64) -> Self {
        let more = rows.len() as i64 > limit;
        rows.truncate(limit.max(0) as usize);
        let next = if more {
            rows.last().map(|(id, _)| *id)
        } else {
            None
        };
        Self {
            rows: rows.into_iter().map(|(_, t)| t).collect(),
            next,
        }
    }
}

/// What the console's event search looks for; every field narrows it.
#[derive(Debug, Clone, Default)]
pub struct EventSearch {
    /// Only this provider.
    pub provider: Option<String>,
    /// Only this type.
    pub event_type: Option<String>,
    /// Only this provider event id.
    pub event_id: Option<String>,
    /// Only events linked to this account.
    pub account_id: Option<i64>,
    /// Processed at or after.
    pub since: Option<OffsetDateTime>,
    /// Processed before.
    pub until: Option<OffsetDateTime>,
}

/// An account as a search lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountHit {
    /// Account id.
    pub id: i64,
    /// Our own reference.
    pub external_ref: Option<String>,
    /// When it was created.
    pub created_at: OffsetDateTime,
    /// Its customers, `provider:customer_id`.
    pub customers: Vec<String>,
    /// The first email of its customers.
    pub email: Option<String>,
}

/// Events committed recently, per provider and outcome, with their lag (receipt to commit).
#[derive(Debug, Clone, PartialEq)]
pub struct EventRate {
    /// Provider.
    pub provider: String,
    /// `applied` or `ignored`.
    pub outcome: String,
    /// How many in the window.
    pub count: i64,
    /// Median seconds from receipt to commit.
    pub lag_p50_s: f64,
    /// Largest seconds from receipt to commit.
    pub lag_max_s: f64,
}

impl Store {
    /// Events matching `search`, newest first, `limit` at a time from the cursor `before`.
    pub async fn search_events(
        &self,
        search: &EventSearch,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Page<EventRow>, StoreError> {
        let conn = self.conn().await?;
        let providers: Vec<String> = match &search.provider {
            Some(p) => vec![p.clone()],
            None => PROVIDERS.iter().map(|p| (*p).to_owned()).collect(),
        };
        let sql = format!(
            "select {EVENT_COLUMNS}, id from event_log \
             where provider = any($1) and ($2::text is null or event_type = $2) \
               and ($3::text is null or event_id = $3) and ($4::int8 is null or account_id = $4) \
               and ($5::timestamptz is null or processed_at >= $5) \
               and ($6::timestamptz is null or processed_at < $6) \
               and ($7::int8 is null or id < $7) \
             order by id desc limit $8"
        );
        let rows = conn
            .0
            .query(
                &sql,
                &[
                    &providers,
                    &search.event_type,
                    &search.event_id,
                    &search.account_id,
                    &search.since,
                    &search.until,
                    &before,
                    &(limit.max(0) + 1),
                ],
            )
            .await
            .map_err(StoreError::db("search events"))?;
        let rows = rows
            .iter()
            .map(|r| (r.get(13), row_to_event(r, false)))
            .collect();
        Ok(Page::of(rows, limit))
    }

    /// Dead letters matching `filter` (state `open` unless given), oldest first, `limit` at a
    /// time from the cursor `after`.
    pub async fn dead_letter_page(
        &self,
        filter: &DeadLetterFilter,
        after: Option<i64>,
        limit: i64,
    ) -> Result<Page<DeadLetterRow>, StoreError> {
        let conn = self.conn().await?;
        let state = filter.state.clone().unwrap_or_else(|| "open".into());
        let sql = format!(
            "select {LETTER_COLUMNS} from dead_letters \
             where state = $1 and ($2::text is null or fingerprint = $2) \
               and ($3::text is null or event_type = $3) \
               and ($4::int8 is null or id > $4) \
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
                    &after,
                    &(limit.max(0) + 1),
                ],
            )
            .await
            .map_err(StoreError::db("page dead letters"))?;
        let rows = rows
            .iter()
            .map(|r| {
                let d = letter(r);
                (d.id, d)
            })
            .collect();
        Ok(Page::of(rows, limit))
    }

    /// The dead letters of one event, in every state, oldest first.
    pub async fn dead_letters_of_event(
        &self,
        provider: &str,
        event_id: &str,
    ) -> Result<Vec<DeadLetterRow>, StoreError> {
        let conn = self.conn().await?;
        let sql = format!(
            "select {LETTER_COLUMNS} from dead_letters where provider = $1 and event_id = $2 \
             order by id limit 100"
        );
        let rows = conn
            .0
            .query(&sql, &[&provider, &event_id])
            .await
            .map_err(StoreError::db("dead letters of an event"))?;
        Ok(rows.iter().map(letter).collect())
    }

    /// Deliveries matching `filter` (and of `account`, when given), newest first, `limit` at a
    /// time from the cursor `before`.
    pub async fn delivery_page(
        &self,
        filter: &DeliveryFilter,
        account: Option<i64>,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Page<DeliveryRow>, StoreError> {
        let conn = self.conn().await?;
        let sql = format!(
            "select {DELIVERY_COLUMNS} from outbox_deliveries \
             where ($1::text is null or state = $1) and ($2::text is null or destination = $2) \
               and ($3::text is null or operation = $3) and ($4::int8 is null or account_id = $4) \
               and ($5::int8 is null or id < $5) \
             order by id desc limit $6"
        );
        let rows = conn
            .0
            .query(
                &sql,
                &[
                    &filter.state,
                    &filter.destination,
                    &filter.operation,
                    &account,
                    &before,
                    &(limit.max(0) + 1),
                ],
            )
            .await
            .map_err(StoreError::db("page deliveries"))?;
        let rows = rows
            .iter()
            .map(|r| {
                let d = delivery_row(r);
                (d.id, d)
            })
            .collect();
        Ok(Page::of(rows, limit))
    }

    /// Accounts whose id, external reference, provider customer id or customer email (any
    /// case) is `query`; every account when it is empty. Oldest first from the cursor `after`.
    pub async fn search_accounts(
        &self,
        query: &str,
        after: Option<i64>,
        limit: i64,
    ) -> Result<Page<AccountHit>, StoreError> {
        let conn = self.conn().await?;
        let query = query.trim();
        let as_id = query.parse::<i64>().ok();
        let providers: Vec<String> = PROVIDERS.iter().map(|p| (*p).to_owned()).collect();
        let fetch = limit.max(0) + 1;
        // Each way of naming an account is its own index lookup, never a scan: the id, the
        // reference, a customer id under each provider's key, an email in any case.
        let (matching, params): (_, Vec<&(dyn ToSql + Sync)>) = if query.is_empty() {
            ("true", vec![&after, &fetch])
        } else {
            (
                "a.id in (select id from accounts where id = $3 \
                          union all select id from accounts where external_ref = $4 \
                          union all select account_id from provider_customers \
                                    where provider = any($5) and customer_id = $4 \
                          union all select account_id from provider_customers \
                                    where email is not null and lower(email) = lower($4))",
                vec![&after, &fetch, &as_id, &query, &providers],
            )
        };
        let sql = format!(
            "select a.id, a.external_ref, a.created_at, \
                    coalesce((select array_agg(pc.provider || ':' || pc.customer_id \
                              order by pc.provider, pc.customer_id) \
                              from provider_customers pc where pc.account_id = a.id), '{{}}'), \
                    (select pc.email from provider_customers pc \
                      where pc.account_id = a.id and pc.email is not null \
                      order by pc.provider, pc.customer_id limit 1) \
             from accounts a \
             where {matching} and ($1::int8 is null or a.id > $1) \
             order by a.id limit $2"
        );
        let rows = conn
            .0
            .query(&sql, &params)
            .await
            .map_err(StoreError::db("search accounts"))?;
        let rows = rows
            .iter()
            .map(|r| {
                let hit = AccountHit {
                    id: r.get(0),
                    external_ref: r.get(1),
                    created_at: r.get(2),
                    customers: r.get(3),
                    email: r.get(4),
                };
                (hit.id, hit)
            })
            .collect();
        Ok(Page::of(rows, limit))
    }

    /// The audit trail, newest first, `limit` at a time from the cursor `before`.
    pub async fn action_page(
        &self,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Page<OperatorAction>, StoreError> {
        let conn = self.conn().await?;
        let rows = conn
            .0
            .query(
                "select id, at, actor, action, target, affected, dry_run, details \
                 from operator_actions where ($1::int8 is null or id < $1) \
                 order by id desc limit $2",
                &[&before, &(limit.max(0) + 1)],
            )
            .await
            .map_err(StoreError::db("page operator actions"))?;
        let rows = rows
            .iter()
            .map(|r| {
                let a = action(r);
                (a.id, a)
            })
            .collect();
        Ok(Page::of(rows, limit))
    }

    /// How many logged events a replay of the given ids, or of a type since a time, selects
    /// (the selection of [`Store::events_for_replay`], counted).
    pub async fn count_events_for_replay(
        &self,
        provider: &str,
        ids: Option<&[String]>,
        event_type: Option<&str>,
        since: Option<OffsetDateTime>,
    ) -> Result<i64, StoreError> {
        let conn = self.conn().await?;
        let row = conn
            .0
            .query_one(
                "select count(*) from event_log where provider = $1 \
                   and ($2::text[] is null or event_id = any($2)) \
                   and ($3::text is null or event_type = $3) \
                   and ($4::timestamptz is null or processed_at >= $4)",
                &[&provider, &ids.map(<[String]>::to_vec), &event_type, &since],
            )
            .await
            .map_err(StoreError::db("count events to replay"))?;
        Ok(row.get(0))
    }

    /// Events committed in the last `window_secs` seconds, per provider and outcome.
    pub async fn event_rates(&self, window_secs: i64) -> Result<Vec<EventRate>, StoreError> {
        let conn = self.conn().await?;
        let rows = conn
            .0
            .query(
                "select provider, outcome, count(*), \
                        coalesce(percentile_cont(0.5) within group \
                            (order by extract(epoch from processed_at - received_at)), 0)::float8, \
                        coalesce(max(extract(epoch from processed_at - received_at)), 0)::float8 \
                 from event_log \
                 where processed_at >= now() - make_interval(secs => $1::int8::float8) \
                 group by provider, outcome order by provider, outcome",
                &[&window_secs],
            )
            .await
            .map_err(StoreError::db("event rates"))?;
        Ok(rows
            .iter()
            .map(|r| EventRate {
                provider: r.get(0),
                outcome: r.get(1),
                count: r.get(2),
                lag_p50_s: r.get(3),
                lag_max_s: r.get(4),
            })
            .collect())
    }
}
