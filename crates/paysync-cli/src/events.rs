//! `paysync events list|show`: the event log for people (a table) and scripts (`--json`).

use paysync_domain::Provider;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use paysync_store::{EventFilter, Store};
use paysync_worker::ops::{EventView, ReplaySelection, ts};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::{self, Env};

#[derive(Subcommand)]
pub enum EventsCommand {
    /// Recent events, newest first.
    List {
        /// Only this provider's events (stripe, square, authorizenet, paypal).
        #[arg(long, value_parser = parse_provider)]
        provider: Option<Provider>,
        /// Only this event type.
        #[arg(long = "type")]
        event_type: Option<String>,
        /// Only events processed at or after this time (RFC 3339, e.g. 2026-11-22T10:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Republish stored events for reprocessing (after a bug fix): the handler runs again,
    /// so it must be idempotent; the event's `replays` count goes up.
    Replay {
        /// The provider whose events are replayed (stripe, square, authorizenet, paypal).
        #[arg(long, default_value = "stripe", value_parser = parse_provider)]
        provider: Provider,
        /// Event ids (Stripe evt_…, Square event_id, Authorize.Net notificationId, PayPal WH-…).
        event_ids: Vec<String>,
        /// Every event of this type (with --since).
        #[arg(long = "type", conflicts_with = "event_ids")]
        event_type: Option<String>,
        /// Processed at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Leave out the first N of the selection (in event-log order): an interrupted replay
        /// says which N continues it.
        #[arg(long, default_value_t = 0)]
        skip: usize,
        /// Show how many would be replayed.
        #[arg(long)]
        dry_run: bool,
    },
    /// One event with its payload.
    Show {
        /// The provider's event id (evt_…).
        event_id: String,
        /// The provider.
        #[arg(long, default_value = "stripe")]
        provider: String,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// A `--provider` value.
pub fn parse_provider(s: &str) -> Result<Provider, String> {
    s.parse()
        .map_err(|e: paysync_domain::webhook::UnknownProvider| {
            format!("{e} (expected stripe, square, authorizenet or paypal)")
        })
}

pub async fn run(env: &Env<'_>, command: EventsCommand) -> anyhow::Result<ExitCode> {
    let store = Store::new(&config::database(env)?)?;
    match command {
        EventsCommand::Replay {
            provider,
            event_ids,
            event_type,
            since,
            skip,
            dry_run,
        } => {
            if event_ids.is_empty() && (event_type.is_none() || since.is_none()) {
                anyhow::bail!("give event ids, or --type T --since TIME");
            }
            let since = since
                .as_deref()
                .map(|s| crate::dlq::parse_time(s, "--since"))
                .transpose()?;
            let ops = crate::dlq::ops(env).await?;
            let ids = (!event_ids.is_empty()).then_some(event_ids.as_slice());
            let report = ops
                .replay(
                    &ReplaySelection {
                        provider,
                        ids,
                        event_type: event_type.as_deref(),
                        since,
                    },
                    skip,
                    dry_run,
                    &config::actor(env),
                    &|_, _| {},
                )
                .await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(ExitCode::SUCCESS)
        }
        EventsCommand::List {
            provider,
            event_type,
            since,
            limit,
            json,
        } => {
            let since = since
                .map(|s| {
                    OffsetDateTime::parse(&s, &Rfc3339)
                        .with_context(|| format!("--since: not an RFC 3339 time: {s}"))
                })
                .transpose()?;
            let rows = store
                .events(&EventFilter {
                    provider: provider.map(|p| p.as_str().to_owned()),
                    event_type,
                    since,
                    limit,
                })
                .await
                .context("reading the event log")?;
            if json {
                let list: Vec<_> = rows.iter().map(EventView::from).collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!(
                    "{:<12} {:<38} {:<44} {:<8} {:>3} {:>4} PROCESSED",
                    "PROVIDER", "EVENT", "TYPE", "OUTCOME", "ATT", "DUPS"
                );
                for e in &rows {
                    println!(
                        "{:<12} {:<38} {:<44} {:<8} {:>3} {:>4} {}",
                        e.provider,
                        e.event_id,
                        e.event_type,
                        e.outcome,
                        e.attempts,
                        e.duplicates,
                        ts(e.processed_at)
                    );
                }
                println!("({} shown)", rows.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        EventsCommand::Show {
            event_id,
            provider,
            json,
        } => {
            let Some(e) = store
                .event(&provider, &event_id)
                .await
                .context("reading the event log")?
            else {
                eprintln!("paysync: no event {provider}/{event_id} in the event log");
                return Ok(ExitCode::from(2));
            };
            let v = serde_json::to_value(EventView::from(&e))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for key in [
                    "provider",
                    "event_id",
                    "event_type",
                    "created",
                    "livemode",
                    "api_version",
                    "account_id",
                    "outcome",
                    "attempts",
                    "duplicates",
                    "replays",
                    "received_at",
                    "processed_at",
                ] {
                    println!("{key:<13} {}", v[key]);
                }
                println!("payload:\n{}", serde_json::to_string_pretty(&v["payload"])?);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
