//! HTTP handlers of the public listener.
//!
//! Status codes are part of the contract: 200 only after the broker confirmed; 400 with a
//! one-line reason for anything the provider must not retry as is; 413 above the body cap; 503
//! with `Retry-After` when the event could not be made durable. Never a redirect, never an
//! internal detail in a body.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::BodyExt;
use paysync_amqp::{PublishError, Publisher};
use paysync_domain::Provider;
use paysync_domain::verify::{Inbound, Verifier, WebhookError};

use crate::certs::{CertCache, CertFailure};
use crate::metrics::ReceiverMetrics;

/// Shared state of the handlers.
pub(crate) struct AppState {
    /// The configured providers' verifiers; any other provider is a 404.
    pub(crate) verifiers: Vec<Verifier>,
    /// PayPal's certificates.
    pub(crate) certs: CertCache,
    pub(crate) publisher: Publisher,
    pub(crate) metrics: ReceiverMetrics,
    pub(crate) body_limit: usize,
    /// The whole request's deadline: reading, verifying, publishing, the confirm.
    pub(crate) request_timeout: std::time::Duration,
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

    fn unavailable(state: &AppState, reason: &str) -> Self {
        let mut outcome = Self::reject(
            "unavailable",
            StatusCode::SERVICE_UNAVAILABLE,
            reason.to_owned(),
        );
        outcome
            .response
            .headers_mut()
            .insert(header::RETRY_AFTER, state.retry_after.clone());
        outcome
    }
}

fn plain(reason: String) -> ([(header::HeaderName, &'static str); 1], String) {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{reason}\n"),
    )
}

/// `POST /webhooks/{provider}`: a configured provider's endpoint; any other name is a 404.
pub(crate) async fn webhook(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let Some(verifier) = name
        .parse::<Provider>()
        .ok()
        .and_then(|p| state.verifiers.iter().find(|v| v.provider() == p))
    else {
        return (
            StatusCode::NOT_FOUND,
            plain("no such webhook endpoint".into()),
        )
            .into_response();
    };
    // The request's own header map, not a copy of it (axum's `HeaderMap` extractor clones).
    let (parts, body) = request.into_parts();
    let handled = tokio::time::timeout(
        state.request_timeout,
        handle(&state, verifier, &parts.headers, body),
    )
    .await;
    let outcome = handled.unwrap_or_else(|_| {
        tracing::info!(
            provider = verifier.provider().as_str(),
            "webhook cut off by the request timeout"
        );
        Outcome {
            label: "timeout",
            response: StatusCode::REQUEST_TIMEOUT.into_response(),
        }
    });
    state.metrics.observe(
        verifier.provider(),
        outcome.label,
        started.elapsed().as_secs_f64(),
    );
    outcome.response
}

async fn handle(state: &AppState, verifier: &Verifier, headers: &HeaderMap, body: Body) -> Outcome {
    let provider = verifier.provider().as_str();
    let body = match read_body(body, headers, state.body_limit).await {
        Ok(body) => body,
        Err(outcome) => return outcome,
    };
    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or_default());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let now_secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let now_ms = i64::try_from(now.as_millis()).unwrap_or(i64::MAX);
    let inbound = Inbound {
        header: &header,
        body,
        now: now_secs,
        received_at_ms: now_ms,
    };
    let refuse = |err: WebhookError| {
        tracing::info!(provider, outcome = err.outcome(), reason = %err, "webhook refused");
        Outcome::reject(err.outcome(), StatusCode::BAD_REQUEST, err.to_string())
    };
    let cert = match verifier.cert_url(&inbound) {
        None => None,
        Some(Err(err)) => return refuse(err),
        Some(Ok(url)) => match state.certs.get(verifier, &url, now_secs).await {
            Ok(cert) => Some(cert),
            Err(CertFailure::Refused(err)) => return refuse(err),
            Err(CertFailure::Unavailable(reason)) => {
                tracing::warn!(provider, error = %reason, "signing certificate not fetched; answered 503");
                return Outcome::unavailable(state, "signing certificate unavailable; retry later");
            }
        },
    };
    let hook = match verifier.verify(inbound, cert.as_deref()) {
        Ok(hook) => hook,
        Err(err) => return refuse(err),
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
            tracing::debug!(provider, event.id = %meta.event_id, event.r#type = %meta.event_type, "webhook accepted");
            let body =
                serde_json::json!({"received": true, "event_id": meta.event_id}).to_string() + "\n";
            Outcome {
                label: "accepted",
                response: ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
            }
        }
        Err(err) => {
            log_publish_failure(&err, provider, &meta.event_id, &meta.event_type);
            Outcome::unavailable(state, "event could not be made durable; retry later")
        }
    }
}

fn log_publish_failure(err: &PublishError, provider: &str, event_id: &str, event_type: &str) {
    let chain = error_chain(err);
    tracing::warn!(provider, event.id = %event_id, event.r#type = %event_type, error = %chain, "webhook not made durable; answered 503");
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

/// The most a refused body is read and thrown away before the 413, so that a client that sends
/// its whole body before it reads (no `Expect: 100-continue`) finds the answer instead of a
/// write error on a closed connection. A body declared larger is refused without reading it.
pub const DRAIN_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// Reads the whole body, refusing more than `limit` bytes (by `Content-Length` up front, and
/// while streaming for chunked bodies). A refused body is drained up to [`DRAIN_MAX_BYTES`]
/// (or the limit, when larger) before the answer; the request's deadline bounds that too.
async fn read_body(mut body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, Outcome> {
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
    // Never below the limit itself (a limit above 16 MiB reads what it allows).
    let drain_max = DRAIN_MAX_BYTES.max(limit as u64);
    if declared.is_some_and(|len| len > drain_max) {
        return Err(too_large());
    }
    let mut kept = Vec::with_capacity(declared.map_or(0, |len| len.min(limit as u64) as usize));
    let mut total: u64 = 0;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(Outcome::reject(
                "bad_request",
                StatusCode::BAD_REQUEST,
                "request body could not be read".into(),
            ));
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len() as u64;
        if total <= limit as u64 {
            kept.extend_from_slice(&data);
        } else if total > drain_max {
            break;
        }
    }
    if total > limit as u64 {
        return Err(too_large());
    }
    Ok(Bytes::from(kept))
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
