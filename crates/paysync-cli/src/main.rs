//! `paysync`: the production processes, the operators' tool and the local all-in-one.

mod accounts;
mod config;
mod dispatch;
mod dlq;
mod events;
mod outbox;
mod reconcile;
mod send;

use std::net::SocketAddr;
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
    /// Run the worker (production process): consume, apply, retry, dead-letter.
    Worker,
    /// Run the outbox dispatcher (production process): deliver emails, chat messages and CRM
    /// updates to the configured destinations.
    Dispatcher,
    /// Local all-in-one: migrate, declare the topology, run receiver, worker and dispatcher in
    /// one process. Without PAYSYNC_STRIPE_WEBHOOK_SECRET it uses the public development
    /// secret; without PAYSYNC_SMTP_URL it sends email to the local catcher.
    Up,
    /// Apply pending database migrations and exit.
    Migrate,
    /// The CRM accounts billing events built.
    Accounts {
        #[command(subcommand)]
        command: accounts::AccountsCommand,
    },
    /// Work the dead-letter queue: groups, list, show, retry, archive, purge, export, import,
    /// history.
    Dlq {
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
    /// Work the outbox: deliveries (list, show, retry, skip) and destinations (pause, resume,
    /// force the breaker).
    Outbox {
        #[command(subcommand)]
        command: outbox::OutboxCommand,
    },
    /// Inspect and replay the event log.
    Events {
        #[command(subcommand)]
        command: events::EventsCommand,
    },
    /// Find the events a provider sent that never reached the event log (in the provider's
    /// own event list) and publish them for the worker; prints what it listed, found logged,
    /// published and skipped.
    Reconcile(reconcile::ReconcileArgs),
    /// Sign a payload the way Stripe does and POST it to a receiver.
    Send {
        /// The provider to sign as: stripe, square, authorizenet or paypal.
        #[arg(long, default_value = "stripe", value_parser = events::parse_provider)]
        provider: paysync_domain::Provider,
        /// The event JSON file; its bytes are sent exactly as they are.
        file: PathBuf,
        /// Where to post (default: http://$PAYSYNC_HTTP_ADDR/webhooks/<provider>).
        #[arg(long)]
        url: Option<String>,
        /// Signing secret or key (default: the provider's variable, e.g.
        /// PAYSYNC_STRIPE_WEBHOOK_SECRET, else the development key). Prefer the variable:
        /// arguments are visible in the process list. PayPal always signs with the local test
        /// key.
        #[arg(long)]
        secret: Option<String>,
        /// Unix timestamp to sign with (default: now). Useful to test the tolerance window.
        #[arg(long)]
        timestamp: Option<i64>,
        /// A PEM file of CA certificates to trust for an https --url, besides the public
        /// roots: a private CA in front of the receiver.
        #[arg(long)]
        ca_file: Option<PathBuf>,
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

const WORKER_METRICS_IN_UP: &str = "127.0.0.1:9465";
const DISPATCHER_METRICS_IN_UP: &str = "127.0.0.1:9466";
/// The local SMTP catcher `deploy/local/services.sh` runs (mail lands in its maildir).
const LOCAL_SMTP: &str = "smtp://127.0.0.1:1025";

async fn run(command: Command, env: &Env<'_>) -> anyhow::Result<ExitCode> {
    match command {
        Command::Receiver => {
            let settings = config::receiver(env, SecretPolicy::Required)?;
            let app = paysync_receiver::App::build(settings)
                .await
                .map_err(config::receiver_listen_refused)?;
            tracing::info!(
                port = app.port(),
                metrics_port = app.metrics_port(),
                "receiver started"
            );
            app.run_until_stopped(shutdown_signal()).await?;
        }
        Command::Worker => {
            let settings = config::worker(env, "PAYSYNC_METRICS_ADDR", default_metrics_addr())?;
            let app = worker_app(env, settings).await?;
            tracing::info!(metrics_port = app.metrics_port(), "worker started");
            app.run_until_stopped(shutdown_signal()).await?;
        }
        Command::Dispatcher => {
            let settings =
                dispatch::settings(env, "PAYSYNC_METRICS_ADDR", default_metrics_addr(), None)?;
            let app = paysync_dispatcher::App::build(settings).await?;
            tracing::info!(metrics_port = app.metrics_port(), "dispatcher started");
            app.run_until_stopped(shutdown_signal()).await?;
        }
        Command::Up => up(env).await?,
        Command::Migrate => {
            let applied = migrate(&config::database(env)?).await?;
            println!("applied {} migration(s): {applied:?}", applied.len());
        }
        Command::Events { command } => return events::run(env, command).await,
        Command::Dlq { command } => return dlq::run(env, command).await,
        Command::Outbox { command } => return outbox::run(env, command).await,
        Command::Accounts { command } => return accounts::run(env, command).await,
        Command::Reconcile(args) => return reconcile::run(env, args).await,
        Command::Send {
            provider,
            file,
            url,
            secret,
            timestamp,
            ca_file,
        } => {
            return send::run(
                env,
                send::SendArgs {
                    provider,
                    file,
                    url,
                    secret,
                    timestamp,
                    ca_file,
                },
            )
            .await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn default_metrics_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}

/// The production worker: the billing and CRM handler for every type it applies (other types
/// are recorded as `ignored`), completed from the provider APIs whose credentials are set, and
/// the scheduled reconciler for every provider whose event list it can read.
async fn worker_app(
    env: &Env<'_>,
    settings: paysync_worker::Settings,
) -> anyhow::Result<paysync_worker::App> {
    let clients = config::provider_clients(env)?;
    let app = paysync_worker::App::build(
        settings,
        paysync_worker::billing::handlers_for(clients.apis),
    )
    .await?;
    Ok(app.with_reconcile_sources(clients.sources))
}

async fn migrate(settings: &paysync_store::StoreSettings) -> anyhow::Result<Vec<i32>> {
    let store = paysync_store::Store::new(settings)?;
    store
        .migrate()
        .await
        .context("migrating the database (PAYSYNC_DATABASE_URL; is PostgreSQL running? deploy/local/services.sh)")
}

/// `paysync up`: migrate, declare, then receiver and worker side by side until a signal.
async fn up(env: &Env<'_>) -> anyhow::Result<()> {
    let receiver_settings = config::receiver(env, SecretPolicy::DevFallback)?;
    let worker_settings = config::worker(
        env,
        "PAYSYNC_WORKER_METRICS_ADDR",
        WORKER_METRICS_IN_UP.parse().context("built-in address")?,
    )?;
    let dispatcher_settings = dispatch::settings(
        env,
        "PAYSYNC_DISPATCHER_METRICS_ADDR",
        DISPATCHER_METRICS_IN_UP
            .parse()
            .context("built-in address")?,
        Some(LOCAL_SMTP),
    )?;
    let applied = migrate(&worker_settings.store).await?;
    tracing::info!(applied = applied.len(), "database migrated");
    paysync_amqp::declare(&receiver_settings.amqp)
        .await
        .context("declaring the broker topology (PAYSYNC_AMQP_URL; is RabbitMQ running? deploy/local/services.sh)")?;
    let receiver = paysync_receiver::App::build(receiver_settings)
        .await
        .map_err(config::receiver_listen_refused)?;
    let worker = worker_app(env, worker_settings).await?;
    let dispatcher = paysync_dispatcher::App::build(dispatcher_settings).await?;
    tracing::info!(
        port = receiver.port(),
        metrics_port = receiver.metrics_port(),
        worker_metrics_port = worker.metrics_port(),
        dispatcher_metrics_port = dispatcher.metrics_port(),
        "paysync up: receiver, worker and dispatcher running; stop with Ctrl-C"
    );
    let stop = paysync_telemetry::Shutdown::on(shutdown_signal());
    let receiver = tokio::spawn(receiver.run_until_stopped(stop.waiter()));
    let worker = tokio::spawn(worker.run_until_stopped(stop.waiter()));
    let dispatcher = tokio::spawn(dispatcher.run_until_stopped(stop.waiter()));
    // The receiver stops first (no new events), the worker finishes what it has.
    receiver.await.context("receiver task")??;
    worker.await.context("worker task")??;
    dispatcher.await.context("dispatcher task")??;
    Ok(())
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
