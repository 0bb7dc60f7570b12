//! `paysync dlq …` and `paysync events replay`: the operators' tool, over the same
//! [`paysync_worker::ops::Ops`] as the admin API. Read commands take `--json`; long actions
//! show a progress bar on a terminal and can be re-run safely.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use paysync_amqp::Publisher;
use paysync_store::{DeadLetterFilter, Store};
use paysync_worker::ops::{Ops, Selection};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::{self, Env};

#[derive(Subcommand)]
pub enum DlqCommand {
    /// Open dead letters grouped by fingerprint (error kind + code site).
    Groups {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Dead letters, oldest first.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One dead letter: body, headers, error chain, attempts, redrives, failure times.
    Show {
        /// The dead letter's id.
        id: i64,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Republish to the work queue with a fresh attempt budget (redrive count + 1).
    Retry {
        #[command(flatten)]
        select: SelectArgs,
        /// Show what would be retried.
        #[arg(long)]
        dry_run: bool,
    },
    /// Hide from the default view (kept; `list --state archived` shows them).
    Archive {
        #[command(flatten)]
        select: SelectArgs,
    },
    /// Delete archived dead letters older than a duration (e.g. 30d, 12h). Needs --yes.
    #[command(group(clap::ArgGroup::new("state").required(true).args(["archived", "retried"])))]
    Purge {
        /// Archived letters (one of --archived or --retried is required, so nothing open is
        /// ever purged).
        #[arg(long)]
        archived: bool,
        /// Retried letters: their copy went back to the work queue (if it failed again, it is
        /// a dead letter of its own).
        #[arg(long)]
        retried: bool,
        /// Archived (or retried) longer ago than this: `<n>s|m|h|d`.
        #[arg(long)]
        older_than: String,
        /// Really delete; without it, only count.
        #[arg(long)]
        yes: bool,
    },
    /// Dead letters as JSON lines on stdout, loss-free (`body_base64` is the exact body).
    Export {
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Replay an export file: each exact body back to the work queue.
    Import {
        /// The file written by `paysync dlq export`.
        file: PathBuf,
        /// Leave out the first N letters of the file: an interrupted import says which N
        /// continues it.
        #[arg(long, default_value_t = 0)]
        skip: usize,
    },
    /// Operator actions: who, when, what, how many.
    History {
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct FilterArgs {
    /// Only this group (fingerprint).
    #[arg(long)]
    group: Option<String>,
    /// Only this event type.
    #[arg(long = "type")]
    event_type: Option<String>,
    /// Only letters that last failed at or after this RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// open (default), retried or archived.
    #[arg(long, value_parser = ["open", "retried", "archived"])]
    state: Option<String>,
    /// At most this many (list: 100 unless given; export: all unless given).
    #[arg(long)]
    limit: Option<i64>,
}

#[derive(Args)]
pub struct SelectArgs {
    /// Dead letter ids.
    ids: Vec<i64>,
    /// Every open letter of this group.
    #[arg(long, conflicts_with_all = ["ids", "all"])]
    group: Option<String>,
    /// Every open letter.
    #[arg(long, conflicts_with_all = ["ids", "group"])]
    all: bool,
}

impl SelectArgs {
    fn selection(&self) -> anyhow::Result<Selection> {
        Ok(match (&self.group, self.all, self.ids.is_empty()) {
            (Some(g), false, true) => Selection::Group(g.clone()),
            (None, true, true) => Selection::All,
            (None, false, false) => Selection::Ids(self.ids.clone()),
            _ => anyhow::bail!("give dead letter ids, --group G or --all"),
        })
    }
}

pub fn parse_time(s: &str, what: &str) -> anyhow::Result<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).with_context(|| format!("{what}: not an RFC 3339 time: {s}"))
}

impl FilterArgs {
    fn filter(&self, default_limit: i64) -> anyhow::Result<DeadLetterFilter> {
        Ok(DeadLetterFilter {
            group: self.group.clone(),
            event_type: self.event_type.clone(),
            since: self
                .since
                .as_deref()
                .map(|s| parse_time(s, "--since"))
                .transpose()?,
            state: self.state.clone(),
            limit: self.limit.unwrap_or(default_limit),
        })
    }
}

/// `<n>s|m|h|d` in seconds (`--older-than`).
pub fn parse_duration(s: &str) -> anyhow::Result<i64> {
    parse_duration_for(s, "--older-than")
}

/// `<n>s|m|h|d` in seconds; errors name `flag`.
pub fn parse_duration_for(s: &str, flag: &str) -> anyhow::Result<i64> {
    let (num, unit) = s.split_at(s.len().saturating_sub(1));
    let n: i64 = num
        .parse()
        .with_context(|| format!("{flag}: expected <n>s|m|h|d, got {s:?}"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => anyhow::bail!("{flag}: expected <n>s|m|h|d, got {s:?}"),
    };
    n.checked_mul(mult)
        .with_context(|| format!("{flag}: {s:?} is too long"))
}

pub async fn ops(env: &Env<'_>) -> anyhow::Result<Ops> {
    let store = Store::new(&config::database(env)?)?;
    let publisher = Publisher::new(config::amqp(env, "cli")?);
    Ok(Ops::new(store, publisher))
}

fn progress_bar(what: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    if let Ok(style) = ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} ({eta})") {
        bar.set_style(style);
    }
    bar.set_message(what);
    bar
}

pub fn print(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub async fn run(env: &Env<'_>, command: DlqCommand) -> anyhow::Result<ExitCode> {
    let ops = ops(env).await?;
    let actor = config::actor(env);
    match command {
        DlqCommand::Groups { json } => {
            let groups = ops.groups().await?;
            if json {
                print(&groups)?;
            } else {
                println!(
                    "{:<18} {:>6}  {:<20} {:<20}  TITLE",
                    "GROUP", "COUNT", "FIRST", "LAST"
                );
                // The table reads the JSON the --json output prints.
                let groups = serde_json::to_value(&groups)?;
                for g in groups.as_array().into_iter().flatten() {
                    println!(
                        "{:<18} {:>6}  {:<20} {:<20}  {} [{}]",
                        g["group"].as_str().unwrap_or_default(),
                        g["count"],
                        g["first_failed_at"].as_str().unwrap_or_default(),
                        g["last_failed_at"].as_str().unwrap_or_default(),
                        g["title"].as_str().unwrap_or_default(),
                        g["event_types"]
                            .as_array()
                            .map(|a| a
                                .iter()
                                .filter_map(Value::as_str)
                                .collect::<Vec<_>>()
                                .join(", "))
                            .unwrap_or_default(),
                    );
                }
            }
        }
        DlqCommand::List { filter, json } => {
            let rows = ops.list(&filter.filter(100)?).await?;
            if json {
                print(&rows)?;
            } else {
                println!(
                    "{:>6} {:<34} {:<32} {:<22} {:>3} {:>3}  ERROR",
                    "ID", "EVENT", "TYPE", "KIND", "ATT", "RED"
                );
                let rows = serde_json::to_value(&rows)?;
                for d in rows.as_array().into_iter().flatten() {
                    println!(
                        "{:>6} {:<34} {:<32} {:<22} {:>3} {:>3}  {}",
                        d["id"],
                        d["event_id"].as_str().unwrap_or("-"),
                        d["event_type"].as_str().unwrap_or("-"),
                        d["error_kind"].as_str().unwrap_or_default(),
                        d["attempts"],
                        d["redrives"],
                        d["error"].as_str().unwrap_or_default(),
                    );
                }
            }
        }
        DlqCommand::Show { id, json } => {
            let Some(d) = ops.show(id).await? else {
                eprintln!("paysync: no dead letter {id}");
                return Ok(ExitCode::from(2));
            };
            if json {
                print(&d)?;
            } else {
                let d = serde_json::to_value(&d)?;
                for key in [
                    "id",
                    "event_id",
                    "event_type",
                    "state",
                    "error_kind",
                    "fingerprint",
                    "attempts",
                    "redrives",
                    "first_failed_at",
                    "last_failed_at",
                    "routing_key",
                ] {
                    println!("{key:<16} {}", d[key]);
                }
                println!("error chain:");
                for line in d["error_chain"].as_array().into_iter().flatten() {
                    println!("  {}", line.as_str().unwrap_or_default());
                }
                println!("headers:\n{}", serde_json::to_string_pretty(&d["headers"])?);
                println!("body:\n{}", serde_json::to_string_pretty(&d["body"])?);
            }
        }
        DlqCommand::Retry { select, dry_run } => {
            let bar = progress_bar("retrying");
            let report = ops
                .retry(&select.selection()?, dry_run, &actor, &|done, total| {
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                })
                .await;
            bar.finish_and_clear();
            print(&report?)?;
        }
        DlqCommand::Archive { select } => print(&ops.archive(&select.selection()?, &actor).await?)?,
        DlqCommand::Purge {
            archived: _,
            retried,
            older_than,
            yes,
        } => {
            let state = if retried {
                paysync_store::PurgeState::Retried
            } else {
                paysync_store::PurgeState::Archived
            };
            print(
                &ops.purge(state, parse_duration(&older_than)?, yes, &actor)
                    .await?,
            )?;
        }
        DlqCommand::Export { filter } => {
            let lines = ops.export(&filter.filter(i64::MAX)?, &actor).await?;
            let mut out = std::io::stdout().lock();
            for line in &lines {
                writeln!(out, "{line}")?;
            }
            eprintln!("exported {} dead letter(s)", lines.len());
        }
        DlqCommand::Import { file, skip } => {
            let reader = std::io::BufReader::new(
                std::fs::File::open(&file)
                    .with_context(|| format!("cannot open {}", file.display()))?,
            );
            let lines: Vec<String> = reader
                .lines()
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .filter(|l| !l.trim().is_empty())
                .collect();
            let bar = progress_bar("importing");
            let report = ops
                .import(&lines, skip, &actor, &|done, total| {
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                })
                .await;
            bar.finish_and_clear();
            print(&report?)?;
        }
        DlqCommand::History { limit, json } => {
            let actions = ops.history(limit).await?;
            if json {
                print(&actions)?;
            } else {
                println!(
                    "{:<26} {:<16} {:<14} {:>6}  TARGET",
                    "AT", "ACTOR", "ACTION", "COUNT"
                );
                let actions = serde_json::to_value(&actions)?;
                for a in actions.as_array().into_iter().flatten() {
                    println!(
                        "{:<26} {:<16} {:<14} {:>6}  {}{}",
                        a["at"].as_str().unwrap_or_default(),
                        a["actor"].as_str().unwrap_or_default(),
                        a["action"].as_str().unwrap_or_default(),
                        a["affected"],
                        a["target"].as_str().unwrap_or_default(),
                        if a["dry_run"] == true {
                            " (dry run)"
                        } else {
                            ""
                        },
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(parse_duration("30d").unwrap(), 30 * 86_400);
        assert_eq!(parse_duration("12h").unwrap(), 12 * 3600);
        assert_eq!(parse_duration("5m").unwrap(), 300);
        assert_eq!(parse_duration("0s").unwrap(), 0);
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("1w").is_err());
    }
}
