//! `paysync outbox …`: deliveries and destinations, over the same
//! [`paysync_worker::ops::Ops`] as the admin API. Reads take `--json`; actions print their
//! report as JSON and are recorded in the audit trail (`paysync dlq history`).

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use paysync_store::DeliveryFilter;
use paysync_worker::ops::outbox::{
    AttemptView, DeliveryDetail, DeliverySelection, DeliveryView, DestinationView, ForcedBreaker,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::{self, Env};
use crate::dlq::{ops, parse_duration_for, print};

#[derive(Subcommand)]
pub enum OutboxCommand {
    /// Deliveries, newest first.
    List {
        /// pending, in_flight, sent, dead, skipped or expired.
        #[arg(long)]
        state: Option<String>,
        /// email, chat or hubspot.
        #[arg(long)]
        destination: Option<String>,
        /// e.g. email.receipt, chat.churn, crm.deal.
        #[arg(long)]
        operation: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One delivery and its attempts, with their (redacted) error excerpts.
    Show {
        /// The delivery's id.
        id: i64,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Make dead (or skipped, expired) deliveries pending again with their attempts reset,
    /// due one after another at the destination's rate.
    Retry {
        /// Delivery ids.
        ids: Vec<i64>,
        /// Every delivery in this state: dead, skipped or expired.
        #[arg(long, conflicts_with = "ids")]
        state: Option<String>,
        /// With --state: only this destination.
        #[arg(long, requires = "state")]
        destination: Option<String>,
        /// With --state: only this operation.
        #[arg(long, requires = "state")]
        operation: Option<String>,
        /// Only count them.
        #[arg(long)]
        dry_run: bool,
        /// Deliveries a second (default: the dispatcher's rate of each destination).
        #[arg(long)]
        rate: Option<f64>,
    },
    /// Skip pending or dead deliveries for good, saying why.
    Skip {
        /// Delivery ids.
        #[arg(required = true)]
        ids: Vec<i64>,
        /// Why (kept on the delivery; who is in the audit trail).
        #[arg(long)]
        reason: String,
    },
    /// The destinations: breaker, pause, queue.
    Destinations {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stop sending to a destination for a while (every dispatcher honours it).
    Pause {
        /// email, chat or hubspot.
        destination: String,
        /// How long: `<n>s|m|h|d`, e.g. 10m.
        #[arg(long = "for", value_name = "DURATION")]
        duration: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// End a pause or a disablement.
    Resume {
        /// email, chat or hubspot.
        destination: String,
    },
    /// Force the destination's breaker open: nothing is sent until forced otherwise.
    ForceOpen {
        /// email, chat or hubspot.
        destination: String,
    },
    /// Force the destination's breaker closed: sent regardless of failures.
    ForceClose {
        /// email, chat or hubspot.
        destination: String,
    },
    /// Hand the breaker back to the dispatcher.
    ForceAuto {
        /// email, chat or hubspot.
        destination: String,
    },
}

pub async fn run(env: &Env<'_>, command: OutboxCommand) -> anyhow::Result<ExitCode> {
    let ops = ops(env).await?;
    let actor = config::actor(env);
    match command {
        OutboxCommand::List {
            state,
            destination,
            operation,
            limit,
            json,
        } => {
            let filter = DeliveryFilter {
                ids: Vec::new(),
                state,
                destination,
                operation,
                limit,
            };
            let rows = ops.outbox_list(&filter).await?;
            if json {
                print(&rows)?;
            } else {
                print!("{}", deliveries_table(&rows));
            }
        }
        OutboxCommand::Show { id, json } => {
            let Some(detail) = ops.outbox_show(id).await? else {
                eprintln!("paysync: no delivery {id}");
                return Ok(ExitCode::from(2));
            };
            if json {
                print(&detail)?;
            } else {
                print!("{}", detail_text(&detail));
            }
        }
        OutboxCommand::Retry {
            ids,
            state,
            destination,
            operation,
            dry_run,
            rate,
        } => {
            let selection = DeliverySelection::from_parts(ids, state, destination, operation)?;
            print(&ops.outbox_retry(&selection, rate, dry_run, &actor).await?)?;
        }
        OutboxCommand::Skip { ids, reason } => {
            print(&ops.outbox_skip(&ids, &reason, &actor).await?)?;
        }
        OutboxCommand::Destinations { json } => {
            let rows = ops.outbox_destinations().await?;
            if json {
                print(&rows)?;
            } else {
                print!("{}", destinations_table(&rows, OffsetDateTime::now_utc()));
            }
        }
        OutboxCommand::Pause {
            destination,
            duration,
            reason,
        } => {
            let secs = parse_duration_for(&duration, "--for")?;
            let secs = u64::try_from(secs)
                .ok()
                .filter(|s| *s > 0)
                .ok_or_else(|| anyhow::anyhow!("--for: give a duration above zero"))?;
            let report = ops
                .destination_pause(&destination, Duration::from_secs(secs), &reason, &actor)
                .await?;
            print(&report)?;
        }
        OutboxCommand::Resume { destination } => {
            print(&ops.destination_resume(&destination, &actor).await?)?;
        }
        OutboxCommand::ForceOpen { destination } => {
            print(
                &ops.destination_force(&destination, ForcedBreaker::Open, &actor)
                    .await?,
            )?;
        }
        OutboxCommand::ForceClose { destination } => {
            print(
                &ops.destination_force(&destination, ForcedBreaker::Closed, &actor)
                    .await?,
            )?;
        }
        OutboxCommand::ForceAuto { destination } => {
            print(
                &ops.destination_force(&destination, ForcedBreaker::Auto, &actor)
                    .await?,
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Appends `line` without trailing blanks (an empty last column leaves none).
fn push_line(out: &mut String, line: &str) {
    out.push_str(line.trim_end());
    out.push('\n');
}

/// `value` or `-`.
fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// The first line of `text`, at most `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() > max {
        let cut: String = line.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        line.to_owned()
    }
}

/// An RFC 3339 time of a view as `YYYY-MM-DD HH:MM:SS` UTC (fixed width for tables).
fn short_time(rfc3339: &str) -> String {
    match OffsetDateTime::parse(rfc3339, &Rfc3339) {
        Ok(t) => {
            let t = t.to_offset(time::UtcOffset::UTC);
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        }
        Err(_) => rfc3339.to_owned(),
    }
}

/// Seconds as `45s`, `12m05s`, `3h07m`, `2d04h`.
fn age(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// What a list shows last: why it is where it is.
fn detail(d: &DeliveryView) -> String {
    match d.state.as_str() {
        "pending" => format!("due {}", short_time(&d.next_attempt_at)),
        "dead" => or_dash(d.fingerprint.as_deref()),
        "skipped" | "expired" => or_dash(d.reason.as_deref()),
        "sent" => or_dash(d.external_ref.as_deref()),
        _ => d
            .last_error
            .as_deref()
            .map(|e| one_line(e, 80))
            .unwrap_or_default(),
    }
}

fn deliveries_table(rows: &[DeliveryView]) -> String {
    let mut out = format!(
        "{:>8}  {:<8} {:<21} {:<9} {:>3} {:>6}  {:<19}  DETAIL\n",
        "ID", "DEST", "OPERATION", "STATE", "ATT", "STATUS", "CREATED"
    );
    for d in rows {
        push_line(
            &mut out,
            &format!(
                "{:>8}  {:<8} {:<21} {:<9} {:>3} {:>6}  {:<19}  {}",
                d.id,
                d.destination,
                d.operation,
                d.state,
                d.attempts,
                or_dash(d.last_status),
                short_time(&d.created_at),
                detail(d),
            ),
        );
    }
    out
}

fn attempts_table(attempts: &[AttemptView]) -> String {
    let mut out = format!(
        "{:>3}  {:<19}  {:<12} {:>6} {:>8} {:>11}  OWNER\n",
        "#", "STARTED", "OUTCOME", "STATUS", "MS", "RETRY-AFTER"
    );
    for a in attempts {
        out.push_str(&format!(
            "{:>3}  {:<19}  {:<12} {:>6} {:>8} {:>11}  {}\n",
            a.attempt,
            short_time(&a.started_at),
            a.outcome,
            or_dash(a.status),
            a.duration_ms,
            a.retry_after_s
                .map_or_else(|| "-".to_owned(), |s| format!("{s}s")),
            a.owner,
        ));
    }
    out
}

fn detail_text(detail: &DeliveryDetail) -> String {
    let d = &detail.delivery;
    let fields: [(&str, String); 17] = [
        ("id", d.id.to_string()),
        ("destination", d.destination.clone()),
        ("operation", d.operation.clone()),
        ("state", d.state.clone()),
        ("attempts", d.attempts.to_string()),
        ("provider", d.provider.clone()),
        ("intent", d.intent.clone()),
        ("source_id", d.source_id.clone()),
        ("account_id", or_dash(d.account_id)),
        ("idempotency_key", d.idempotency_key.clone()),
        ("created_at", d.created_at.clone()),
        ("next_attempt_at", d.next_attempt_at.clone()),
        ("done_at", or_dash(d.done_at.as_deref())),
        ("last_status", or_dash(d.last_status)),
        ("fingerprint", or_dash(d.fingerprint.as_deref())),
        ("reason", or_dash(d.reason.as_deref())),
        ("external_ref", or_dash(d.external_ref.as_deref())),
    ];
    let mut out = String::new();
    for (key, value) in fields {
        out.push_str(&format!("{key:<16} {value}\n"));
    }
    if let Some(e) = &d.last_error {
        out.push_str(&format!("last error:\n  {}\n", e.replace('\n', "\n  ")));
    }
    out.push_str(&format!("attempts ({}):\n", detail.attempts.len()));
    out.push_str(&attempts_table(&detail.attempts));
    let errors: Vec<&AttemptView> = detail
        .attempts
        .iter()
        .filter(|a| a.error.is_some())
        .collect();
    if !errors.is_empty() {
        out.push_str("errors (redacted):\n");
        for a in errors {
            let e = a.error.as_deref().unwrap_or_default();
            out.push_str(&format!(
                "  #{}: {}\n",
                a.attempt,
                e.replace('\n', "\n      ")
            ));
        }
    }
    out
}

fn destinations_table(rows: &[DestinationView], now: OffsetDateTime) -> String {
    let mut out = format!(
        "{:<8} {:<9} {:<6} {:<19}  {:<8} {:>7} {:>9} {:>6} {:>14}  REASON\n",
        "NAME",
        "BREAKER",
        "FORCED",
        "PAUSED UNTIL",
        "DISABLED",
        "PENDING",
        "IN FLIGHT",
        "DEAD",
        "OLDEST PENDING"
    );
    for d in rows {
        // A pause that ended is no pause.
        let paused = d
            .paused_until
            .as_deref()
            .filter(|t| OffsetDateTime::parse(t, &Rfc3339).is_ok_and(|until| until > now));
        let reason = match (&d.disabled_reason, paused, &d.pause_reason) {
            (Some(r), _, _) => format!("disabled: {r}"),
            (None, Some(_), Some(r)) => format!("paused: {r}"),
            _ => String::new(),
        };
        push_line(
            &mut out,
            &format!(
                "{:<8} {:<9} {:<6} {:<19}  {:<8} {:>7} {:>9} {:>6} {:>14}  {}",
                d.name,
                d.breaker_state,
                d.forced,
                or_dash(paused.map(short_time)),
                if d.disabled_reason.is_some() {
                    "yes"
                } else {
                    "no"
                },
                d.pending,
                d.in_flight,
                d.dead,
                or_dash(d.oldest_pending_s.map(age)),
                reason,
            ),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn destination(name: &str, pending: i64, paused_until: Option<&str>) -> DestinationView {
        DestinationView {
            breaker_state: "closed".into(),
            configured: true,
            dead: 3,
            disabled_reason: None,
            forced: "auto".into(),
            in_flight: 12,
            lane_owner: None,
            name: name.into(),
            oldest_pending_s: Some(3725.4),
            pause_reason: paused_until.map(|_| "quota".into()),
            paused_until: paused_until.map(str::to_owned),
            pending,
            updated_at: "2026-12-05T10:00:00Z".into(),
            updated_by: None,
        }
    }

    /// The column of `label` in the header: where its text ends.
    fn column_end(header: &str, label: &str) -> usize {
        header.find(label).expect("a column") + label.len()
    }

    #[test]
    fn the_destinations_table_right_aligns_numbers_under_their_headers() {
        let now = datetime!(2026-12-05 12:00:00 UTC);
        let table = destinations_table(
            &[
                destination("chat", 7, Some("2026-12-05T12:10:00.123456Z")),
                destination("email", 12_345, Some("2026-12-05T11:00:00Z")),
            ],
            now,
        );
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        let end = column_end(lines[0], "PENDING");
        assert_eq!(&lines[1][end - 7..end], "      7", "{table}");
        assert_eq!(&lines[2][end - 7..end], "  12345", "{table}");
        let end = column_end(lines[0], "IN FLIGHT");
        assert_eq!(&lines[1][end - 9..end], "       12", "{table}");
        let end = column_end(lines[0], "OLDEST PENDING");
        assert_eq!(lines[1][..end].trim_end().rsplit(' ').next(), Some("1h02m"));
        assert!(lines[1].contains("2026-12-05 12:10:00  no"), "{table}");
        assert!(lines[1].ends_with("paused: quota"), "{table}");
        assert!(
            !lines[2].contains("2026-12-05 11:00:00") && !lines[2].contains("paused"),
            "an ended pause is not shown: {table}"
        );
        assert!(
            lines.iter().all(|l| *l == l.trim_end()),
            "no trailing blanks: {table:?}"
        );
    }

    #[test]
    fn ages_and_lines_are_short() {
        assert_eq!(age(0.4), "0s");
        assert_eq!(age(59.6), "1m00s");
        assert_eq!(age(725.0), "12m05s");
        assert_eq!(age(11_220.0), "3h07m");
        assert_eq!(age(187_200.0), "2d04h");
        assert_eq!(one_line("first\nsecond", 80), "first");
        assert_eq!(one_line("abcdef", 4), "abc…");
        assert_eq!(
            short_time("2026-12-05T11:10:27.123456Z"),
            "2026-12-05 11:10:27"
        );
        assert_eq!(
            short_time("2026-12-05T12:10:27+01:00"),
            "2026-12-05 11:10:27"
        );
    }
}
