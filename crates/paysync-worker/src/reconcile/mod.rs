//! Reconciliation: finds the events a provider sent (or tried to send) that never reached our
//! event log, in the provider's own event list, and publishes them into the work queue, where
//! the worker applies them like any webhook.
//!
//! Rule of thumb: reconciliation only ever adds. It compares ids with the event log and the
//! dead letters, publishes what neither holds through the confirmed publisher, and leaves
//! deduplication to the worker, so a run interrupted anywhere, run twice or run alongside
//! live webhooks publishes at most duplicates, which the event log absorbs. See
//! docs/reconcile.md.

pub mod authorizenet;
pub mod paypal;
mod schedule;
pub mod square;
pub mod stripe;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;
use paysync_amqp::{PublishError, Publisher};
use paysync_domain::message::parse_envelope;
use paysync_domain::{Envelope, Mode, Provider};
use paysync_store::{Store, StoreError};
use serde::Serialize;
use serde_json::value::RawValue;
use time::OffsetDateTime;

pub use crate::provider_api::{ApiClient, ApiError, ApiSettings, Auth};
pub use schedule::{ReconcileSchedule, run_scheduled};

use crate::Handlers;

/// The time window and event types to compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Events created at or after this time.
    pub since: OffsetDateTime,
    /// Events created before this time.
    pub until: OffsetDateTime,
    /// Only these types; empty for every type a handler applies.
    pub types: Vec<String>,
}

/// One page of a provider's event list: each event's JSON exactly as the API sent it.
pub struct Page {
    /// The events.
    pub events: Vec<Box<RawValue>>,
    /// The cursor of the next page; `None` on the last one.
    pub next: Option<String>,
}

/// A provider's event list.
pub trait EventSource: Send + Sync {
    /// Whose list it is.
    fn provider(&self) -> Provider;
    /// The mode of this account's events (for providers whose events do not say).
    fn mode(&self) -> Mode;
    /// How far back the provider keeps events listable.
    fn retention(&self) -> Duration;
    /// The page after `cursor` (the first page for `None`) of the events in `window`.
    fn page<'a>(
        &'a self,
        window: &'a Window,
        cursor: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Page, ApiError>>;

    /// What a listed item is: the event itself (the default), or a summary whose full event
    /// is fetched with [`EventSource::event`] when it is missing (Authorize.Net's history).
    fn listed(&self, item: &RawValue) -> Listed {
        let _ = item;
        Listed::Event
    }

    /// The full event of the summary with this id (only for lists of summaries).
    fn event<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Box<RawValue>, ApiError>> {
        let _ = id;
        Box::pin(async {
            Err(ApiError::Unreadable {
                provider: "reconcile",
                detail: "this provider's list carries whole events".into(),
            })
        })
    }
}

/// What an item of a provider's list is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listed {
    /// The event itself, as a webhook would carry it.
    Event,
    /// A summary: the event's envelope (`None` when unreadable); the event is fetched apart.
    Summary(Option<Envelope>),
}

/// What a run found, so far or in full.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The provider.
    pub provider: String,
    /// Nothing was published.
    pub dry_run: bool,
    /// Pages read.
    pub pages: usize,
    /// Events the provider listed in the window.
    pub listed: usize,
    /// Of those, already in the event log.
    pub already_logged: usize,
    /// Missing from the log and published (in a dry run: that would be published).
    pub published: usize,
    /// Listed, not logged and not published, by reason: `dead_lettered` (received and
    /// failed: the dead-letter queue's case), `unhandled_type` (no handler applies it; the
    /// worker would only record it as ignored), `other_type` (outside `--type`),
    /// `other_mode` (test event on a live account's list or the reverse), `unreadable` (not
    /// an event envelope of the provider).
    pub skipped: BTreeMap<&'static str, usize>,
}

impl Report {
    fn skip(&mut self, reason: &'static str) {
        *self.skipped.entry(reason).or_default() += 1;
    }

    /// Events skipped for any reason.
    pub fn skipped_total(&self) -> usize {
        self.skipped.values().sum()
    }
}

/// Why a run stopped before the end of its window; `report` says how far it got.
#[derive(Debug, thiserror::Error)]
#[error("reconciliation of {provider} stopped after {pages} page(s), {published} event(s) published: {cause}", provider = report.provider, pages = report.pages, published = report.published)]
pub struct ReconcileFailed {
    /// What was done before the failure.
    pub report: Report,
    /// The failure (in the message already, so not a `source`: a chain would repeat it).
    pub cause: ReconcileError,
}

/// What stopped a run.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The provider's API.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The database.
    #[error("database: {0}")]
    Store(#[from] StoreError),
    /// The broker did not confirm a publish.
    #[error("broker: {0}")]
    Publish(#[from] PublishError),
}

impl ReconcileError {
    /// Whether the same run can succeed later unchanged.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Api(e) => e.retryable(),
            Self::Store(_) | Self::Publish(_) => true,
        }
    }
}

/// Compares provider event lists with the event log and publishes what is missing.
#[derive(Clone)]
pub struct Reconciler {
    store: Store,
    publisher: Publisher,
    handlers: Handlers,
}

impl Reconciler {
    /// A reconciler writing to `publisher`'s work queue; `handlers` says which types are
    /// worth publishing.
    pub fn new(store: Store, publisher: Publisher, handlers: Handlers) -> Self {
        Self {
            store,
            publisher,
            handlers,
        }
    }

    /// The store it reads.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Lists `window` at `source` page by page, and publishes each listed event that neither
    /// the event log nor the dead letters hold (unless `dry_run`). `progress` sees the
    /// report after every page.
    pub async fn run(
        &self,
        source: &dyn EventSource,
        window: &Window,
        dry_run: bool,
        progress: &(dyn Fn(&Report) + Sync),
    ) -> Result<Report, ReconcileFailed> {
        let provider = source.provider();
        let mut report = Report {
            provider: provider.to_string(),
            dry_run,
            ..Report::default()
        };
        let mut cursor: Option<String> = None;
        loop {
            let page = match source.page(window, cursor.as_deref()).await {
                Ok(page) => page,
                Err(e) => return Err(failed(report, e)),
            };
            report.pages += 1;
            if let Err(cause) = self
                .compare(source, window, &page.events, dry_run, &mut report)
                .await
            {
                return Err(ReconcileFailed { report, cause });
            }
            progress(&report);
            match page.next {
                // A cursor that repeats would loop forever: treat it as the end.
                Some(next) if cursor.as_deref() != Some(next.as_str()) => cursor = Some(next),
                _ => break,
            }
        }
        tracing::info!(
            provider = %provider,
            listed = report.listed,
            already_logged = report.already_logged,
            published = report.published,
            skipped = report.skipped_total(),
            dry_run,
            "reconciliation finished"
        );
        Ok(report)
    }

    /// An operator's run ([`Reconciler::run`]), recorded in the audit trail as
    /// `events.reconcile` by `actor` whether it finished or not: the CLI's and the admin
    /// API's one implementation.
    pub async fn run_audited(
        &self,
        source: &dyn EventSource,
        window: &Window,
        dry_run: bool,
        actor: &str,
        progress: &(dyn Fn(&Report) + Sync),
    ) -> Result<Report, ReconcileFailed> {
        let outcome = self.run(source, window, dry_run, progress).await;
        let report = match &outcome {
            Ok(r) => r,
            Err(e) => &e.report,
        };
        let mut details = serde_json::to_value(report).unwrap_or_default();
        if let Err(e) = &outcome {
            details["error"] = serde_json::json!(e.to_string());
        }
        let time = |t: OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        };
        let target = format!(
            "{} {}..{}",
            source.provider(),
            time(window.since),
            time(window.until)
        );
        if let Err(e) = self
            .store
            .record_action(
                actor,
                "events.reconcile",
                &target,
                report.published as i64,
                dry_run,
                details,
            )
            .await
        {
            tracing::warn!(error = %e, "reconciliation: cannot record the action in the audit trail");
        }
        outcome
    }

    async fn compare(
        &self,
        source: &dyn EventSource,
        window: &Window,
        events: &[Box<RawValue>],
        dry_run: bool,
        report: &mut Report,
    ) -> Result<(), ReconcileError> {
        let provider = source.provider();
        let mut candidates = Vec::with_capacity(events.len());
        for raw in events {
            report.listed += 1;
            let listed = match source.listed(raw) {
                Listed::Event => parse_envelope(provider, raw.get().as_bytes())
                    .ok()
                    .map(|e| (e, Some(raw.get().as_bytes()))),
                Listed::Summary(summary) => summary.map(|e| (e, None)),
            };
            let Some((envelope, body)) = listed else {
                report.skip("unreadable");
                continue;
            };
            if !window.types.is_empty() && !window.types.contains(&envelope.event_type) {
                report.skip("other_type");
                continue;
            }
            if !self.handlers.knows(provider, &envelope.event_type) {
                report.skip("unhandled_type");
                continue;
            }
            if envelope
                .livemode
                .is_some_and(|live| Mode::from_livemode(live) != source.mode())
            {
                report.skip("other_mode");
                continue;
            }
            candidates.push((envelope, body));
        }
        let ids: Vec<String> = candidates.iter().map(|(e, _)| e.id.clone()).collect();
        let known = self.store.known_events(provider.as_str(), &ids).await?;
        let now_ms = crate::process::now_ms();
        let mut missing = Vec::new();
        for (envelope, body) in candidates {
            if known.logged.contains(&envelope.id) {
                report.already_logged += 1;
            } else if known.dead.contains(&envelope.id) {
                report.skip("dead_lettered");
            } else {
                missing.push((envelope, body));
            }
        }
        if dry_run {
            report.published += missing.len();
            return Ok(());
        }
        // Summaries become events: each missing one fetched in full, and read again.
        let mut fetched: Vec<(Envelope, Box<RawValue>)> = Vec::new();
        let mut listed: Vec<(Envelope, &[u8])> = Vec::new();
        for (summary, body) in missing {
            match body {
                Some(body) => listed.push((summary, body)),
                None => {
                    let full = source.event(&summary.id).await?;
                    match parse_envelope(provider, full.get().as_bytes()) {
                        Ok(e) if e.id == summary.id && e.event_type == summary.event_type => {
                            fetched.push((e, full))
                        }
                        _ => report.skip("unreadable"),
                    }
                }
            }
        }
        let missing: Vec<(paysync_domain::EventMeta, &[u8])> = listed
            .into_iter()
            .chain(
                fetched
                    .iter()
                    .map(|(e, full)| (e.clone(), full.get().as_bytes())),
            )
            .map(|(e, body)| (e.into_meta(provider, source.mode(), now_ms), body))
            .collect();
        // A page's publishes wait for their confirms together (the publisher bounds how many
        // are in flight); the report counts those the broker confirmed.
        let confirmed = futures::future::join_all(
            missing
                .iter()
                .map(|(meta, body)| self.publisher.publish_reconciled(meta, body)),
        )
        .await;
        let mut first_error = None;
        for outcome in confirmed {
            match outcome {
                Ok(()) => report.published += 1,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            None => Ok(()),
            Some(e) => Err(e.into()),
        }
    }
}

fn failed(report: Report, e: ApiError) -> ReconcileFailed {
    ReconcileFailed {
        report,
        cause: ReconcileError::Api(e),
    }
}
