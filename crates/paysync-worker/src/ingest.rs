//! The dead-letter ingester: drains the broker's dead-letter queue into the `dead_letters`
//! table, where operators group, inspect, retry and archive them. The broker queue is only a
//! durable buffer (it keeps dead letters while PostgreSQL is down).
//!
//! Rule of thumb: ack only after the row is committed; ingest is idempotent on the
//! dead-letter key, so a redelivery after a crash stores nothing twice.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use paysync_amqp::{ConsumerConfig, Incoming};
use paysync_domain::message::header;
use paysync_store::{NewDeadLetter, Store};
use sha2::{Digest, Sha256};

use crate::failure::fingerprint;
use crate::metrics::WorkerMetrics;
use crate::process::now_ms;

/// How the ingester consumes the dead-letter queue.
pub(crate) const CONSUMER: ConsumerConfig = ConsumerConfig {
    // Enough in hand to keep every lane busy (4 each) without holding many dead letters.
    prefetch: 16,
    // Dead letters are independent rows: a few are stored at once.
    lanes: 4,
    // Each dead letter is stored (with its own in-process retries) and acked on its own.
    max_batch: 1,
};

/// How long a dead letter waits before going back to the queue when the database stays away.
const HAND_BACK_PAUSE: Duration = Duration::from_secs(2);

/// Builds the row for a dead-letter message: ours carry the error headers; one the broker
/// dead-lettered itself (delivery limit exceeded) is described from its newest `x-death` entry.
pub(crate) fn dead_letter_row(incoming: &Incoming) -> NewDeadLetter {
    let headers = incoming.headers_json();
    let now = now_ms();
    let (key, kind, chain, print) = match incoming.header_str(header::DEAD_LETTER_KEY) {
        Some(key) => {
            let kind = incoming
                .header_str(header::ERROR_KIND)
                .unwrap_or_else(|| "unknown".into());
            let print = incoming
                .header_str(header::FINGERPRINT)
                .unwrap_or_else(|| fingerprint(&kind, "unknown"));
            let chain = incoming.header_str(header::ERROR_CHAIN).unwrap_or_default();
            (key, kind, chain, print)
        }
        None => {
            let reason = incoming
                .broker_death_reason()
                .unwrap_or_else(|| "unknown".into());
            let kind = format!("broker_{reason}");
            // x-death carries the time and count of this dead-lettering, so the digest of
            // the headers is unique per dead-lettering and stable across redeliveries.
            let digest = hex::encode(&Sha256::digest(headers.to_string().as_bytes())[..12]);
            let key = format!(
                "broker:{}:{digest}",
                incoming.message_id().unwrap_or_default()
            );
            let chain = format!(
                "the broker dead-lettered this message ({reason}); for delivery_limit it was \
                 handed back more often than x-delivery-limit allows"
            );
            let print = fingerprint(&kind, "broker");
            (key, kind, chain, print)
        }
    };
    let (provider, event_type) = incoming.provider_and_type().unzip();
    NewDeadLetter {
        message_key: key,
        provider,
        event_id: incoming.message_id().map(str::to_owned),
        event_type,
        routing_key: incoming.original_routing_key(),
        headers,
        body: incoming.body().to_vec(),
        error_kind: kind,
        error_chain: chain,
        fingerprint: print,
        attempts: i32::try_from(incoming.attempt_hint()).unwrap_or(i32::MAX),
        first_failed_at_ms: incoming.header_i64(header::FIRST_FAILURE_MS).unwrap_or(now),
        last_failed_at_ms: incoming.header_i64(header::LAST_FAILURE_MS).unwrap_or(now),
        redrives: incoming
            .header_i64(header::REDRIVES)
            .and_then(|r| i32::try_from(r).ok())
            .unwrap_or(0),
    }
}

/// Stores each dead letter of a batch in turn ([`ingest`]).
pub(crate) async fn ingest_batch(store: &Store, metrics: &WorkerMetrics, batch: Vec<Incoming>) {
    for incoming in batch {
        ingest(store, metrics, incoming).await;
    }
}

/// Stores one dead letter, then acks it. Transient database errors are retried in process
/// for a while; if the database stays away the message goes back to the queue (never lost).
pub(crate) async fn ingest(store: &Store, metrics: &WorkerMetrics, incoming: Incoming) {
    let row = dead_letter_row(&incoming);
    let stored = (|| async { store.insert_dead_letter(&row).await })
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(5))
                .with_max_times(8)
                .with_jitter(),
        )
        .when(|e| e.is_transient())
        .await;
    match stored {
        Ok(fresh) => {
            incoming.ack();
            if fresh {
                metrics.ingested.with_label_values(&[&row.error_kind]).inc();
            }
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot store a dead letter yet; handing it back to the queue");
            crate::process::hand_back(&incoming, HAND_BACK_PAUSE).await;
        }
    }
}
