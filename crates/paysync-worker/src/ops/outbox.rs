//! Operator actions on the outbox: deliveries (list, show, retry, skip) and destinations
//! (list, pause, resume, force the breaker). `paysync outbox …` and the admin API both call
//! these, so they give the same answers. Every action is recorded in the audit trail (dry runs
//! too); the reads are not.
//!
//! Rule of thumb: a retry never makes a crowd due at once. The deliveries it brings back are
//! spread at the destination's send rate, so the lane's token bucket meets a queue, not a herd.

use std::time::Duration;

use paysync_domain::outbound::{Destination, Operation};
use paysync_store::{AttemptRow, DeliveryFilter, DeliveryRow, DestinationRow};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Ops, OpsError, ts};

/// The dispatcher's default send rates (requests a second, per destination): a retry makes its
/// deliveries due at this pace unless the operator gives a rate.
pub const RETRY_RATES: [(Destination, f64); 4] = [
    (Destination::Email, 4.0),
    (Destination::Chat, 1.0),
    (Destination::Hubspot, 9.0),
    (Destination::App, 10.0),
];

/// The longest error excerpt a view shows, in bytes (the dispatcher already redacts them).
pub const EXCERPT_MAX: usize = 2048;

/// Every delivery state.
pub const STATES: [&str; 6] = ["pending", "in_flight", "sent", "dead", "skipped", "expired"];

/// The states a retry brings back to pending.
pub const RETRYABLE: [&str; 3] = ["dead", "skipped", "expired"];

/// The default rate of `destination`'s retries, per second.
pub fn retry_rate(destination: Destination) -> f64 {
    RETRY_RATES
        .iter()
        .find(|(d, _)| *d == destination)
        .map_or(1.0, |(_, r)| *r)
}

/// `text` cut to [`EXCERPT_MAX`] bytes at a character boundary, `…` marking a cut.
pub fn excerpt(text: &str) -> String {
    const MARK: &str = "…";
    if text.len() <= EXCERPT_MAX {
        return text.to_owned();
    }
    let mut end = EXCERPT_MAX - MARK.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &text[..end])
}

fn known<T>(all: &[T], name: impl Fn(&T) -> &'static str) -> String {
    all.iter().map(name).collect::<Vec<_>>().join(", ")
}

/// The destination called `name`, or an error naming the known ones.
pub fn destination(name: &str) -> Result<Destination, OpsError> {
    Destination::parse(name).ok_or_else(|| {
        OpsError::Refused(format!(
            "unknown destination {name:?}; known: {}",
            known(&Destination::ALL, |d| d.as_str())
        ))
    })
}

fn operation(name: &str) -> Result<Operation, OpsError> {
    Operation::parse(name).ok_or_else(|| {
        OpsError::Refused(format!(
            "unknown operation {name:?}; known: {}",
            known(&Operation::ALL, |o| o.as_str())
        ))
    })
}

fn state<'a>(name: &str, allowed: &[&'a str]) -> Result<&'a str, OpsError> {
    allowed
        .iter()
        .find(|s| **s == name)
        .copied()
        .ok_or_else(|| {
            OpsError::Refused(format!(
                "state {name:?} is not one of: {}",
                allowed.join(", ")
            ))
        })
}

/// Checks the names in `filter`: known destination, operation and state.
pub fn check_filter(filter: &DeliveryFilter) -> Result<(), OpsError> {
    if let Some(d) = &filter.destination {
        destination(d)?;
    }
    if let Some(o) = &filter.operation {
        operation(o)?;
    }
    if let Some(s) = &filter.state {
        state(s, &STATES)?;
    }
    Ok(())
}

/// Seconds rounded to the millisecond, so views print short numbers.
fn secs(s: f64) -> f64 {
    (s * 1000.0).round() / 1000.0
}

// Fields are declared in alphabetical order: serde writes them in declaration order, and the
// JSON of the CLI and the admin API stays stable (house rule).

/// A delivery as lists show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeliveryView {
    /// The account, when known.
    pub account_id: Option<i64>,
    /// Attempts counted.
    pub attempts: i32,
    /// When the intent was recorded, RFC 3339.
    pub created_at: String,
    /// Destination name.
    pub destination: String,
    /// When it reached its final state, RFC 3339.
    pub done_at: Option<String>,
    /// The destination's id for what it created.
    pub external_ref: Option<String>,
    /// Dead: the kind of failure (`destination:error_kind:code`).
    pub fingerprint: Option<String>,
    /// Delivery id.
    pub id: i64,
    /// Unique per destination.
    pub idempotency_key: String,
    /// The intent.
    pub intent: String,
    /// The last error, redacted, at most [`EXCERPT_MAX`] bytes.
    pub last_error: Option<String>,
    /// The last HTTP status or SMTP code.
    pub last_status: Option<i32>,
    /// When it is next due (pending), RFC 3339.
    pub next_attempt_at: String,
    /// Operation name.
    pub operation: String,
    /// The intent's provider.
    pub provider: String,
    /// Skipped or expired: why.
    pub reason: Option<String>,
    /// The object the intent is about.
    pub source_id: String,
    /// `pending`, `in_flight`, `sent`, `dead`, `skipped` or `expired`.
    pub state: String,
}

impl From<&DeliveryRow> for DeliveryView {
    fn from(d: &DeliveryRow) -> Self {
        Self {
            account_id: d.account_id,
            attempts: d.attempts,
            created_at: ts(d.created_at),
            destination: d.destination.clone(),
            done_at: d.done_at.map(ts),
            external_ref: d.external_ref.clone(),
            fingerprint: d.fingerprint.clone(),
            id: d.id,
            idempotency_key: d.idempotency_key.clone(),
            intent: d.intent.clone(),
            last_error: d.last_error.as_deref().map(excerpt),
            last_status: d.last_status,
            next_attempt_at: ts(d.next_attempt_at),
            operation: d.operation.clone(),
            provider: d.provider.clone(),
            reason: d.reason.clone(),
            source_id: d.source_id.clone(),
            state: d.state.clone(),
        }
    }
}

/// One attempt of a delivery.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttemptView {
    /// Attempt number.
    pub attempt: i32,
    /// How long the call took, in milliseconds.
    pub duration_ms: i32,
    /// What went wrong, redacted, at most [`EXCERPT_MAX`] bytes.
    pub error: Option<String>,
    /// The claim's fencing token.
    pub lease_token: i64,
    /// `sent`, `retry`, `rate_limited`, `disabled`, `dead`, `skipped`, `expired`.
    pub outcome: String,
    /// The process that made it.
    pub owner: String,
    /// The destination's `Retry-After`, in seconds.
    pub retry_after_s: Option<f64>,
    /// When it started, RFC 3339.
    pub started_at: String,
    /// HTTP status or SMTP reply code.
    pub status: Option<i32>,
}

impl From<&AttemptRow> for AttemptView {
    fn from(a: &AttemptRow) -> Self {
        Self {
            attempt: a.attempt,
            duration_ms: a.duration_ms,
            error: a.error.as_deref().map(excerpt),
            lease_token: a.lease_token,
            outcome: a.outcome.clone(),
            owner: a.owner.clone(),
            retry_after_s: a.retry_after_s,
            started_at: ts(a.started_at),
            status: a.status,
        }
    }
}

/// A delivery with its attempts, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeliveryDetail {
    /// Its attempts, oldest first.
    pub attempts: Vec<AttemptView>,
    /// The delivery.
    pub delivery: DeliveryView,
}

/// A destination: its state as operators and its lane set it, and its queue.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DestinationView {
    /// The breaker's state, as the lane saved it.
    pub breaker_state: String,
    /// Whether a dispatcher configured it.
    pub configured: bool,
    /// Dead deliveries.
    pub dead: i64,
    /// Why it is disabled (until an operator resumes it).
    pub disabled_reason: Option<String>,
    /// `auto`, `open` or `closed`: the operator's override of the breaker.
    pub forced: String,
    /// Deliveries in flight.
    pub in_flight: i64,
    /// The process that owns its lane.
    pub lane_owner: Option<String>,
    /// Name.
    pub name: String,
    /// Age of the oldest pending or in-flight delivery, in seconds.
    pub oldest_pending_s: Option<f64>,
    /// Why it is paused.
    pub pause_reason: Option<String>,
    /// Paused until then, RFC 3339 (a time in the past: no longer paused).
    pub paused_until: Option<String>,
    /// Deliveries pending.
    pub pending: i64,
    /// Last change, RFC 3339.
    pub updated_at: String,
    /// Who made it.
    pub updated_by: Option<String>,
}

impl From<&DestinationRow> for DestinationView {
    fn from(d: &DestinationRow) -> Self {
        Self {
            breaker_state: d.breaker_state.clone(),
            configured: d.configured,
            dead: d.dead,
            disabled_reason: d.disabled_reason.clone(),
            forced: d.forced.clone(),
            in_flight: d.in_flight,
            lane_owner: d.lane_owner.clone(),
            name: d.name.clone(),
            oldest_pending_s: d.oldest_pending_s.map(secs),
            pause_reason: d.pause_reason.clone(),
            paused_until: d.paused_until.map(ts),
            pending: d.pending,
            updated_at: ts(d.updated_at),
            updated_by: d.updated_by.clone(),
        }
    }
}

/// What an outbox retry did, or (dry run) would do.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutboxRetryReport {
    /// How many deliveries were (or would be) made pending again.
    pub count: usize,
    /// Whether it only counted.
    pub dry_run: bool,
    /// Their ids.
    pub ids: Vec<i64>,
    /// Seconds from now until the last of them is due.
    pub spread_seconds: f64,
}

/// What an outbox skip did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutboxSkipReport {
    /// The ids given that were not pending or dead (or do not exist): left as they were.
    pub not_skipped: Vec<i64>,
    /// Why they were skipped.
    pub reason: String,
    /// The ids skipped.
    pub skipped: Vec<i64>,
}

/// What a destination action did, and the destination after it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DestinationActionReport {
    /// `pause`, `resume` or `force`.
    pub action: String,
    /// The destination now.
    pub destination: DestinationView,
}

/// Which deliveries a retry applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliverySelection {
    /// These ids (only the dead, skipped or expired ones are retried).
    Ids(Vec<i64>),
    /// Every delivery in `state` (dead, skipped or expired), optionally of one destination
    /// and one operation.
    Matching {
        /// `dead`, `skipped` or `expired`.
        state: String,
        /// Only this destination.
        destination: Option<String>,
        /// Only this operation.
        operation: Option<String>,
    },
}

impl DeliverySelection {
    /// Ids, or a state with an optional destination and operation; anything else is refused.
    pub fn from_parts(
        ids: Vec<i64>,
        state: Option<String>,
        destination: Option<String>,
        operation: Option<String>,
    ) -> Result<Self, OpsError> {
        let filtered = state.is_some() || destination.is_some() || operation.is_some();
        match (ids.is_empty(), state) {
            (false, _) if filtered => Err(OpsError::Refused(
                "give delivery ids, or a state (with a destination and an operation if you \
                 like), not both"
                    .into(),
            )),
            (false, _) => Ok(Self::Ids(ids)),
            (true, Some(state)) => Ok(Self::Matching {
                state,
                destination,
                operation,
            }),
            (true, None) => Err(OpsError::Refused(
                "give delivery ids, or a state (dead, skipped or expired)".into(),
            )),
        }
    }

    /// The store filter and the audit trail's target; refuses unknown names.
    fn filter(&self) -> Result<(DeliveryFilter, String), OpsError> {
        Ok(match self {
            Self::Ids(ids) => (
                DeliveryFilter {
                    ids: ids.clone(),
                    ..DeliveryFilter::default()
                },
                format!("deliveries {ids:?}"),
            ),
            Self::Matching {
                state: s,
                destination: d,
                operation: o,
            } => {
                let filter = DeliveryFilter {
                    state: Some(state(s, &RETRYABLE)?.to_owned()),
                    destination: d.clone(),
                    operation: o.clone(),
                    ..DeliveryFilter::default()
                };
                check_filter(&filter)?;
                let any = |v: &Option<String>| v.clone().unwrap_or_else(|| "*".into());
                let target = format!("state={s} destination={} operation={}", any(d), any(o));
                (filter, target)
            }
        })
    }
}

/// The operator's override of a destination's breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ForcedBreaker {
    /// The lane's breaker decides.
    Auto,
    /// Nothing is sent (the claim takes nothing) until forced otherwise.
    Open,
    /// Sent regardless of the breaker.
    Closed,
}

impl ForcedBreaker {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Open => "open",
            Self::Closed => "closed",
        }
    }
}

impl Ops {
    /// Deliveries matching `filter`, newest first; unknown names are refused.
    pub async fn outbox_list(
        &self,
        filter: &DeliveryFilter,
    ) -> Result<Vec<DeliveryView>, OpsError> {
        check_filter(filter)?;
        let rows = self.store.deliveries(filter).await?;
        Ok(rows.iter().map(DeliveryView::from).collect())
    }

    /// One delivery with its attempts, or `None`.
    pub async fn outbox_show(&self, id: i64) -> Result<Option<DeliveryDetail>, OpsError> {
        Ok(self
            .store
            .delivery(id)
            .await?
            .map(|(d, attempts)| DeliveryDetail {
                attempts: attempts.iter().map(AttemptView::from).collect(),
                delivery: DeliveryView::from(&d),
            }))
    }

    /// Makes the selected dead, skipped or expired deliveries pending again with their
    /// attempts reset, due one after another at `per_second` (default: each destination's
    /// [`RETRY_RATES`]). With `dry_run` only counts them.
    pub async fn outbox_retry(
        &self,
        selection: &DeliverySelection,
        per_second: Option<f64>,
        dry_run: bool,
        actor: &str,
    ) -> Result<OutboxRetryReport, OpsError> {
        let (filter, target) = selection.filter()?;
        if let Some(r) = per_second
            && !(r.is_finite() && r > 0.0)
        {
            return Err(OpsError::Refused(format!(
                "rate must be a positive number of deliveries a second, not {r}"
            )));
        }
        let destinations = match &filter.destination {
            Some(d) => vec![destination(d)?],
            None => Destination::ALL.to_vec(),
        };
        let mut ids = Vec::new();
        let mut spread = 0.0_f64;
        let mut rates = serde_json::Map::new();
        // One destination at a time: each spreads at its own rate from now.
        for d in destinations {
            let rate = per_second.unwrap_or_else(|| retry_rate(d));
            let one = DeliveryFilter {
                destination: Some(d.as_str().to_owned()),
                ..filter.clone()
            };
            let done = self.store.retry_deliveries(&one, rate, dry_run).await?;
            if !done.is_empty() {
                spread = spread.max((done.len() - 1) as f64 / rate);
                rates.insert(d.as_str().to_owned(), json!(rate));
            }
            ids.extend(done);
        }
        ids.sort_unstable();
        let report = OutboxRetryReport {
            count: ids.len(),
            dry_run,
            ids,
            spread_seconds: secs(spread),
        };
        self.record(
            actor,
            "outbox.retry",
            &target,
            report.count,
            dry_run,
            json!({"ids": report.ids, "per_second": rates, "spread_seconds": report.spread_seconds}),
        )
        .await?;
        Ok(report)
    }

    /// Skips the pending or dead deliveries among `ids`, for `reason` (required: who decided
    /// is in the audit trail, why is on the delivery).
    pub async fn outbox_skip(
        &self,
        ids: &[i64],
        reason: &str,
        actor: &str,
    ) -> Result<OutboxSkipReport, OpsError> {
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(OpsError::Refused(
                "a skip needs a reason (e.g. \"already emailed by hand\")".into(),
            ));
        }
        if ids.is_empty() {
            return Err(OpsError::Refused(
                "give the ids of the deliveries to skip".into(),
            ));
        }
        let skipped = self.store.skip_deliveries(ids, reason).await?;
        let mut not_skipped: Vec<i64> = ids
            .iter()
            .copied()
            .filter(|id| !skipped.contains(id))
            .collect();
        not_skipped.sort_unstable();
        not_skipped.dedup();
        let report = OutboxSkipReport {
            not_skipped,
            reason: reason.to_owned(),
            skipped,
        };
        self.record(
            actor,
            "outbox.skip",
            &format!("deliveries {ids:?}"),
            report.skipped.len(),
            false,
            json!({"not_skipped": report.not_skipped, "reason": reason, "skipped": report.skipped}),
        )
        .await?;
        Ok(report)
    }

    /// Every destination with its queue.
    pub async fn outbox_destinations(&self) -> Result<Vec<DestinationView>, OpsError> {
        let rows = self.store.destinations().await?;
        Ok(rows.iter().map(DestinationView::from).collect())
    }

    /// Pauses `name` for `duration` from now (a longer pause already there is kept): the claim
    /// takes nothing of it meanwhile, on every replica.
    pub async fn destination_pause(
        &self,
        name: &str,
        duration: Duration,
        reason: &str,
        actor: &str,
    ) -> Result<DestinationActionReport, OpsError> {
        destination(name)?;
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(OpsError::Refused("a pause needs a reason".into()));
        }
        if duration.is_zero() {
            return Err(OpsError::Refused(
                "a pause needs a duration above zero".into(),
            ));
        }
        let until = self
            .store
            .pause_destination(name, duration, reason, actor)
            .await?
            .ok_or_else(|| no_row(name))?;
        let details = json!({
            "paused_until": ts(until),
            "reason": reason,
            "seconds": duration.as_secs_f64(),
        });
        self.destination_done(name, "pause", actor, details).await
    }

    /// Ends a pause and a disablement of `name`.
    pub async fn destination_resume(
        &self,
        name: &str,
        actor: &str,
    ) -> Result<DestinationActionReport, OpsError> {
        let before = self.existing(name).await?;
        if !self.store.resume_destination(name, actor).await? {
            return Err(no_row(name));
        }
        let details = json!({
            "was_disabled": before.disabled_reason,
            "was_paused_until": before.paused_until.map(ts),
        });
        self.destination_done(name, "resume", actor, details).await
    }

    /// Sets the operator's override of `name`'s breaker.
    pub async fn destination_force(
        &self,
        name: &str,
        mode: ForcedBreaker,
        actor: &str,
    ) -> Result<DestinationActionReport, OpsError> {
        let before = self.existing(name).await?;
        if !self.store.force_breaker(name, mode.as_str(), actor).await? {
            return Err(no_row(name));
        }
        let details = json!({"mode": mode.as_str(), "was": before.forced});
        self.destination_done(name, "force", actor, details).await
    }

    /// The row of the known destination `name`.
    async fn existing(&self, name: &str) -> Result<DestinationRow, OpsError> {
        destination(name)?;
        self.store
            .destination(name)
            .await?
            .ok_or_else(|| no_row(name))
    }

    /// Records a destination action and reads the destination after it.
    async fn destination_done(
        &self,
        name: &str,
        action: &str,
        actor: &str,
        details: serde_json::Value,
    ) -> Result<DestinationActionReport, OpsError> {
        self.record(actor, &format!("outbox.{action}"), name, 1, false, details)
            .await?;
        let row = self.existing(name).await?;
        Ok(DestinationActionReport {
            action: action.to_owned(),
            destination: DestinationView::from(&row),
        })
    }

    async fn record(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        affected: usize,
        dry_run: bool,
        details: serde_json::Value,
    ) -> Result<(), OpsError> {
        self.store
            .record_action(actor, action, target, affected as i64, dry_run, details)
            .await?;
        tracing::info!(actor, action, target, affected, dry_run, "operator action");
        Ok(())
    }
}

fn no_row(name: &str) -> OpsError {
    OpsError::NotFound(format!(
        "destination {name} has no state yet: no dispatcher has configured it"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_are_cut_at_a_character_boundary_within_the_cap() {
        assert_eq!(excerpt("short"), "short");
        let exact = "a".repeat(EXCERPT_MAX);
        assert_eq!(excerpt(&exact), exact);
        let long = "é".repeat(EXCERPT_MAX);
        let cut = excerpt(&long);
        assert!(cut.len() <= EXCERPT_MAX, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert!(cut.len() > EXCERPT_MAX - 8);
    }

    #[test]
    fn selections_need_ids_or_a_state_but_not_both() {
        assert_eq!(
            DeliverySelection::from_parts(vec![1], None, None, None).expect("ids"),
            DeliverySelection::Ids(vec![1])
        );
        assert!(DeliverySelection::from_parts(vec![], None, Some("email".into()), None).is_err());
        assert!(DeliverySelection::from_parts(vec![1], Some("dead".into()), None, None).is_err());
        let sel = DeliverySelection::from_parts(vec![], Some("sent".into()), None, None)
            .expect("a state");
        let err = sel.filter().expect_err("sent is not retryable").to_string();
        assert!(err.contains("dead, skipped, expired"), "{err}");
    }

    #[test]
    fn unknown_names_are_refused_with_the_known_ones() {
        let err = destination("sms").expect_err("unknown").to_string();
        assert_eq!(
            err,
            "unknown destination \"sms\"; known: email, chat, hubspot, app"
        );
        let err = check_filter(&DeliveryFilter {
            operation: Some("email.spam".into()),
            ..DeliveryFilter::default()
        })
        .expect_err("unknown operation")
        .to_string();
        assert!(err.contains("email.receipt"), "{err}");
    }

    #[test]
    fn every_destination_has_a_default_retry_rate() {
        for d in Destination::ALL {
            assert!(RETRY_RATES.iter().any(|(r, _)| *r == d), "{d:?}");
        }
        assert_eq!(retry_rate(Destination::Hubspot), 9.0);
    }
}
