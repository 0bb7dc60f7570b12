//! `/admin/outbox/…`: the outbox operations of [`crate::ops::outbox`], as `paysync outbox`
//! runs them, behind the same token.

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use paysync_store::DeliveryFilter;

use super::{AdminState, answer};
use crate::ops::OpsError;
use crate::ops::outbox::{DeliverySelection, ForcedBreaker};

const ACTOR: &str = "admin-api";

/// The outbox routes (the caller adds the token check).
pub(super) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/admin/outbox/deliveries", get(list))
        .route("/admin/outbox/deliveries/{id}", get(show))
        .route("/admin/outbox/retry", post(retry))
        .route("/admin/outbox/skip", post(skip))
        .route("/admin/outbox/destinations", get(destinations))
        .route("/admin/outbox/destinations/{name}/pause", post(pause))
        .route("/admin/outbox/destinations/{name}/resume", post(resume))
        .route("/admin/outbox/destinations/{name}/force", post(force))
}

#[derive(serde::Deserialize)]
struct ListQuery {
    state: Option<String>,
    destination: Option<String>,
    operation: Option<String>,
    limit: Option<i64>,
}

async fn list(State(s): State<AdminState>, Query(q): Query<ListQuery>) -> Response {
    let filter = DeliveryFilter {
        ids: Vec::new(),
        state: q.state,
        destination: q.destination,
        operation: q.operation,
        limit: q.limit.unwrap_or(100),
    };
    answer(s.ops.outbox_list(&filter).await)
}

async fn show(State(s): State<AdminState>, Path(id): Path<i64>) -> Response {
    answer(
        s.ops
            .outbox_show(id)
            .await
            .and_then(|d| d.ok_or_else(|| OpsError::NotFound(format!("no delivery {id}")))),
    )
}

#[derive(serde::Deserialize)]
struct RetryBody {
    #[serde(default)]
    ids: Vec<i64>,
    state: Option<String>,
    destination: Option<String>,
    operation: Option<String>,
    per_second: Option<f64>,
    #[serde(default)]
    dry_run: bool,
}

async fn retry(State(s): State<AdminState>, axum::Json(body): axum::Json<RetryBody>) -> Response {
    let selection =
        DeliverySelection::from_parts(body.ids, body.state, body.destination, body.operation);
    let report = match selection {
        Ok(selection) => {
            s.ops
                .outbox_retry(&selection, body.per_second, body.dry_run, ACTOR)
                .await
        }
        Err(err) => Err(err),
    };
    answer(report)
}

#[derive(serde::Deserialize)]
struct SkipBody {
    ids: Vec<i64>,
    #[serde(default)]
    reason: String,
}

async fn skip(State(s): State<AdminState>, axum::Json(body): axum::Json<SkipBody>) -> Response {
    answer(s.ops.outbox_skip(&body.ids, &body.reason, ACTOR).await)
}

async fn destinations(State(s): State<AdminState>) -> Response {
    answer(s.ops.outbox_destinations().await)
}

#[derive(serde::Deserialize)]
struct PauseBody {
    seconds: u64,
    #[serde(default)]
    reason: String,
}

async fn pause(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    axum::Json(body): axum::Json<PauseBody>,
) -> Response {
    answer(
        s.ops
            .destination_pause(
                &name,
                Duration::from_secs(body.seconds),
                &body.reason,
                ACTOR,
            )
            .await,
    )
}

async fn resume(State(s): State<AdminState>, Path(name): Path<String>) -> Response {
    answer(s.ops.destination_resume(&name, ACTOR).await)
}

#[derive(serde::Deserialize)]
struct ForceBody {
    mode: ForcedBreaker,
}

async fn force(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    axum::Json(body): axum::Json<ForceBody>,
) -> Response {
    answer(s.ops.destination_force(&name, body.mode, ACTOR).await)
}
