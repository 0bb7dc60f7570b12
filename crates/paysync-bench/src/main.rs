//! `paysync-bench`: measures paysync against the machine's ceilings and writes the table.
//!
//! Three subcommands, each its own process when the benchmark runs:
//!
//! - `run`: the orchestrator. It starts RabbitMQ publishers, the minimal receiver, the real
//!   `paysync` processes, the load generator and pgbench, collects their figures and prints the
//!   table (also written as Markdown). See [`run`].
//! - `mini-receiver`: the ceiling of a receiver, an axum app that checks the signature and
//!   publishes with a confirm, nothing else. See [`mini_receiver`].
//! - `loadgen`: the HTTP load generator (full speed or a fixed open-loop rate), one JSON line
//!   on standard output. See [`loadgen`].
//!
//! Its table, with the command and the machine, is what `docs/benchmarks.md` publishes; the tool
//! prints figures only, not what limits them.

mod broker;
mod events;
mod host;
mod http;
mod loadgen;
mod mini_receiver;
mod pg;
mod procs;
mod report;
mod rows;
mod run;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// Benchmarks paysync (receiver, worker, end to end, memory) against the machine's ceilings.
#[derive(Parser)]
#[command(name = "paysync-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every benchmark row and print the table (also written as Markdown).
    Run(run::RunArgs),
    /// The minimal receiver: HMAC check and confirmed publish only (spawned by `run`).
    MiniReceiver(mini_receiver::MiniReceiverArgs),
    /// The load generator: signed Stripe events over keep-alive HTTP/1.1 connections (spawned
    /// by `run`); prints one JSON line.
    Loadgen(loadgen::LoadgenArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .and_then(|runtime| {
            runtime.block_on(async move {
                match cli.command {
                    Command::Run(args) => run::run(args).await,
                    Command::MiniReceiver(args) => mini_receiver::run(args).await,
                    Command::Loadgen(args) => loadgen::run(args).await,
                }
            })
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("paysync-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}
