//! Operator actions on dead letters and the event log, shared by the `paysync` CLI and the
//! admin HTTP API so both give the same answers. Every action is recorded in the audit trail.
//!
//! Rule of thumb: a dead letter is marked `retried` only after its republish was confirmed,
//! one at a time, so a retry interrupted halfway can simply be run again: it picks up the
//! letters still open.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use paysync_amqp::Publisher;
use paysync_domain::{EventMeta, Provider};
use paysync_store::{DeadLetterFilter, DeadLetterRow, Store, StoreError};
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
    /// A line of an export file is unusable.
    #[error("line {line}: {reason}")]
    BadExportLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// Operator actions over one store and broker.
#[derive(Clone)]
pub struct Ops {
    store: Store,
    publisher: Publisher,
}

fn ts(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// The JSON of a dead letter; `full` adds body, headers and the whole chain.
pub fn letter_json(d: &DeadLetterRow, full: bool) -> Value {
    let mut v = json!({
        "id": d.id,
        "event_id": d.event_id,
        "event_type": d.event_type,
        "error_kind": d.error_kind,
        "error": d.error_chain.lines().find(|l| !l.starts_with("retries exhausted")).unwrap_or_default(),
        "fingerprint": d.fingerprint,
        "attempts": d.attempts,
        "redrives": d.redrives,
        "state": d.state,
        "first_failed_at": ts(d.first_failed_at),
        "last_failed_at": ts(d.last_failed_at),
    });
    if full {
        v["error_chain"] = Value::from(d.error_chain.lines().collect::<Vec<_>>());
        v["routing_key"] = Value::from(d.routing_key.clone());
        v["headers"] = d.headers.clone();
        v["body"] = serde_json::from_slice(&d.body).unwrap_or(Value::Null);
        v["body_base64"] = Value::from(B64.encode(&d.body));
    }
    v
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
    pub async fn groups(&self) -> Result<Value, OpsError> {
        let groups = self.store.dead_letter_groups().await?;
        Ok(Value::from(
            groups
                .iter()
                .map(|g| {
                    json!({
                        "group": g.fingerprint,
                        "error_kind": g.error_kind,
                        "title": g.title,
                        "count": g.count,
                        "first_failed_at": ts(g.first_failed_at),
                        "last_failed_at": ts(g.last_failed_at),
                        "event_types": g.event_types,
                    })
                })
                .collect::<Vec<_>>(),
        ))
    }

    /// Dead letters matching `filter`.
    pub async fn list(&self, filter: &DeadLetterFilter) -> Result<Value, OpsError> {
        let rows = self.store.dead_letter_list(filter).await?;
        Ok(Value::from(
            rows.iter()
                .map(|d| letter_json(d, false))
                .collect::<Vec<_>>(),
        ))
    }

    /// One dead letter in full, or `None`.
    pub async fn show(&self, id: i64) -> Result<Option<Value>, OpsError> {
        Ok(self
            .store
            .dead_letter(id)
            .await?
            .map(|d| letter_json(&d, true)))
    }

    async fn selected(&self, selection: &Selection) -> Result<Vec<i64>, OpsError> {
        Ok(match selection {
            Selection::Ids(ids) => self.store.open_dead_letter_ids(Some(ids), None).await?,
            Selection::Group(g) => self.store.open_dead_letter_ids(None, Some(g)).await?,
            Selection::All => self.store.open_dead_letter_ids(None, None).await?,
        })
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
    ) -> Result<Value, OpsError> {
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
        Ok(json!({"selected": total, "retried": retried, "dry_run": dry_run, "ids": ids}))
    }

    /// Archives the selected open dead letters (kept, hidden from the default view).
    pub async fn archive(&self, selection: &Selection, actor: &str) -> Result<Value, OpsError> {
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
        Ok(json!({"selected": ids.len(), "archived": archived}))
    }

    /// Deletes archived dead letters older than `older_than_secs`, only when `yes`;
    /// otherwise reports how many would go.
    pub async fn purge(
        &self,
        older_than_secs: i64,
        yes: bool,
        actor: &str,
    ) -> Result<Value, OpsError> {
        let n = self.store.purge_archived(older_than_secs, yes).await?;
        let target = format!("archived older than {older_than_secs} s");
        self.store
            .record_action(actor, "dlq.purge", &target, n as i64, !yes, json!({}))
            .await?;
        Ok(if yes {
            json!({"deleted": n})
        } else {
            json!({"would_delete": n, "deleted": 0, "hint": "nothing was deleted; add --yes to delete"})
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
            .map(|d| letter_json(d, true).to_string())
            .collect();
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
    /// attempt budget. Returns how many were published.
    pub async fn import(
        &self,
        lines: &[String],
        actor: &str,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<Value, OpsError> {
        let total = lines.len();
        let mut published = 0;
        for (i, line) in lines.iter().enumerate() {
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
                .map_err(|source| OpsError::Publish {
                    done: published,
                    total,
                    source,
                })?;
            published += 1;
            progress(published, total);
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
        Ok(json!({"published": published}))
    }

    /// The audit trail, newest first.
    pub async fn history(&self, limit: i64) -> Result<Value, OpsError> {
        let actions = self.store.actions(limit).await?;
        Ok(Value::from(
            actions
                .iter()
                .map(|a| {
                    json!({
                        "id": a.id, "at": ts(a.at), "actor": a.actor, "action": a.action,
                        "target": a.target, "affected": a.affected, "dry_run": a.dry_run, "details": a.details,
                    })
                })
                .collect::<Vec<_>>(),
        ))
    }

    /// Republishes logged events for reprocessing: the handler runs again (it must be
    /// idempotent) and the event's `replays` count goes up.
    pub async fn replay(
        &self,
        ids: Option<&[String]>,
        event_type: Option<&str>,
        since: Option<OffsetDateTime>,
        dry_run: bool,
        actor: &str,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<Value, OpsError> {
        let events = self
            .store
            .events_for_replay(Provider::Stripe.as_str(), ids, event_type, since)
            .await?;
        let total = events.len();
        let mut published = 0;
        if !dry_run {
            for e in &events {
                let meta = EventMeta {
                    provider: Provider::Stripe,
                    event_id: e.event_id.clone(),
                    event_type: e.event_type.clone(),
                    created: e.created,
                    livemode: e.livemode,
                    api_version: e.api_version.clone(),
                    received_at_ms: e.received_at_ms,
                };
                self.publisher
                    .publish_replay(&meta, e.payload.as_bytes())
                    .await
                    .map_err(|source| OpsError::Publish {
                        done: published,
                        total,
                        source,
                    })?;
                published += 1;
                progress(published, total);
            }
        }
        let target = match (ids, event_type) {
            (Some(ids), _) => format!("events {ids:?}"),
            (None, Some(t)) => format!("type {t}"),
            (None, None) => "all".into(),
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
        Ok(json!({"selected": total, "published": published, "dry_run": dry_run}))
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
