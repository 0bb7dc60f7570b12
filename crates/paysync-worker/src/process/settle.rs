//! The settle stage: what becomes of a delivery once its outcome is known. A done event is
//! acked; a failed one is re-published to a delay level (retryable, budget left) or to the
//! dead-letter exchange (permanent, or retries exhausted), and acked once the broker confirmed
//! that copy.
//!
//! Rule of thumb: nothing is ever dropped. When the copy cannot be published, the delivery is
//! handed back to the queue after a pause ([`hand_back`]).

use std::time::{Duration, Instant};

use paysync_amqp::{DeadLetter, Incoming, MAX_DELAY_SECS};
use paysync_domain::message::{SOURCE_RECONCILE, header};

use super::{Done, Processor, now_ms};
use crate::failure::one_line;
use crate::handler::Event;
use crate::{Failure, FailureClass};

/// Pause before handing a delivery back after a failed publish, so a broker hiccup does not
/// turn into a hot redelivery loop (the queue's `x-delivery-limit` is the backstop).
const HAND_BACK_PAUSE: Duration = Duration::from_secs(1);

/// Hands `incoming` back to the queue after `pause` (a redelivery counts toward
/// `x-delivery-limit`). A failed hand-back is left to the broker, which redelivers every
/// unacked delivery when the channel goes.
pub(crate) async fn hand_back(incoming: &Incoming, pause: Duration) {
    tokio::time::sleep(pause).await;
    let _ = incoming.requeue().await;
}

impl Processor {
    /// After the commit: the crash-test hook, the lag, the ack, the count and the log line.
    pub(super) async fn settled(
        &self,
        incoming: &Incoming,
        event: &Event,
        done: Done,
        started: Instant,
    ) {
        let meta = &event.meta;
        let provider = meta.provider.as_str();
        if let Some(hook) = &self.after_commit {
            hook(meta).await;
        }
        if done != Done::Duplicate
            && !event.replay
            && incoming.header_str(header::SOURCE).as_deref() == Some(SOURCE_RECONCILE)
        {
            // New to the log and not from a webhook: the provider's delivery was lost.
            self.metrics
                .reconcile_missing
                .with_label_values(&[provider])
                .inc();
        }
        if done != Done::Duplicate {
            let lag = (now_ms() - meta.received_at_ms).max(0) as f64 / 1000.0;
            let delayed = event.attempt > 1
                || event.replay
                || incoming.header_i64(header::REDRIVES).is_some_and(|n| n > 0)
                || incoming.header_str(header::SOURCE).is_some();
            let path = if delayed { "delayed" } else { "direct" };
            self.metrics
                .lag
                .with_label_values(&[provider, path])
                .observe(lag);
        }
        incoming.ack();
        self.count(provider, &meta.event_type, done.label());
        self.metrics
            .duration
            .with_label_values(&[provider])
            .observe(started.elapsed().as_secs_f64());
        tracing::info!(
            provider,
            event.id = %meta.event_id,
            event.r#type = %meta.event_type,
            account.id = event.account(),
            outcome = done.label(),
            attempt = event.attempt,
            duration_ms = started.elapsed().as_millis() as u64,
            "event processed"
        );
    }

    /// A failed event: a retry through the delay levels while the policy allows one, else a
    /// dead letter.
    pub(super) async fn fail(&self, incoming: &Incoming, event: &Event, failure: Failure) {
        let meta = &event.meta;
        let provider = meta.provider.as_str();
        let delay = match failure.class() {
            FailureClass::Retryable => self.retry.delay(event.attempt, rand::random::<f64>()),
            FailureClass::Permanent => None,
        };
        let Some(delay) = delay else {
            self.dead_letter(incoming, event.attempt, failure, provider, &meta.event_type)
                .await;
            return;
        };
        let secs = (delay.as_secs_f64().round() as u32).clamp(1, MAX_DELAY_SECS);
        let first = incoming
            .header_i64(header::FIRST_FAILURE_MS)
            .unwrap_or_else(now_ms);
        match self
            .publisher
            .publish_retry(incoming, event.attempt + 1, secs, first)
            .await
        {
            Ok(()) => {
                incoming.ack();
                self.count(provider, &meta.event_type, "retry_scheduled");
                self.metrics
                    .retries
                    .with_label_values(&[&event.attempt.to_string()])
                    .inc();
                tracing::warn!(
                    provider,
                    event.id = %meta.event_id,
                    event.r#type = %meta.event_type,
                    outcome = "retry_scheduled",
                    attempt = event.attempt,
                    delay_secs = secs,
                    kind = failure.kind(),
                    error = %failure.chain_line(),
                    "event failed; retry scheduled"
                );
            }
            Err(err) => {
                tracing::warn!(event.id = %meta.event_id, error = %err, "retry publish failed; handing the delivery back");
                hand_back(incoming, HAND_BACK_PAUSE).await;
            }
        }
    }

    /// Publishes a dead letter for `incoming` (its `failure` after `attempts` attempts) and
    /// acks it once confirmed.
    pub(super) async fn dead_letter(
        &self,
        incoming: &Incoming,
        attempts: u32,
        failure: Failure,
        provider: &str,
        event_type: &str,
    ) {
        let now = now_ms();
        let exhausted = failure.class() == FailureClass::Retryable;
        let mut chain = failure.chain();
        if exhausted {
            chain = format!("retries exhausted after {attempts} attempts\n{chain}");
        }
        let letter = DeadLetter {
            key: uuid::Uuid::new_v4().to_string(),
            kind: failure.kind(),
            chain,
            fingerprint: failure.fingerprint(),
            attempts,
            first_failure_ms: incoming.header_i64(header::FIRST_FAILURE_MS).unwrap_or(now),
            last_failure_ms: now,
        };
        let event_id = incoming.message_id().unwrap_or_default();
        match self.publisher.publish_dead_letter(incoming, &letter).await {
            Ok(()) => {
                incoming.ack();
                self.count(provider, event_type, "dead_lettered");
                tracing::error!(
                    provider,
                    event.id = %event_id,
                    event.r#type = %event_type,
                    outcome = "dead_lettered",
                    attempt = attempts,
                    kind = letter.kind,
                    fingerprint = %letter.fingerprint,
                    error = %one_line(&letter.chain),
                    "event dead-lettered"
                );
            }
            Err(err) => {
                tracing::warn!(event.id = %event_id, error = %err, "dead-letter publish failed; handing the delivery back");
                hand_back(incoming, HAND_BACK_PAUSE).await;
            }
        }
    }
}
