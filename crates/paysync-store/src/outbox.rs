//! Deliveries: the dispatcher's claims, fenced completions and reaper, the destinations' shared
//! state, and what operators list, retry and skip.
//!
//! Rule of thumb: every time is the database's `now()`, never a process clock; a claim and a
//! completion are each one short statement, and nothing here is held across a network call.
//! A completion names the lease token of its claim: once the reaper (or an operator) took the
//! delivery back, the late completion changes nothing and says so.

use paysync_domain::intent::Notice;
use time::OffsetDateTime;
use tokio_postgres::Row;

use crate::{Store, StoreError};

/// A delivery the caller holds a lease on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// Delivery id.
    pub id: i64,
    /// Destination name.
    pub destination: String,
    /// Operation name.
    pub operation: String,
    /// Unique per destination.
    pub idempotency_key: String,
    /// The provider of the intent.
    pub provider: String,
    /// The intent's name.
    pub intent: String,
    /// The object the intent is about.
    pub source_id: String,
    /// Attempts so far, this one included.
    pub attempts: i32,
    /// The fencing token of this claim.
    pub lease_token: i64,
    /// When the intent was recorded.
    pub created_at: OffsetDateTime,
}

/// What became of an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Completion {
    /// Delivered; the destination's id for what it created, if any.
    Sent {
        /// e.g. the CRM record id or the SMTP queue id.
        external_ref: Option<String>,
    },
    /// Failed; try again after `delay_ms`.
    Retry {
        /// Milliseconds from now.
        delay_ms: f64,
    },
    /// Not attempted after all (rate limit, quota, a disabled destination): back to pending
    /// after `delay_ms`, the attempt not counted.
    Release {
        /// Milliseconds from now.
        delay_ms: f64,
    },
    /// Given up: a payload error, or every attempt failed.
    Dead {
        /// `destination:error_kind:code`, to group alike failures.
        fingerprint: String,
    },
    /// Not sent, on purpose (`no_recipient`, `superseded`, `not_won`).
    Skipped {
        /// Why.
        reason: String,
    },
    /// Too old to be worth sending.
    Expired,
}

impl Completion {
    fn state(&self) -> &'static str {
        match self {
            Completion::Sent { .. } => "sent",
            Completion::Retry { .. } | Completion::Release { .. } => "pending",
            Completion::Dead { .. } => "dead",
            Completion::Skipped { .. } => "skipped",
            Completion::Expired => "expired",
        }
    }
}

/// One attempt, as recorded with its completion.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRecord {
    /// The process that made it.
    pub owner: String,
    /// How long the call took.
    pub duration_ms: i32,
    /// `sent`, `retry`, `rate_limited`, `disabled`, `dead`, `skipped`, `expired`.
    pub outcome: String,
    /// HTTP status or SMTP reply code.
    pub status: Option<i32>,
    /// What went wrong, redacted (no secrets, at most 2 KiB).
    pub error: Option<String>,
    /// The destination's `Retry-After`, in seconds.
    pub retry_after_s: Option<f64>,
}

/// A delivery as operators see it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryRow {
    /// Delivery id.
    pub id: i64,
    /// Destination name.
    pub destination: String,
    /// Operation name.
    pub operation: String,
    /// Unique per destination.
    pub idempotency_key: String,
    /// The intent's provider.
    pub provider: String,
    /// The intent.
    pub intent: String,
    /// Its source object.
    pub source_id: String,
    /// The account, when known.
    pub account_id: Option<i64>,
    /// `pending`, `in_flight`, `sent`, `dead`, `skipped` or `expired`.
    pub state: String,
    /// Attempts counted.
    pub attempts: i32,
    /// When it is next due (pending).
    pub next_attempt_at: OffsetDateTime,
    /// The last error, redacted.
    pub last_error: Option<String>,
    /// The last HTTP status or SMTP code.
    pub last_status: Option<i32>,
    /// Dead: what kind of failure.
    pub fingerprint: Option<String>,
    /// Skipped or expired: why.
    pub reason: Option<String>,
    /// The destination's id for what it created.
    pub external_ref: Option<String>,
    /// When the intent was recorded.
    pub created_at: OffsetDateTime,
    /// When it reached its final state.
    pub done_at: Option<OffsetDateTime>,
}

/// An attempt as operators see it.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRow {
    /// Attempt number.
    pub attempt: i32,
    /// The claim's fencing token.
    pub lease_token: i64,
    /// The process that made it.
    pub owner: String,
    /// When it started.
    pub started_at: OffsetDateTime,
    /// How long it took.
    pub duration_ms: i32,
    /// Its outcome.
    pub outcome: String,
    /// HTTP status or SMTP code.
    pub status: Option<i32>,
    /// Redacted error excerpt.
    pub error: Option<String>,
    /// The destination's `Retry-After`.
    pub retry_after_s: Option<f64>,
}

/// A destination's shared state and queue.
#[derive(Debug, Clone, PartialEq)]
pub struct DestinationRow {
    /// Name.
    pub name: String,
    /// Whether a dispatcher configured it (deliveries are only created for those).
    pub configured: bool,
    /// Paused (rate limit, quota or operator) until then.
    pub paused_until: Option<OffsetDateTime>,
    /// Why it is paused.
    pub pause_reason: Option<String>,
    /// Why it is disabled (until an operator resumes it).
    pub disabled_reason: Option<String>,
    /// `auto`, `open` or `closed`: the operator's override of the breaker.
    pub forced: String,
    /// The lane's breaker, as it saved it.
    pub breaker: Option<serde_json::Value>,
    /// The breaker's state name, as the lane saved it.
    pub breaker_state: String,
    /// The process that owns the lane.
    pub lane_owner: Option<String>,
    /// Last change.
    pub updated_at: OffsetDateTime,
    /// Who made it.
    pub updated_by: Option<String>,
    /// Deliveries pending.
    pub pending: i64,
    /// Deliveries in flight.
    pub in_flight: i64,
    /// Dead deliveries.
    pub dead: i64,
    /// Age of the oldest pending delivery, in seconds.
    pub oldest_pending_s: Option<f64>,
}

/// A destination's switches, as a lane reads them before each claim.
#[derive(Debug, Clone, PartialEq)]
pub struct DestinationControl {
    /// `auto`, `open` or `closed`.
    pub forced: String,
    /// Milliseconds of pause left (0 when not paused).
    pub paused_ms: f64,
    /// Why it is disabled, when it is.
    pub disabled_reason: Option<String>,
    /// The breaker as last saved.
    pub breaker: Option<serde_json::Value>,
}

/// Which deliveries an operator means.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryFilter {
    /// Only these ids.
    pub ids: Vec<i64>,
    /// Only this state.
    pub state: Option<String>,
    /// Only this destination.
    pub destination: Option<String>,
    /// Only this operation.
    pub operation: Option<String>,
    /// At most this many (newest first when listing).
    pub limit: i64,
}

/// What a message's delivery needs to be rendered and checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeliveryContext {
    /// The message's notice (empty for follow-ups).
    pub notice: Notice,
    /// The account, when known now.
    pub account_id: Option<i64>,
    /// A follow-up's due time (unix seconds).
    pub due_at: Option<i64>,
    /// An application event's body: the exact text to sign and send (`app_event` only).
    pub app_body: Option<String>,
}

/// The claim, with `$gate` (SQL text) added to the candidates' conditions.
macro_rules! claim_sql {
    ($gate:literal) => {
        concat!(
            "with c as ( \
    select id from outbox_deliveries \
    where destination = $1 and state = 'pending' and next_attempt_at <= now() \
      and not exists (select 1 from outbox_destinations od where od.name = $1 \
          and (od.disabled_reason is not null or od.paused_until > now() or od.forced = 'open'))",
            $gate,
            " \
    order by next_attempt_at, id limit $2 \
    for update skip locked) \
  update outbox_deliveries d set state = 'in_flight', attempts = d.attempts + 1, \
    lease_token = nextval('outbox_lease_seq'), lease_owner = $3, \
    lease_expires_at = now() + $4 * interval '1 millisecond' \
  from c where d.id = c.id \
  returning d.id, d.destination, d.operation, d.idempotency_key, d.provider, d.intent, \
    d.source_id, d.attempts, d.lease_token, d.created_at"
        )
    };
}

const CLAIM: &str = claim_sql!("");

/// The claim of a destination that keeps each account's order: a delivery waits while an
/// earlier one (smaller id) of the same destination and account is pending (a retry not yet
/// due included) or in flight; a dead, skipped or sent one no longer holds the account back.
/// The subquery reads `outbox_deliveries_account_open_idx`.
const CLAIM_IN_ACCOUNT_ORDER: &str = claim_sql!(
    " \
      and (outbox_deliveries.account_id is null or not exists (select 1 \
          from outbox_deliveries e where e.destination = $1 \
            and e.account_id = outbox_deliveries.account_id \
            and e.id < outbox_deliveries.id and e.state in ('pending', 'in_flight')))"
);

const COMPLETE: &str = "with u as ( \
    update outbox_deliveries set state = $3, \
      attempts = attempts - case when $4 then 1 else 0 end, \
      next_attempt_at = case when $3 = 'pending' \
          then now() + $5 * interval '1 millisecond' else next_attempt_at end, \
      last_error = coalesce($6, last_error), last_status = coalesce($7, last_status), \
      fingerprint = $8, reason = $9, external_ref = coalesce($10, external_ref), \
      done_at = case when $3 in ('sent', 'dead', 'skipped', 'expired') then now() end, \
      lease_token = null, lease_owner = null, lease_expires_at = null \
    where id = $1 and lease_token = $2 and state = 'in_flight' \
    returning id, extract(epoch from now() - created_at)::float8 as age), \
  a as (insert into outbox_attempts \
      (delivery_id, attempt, lease_token, owner, started_at, duration_ms, outcome, status, \
       error, retry_after_s) \
    select u.id, $11, $2, $12, now() - $13::int4 * interval '1 millisecond', $13::int4, $14, \
           $7, $6, $15 \
    from u) \
  select age from u";

pub(crate) const COLUMNS: &str = "id, destination, operation, idempotency_key, provider, intent, source_id, \
    account_id, state, attempts, next_attempt_at, last_error, last_status, fingerprint, reason, \
    external_ref, created_at, done_at";

pub(crate) fn delivery_row(r: &Row) -> DeliveryRow {
    DeliveryRow {
        id: r.get(0),
        destination: r.get(1),
        operation: r.get(2),
        idempotency_key: r.get(3),
        provider: r.get(4),
        intent: r.get(5),
        source_id: r.get(6),
        account_id: r.get(7),
        state: r.get(8),
        attempts: r.get(9),
        next_attempt_at: r.get(10),
        last_error: r.get(11),
        last_status: r.get(12),
        fingerprint: r.get(13),
        reason: r.get(14),
        external_ref: r.get(15),
        created_at: r.get(16),
        done_at: r.get(17),
    }
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Store {
    /// Marks `names` configured (deliveries are created for them from now on), creating their
    /// rows; the others keep their flag.
    pub async fn register_destinations(&self, names: &[&str], by: &str) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        conn.0
            .execute(
                "insert into outbox_destinations (name, configured, updated_by) \
                 select n, true, $2 from unnest($1::text[]) as n \
                 on conflict (name) do update set configured = true \
                 where not outbox_destinations.configured",
                &[&names, &by],
            )
            .await
            .map_err(StoreError::db("register destinations"))?;
        Ok(())
    }

    /// Sets how long new deliveries of `name` wait before their first attempt.
    pub async fn set_destination_hold(
        &self,
        name: &str,
        hold: std::time::Duration,
    ) -> Result<(), StoreError> {
        let ms = i32::try_from(hold.as_millis()).unwrap_or(i32::MAX);
        let conn = self.conn().await?;
        conn.0
            .execute(
                "update outbox_destinations set hold_ms = $2 where name = $1",
                &[&name, &ms],
            )
            .await
            .map_err(StoreError::db("set destination hold"))?;
        Ok(())
    }

    /// Claims up to `limit` due deliveries of `destination` for `lease`, unless an operator or
    /// a rate limit paused it, it is disabled, or its breaker is forced open. Each claim counts
    /// an attempt and takes a new fencing token. With `in_account_order` (a destination whose
    /// `keeps_account_order()` holds), a delivery is not claimed while an earlier delivery of
    /// the same destination and account is pending or in flight, so an account's deliveries
    /// go one at a time, in id order.
    pub async fn claim(
        &self,
        destination: &str,
        limit: i64,
        lease: std::time::Duration,
        owner: &str,
        in_account_order: bool,
    ) -> Result<Vec<Claimed>, StoreError> {
        let conn = self.conn().await?;
        let sql = if in_account_order {
            CLAIM_IN_ACCOUNT_ORDER
        } else {
            CLAIM
        };
        let stmt = conn
            .0
            .prepare_cached(sql)
            .await
            .map_err(StoreError::db("claim deliveries"))?;
        let rows = conn
            .0
            .query(&stmt, &[&destination, &limit, &owner, &ms(lease)])
            .await
            .map_err(StoreError::db("claim deliveries"))?;
        let mut out: Vec<Claimed> = rows
            .iter()
            .map(|r| Claimed {
                id: r.get(0),
                destination: r.get(1),
                operation: r.get(2),
                idempotency_key: r.get(3),
                provider: r.get(4),
                intent: r.get(5),
                source_id: r.get(6),
                attempts: r.get(7),
                lease_token: r.get(8),
                created_at: r.get(9),
            })
            .collect();
        out.sort_by_key(|c| c.id);
        Ok(out)
    }

    /// Completes the claim `claimed` with `completion` and records the attempt, fenced by the
    /// claim's token. `Some(age in seconds since the intent)` when it applied, `None` when the
    /// lease was lost (the reaper or an operator took the delivery back): nothing changed.
    pub async fn complete(
        &self,
        claimed: &Claimed,
        completion: &Completion,
        attempt: &AttemptRecord,
    ) -> Result<Option<f64>, StoreError> {
        let (uncount, delay, fingerprint, reason, external_ref) = match completion {
            Completion::Sent { external_ref } => (false, 0.0, None, None, external_ref.clone()),
            Completion::Retry { delay_ms } => (false, *delay_ms, None, None, None),
            Completion::Release { delay_ms } => (true, *delay_ms, None, None, None),
            Completion::Dead { fingerprint } => (false, 0.0, Some(fingerprint.clone()), None, None),
            Completion::Skipped { reason } => (false, 0.0, None, Some(reason.clone()), None),
            Completion::Expired => (false, 0.0, None, Some("too_old".to_owned()), None),
        };
        let conn = self.conn().await?;
        let stmt = conn
            .0
            .prepare_cached(COMPLETE)
            .await
            .map_err(StoreError::db("complete delivery"))?;
        let row = conn
            .0
            .query_opt(
                &stmt,
                &[
                    &claimed.id,
                    &claimed.lease_token,
                    &completion.state(),
                    &uncount,
                    &delay,
                    &attempt.error,
                    &attempt.status,
                    &fingerprint,
                    &reason,
                    &external_ref,
                    &claimed.attempts,
                    &attempt.owner,
                    &attempt.duration_ms,
                    &attempt.outcome,
                    &attempt.retry_after_s,
                ],
            )
            .await
            .map_err(StoreError::db("complete delivery"))?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Extends the leases of `claimed` by `lease` from now (a long send). The ones whose lease
    /// was lost are left out of the result.
    pub async fn renew_leases(
        &self,
        claimed: &[&Claimed],
        lease: std::time::Duration,
    ) -> Result<Vec<i64>, StoreError> {
        let ids: Vec<i64> = claimed.iter().map(|c| c.id).collect();
        let tokens: Vec<i64> = claimed.iter().map(|c| c.lease_token).collect();
        let conn = self.conn().await?;
        let rows = conn
            .0
            .query(
                "update outbox_deliveries d \
                 set lease_expires_at = now() + $3 * interval '1 millisecond' \
                 from unnest($1::int8[], $2::int8[]) as u(id, t) \
                 where d.id = u.id and d.lease_token = u.t and d.state = 'in_flight' \
                 returning d.id",
                &[&ids, &tokens, &ms(lease)],
            )
            .await
            .map_err(StoreError::db("renew leases"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Returns every delivery whose lease expired to pending (its attempt stays counted, so a
    /// delivery that crashes its dispatcher every time still runs out of attempts). The
    /// destinations of the returned ones, one entry per delivery.
    pub async fn reap_expired_leases(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.conn().await?;
        let rows = conn
            .0
            .query(
                "update outbox_deliveries set state = 'pending', next_attempt_at = now(), \
                   lease_token = null, lease_owner = null, lease_expires_at = null, \
                   last_error = 'lease expired: the dispatcher stopped or stalled mid-send' \
                 where state = 'in_flight' and lease_expires_at < now() \
                 returning destination",
                &[],
            )
            .await
            .map_err(StoreError::db("reap expired leases"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Expires the pending deliveries of `destination` recorded more than `max_age` ago; their
    /// operations, one entry per delivery.
    pub async fn expire_stale(
        &self,
        destination: &str,
        max_age: std::time::Duration,
    ) -> Result<Vec<String>, StoreError> {
        let conn = self.conn().await?;
        let rows = conn
            .0
            .query(
                "update outbox_deliveries set state = 'expired', reason = 'too_old', \
                   done_at = now() \
                 where destination = $1 and state = 'pending' \
                   and created_at < now() - $2 * interval '1 millisecond' \
                 returning operation",
                &[&destination, &ms(max_age)],
            )
            .await
            .map_err(StoreError::db("expire stale deliveries"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// What a delivery needs to be rendered: the message's notice, the account, a follow-up's
    /// due time, an application event's body.
    pub async fn delivery_context(&self, id: i64) -> Result<DeliveryContext, StoreError> {
        let conn = self.conn().await?;
        let row = conn
            .0
            .query_opt(
                "select o.notice, coalesce(d.account_id, o.account_id, t.account_id, a.account_id), \
                   t.due_at, a.body \
                 from outbox_deliveries d \
                 left join outbox o on o.provider = d.provider and o.kind = d.intent \
                     and o.source_id = d.source_id \
                 left join tasks t on t.provider = d.provider and t.kind = d.intent \
                     and t.source_id = d.source_id \
                 left join app_events a on d.intent = 'app_event' and a.id = d.source_id \
                 where d.id = $1",
                &[&id],
            )
            .await
            .map_err(StoreError::db("read delivery context"))?;
        let Some(row) = row else {
            return Ok(DeliveryContext::default());
        };
        let notice: Option<serde_json::Value> = row.get(0);
        Ok(DeliveryContext {
            notice: notice
                .and_then(|n| serde_json::from_value(n).ok())
                .unwrap_or_default(),
            account_id: row.get(1),
            due_at: row.get(2),
            app_body: row.get(3),
        })
    }

    /// The status of the provider object `id` in the table of `kind`, if we have it.
    pub async fn object_status(
        &self,
        provider: &str,
        kind: paysync_domain::billing::ObjectKind,
        id: &str,
    ) -> Result<Option<String>, StoreError> {
        let conn = self.conn().await?;
        let sql = format!(
            "select status from {} where provider = $1 and id = $2",
            crate::billing::table(kind)
        );
        let row = conn
            .0
            .query_opt(&sql, &[&provider, &id])
            .await
            .map_err(StoreError::db("read object status"))?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Every destination with its queue.
    pub async fn destinations(&self) -> Result<Vec<DestinationRow>, StoreError> {
        let conn = self.conn().await?;
        let rows = conn
            .0
            .query(
                "select od.name, od.configured, od.paused_until, od.pause_reason, \
                   od.disabled_reason, od.forced, od.breaker, od.breaker_state, od.lane_owner, \
                   od.updated_at, od.updated_by, \
                   coalesce(q.pending, 0), coalesce(q.in_flight, 0), coalesce(q.dead, 0), \
                   q.oldest \
                 from outbox_destinations od \
                 left join lateral ( \
                   select count(*) filter (where state = 'pending') as pending, \
                          count(*) filter (where state = 'in_flight') as in_flight, \
                          count(*) filter (where state = 'dead') as dead, \
                          extract(epoch from now() - min(created_at) \
                              filter (where state in ('pending', 'in_flight')))::float8 as oldest \
                   from outbox_deliveries where destination = od.name \
                     and state in ('pending', 'in_flight', 'dead')) q on true \
                 order by od.name",
                &[],
            )
            .await
            .map_err(StoreError::db("read destinations"))?;
        Ok(rows
            .iter()
            .map(|r| DestinationRow {
                name: r.get(0),
                configured: r.get(1),
                paused_until: r.get(2),
                pause_reason: r.get(3),
                disabled_reason: r.get(4),
                forced: r.get(5),
                breaker: r.get(6),
                breaker_state: r.get(7),
                lane_owner: r.get(8),
                updated_at: r.get(9),
                updated_by: r.get(10),
                pending: r.get(11),
                in_flight: r.get(12),
                dead: r.get(13),
                oldest_pending_s: r.get(14),
            })
            .collect())
    }

    /// One destination, or `None`.
    pub async fn destination(&self, name: &str) -> Result<Option<DestinationRow>, StoreError> {
        Ok(self
            .destinations()
            .await?
            .into_iter()
            .find(|d| d.name == name))
    }

    /// What a lane checks before each claim: the operator's override, the pause left (ms),
    /// why it is disabled. `None` when the destination has no row.
    pub async fn destination_control(
        &self,
        name: &str,
    ) -> Result<Option<DestinationControl>, StoreError> {
        let conn = self.conn().await?;
        let stmt = conn
            .0
            .prepare_cached(
                "select forced, greatest(extract(epoch from paused_until - now()) * 1000, 0)::float8, \
                   disabled_reason, breaker from outbox_destinations where name = $1",
            )
            .await
            .map_err(StoreError::db("read destination control"))?;
        let row = conn
            .0
            .query_opt(&stmt, &[&name])
            .await
            .map_err(StoreError::db("read destination control"))?;
        Ok(row.map(|r| DestinationControl {
            forced: r.get(0),
            paused_ms: r.get::<_, Option<f64>>(1).unwrap_or(0.0),
            disabled_reason: r.get(2),
            breaker: r.get(3),
        }))
    }

    /// Saves the lane's view of its breaker and who owns the lane.
    pub async fn save_lane(
        &self,
        name: &str,
        breaker: &serde_json::Value,
        breaker_state: &str,
        owner: Option<&str>,
    ) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        conn.0
            .execute(
                "update outbox_destinations set breaker = $2, breaker_state = $3, \
                   lane_owner = $4, updated_at = now() \
                 where name = $1",
                &[&name, breaker, &breaker_state, &owner],
            )
            .await
            .map_err(StoreError::db("save lane state"))?;
        Ok(())
    }

    /// Pauses `name` for `for_` from now (never shortening a longer pause); the pause's end.
    pub async fn pause_destination(
        &self,
        name: &str,
        for_: std::time::Duration,
        reason: &str,
        by: &str,
    ) -> Result<Option<OffsetDateTime>, StoreError> {
        let conn = self.conn().await?;
        let row = conn
            .0
            .query_opt(
                "update outbox_destinations set \
                   paused_until = greatest(coalesce(paused_until, now()), \
                                           now() + $2 * interval '1 millisecond'), \
                   pause_reason = $3, updated_at = now(), updated_by = $4 \
                 where name = $1 returning paused_until",
                &[&name, &ms(for_), &reason, &by],
            )
            .await
            .map_err(StoreError::db("pause destination"))?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Disables `name` until an operator resumes it. Whether it existed.
    pub async fn disable_destination(
        &self,
        name: &str,
        reason: &str,
        by: &str,
    ) -> Result<bool, StoreError> {
        self.update_destination(
            "update outbox_destinations set disabled_reason = $2, updated_at = now(), \
               updated_by = $3 where name = $1",
            &[&name, &reason, &by],
        )
        .await
    }

    /// Clears a pause and a disablement of `name`. Whether it existed.
    pub async fn resume_destination(&self, name: &str, by: &str) -> Result<bool, StoreError> {
        self.update_destination(
            "update outbox_destinations set paused_until = null, pause_reason = null, \
               disabled_reason = null, updated_at = now(), updated_by = $2 where name = $1",
            &[&name, &by],
        )
        .await
    }

    /// Sets the operator's override of `name`'s breaker (`auto`, `open`, `closed`). Whether it
    /// existed.
    pub async fn force_breaker(
        &self,
        name: &str,
        forced: &str,
        by: &str,
    ) -> Result<bool, StoreError> {
        self.update_destination(
            "update outbox_destinations set forced = $2, updated_at = now(), updated_by = $3 \
             where name = $1",
            &[&name, &forced, &by],
        )
        .await
    }

    async fn update_destination(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<bool, StoreError> {
        let conn = self.conn().await?;
        let n = conn
            .0
            .execute(sql, params)
            .await
            .map_err(StoreError::db("update destination"))?;
        Ok(n > 0)
    }

    /// The deliveries `filter` matches, newest first.
    pub async fn deliveries(
        &self,
        filter: &DeliveryFilter,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        let conn = self.conn().await?;
        let sql = format!(
            "select {COLUMNS} from outbox_deliveries \
             where (cardinality($1::int8[]) = 0 or id = any($1)) \
               and ($2::text is null or state = $2) \
               and ($3::text is null or destination = $3) \
               and ($4::text is null or operation = $4) \
             order by id desc limit $5"
        );
        let limit = if filter.limit > 0 {
            filter.limit
        } else {
            i64::MAX
        };
        let rows = conn
            .0
            .query(
                &sql,
                &[
                    &filter.ids,
                    &filter.state,
                    &filter.destination,
                    &filter.operation,
                    &limit,
                ],
            )
            .await
            .map_err(StoreError::db("list deliveries"))?;
        Ok(rows.iter().map(delivery_row).collect())
    }

    /// One delivery and its attempts, oldest first.
    pub async fn delivery(
        &self,
        id: i64,
    ) -> Result<Option<(DeliveryRow, Vec<AttemptRow>)>, StoreError> {
        let conn = self.conn().await?;
        let Some(row) = conn
            .0
            .query_opt(
                &format!("select {COLUMNS} from outbox_deliveries where id = $1"),
                &[&id],
            )
            .await
            .map_err(StoreError::db("read delivery"))?
        else {
            return Ok(None);
        };
        let attempts = conn
            .0
            .query(
                "select attempt, lease_token, owner, started_at, duration_ms, outcome, status, \
                   error, retry_after_s \
                 from outbox_attempts where delivery_id = $1 order by started_at, lease_token",
                &[&id],
            )
            .await
            .map_err(StoreError::db("read attempts"))?;
        Ok(Some((
            delivery_row(&row),
            attempts
                .iter()
                .map(|r| AttemptRow {
                    attempt: r.get(0),
                    lease_token: r.get(1),
                    owner: r.get(2),
                    started_at: r.get(3),
                    duration_ms: r.get(4),
                    outcome: r.get(5),
                    status: r.get(6),
                    error: r.get(7),
                    retry_after_s: r.get(8),
                })
                .collect(),
        )))
    }

    /// Makes the dead, skipped or expired deliveries `filter` matches pending again with their
    /// attempts reset, spread over time at `per_second` per destination (oldest first) so a
    /// large retry does not arrive as a herd. With `dry_run` only counts them. The ids.
    pub async fn retry_deliveries(
        &self,
        filter: &DeliveryFilter,
        per_second: f64,
        dry_run: bool,
    ) -> Result<Vec<i64>, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn
            .0
            .transaction()
            .await
            .map_err(StoreError::db("begin"))?;
        let rows = tx
            .query(
                "with locked as ( \
                   select id, destination from outbox_deliveries \
                   where state in ('dead', 'skipped', 'expired') \
                     and (cardinality($1::int8[]) = 0 or id = any($1)) \
                     and ($2::text is null or state = $2) \
                     and ($3::text is null or destination = $3) \
                     and ($4::text is null or operation = $4) \
                   for update), \
                 m as ( \
                   select id, \
                     row_number() over (partition by destination order by id) - 1 as n \
                   from locked) \
                 update outbox_deliveries d set state = 'pending', attempts = 0, \
                   next_attempt_at = now() + (m.n / $5::float8) * interval '1 second', \
                   fingerprint = null, reason = null, done_at = null \
                 from m where d.id = m.id and not $6 \
                 returning d.id",
                &[
                    &filter.ids,
                    &filter.state,
                    &filter.destination,
                    &filter.operation,
                    &per_second.max(0.001),
                    &dry_run,
                ],
            )
            .await
            .map_err(StoreError::db("retry deliveries"))?;
        let ids: Vec<i64> = if dry_run {
            let counted = tx
                .query(
                    "select id from outbox_deliveries \
                     where state in ('dead', 'skipped', 'expired') \
                       and (cardinality($1::int8[]) = 0 or id = any($1)) \
                       and ($2::text is null or state = $2) \
                       and ($3::text is null or destination = $3) \
                       and ($4::text is null or operation = $4) order by id",
                    &[
                        &filter.ids,
                        &filter.state,
                        &filter.destination,
                        &filter.operation,
                    ],
                )
                .await
                .map_err(StoreError::db("count deliveries to retry"))?;
            counted.iter().map(|r| r.get(0)).collect()
        } else {
            let mut ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
            ids.sort_unstable();
            ids
        };
        tx.commit().await.map_err(StoreError::db("commit"))?;
        Ok(ids)
    }

    /// Skips the pending or dead deliveries `ids` with `reason` (an operator's decision, e.g.
    /// "sent by hand"). The ids skipped.
    pub async fn skip_deliveries(&self, ids: &[i64], reason: &str) -> Result<Vec<i64>, StoreError> {
        let conn = self.conn().await?;
        let rows = conn
            .0
            .query(
                "update outbox_deliveries set state = 'skipped', reason = $2, done_at = now(), \
                   lease_token = null, lease_owner = null, lease_expires_at = null \
                 where id = any($1) and state in ('pending', 'dead') returning id",
                &[&ids, &reason],
            )
            .await
            .map_err(StoreError::db("skip deliveries"))?;
        let mut out: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        out.sort_unstable();
        Ok(out)
    }
}
