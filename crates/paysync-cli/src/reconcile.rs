//! `paysync reconcile`: compare a provider's own event list with the event log and publish
//! what never arrived (docs/reconcile.md).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use indicatif::{ProgressBar, ProgressStyle};
use paysync_amqp::Publisher;
use paysync_domain::Provider;
use paysync_store::Store;
use paysync_worker::reconcile::{EventSource, Reconciler, Report, Window};
use serde_json::json;
use time::OffsetDateTime;

use crate::config::{self, Env};

/// What to reconcile.
#[derive(clap::Args)]
pub struct ReconcileArgs {
    /// The provider: stripe, square, authorizenet or paypal.
    #[arg(value_parser = crate::events::parse_provider)]
    provider: Provider,
    /// Start of the window: an RFC 3339 time, or `<n>s|m|h|d` before now.
    #[arg(long)]
    since: String,
    /// End of the window (default: now): an RFC 3339 time, or `<n>s|m|h|d` before now.
    #[arg(long)]
    until: Option<String>,
    /// Only events of this type (repeatable).
    #[arg(long = "type", value_name = "TYPE")]
    types: Vec<String>,
    /// Count what would be published, publish nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// A time flag: RFC 3339, or a duration before `now`.
fn parse_when(s: &str, flag: &str, now: OffsetDateTime) -> anyhow::Result<OffsetDateTime> {
    if let Ok(t) = crate::dlq::parse_time(s, flag) {
        return Ok(t);
    }
    let secs = crate::dlq::parse_duration_for(s, flag)
        .with_context(|| format!("{flag}: expected an RFC 3339 time or <n>s|m|h|d ago"))?;
    Ok(now - Duration::from_secs(secs.unsigned_abs()))
}

fn source(env: &Env<'_>, provider: Provider) -> anyhow::Result<Arc<dyn EventSource>> {
    let (source, var): (Option<Arc<dyn EventSource>>, &str) = match provider {
        Provider::Stripe => (
            config::stripe_api(env)?.map(|s| s as Arc<dyn EventSource>),
            "PAYSYNC_STRIPE_API_KEY",
        ),
        Provider::Square => (
            config::square_api(env)?.map(|s| s as Arc<dyn EventSource>),
            "PAYSYNC_SQUARE_ACCESS_TOKEN",
        ),
        Provider::Paypal => (
            config::paypal_api(env)?.map(|s| s as Arc<dyn EventSource>),
            "PAYSYNC_PAYPAL_CLIENT_ID and PAYSYNC_PAYPAL_CLIENT_SECRET",
        ),
        Provider::AuthorizeNet => (
            config::authorizenet_history(env)?.map(|s| s as Arc<dyn EventSource>),
            "PAYSYNC_AUTHORIZENET_API_LOGIN_ID and PAYSYNC_AUTHORIZENET_TRANSACTION_KEY",
        ),
    };
    source.with_context(|| {
        format!("reconciling {provider} needs its API credentials: {var} (or the _FILE variants) not set")
    })
}

fn print_report(r: &Report) {
    let verb = if r.dry_run {
        "would publish"
    } else {
        "published"
    };
    println!(
        "{}: listed {}, already logged {}, {verb} {}, skipped {}",
        r.provider,
        r.listed,
        r.already_logged,
        r.published,
        r.skipped_total()
    );
    for (reason, n) in &r.skipped {
        println!("  skipped {n}: {reason}");
    }
}

pub async fn run(env: &Env<'_>, args: ReconcileArgs) -> anyhow::Result<ExitCode> {
    let now = OffsetDateTime::now_utc();
    let source = source(env, args.provider)?;
    let mut since = parse_when(&args.since, "--since", now)?;
    let until = match &args.until {
        Some(u) => parse_when(u, "--until", now)?,
        None => now,
    };
    if since >= until {
        bail!("--since must be before --until");
    }
    let oldest = now - source.retention();
    if since < oldest {
        eprintln!(
            "paysync: {} keeps events for {} days; listing from {oldest} instead",
            args.provider,
            source.retention().as_secs() / 86_400
        );
        since = oldest;
    }
    let window = Window {
        since,
        until,
        types: args.types.clone(),
    };
    let store = Store::new(&config::database(env)?)?;
    let publisher = Publisher::new(config::amqp(env, "cli")?);
    let reconciler = Reconciler::new(
        store.clone(),
        publisher.clone(),
        paysync_worker::billing::handlers(),
    );
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}") {
        bar.set_style(style);
    }
    let progress = |r: &Report| {
        bar.set_message(format!(
            "{} page(s), {} listed, {} missing",
            r.pages, r.listed, r.published
        ));
        bar.tick();
    };
    let outcome = reconciler
        .run_audited(
            source.as_ref(),
            &window,
            args.dry_run,
            &config::actor(env),
            &progress,
        )
        .await;
    bar.finish_and_clear();
    publisher.close().await;
    let report = match &outcome {
        Ok(r) => r,
        Err(e) => &e.report,
    };
    if args.json {
        let mut v = json!(report);
        v["since"] = json!(window.since.unix_timestamp());
        v["until"] = json!(window.until.unix_timestamp());
        if let Err(e) = &outcome {
            v["error"] = json!(format!("{e:#}"));
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_report(report);
    }
    match outcome {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(e) => Err(anyhow::Error::new(e)
            .context("reconciliation did not finish; run the same command again (it only adds)")),
    }
}
