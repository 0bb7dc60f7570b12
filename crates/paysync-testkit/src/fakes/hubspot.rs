//! The HubSpot CRM v3 endpoints paysync calls, with HubSpot's JSON bodies: the deal pipelines,
//! batch upserts by a unique property (contacts, deals, tasks), v4 default associations; a
//! bearer-token check answered like HubSpot (401 `INVALID_AUTHENTICATION`), validation errors
//! (400 `VALIDATION_ERROR`), and the 429 body with `policyName` over a rolling-window limit.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Value, json};

use super::{Reply, Scripted, ServerGuard, Window, serve, wait};

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct HubspotRequest {
    /// When it arrived.
    pub at: Instant,
    /// `GET`, `POST`, `PUT`.
    pub method: String,
    /// The path.
    pub path: String,
    /// What the fake answered.
    pub status: u16,
    /// The JSON body (`Null` when none).
    pub body: Value,
}

/// A stored CRM record.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredObject {
    /// HubSpot's id.
    pub id: String,
    /// The unique property's value it is keyed by.
    pub key: String,
    /// Its properties, merged over every upsert.
    pub properties: serde_json::Map<String, Value>,
    /// How many upserts wrote it.
    pub writes: u32,
}

#[derive(Default)]
struct Shared {
    requests: Vec<HubspotRequest>,
    objects: BTreeMap<(String, String), StoredObject>,
    associations: Vec<(String, String, String, String)>,
    pipelines: Value,
    limit: Option<Window>,
    next_id: u64,
}

/// A fake HubSpot portal.
pub struct FakeHubspot {
    addr: std::net::SocketAddr,
    shared: Arc<Mutex<Shared>>,
    /// What it answers.
    pub script: Scripted,
    _server: ServerGuard,
}

#[derive(Clone)]
struct App {
    token: String,
    shared: Arc<Mutex<Shared>>,
    script: Scripted,
}

/// The default deal pipeline of a new portal (HubSpot sends metadata values as strings).
pub fn default_pipelines() -> Value {
    let stage = |id: &str, label: &str, order: u32, prob: &str, closed: bool| {
        json!({"id": id, "label": label, "displayOrder": order, "archived": false,
               "metadata": {"isClosed": closed.to_string(), "probability": prob},
               "createdAt": "2024-01-01T00:00:00Z", "updatedAt": "2024-01-01T00:00:00Z"})
    };
    json!({"results": [{
        "id": "default", "label": "Sales Pipeline", "displayOrder": 0, "archived": false,
        "createdAt": "2024-01-01T00:00:00Z", "updatedAt": "2024-01-01T00:00:00Z",
        "stages": [
            stage("appointmentscheduled", "Appointment Scheduled", 0, "0.2", false),
            stage("qualifiedtobuy", "Qualified To Buy", 1, "0.4", false),
            stage("presentationscheduled", "Presentation Scheduled", 2, "0.6", false),
            stage("decisionmakerboughtin", "Decision Maker Bought-In", 3, "0.8", false),
            stage("contractsent", "Contract Sent", 4, "0.9", false),
            stage("closedwon", "Closed Won", 5, "1.0", true),
            stage("closedlost", "Closed Lost", 6, "0.0", true)
        ]
    }]})
}

impl FakeHubspot {
    /// Starts one that accepts `token`.
    pub async fn start(token: &str) -> Self {
        let shared = Arc::new(Mutex::new(Shared {
            pipelines: default_pipelines(),
            next_id: 1000,
            ..Shared::default()
        }));
        let script = Scripted::default();
        let app = App {
            token: token.to_owned(),
            shared: shared.clone(),
            script: script.clone(),
        };
        let router = Router::new()
            .route("/crm/v3/pipelines/deals", get(pipelines))
            .route("/crm/v3/objects/{object}/batch/upsert", post(upsert))
            .route(
                "/crm/v4/objects/{from}/{from_id}/associations/default/{to}/{to_id}",
                put(associate),
            )
            .fallback(not_found)
            .with_state(app);
        let (addr, server) = serve(router).await;
        Self {
            addr,
            shared,
            script,
            _server: server,
        }
    }

    /// The API base (`PAYSYNC_HUBSPOT_API_BASE`).
    pub fn api_base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Installs a portal's pipelines (e.g. one whose stages were renamed).
    pub fn set_pipelines(&self, pipelines: Value) {
        self.lock().pipelines = pipelines;
    }

    /// Answers 429 `TEN_SECONDLY_ROLLING` (no `Retry-After`, as HubSpot) to requests over
    /// `max` in any rolling `per`; `None` lifts the limit.
    pub fn set_rate_limit(&self, limit: Option<(u32, Duration)>) {
        self.lock().limit = limit.map(|(max, per)| Window::new(max, per));
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<HubspotRequest> {
        self.lock().requests.clone()
    }

    /// How many requests it answered 429.
    pub fn throttled(&self) -> usize {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.status == 429)
            .count()
    }

    /// The stored records of `object` (`contacts`, `deals`, `tasks`).
    pub fn objects(&self, object: &str) -> Vec<StoredObject> {
        self.lock()
            .objects
            .iter()
            .filter(|((o, _), _)| o == object)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The associations made, as (from type, from id, to type, to id).
    pub fn associations(&self) -> Vec<(String, String, String, String)> {
        self.lock().associations.clone()
    }

    /// Waits until `object` has at least `n` records; panics after `deadline`.
    pub async fn wait_for_objects(
        &self,
        object: &str,
        n: usize,
        deadline: Duration,
    ) -> Vec<StoredObject> {
        wait(deadline, &format!("{n} HubSpot {object}"), || {
            let o = self.objects(object);
            (o.len() >= n).then_some(o)
        })
        .await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn correlation() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn error_body(message: &str, category: &str) -> Value {
    json!({"status": "error", "message": message, "correlationId": correlation(), "category": category})
}

fn rate_limit_body(policy: &str) -> Value {
    json!({"status": "error",
           "message": format!("You have reached your {} limit.", policy.to_ascii_lowercase()),
           "errorType": "RATE_LIMIT", "correlationId": correlation(), "policyName": policy})
}

fn json_response(
    status: u16,
    body: &Value,
    retry_after: Option<u64>,
    remaining: Option<(u32, u32, u64)>,
) -> Response {
    let mut r = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body.to_string(),
    )
        .into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;charset=utf-8"),
    );
    if let Some(s) = retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    if let Some((max, left, interval_ms)) = remaining {
        h.insert("x-hubspot-ratelimit-max", HeaderValue::from(max));
        h.insert("x-hubspot-ratelimit-remaining", HeaderValue::from(left));
        h.insert(
            "x-hubspot-ratelimit-interval-milliseconds",
            HeaderValue::from(interval_ms),
        );
    }
    r
}

/// The checks every endpoint makes first: the token, the rate limit, the script. `Some` is
/// the answer to give instead of the normal one.
fn gate(
    app: &App,
    headers: &HeaderMap,
    method: &Method,
    path: &str,
    body: &Value,
) -> Option<Response> {
    let now = Instant::now();
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {}", app.token));
    let (status, answer, retry_after, limits) = if !authorized {
        (
            401,
            error_body(
                "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview",
                "INVALID_AUTHENTICATION",
            ),
            None,
            None,
        )
    } else {
        let mut s = app
            .shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let throttled = s
            .limit
            .as_mut()
            .map(|w| (w.admit(now), w.max, w.remaining(), w.per));
        drop(s);
        match throttled {
            Some((false, max, left, per)) => (
                429,
                rate_limit_body("TEN_SECONDLY_ROLLING"),
                None,
                Some((max, left, per.as_millis() as u64)),
            ),
            _ => match app.script.take() {
                Reply::Normal => return None,
                Reply::Status {
                    status,
                    body,
                    retry_after,
                } => (
                    status,
                    serde_json::from_str(&body).unwrap_or(Value::String(body)),
                    retry_after,
                    None,
                ),
            },
        }
    };
    record(app, method, path, status, body.clone());
    Some(json_response(status, &answer, retry_after, limits))
}

fn record(app: &App, method: &Method, path: &str, status: u16, body: Value) {
    app.shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .requests
        .push(HubspotRequest {
            at: Instant::now(),
            method: method.to_string(),
            path: path.to_owned(),
            status,
            body,
        });
}

async fn pipelines(State(app): State<App>, headers: HeaderMap) -> Response {
    let path = "/crm/v3/pipelines/deals";
    if let Some(r) = gate(&app, &headers, &Method::GET, path, &Value::Null) {
        return r;
    }
    let body = app
        .shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .pipelines
        .clone();
    record(&app, &Method::GET, path, 200, Value::Null);
    json_response(200, &body, None, None)
}

async fn upsert(
    State(app): State<App>,
    Path(object): Path<String>,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let path = format!("/crm/v3/objects/{object}/batch/upsert");
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    if let Some(r) = gate(&app, &headers, &Method::POST, &path, &body) {
        return r;
    }
    let invalid = |message: &str| {
        record(&app, &Method::POST, &path, 400, body.clone());
        json_response(400, &error_body(message, "VALIDATION_ERROR"), None, None)
    };
    if !matches!(
        object.as_str(),
        "contacts" | "deals" | "tasks" | "companies"
    ) {
        return invalid(&format!("Unable to infer object type from: {object}"));
    }
    let Some(inputs) = body.get("inputs").and_then(Value::as_array) else {
        return invalid("Invalid input JSON on line 1: 'inputs' is required");
    };
    if inputs.is_empty() || inputs.len() > 100 {
        return invalid("Batch size must be between 1 and 100 inputs");
    }
    let mut results = Vec::new();
    let stamp = time_now();
    {
        let mut s = app
            .shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for input in inputs {
            let (Some(key), Some(_prop), Some(props)) = (
                input.get("id").and_then(Value::as_str),
                input.get("idProperty").and_then(Value::as_str),
                input.get("properties").and_then(Value::as_object),
            ) else {
                drop(s);
                return invalid("Each input needs id, idProperty and properties");
            };
            if object == "tasks" && !props.contains_key("hs_timestamp") {
                drop(s);
                return invalid("Property values were not valid: hs_timestamp is required");
            }
            let slot = (object.clone(), key.to_owned());
            let is_new = !s.objects.contains_key(&slot);
            if is_new {
                s.next_id += 1;
                let id = s.next_id.to_string();
                s.objects.insert(
                    slot.clone(),
                    StoredObject {
                        id,
                        key: key.to_owned(),
                        properties: serde_json::Map::new(),
                        writes: 0,
                    },
                );
            }
            let stored = s.objects.get_mut(&slot).expect("just inserted");
            for (k, v) in props {
                stored.properties.insert(k.clone(), v.clone());
            }
            stored.writes += 1;
            results.push(json!({"id": stored.id, "properties": stored.properties,
                "createdAt": stamp, "updatedAt": stamp, "archived": false, "new": is_new}));
        }
    }
    record(&app, &Method::POST, &path, 200, body.clone());
    json_response(
        200,
        &json!({"status": "COMPLETE", "results": results, "startedAt": stamp, "completedAt": stamp}),
        None,
        None,
    )
}

async fn associate(
    State(app): State<App>,
    Path((from, from_id, to, to_id)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/crm/v4/objects/{from}/{from_id}/associations/default/{to}/{to_id}");
    if let Some(r) = gate(&app, &headers, &Method::PUT, &path, &Value::Null) {
        return r;
    }
    let known = |s: &Shared, kind: &str, id: &str| {
        s.objects
            .iter()
            .any(|((o, _), v)| o.trim_end_matches('s') == kind.trim_end_matches('s') && v.id == id)
    };
    let ok = {
        let mut s = app
            .shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let ok = known(&s, &from, &from_id) && known(&s, &to, &to_id);
        if ok {
            let a = (from.clone(), from_id.clone(), to.clone(), to_id.clone());
            if !s.associations.contains(&a) {
                s.associations.push(a);
            }
        }
        ok
    };
    if !ok {
        record(&app, &Method::PUT, &path, 404, Value::Null);
        return json_response(
            404,
            &error_body("One or more objects were not found", "OBJECT_NOT_FOUND"),
            None,
            None,
        );
    }
    record(&app, &Method::PUT, &path, 200, Value::Null);
    json_response(
        200,
        &json!({"status": "COMPLETE", "results": [{"from": {"id": from_id}, "to": {"id": to_id},
            "type": "deal_to_contact", "category": "HUBSPOT_DEFINED"}],
            "startedAt": time_now(), "completedAt": time_now()}),
        None,
        None,
    )
}

async fn not_found(method: Method, State(app): State<App>, RawQuery(_q): RawQuery) -> Response {
    record(&app, &method, "(unknown)", 404, Value::Null);
    json_response(
        404,
        &error_body("Not found", "OBJECT_NOT_FOUND"),
        None,
        None,
    )
}

fn time_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    // An ISO 8601 instant without a date library: days since the epoch to a civil date.
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.000Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
