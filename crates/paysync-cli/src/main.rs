//! `paysync`: the production processes, the operators' tool and the local all-in-one.

mod config;
mod send;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::config::{Env, SecretPolicy};

/// Payment-provider webhooks into billing and CRM state, exactly once in effect.
#[derive(Parser)]
#[command(name = "paysync", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the webhook receiver (production process; needs PAYSYNC_STRIPE_WEBHOOK_SECRET).
    Receiver,
    /// Run the receiver locally with development defaults (the secret falls back to a public
    /// development one). The worker joins this command in a later release.
    Up,
    /// Sign a payload the way Stripe does and POST it to a receiver.
    Send {
        /// The event JSON file; its bytes are sent exactly as they are.
        file: PathBuf,
        /// Where to post (default: http://$PAYSYNC_HTTP_ADDR/webhooks/stripe).
        #[arg(long)]
        url: Option<String>,
        /// Signing secret (default: PAYSYNC_STRIPE_WEBHOOK_SECRET, else the development
        /// secret). Prefer the variable: arguments are visible in the process list.
        #[arg(long)]
        secret: Option<String>,
        /// Unix timestamp to sign with (default: now). Useful to test the tolerance window.
        #[arg(long)]
        timestamp: Option<i64>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = Env::process();
    let result = config::common(&env).and_then(|common| {
        paysync_telemetry::init_tracing(common.log_format);
        let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
        runtime.block_on(run(cli.command, &env))
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("paysync: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, env: &Env<'_>) -> anyhow::Result<ExitCode> {
    match command {
        Command::Receiver => run_receiver(env, SecretPolicy::Required).await,
        Command::Up => run_receiver(env, SecretPolicy::DevFallback).await,
        Command::Send {
            file,
            url,
            secret,
            timestamp,
        } => send::run(env, &file, url, secret, timestamp).await,
    }
}

async fn run_receiver(env: &Env<'_>, policy: SecretPolicy) -> anyhow::Result<ExitCode> {
    let settings = config::receiver(env, policy)?;
    let app = paysync_receiver::App::build(settings).await?;
    tracing::info!(
        port = app.port(),
        metrics_port = app.metrics_port(),
        "receiver started"
    );
    app.run_until_stopped(shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown requested: finishing in-flight work");
}
