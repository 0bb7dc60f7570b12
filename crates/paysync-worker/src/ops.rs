//! Operator actions on dead letters and the event log, shared by the `paysync` CLI and the
//! admin HTTP API so both give the same answers. Every action is recorded in the audit trail.
//!
//! Rule of thumb: a dead letter is marked `retried` only after its republish was confirmed,
//! one at a time, so a retry interrupted halfway can simply be run again: it picks up the
//! letters still open.
//!
//! The outbox's deliveries and destinations are in [`outbox`].

pub mod outbox;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use paysync_amqp::Publisher;
use paysync_domain::{EventMeta, Provider};
use paysync_store::{
    DeadLetterFilter, DeadLetterGroup, DeadLetterRow, EventRow, OperatorAction, PurgeState, Store,
    StoreError,
};
use serde::Serialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Which dead letters an action applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// These ids.
    Ids(Vec<i64>),
    /// Every open letter of this fingerprint.
    Group(String),
    /// Every open letter.
    All,
}

impl Selection {
    fn describe(&self) -> String {
        match self {
            Self::Ids(ids) => format!("ids {ids:?}"),
            Self::Group(g) => format!("group {g}"),
            Self::All => "all".into(),
        }
    }
}

/// An operator action failed.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A republish was not confirmed; letters handled before it stay handled.
    #[error(
        "republish not confirmed after {done} of {total}; run the same command again to continue"
    )]
    Publish {
        /// Done before the failure.
        done: usize,
        /// Selected in all.
        total: usize,
        /// Why.
        #[source]
        source: paysync_amqp::PublishError,
    },
    /// A replay or an import stopped at an unconfirmed publish; the items before `resume_from`
    /// (in the selection's order) are in the work queue, and a run with that skip continues.
    #[error(
        "republish not confirmed after {resume_from} of {total}; continue with --skip {resume_from}"
    )]
    Resumable {
        /// Items confirmed, those skipped included.
        resume_from: usize,
        /// Selected in all.
        total: usize,
        /// Why.
        #[source]
        source: paysync_amqp::PublishError,
    },
    /// A view could not be written as JSON.
    #[error("cannot write JSON")]
    Encode(#[from] serde_json::Error),
    /// The request is not valid (an unknown name, a missing reason); nothing was done.
    #[error("{0}")]
    Refused(String),
    /// What the request names does not exist; nothing was done.
    #[error("{0}")]
    NotFound(String),
    /// A line of an export file is unusable.
    #[error("line {line}: {reason}")]
    BadExportLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

impl OpsError {
    /// A replay or an import failed after the first `resume_from` of `total` were confirmed.
    fn resumable(
        resume_from: usize,
        total: usize,
    ) -> impl FnOnce(paysync_amqp::PublishError) -> Self {
        move |source| Self::Resumable {
            resume_from,
            total,
            source,
        }
    }
}

/// Operator actions over one store and broker.
#[derive(Clone)]
pub struct Ops {
    store: Store,
    publisher: Publisher,
}

/// A time as the views show it: RFC 3339.
pub fn ts(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

// The result types below serialise their fields in declaration order, which is alphabetical:
// the CLI and the admin API printed `serde_json::Value`s before (sorted keys), and their JSON
// stays byte for byte the same (`tests/it/views.rs` pins it).

/// A dead letter as operators see it; [`LetterView::full`] adds body, headers and the whole
/// chain.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LetterView {
    /// Delivery attempts before it was dead-lettered.
    pub attempts: i32,
    /// The body parsed as JSON (`null` if it is not JSON); full view only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// The exact body, base64; full view only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    /// The first line of the chain that says what went wrong.
    pub error: String,
    /// The whole error chain, a line each; full view only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_chain: Option<Vec<String>>,
    /// The failure kind.
    pub error_kind: String,
    /// The event id, when the message had one.
    pub event_id: Option<String>,
    /// The event type, when the message had one.
    pub event_type: Option<String>,
    /// The group (cause) it belongs to.
    pub fingerprint: String,
    /// First failure, RFC 3339.
    pub first_failed_at: String,
    /// The message headers; full view only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<Value>,
    /// Dead letter id.
    pub id: i64,
    /// Last failure, RFC 3339.
    pub last_failed_at: String,
    /// How often operators sent it back.
    pub redrives: i32,
    /// The routing key it was published with; full view only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing_key: Option<String>,
    /// `open`, `retried` or `archived`.
    pub state: String,
}

impl LetterView {
    /// The summary of a dead letter, as lists show it.
    pub fn summary(d: &DeadLetterRow) -> Self {
        Self {
            attempts: d.attempts,
            body: None,
            body_base64: None,
            error: d
                .error_chain
                .lines()
                .find(|l| !l.starts_with("retries exhausted"))
                .unwrap_or_default()
                .to_owned(),
            error_chain: None,
            error_kind: d.error_kind.clone(),
            event_id: d.event_id.clone(),
            event_type: d.event_type.clone(),
            fingerprint: d.fingerprint.clone(),
            first_failed_at: ts(d.first_failed_at),
            headers: None,
            id: d.id,
            last_failed_at: ts(d.last_failed_at),
            redrives: d.redrives,
            routing_key: None,
            state: d.state.clone(),
        }
    }

    /// The whole dead letter: body (parsed and exact), headers, routing key, the chain.
    pub fn full(d: &DeadLetterRow) -> Self {
        Self {
            body: Some(serde_json::from_slice(&d.body).unwrap_or(Value::Null)),
            body_base64: Some(B64.encode(&d.body)),
            error_chain: Some(d.error_chain.lines().map(str::to_owned).collect()),
            headers: Some(d.headers.clone()),
            routing_key: Some(d.routing_key.clone()),
            ..Self::summary(d)
        }
    }
}

/// Open dead letters of one cause.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupView {
    /// How many.
    pub count: i64,
    /// The failure kind.
    pub error_kind: String,
    /// The event types among them.
    pub event_types: Vec<String>,
    /// The earliest first failure, RFC 3339.
    pub first_failed_at: String,
    /// The group: the fingerprint.
    pub group: String,
    /// The latest failure, RFC 3339.
    pub last_failed_at: String,
    /// What went wrong, in one line.
    pub title: String,
}

impl From<&DeadLetterGroup> for GroupView {
    fn from(g: &DeadLetterGroup) -> Self {
        Self {
            count: g.count,
            error_kind: g.error_kind.clone(),
            event_types: g.event_types.clone(),
            first_failed_at: ts(g.first_failed_at),
            group: g.fingerprint.clone(),
            last_failed_at: ts(g.last_failed_at),
            title: g.title.clone(),
        }
    }
}

/// One entry of the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActionView {
    /// What was done (`dlq.retry`, `events.replay`, …).
    pub action: String,
    /// Who did it (`cli:$USER`, `admin-api`).
    pub actor: String,
    /// How many items it affected.
    pub affected: i32,
    /// When, RFC 3339.
    pub at: String,
    /// Details of the action.
    pub details: Value,
    /// Whether it was a dry run.
    pub dry_run: bool,
    /// Entry id.
    pub id: i64,
    /// What it applied to.
    pub target: String,
}

impl From<&OperatorAction> for ActionView {
    fn from(a: &OperatorAction) -> Self {
        Self {
            action: a.action.clone(),
            actor: a.actor.clone(),
            affected: a.affected,
            at: ts(a.at),
            details: a.details.clone(),
            dry_run: a.dry_run,
            id: a.id,
            target: a.target.clone(),
        }
    }
}

/// An event of the event log; the payload only where it was read.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventView {
    /// The account the handler linked it to.
    pub account_id: Option<i64>,
    /// The provider's API version.
    pub api_version: Option<String>,
    /// The attempt that committed it.
    pub attempts: i32,
    /// The provider's `created`, Unix seconds.
    pub created: i64,
    /// Later deliveries skipped as duplicates.
    pub duplicates: i32,
    /// Event id.
    pub event_id: String,
    /// Event type.
    pub event_type: String,
    /// Live or test mode.
    pub livemode: bool,
    /// `applied` or `ignored`.
    pub outcome: String,
    /// The body, parsed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    /// When the worker committed it, RFC 3339.
    pub processed_at: String,
    /// The provider.
    pub provider: String,
    /// When the receiver took it, RFC 3339.
    pub received_at: String,
    /// How often operators replayed it.
    pub replays: i32,
}

impl From<&EventRow> for EventView {
    fn from(e: &EventRow) -> Self {
        Self {
            account_id: e.account_id,
            api_version: e.api_version.clone(),
            attempts: e.attempts,
            created: e.created,
            duplicates: e.duplicates,
            event_id: e.event_id.clone(),
            event_type: e.event_type.clone(),
            livemode: e.livemode,
            outcome: e.outcome.clone(),
            payload: e.payload.clone(),
            processed_at: ts(e.processed_at),
            provider: e.provider.clone(),
            received_at: ts(e.received_at),
            replays: e.replays,
        }
    }
}

/// What a dead-letter retry did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetryReport {
    /// Whether it only counted.
    pub dry_run: bool,
    /// The selected letters.
    pub ids: Vec<i64>,
    /// How many were republished and marked retried.
    pub retried: usize,
    /// How many were selected.
    pub selected: usize,
}

/// What an archive did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArchiveReport {
    /// How many were archived.
    pub archived: u64,
    /// How many were selected.
    pub selected: usize,
}

/// What a purge did, or (without `yes`) would do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PurgeReport {
    /// How many were deleted.
    pub deleted: u64,
    /// Without `yes`: how to delete them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<&'static str>,
    /// Without `yes`: how many would go.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_delete: Option<u64>,
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    /// How many lines were published.
    pub published: usize,
}

/// Which logged events a replay takes, as the CLI's and the API's flags give them: these ids,
/// or the events of a type processed since a time, of one provider.
#[derive(Debug, Clone, Copy)]
pub struct ReplaySelection<'a> {
    /// The provider whose events are replayed.
    pub provider: Provider,
    /// These event ids.
    pub ids: Option<&'a [String]>,
    /// Every event of this type (with `since`).
    pub event_type: Option<&'a str>,
    /// Processed at or after this time.
    pub since: Option<OffsetDateTime>,
}

/// What an event replay did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    /// Whether it only counted.
    pub dry_run: bool,
    /// How many were published.
    pub published: usize,
    /// How many were selected.
    pub selected: usize,
}

impl Ops {
    /// Operator actions on `store` and the broker behind `publisher`.
    pub fn new(store: Store, publisher: Publisher) -> Self {
        Self { store, publisher }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Open dead letters grouped by fingerprint.
    pub async fn groups(&self) -> Result<Vec<GroupView>, OpsError> {
        let groups = self.store.dead_letter_groups().await?;
        Ok(groups.iter().map(GroupView::from).collect())
    }

    /// The open dead letters of one group, or `None` when none is open.
    pub async fn group(&self, fingerprint: &str) -> Result<Option<GroupView>, OpsError> {
        let group = self.store.dead_letter_group(fingerprint).await?;
        Ok(group.as_ref().map(GroupView::from))
    }

    /// Dead letters matching `filter`.
    pub async fn list(&self, filter: &DeadLetterFilter) -> Result<Vec<LetterView>, OpsError> {
        let rows = self.store.dead_letter_list(filter).await?;
        Ok(rows.iter().map(LetterView::summary).collect())
    }

    /// One dead letter in full, or `None`.
    pub async fn show(&self, id: i64) -> Result<Option<LetterView>, OpsError> {
        Ok(self
            .store
            .dead_letter(id)
            .await?
            .map(|d| LetterView::full(&d)))
    }

    async fn selected(&self, selection: &Selection) -> Result<Vec<i64>, OpsError> {
        Ok(match selection {
            Selection::Ids(ids) => self.store.open_dead_letter_ids(Some(ids), None).await?,
            Selection::Group(g) => self.store.open_dead_letter_ids(None, Some(g)).await?,
            Selection::All => self.store.open_dead_letter_ids(None, None).await?,
        })
    }

    /// How many open dead letters `selection` holds now: the preview of a retry or an archive
    /// (a read, not audited).
    pub async fn count_open(&self, selection: &Selection) -> Result<usize, OpsError> {
        Ok(self.selected(selection).await?.len())
    }

    /// Republishes the selected open dead letters to the work queue with a fresh attempt
    /// budget and their redrive count incremented; each is marked retried after its publish
    /// was confirmed. `progress(done, total)` is called after each.
    pub async fn retry(
        &self,
        selection: &Selection,
        dry_run: bool,
        actor: &str,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<RetryReport, OpsError> {
        let ids = self.selected(selection).await?;
        let total = ids.len();
        let mut retried = 0usize;
        if !dry_run {
            for id in &ids {
                let Some(d) = self.store.dead_letter(*id).await? else {
                    continue;
                };
                if d.state != "open" {
                    continue;
                }
                let redrive = self
                    .publisher
                    .publish_redrive(
                        &d.body,
                        &d.headers,
                        &d.routing_key,
                        d.event_id.as_deref(),
                        d.redrives + 1,
                    )
                    .await;
                if let Err(source) = redrive {
                    self.audit(
                        actor,
                        "dlq.retry",
                        selection,
                        retried,
                        false,
                        json!({"selected": total, "interrupted": true}),
                    )
                    .await?;
                    return Err(OpsError::Publish {
                        done: retried,
                        total,
                        source,
                    });
                }
                if self.store.mark_dead_letter_retried(*id).await? {
                    retried += 1;
                }
                progress(retried, total);
            }
        }
        self.audit(
            actor,
            "dlq.retry",
            selection,
            if dry_run { total } else { retried },
            dry_run,
            json!({"selected": total}),
        )
        .await?;
        Ok(RetryReport {
            dry_run,
            ids,
            retried,
            selected: total,
        })
    }

    /// Archives the selected open dead letters (kept, hidden from the default view).
    pub async fn archive(
        &self,
        selection: &Selection,
        actor: &str,
    ) -> Result<ArchiveReport, OpsError> {
        let ids = self.selected(selection).await?;
        let archived = self.store.archive_dead_letters(&ids).await?;
        self.audit(
            actor,
            "dlq.archive",
            selection,
            archived as usize,
            false,
            json!({"selected": ids.len()}),
        )
        .await?;
        Ok(ArchiveReport {
            archived,
            selected: ids.len(),
        })
    }

    /// Deletes the dead letters archived (or retried) more than `older_than_secs` ago, only when
    /// `yes`; otherwise reports how many would go. Open letters are never deleted.
    pub async fn purge(
        &self,
        state: PurgeState,
        older_than_secs: i64,
        yes: bool,
        actor: &str,
    ) -> Result<PurgeReport, OpsError> {
        let n = self
            .store
            .purge_dead_letters(state, older_than_secs, yes)
            .await?;
        let target = format!("{} older than {older_than_secs} s", state.as_str());
        self.store
            .record_action(actor, "dlq.purge", &target, n as i64, !yes, json!({}))
            .await?;
        Ok(if yes {
            PurgeReport {
                deleted: n,
                hint: None,
                would_delete: None,
            }
        } else {
            PurgeReport {
                deleted: 0,
                hint: Some("nothing was deleted; add --yes to delete"),
                would_delete: Some(n),
            }
        })
    }

    /// One JSON object per line for each dead letter matching `filter`, loss-free (the exact
    /// body in `body_base64`).
    pub async fn export(
        &self,
        filter: &DeadLetterFilter,
        actor: &str,
    ) -> Result<Vec<String>, OpsError> {
        let rows = self.store.dead_letter_list(filter).await?;
        let lines: Vec<String> = rows
            .iter()
            .map(|d| serde_json::to_string(&LetterView::full(d)))
            .collect::<Result<_, _>>()?;
        self.store
            .record_action(
                actor,
                "dlq.export",
                "filter",
                lines.len() as i64,
                false,
                json!({}),
            )
            .await?;
        Ok(lines)
    }

    /// Replays an export file: each line's exact body goes back to the work queue with a fresh
    /// attempt budget, after the first `skip` lines (to continue an interrupted import).
    /// Returns how many were published.
    pub async fn import(
        &self,
        lines: &[String],
        skip: usize,
        actor: &str,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<ImportReport, OpsError> {
        let total = lines.len();
        let mut published = 0;
        for (i, line) in lines.iter().enumerate().skip(skip) {
            let bad = |reason: &str| OpsError::BadExportLine {
                line: i + 1,
                reason: reason.into(),
            };
            let v: Value = serde_json::from_str(line).map_err(|_| bad("not JSON"))?;
            let body = v["body_base64"]
                .as_str()
                .and_then(|b| B64.decode(b).ok())
                .ok_or_else(|| bad("no body_base64"))?;
            let routing_key = v["routing_key"]
                .as_str()
                .ok_or_else(|| bad("no routing_key"))?;
            let redrives = v["redrives"].as_i64().unwrap_or(0) as i32 + 1;
            self.publisher
                .publish_redrive(
                    &body,
                    &v["headers"],
                    routing_key,
                    v["event_id"].as_str(),
                    redrives,
                )
                .await
                .map_err(OpsError::resumable(i, total))?;
            published += 1;
            progress(skip + published, total);
        }
        self.store
            .record_action(
                actor,
                "dlq.import",
                "file",
                published as i64,
                false,
                json!({}),
            )
            .await?;
        Ok(ImportReport { published })
    }

    /// The audit trail, newest first.
    pub async fn history(&self, limit: i64) -> Result<Vec<ActionView>, OpsError> {
        let actions = self.store.actions(limit).await?;
        Ok(actions.iter().map(ActionView::from).collect())
    }

    /// How many logged events `selection` holds: a replay's preview (a read, not audited).
    pub async fn replay_count(&self, selection: &ReplaySelection<'_>) -> Result<i64, OpsError> {
        let s = selection;
        Ok(self
            .store
            .count_events_for_replay(s.provider.as_str(), s.ids, s.event_type, s.since)
            .await?)
    }

    /// Republishes the logged events of `selection` for reprocessing: the handler runs again
    /// (it must be idempotent) and the event's `replays` count goes up. The selection is in
    /// event-log order, and the first `skip` are left out (to continue an interrupted replay:
    /// new events only ever come after).
    pub async fn replay(
        &self,
        selection: &ReplaySelection<'_>,
        skip: usize,
        dry_run: bool,
        actor: &str,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<ReplayReport, OpsError> {
        let ReplaySelection {
            provider,
            ids,
            event_type,
            since,
        } = *selection;
        let events = self
            .store
            .events_for_replay(provider.as_str(), ids, event_type, since)
            .await?;
        let total = events.len();
        let mut published = 0;
        if !dry_run {
            for (i, e) in events.iter().enumerate().skip(skip) {
                let meta = EventMeta {
                    provider,
                    event_id: e.event_id.clone(),
                    event_type: e.event_type.clone(),
                    created: e.created,
                    livemode: e.livemode,
                    api_version: e.api_version.clone(),
                    received_at_ms: e.received_at_ms,
                };
                self.publisher
                    .publish_replay(
                        &meta,
                        e.payload.as_bytes(),
                        &uuid::Uuid::new_v4().to_string(),
                    )
                    .await
                    .map_err(OpsError::resumable(i, total))?;
                published += 1;
                progress(skip + published, total);
            }
        }
        let target = match (ids, event_type) {
            (Some(ids), _) => format!("{provider} events {ids:?}"),
            (None, Some(t)) => format!("{provider} type {t}"),
            (None, None) => format!("{provider} all"),
        };
        self.store
            .record_action(
                actor,
                "events.replay",
                &target,
                if dry_run { total } else { published } as i64,
                dry_run,
                json!({}),
            )
            .await?;
        Ok(ReplayReport {
            dry_run,
            published,
            selected: total,
        })
    }

    async fn audit(
        &self,
        actor: &str,
        action: &str,
        selection: &Selection,
        affected: usize,
        dry_run: bool,
        details: Value,
    ) -> Result<(), OpsError> {
        self.store
            .record_action(
                actor,
                action,
                &selection.describe(),
                affected as i64,
                dry_run,
                details,
            )
            .await?;
        tracing::info!(actor, action, target = %selection.describe(), affected, dry_run, "operator action");
        Ok(())
    }
}
