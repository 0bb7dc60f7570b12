//! HTTP handlers of the public listener.
//!
//! Status codes are part of the contract: 200 only after the broker confirmed; 400 with a
//! one-line reason for anything the provider must not retry as is; 413 above the body cap; 503
//! with `Retry-After` when the event could not be made durable. Never a redirect, never an
//! internal detail in a body.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use paysync_amqp::{PublishError, Publisher};
use paysync_domain::stripe::{SIGNATURE_HEADER, StripeVerifier};

use crate::metrics::ReceiverMetrics;

/// Shared state of the handlers.
pub(crate) struct AppState {
    pub(crate) stripe: StripeVerifier,
    pub(crate) publisher: Publisher,
    pub(crate) metrics: ReceiverMetrics,
    pub(crate) body_limit: usize,
    pub(crate) retry_after: HeaderValue,
}

/// A response and the outcome label it is counted under.
struct Outcome {
    label: &'static str,
    response: Response,
}

impl Outcome {
    fn reject(label: &'static str, status: StatusCode, reason: String) -> Self {
        Self {
            label,
            response: (status, plain(reason)).into_response(),
        }
    }
}

fn plain(reason: String) -> ([(header::HeaderName, &'static str); 1], String) {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{reason}\n"),
    )
}

/// `POST /webhooks/stripe`.
pub(crate) async fn stripe_webhook(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> Response {
    let started = Instant::now();
    // The request's own header map, not a copy of it (axum's `HeaderMap` extractor clones).
    let (parts, body) = request.into_parts();
    let outcome = handle_stripe(&state, &parts.headers, body).await;
    let metrics = &state.metrics;
    if outcome.label == "accepted" {
        metrics.stripe_accepted.inc();
    } else {
        metrics
            .received
            .with_label_values(&["stripe", outcome.label])
            .inc();
    }
    metrics
        .stripe_duration
        .observe(started.elapsed().as_secs_f64());
    outcome.response
}

async fn handle_stripe(state: &AppState, headers: &HeaderMap, body: Body) -> Outcome {
    let body = match read_body(body, headers, state.body_limit).await {
        Ok(body) => body,
        Err(outcome) => return outcome,
    };
    let signature = headers
        .get(SIGNATURE_HEADER)
        .map(|v| v.to_str().unwrap_or_default());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let now_secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let now_ms = i64::try_from(now.as_millis()).unwrap_or(i64::MAX);
    let hook = match state.stripe.verify(signature, body, now_secs, now_ms) {
        Ok(hook) => hook,
        Err(err) => {
            tracing::info!(provider = "stripe", outcome = err.outcome(), reason = %err, "webhook refused");
            return Outcome::reject(err.outcome(), StatusCode::BAD_REQUEST, err.to_string());
        }
    };
    let publish_started = Instant::now();
    let published = state.publisher.publish(&hook).await;
    let meta = hook.meta();
    match published {
        Ok(()) => {
            state
                .metrics
                .confirm_duration
                .observe(publish_started.elapsed().as_secs_f64());
            tracing::debug!(provider = "stripe", event.id = %meta.event_id, event.r#type = %meta.event_type, "webhook accepted");
            let body = format!("{{\"received\":true,\"event_id\":\"{}\"}}\n", meta.event_id);
            Outcome {
                label: "accepted",
                response: ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
            }
        }
        Err(err) => {
            log_publish_failure(&err, &meta.event_id, &meta.event_type);
            let mut outcome = Outcome::reject(
                "unavailable",
                StatusCode::SERVICE_UNAVAILABLE,
                "event could not be made durable; retry later".into(),
            );
            outcome
                .response
                .headers_mut()
                .insert(header::RETRY_AFTER, state.retry_after.clone());
            outcome
        }
    }
}

fn log_publish_failure(err: &PublishError, event_id: &str, event_type: &str) {
    let chain = error_chain(err);
    tracing::warn!(provider = "stripe", event.id = %event_id, event.r#type = %event_type, error = %chain, "webhook not made durable; answered 503");
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// Reads the whole body, refusing more than `limit` bytes (by `Content-Length` up front, and
/// while streaming for chunked bodies).
async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, Outcome> {
    let too_large = || {
        Outcome::reject(
            "too_large",
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(_) => Err(Outcome::reject(
            "bad_request",
            StatusCode::BAD_REQUEST,
            "request body could not be read".into(),
        )),
    }
}

/// `GET /readyz` on the public listener: ready when the broker connection is up.
pub(crate) async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.publisher.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: broker unreachable\n",
        )
            .into_response()
    }
}
