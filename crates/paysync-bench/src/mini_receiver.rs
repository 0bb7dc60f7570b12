//! The minimal receiver: the ceiling the real receiver is compared with.
//!
//! An axum app, in its own process like the real receiver, that does the least a receiver
//! must: read the raw body, check the `Stripe-Signature` v1 HMAC-SHA256 (with the domain
//! crate's constant-time verification), publish the body persistent and `mandatory` into a
//! quorum queue on a confirm-mode channel, and answer 200 once the broker confirmed. It uses
//! as many channels as the real publisher does by default (2, round robin). No envelope
//! parsing, no metrics, no logs, no timeouts, no reconnects.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use bytes::Bytes;
use paysync_amqp::lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use paysync_amqp::lapin::{BasicProperties, Channel, Confirmation};
use paysync_domain::stripe::{DEFAULT_TOLERANCE_SECS, SIGNATURE_HEADER, signature};

use crate::broker;

/// Arguments of `paysync-bench mini-receiver`.
#[derive(clap::Args, Debug, Clone)]
pub struct MiniReceiverArgs {
    /// Listen address, e.g. `127.0.0.1:18080`.
    #[arg(long)]
    pub listen: SocketAddr,
    /// The quorum queue to publish into (declared durable if absent).
    #[arg(long)]
    pub queue: String,
    /// The signing secret (`whsec_…`).
    #[arg(long)]
    pub secret: String,
    /// The broker.
    #[arg(long, default_value = broker::DEFAULT_URL)]
    pub amqp_url: String,
    /// Confirm-mode channels, used round robin (the real publisher's default is 2).
    #[arg(long, default_value_t = 2)]
    pub channels: usize,
}

struct MiniState {
    channels: Vec<Channel>,
    next: AtomicUsize,
    queue: String,
    secret: String,
}

/// `paysync-bench mini-receiver`: serves until SIGTERM or Ctrl-C.
pub async fn run(args: MiniReceiverArgs) -> anyhow::Result<()> {
    let connection = broker::connect(&args.amqp_url, "paysync-bench-mini-receiver").await?;
    let setup = connection.create_channel().await?;
    broker::declare_quorum(&setup, &args.queue).await?;
    let mut channels = Vec::with_capacity(args.channels.max(1));
    for _ in 0..args.channels.max(1) {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .context("confirm.select")?;
        channels.push(channel);
    }
    let state = Arc::new(MiniState {
        channels,
        next: AtomicUsize::new(0),
        queue: args.queue.clone(),
        secret: args.secret.clone(),
    });
    let router = Router::new()
        .route("/webhooks/stripe", post(webhook))
        .route("/readyz", get(|| async { "ready\n" }))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    axum::serve(listener, router)
        .with_graceful_shutdown(terminated())
        .await
        .context("serving")?;
    let _ = connection.close(200, "bye".into()).await;
    Ok(())
}

async fn webhook(
    State(state): State<Arc<MiniState>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let Some(header) = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok()) else {
        return StatusCode::BAD_REQUEST;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    if signature::verify(&[&state.secret], header, &body, now, DEFAULT_TOLERANCE_SECS).is_err() {
        return StatusCode::BAD_REQUEST;
    }
    let i = state.next.fetch_add(1, Ordering::Relaxed) % state.channels.len();
    let options = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let published = state.channels[i]
        .basic_publish(
            "".into(),
            state.queue.as_str().into(),
            options,
            &body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await;
    let confirmed = match published {
        Ok(confirm) => confirm.await,
        Err(_) => return StatusCode::SERVICE_UNAVAILABLE,
    };
    match confirmed {
        Ok(Confirmation::Ack(None)) => StatusCode::OK,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn terminated() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}
