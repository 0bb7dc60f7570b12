//! The admin HTTP API on the worker's metrics listener (never the public webhook port): the
//! operator actions of [`crate::ops`] for dashboards and scripts. Off unless a token is
//! configured (`PAYSYNC_ADMIN_TOKEN`); every request needs `Authorization: Bearer <token>`,
//! compared in constant time.
//!
//! Errors answer `{"error": "<message>"}`: 400 for a request that is not valid, 404 for
//! something that does not exist, 503 when the operation itself failed.

mod outbox;

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use paysync_store::{DeadLetterFilter, PurgeState};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::ops::{Ops, OpsError, ReplaySelection, Selection};

#[derive(Clone)]
struct AdminState {
    ops: Ops,
    token: Arc<SecretString>,
    reconcile: ReconcileDoor,
}

/// What the admin API needs to reconcile: the reconciler, and the event lists the worker was
/// given (set after the router is built).
#[derive(Clone)]
pub struct ReconcileDoor {
    /// Runs and audits.
    pub reconciler: crate::reconcile::Reconciler,
    /// The worker's event lists.
    pub sources: crate::SharedSources,
}

/// The admin routes under `/admin`, guarded by `token`.
pub fn router(ops: Ops, token: SecretString, reconcile: ReconcileDoor) -> Router {
    let state = AdminState {
        ops,
        token: Arc::new(token),
        reconcile,
    };
    Router::new()
        .route("/admin/dlq/groups", get(groups))
        .route("/admin/dlq", get(list))
        .route("/admin/dlq/{id}", get(show))
        .route("/admin/dlq/retry", post(retry))
        .route("/admin/dlq/archive", post(archive))
        .route("/admin/dlq/history", get(history))
        .route("/admin/dlq/purge", post(purge))
        .route("/admin/dlq/export", get(export))
        .route("/admin/events/replay", post(replay))
        .route(
            "/admin/reconcile",
            get(reconcile_status).post(reconcile_run),
        )
        .merge(outbox::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state)
}

async fn authenticate(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let expected = state.token.expose_secret().as_bytes();
    // Constant time for equal lengths; a length mismatch is refused without comparing.
    let ok = presented.len() == expected.len() && bool::from(presented.as_bytes().ct_eq(expected));
    if !ok {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "missing or wrong admin token\n",
        )
            .into_response();
    }
    next.run(request).await
}

fn answer<T: serde::Serialize>(result: Result<T, OpsError>) -> Response {
    match result {
        Ok(v) => Json(v).into_response(),
        Err(err) => {
            let status = match err {
                OpsError::Refused(_) => StatusCode::BAD_REQUEST,
                OpsError::NotFound(_) => StatusCode::NOT_FOUND,
                _ => {
                    tracing::warn!(error = %err, "admin action failed");
                    StatusCode::SERVICE_UNAVAILABLE
                }
            };
            (status, Json(json!({"error": err.to_string()}))).into_response()
        }
    }
}

async fn groups(State(s): State<AdminState>) -> Response {
    answer(s.ops.groups().await)
}

#[derive(serde::Deserialize)]
struct ListQuery {
    group: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    since: Option<String>,
    state: Option<String>,
    limit: Option<i64>,
}

/// A `since` parameter, an RFC 3339 time.
fn parse_since(raw: Option<&str>) -> Result<Option<OffsetDateTime>, time::error::Parse> {
    raw.map(|t| OffsetDateTime::parse(t, &Rfc3339)).transpose()
}

/// The answer to a `since` that is not an RFC 3339 time.
fn since_refused() -> Response {
    (StatusCode::BAD_REQUEST, "since: not an RFC 3339 time\n").into_response()
}

async fn list(State(s): State<AdminState>, Query(q): Query<ListQuery>) -> Response {
    let Ok(since) = parse_since(q.since.as_deref()) else {
        return since_refused();
    };
    let filter = DeadLetterFilter {
        group: q.group,
        event_type: q.event_type,
        since,
        state: q.state,
        limit: q.limit.unwrap_or(100),
    };
    answer(s.ops.list(&filter).await)
}

async fn show(State(s): State<AdminState>, Path(id): Path<i64>) -> Response {
    match s.ops.show(id).await {
        Ok(Some(v)) => Json(v).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, "no such dead letter\n").into_response(),
        Err(err) => answer::<()>(Err(err)),
    }
}

#[derive(serde::Deserialize)]
struct SelectionBody {
    ids: Option<Vec<i64>>,
    group: Option<String>,
    #[serde(default)]
    all: bool,
    #[serde(default)]
    dry_run: bool,
}

impl SelectionBody {
    fn selection(&self) -> Option<Selection> {
        match (&self.ids, &self.group, self.all) {
            (Some(ids), None, false) => Some(Selection::Ids(ids.clone())),
            (None, Some(g), false) => Some(Selection::Group(g.clone())),
            (None, None, true) => Some(Selection::All),
            _ => None,
        }
    }
}

const ONE_SELECTION: &str = "give exactly one of ids, group or all\n";

async fn retry(State(s): State<AdminState>, Json(body): Json<SelectionBody>) -> Response {
    let Some(selection) = body.selection() else {
        return (StatusCode::BAD_REQUEST, ONE_SELECTION).into_response();
    };
    answer(
        s.ops
            .retry(&selection, body.dry_run, "admin-api", &|_, _| {})
            .await,
    )
}

async fn archive(State(s): State<AdminState>, Json(body): Json<SelectionBody>) -> Response {
    let Some(selection) = body.selection() else {
        return (StatusCode::BAD_REQUEST, ONE_SELECTION).into_response();
    };
    if body.dry_run {
        return (
            StatusCode::BAD_REQUEST,
            "dry_run is not supported for archive\n",
        )
            .into_response();
    }
    answer(s.ops.archive(&selection, "admin-api").await)
}

async fn history(State(s): State<AdminState>) -> Response {
    answer(s.ops.history(100).await)
}

#[derive(serde::Deserialize)]
struct PurgeBody {
    older_than_secs: i64,
    /// `archived` (the default) or `retried`.
    state: Option<String>,
    #[serde(default)]
    yes: bool,
}

async fn purge(State(s): State<AdminState>, Json(body): Json<PurgeBody>) -> Response {
    let state = match body.state.as_deref().unwrap_or("archived") {
        "archived" => PurgeState::Archived,
        "retried" => PurgeState::Retried,
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                "state: archived or retried (open letters are never purged)\n",
            )
                .into_response();
        }
    };
    answer(
        s.ops
            .purge(state, body.older_than_secs, body.yes, "admin-api")
            .await,
    )
}

/// One JSON object per line, loss-free, like `paysync dlq export`.
async fn export(State(s): State<AdminState>, Query(q): Query<ListQuery>) -> Response {
    let filter = DeadLetterFilter {
        group: q.group,
        event_type: q.event_type,
        since: None,
        state: q.state,
        limit: q.limit.unwrap_or(i64::MAX),
    };
    match s.ops.export(&filter, "admin-api").await {
        Ok(lines) => {
            let mut body = lines.join("\n");
            if !body.is_empty() {
                body.push('\n');
            }
            ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
        }
        Err(err) => answer::<()>(Err(err)),
    }
}

#[derive(serde::Deserialize)]
struct ReplayBody {
    /// The provider whose events are replayed (`stripe` when absent).
    provider: Option<String>,
    event_ids: Option<Vec<String>>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    since: Option<String>,
    /// Leave out the first this many of the selection (to continue an interrupted replay).
    #[serde(default)]
    skip: usize,
    #[serde(default)]
    dry_run: bool,
}

async fn replay(State(s): State<AdminState>, Json(body): Json<ReplayBody>) -> Response {
    let Ok(since) = parse_since(body.since.as_deref()) else {
        return since_refused();
    };
    if body.event_ids.is_none() && (body.event_type.is_none() || since.is_none()) {
        return (
            StatusCode::BAD_REQUEST,
            "give event_ids, or type and since\n",
        )
            .into_response();
    }
    let provider = match body.provider.as_deref().unwrap_or("stripe").parse() {
        Ok(p) => p,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    answer(
        s.ops
            .replay(
                &ReplaySelection {
                    provider,
                    ids: body.event_ids.as_deref(),
                    event_type: body.event_type.as_deref(),
                    since,
                },
                body.skip,
                body.dry_run,
                "admin-api",
                &|_, _| {},
            )
            .await,
    )
}

/// Every provider's last complete reconciliation, and the providers this worker can read.
async fn reconcile_status(State(s): State<AdminState>) -> Response {
    let readable: Vec<&'static str> = s
        .reconcile
        .sources
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .map(|source| source.provider().as_str())
        .collect();
    match s.reconcile.reconciler.store().reconcile_checkpoints().await {
        Ok(rows) => Json(json!({"checkpoints": rows, "providers": readable})).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}

#[derive(serde::Deserialize)]
struct ReconcileBody {
    provider: String,
    since: String,
    until: Option<String>,
    #[serde(default)]
    types: Vec<String>,
    #[serde(default)]
    dry_run: bool,
}

/// Runs `paysync reconcile` for one provider with this worker's credentials; answers its
/// report (with `error` and 503 when it stopped).
async fn reconcile_run(State(s): State<AdminState>, Json(body): Json<ReconcileBody>) -> Response {
    let refuse = |m: String| (StatusCode::BAD_REQUEST, Json(json!({"error": m}))).into_response();
    let provider: paysync_domain::Provider = match body.provider.parse() {
        Ok(p) => p,
        Err(e) => return refuse(format!("{e}")),
    };
    let parse = |t: &str| OffsetDateTime::parse(t, &Rfc3339);
    let (Ok(since), Ok(until)) = (
        parse(&body.since),
        body.until
            .as_deref()
            .map_or(Ok(OffsetDateTime::now_utc()), parse),
    ) else {
        return refuse("since and until must be RFC 3339 times".into());
    };
    if since >= until {
        return refuse("since must be before until".into());
    }
    let source = s
        .reconcile
        .sources
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .find(|source| source.provider() == provider)
        .cloned();
    let Some(source) = source else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("this worker has no API credentials for {provider}")})),
        )
            .into_response();
    };
    let window = crate::reconcile::Window {
        since: since.max(OffsetDateTime::now_utc() - source.retention()),
        until,
        types: body.types,
    };
    match s
        .reconcile
        .reconciler
        .run_audited(source.as_ref(), &window, body.dry_run, "admin-api", &|_| {})
        .await
    {
        Ok(report) => Json(report).into_response(),
        Err(e) => {
            let mut v = json!(e.report);
            v["error"] = json!(e.to_string());
            (StatusCode::SERVICE_UNAVAILABLE, Json(v)).into_response()
        }
    }
}
