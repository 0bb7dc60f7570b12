//! The providers' own event lists, as reconciliation reads them: Stripe's `GET /v1/events`
//! (newest first, `limit`, `created[…]`, `types[]`, `starting_after`, `has_more`) with the
//! objects thin events point at, and Square's SearchEvents (`POST /v2/events`: oldest first
//! here, `limit`, `cursor`, `created_at`, `event_types`). Both check the bearer token and answer
//! errors with the providers' own bodies (Stripe `{"error": {…}}`, Square `{"errors": […]}`),
//! and 429s with `Retry-After` when scripted.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::{Reply, Scripted, ServerGuard, serve};

/// One request a provider fake received.
#[derive(Debug, Clone)]
pub struct ApiRequest {
    /// When it arrived.
    pub at: Instant,
    /// The path.
    pub path: String,
    /// The query pairs (Stripe) or the JSON body (Square), as text.
    pub params: String,
    /// What the fake answered.
    pub status: u16,
}

#[derive(Default)]
struct Shared {
    requests: Vec<ApiRequest>,
    /// Every event, in the order added.
    events: Vec<Value>,
    /// Stripe objects by API path.
    objects: BTreeMap<String, Value>,
    /// Delay before each answer.
    delay: Duration,
    in_flight: usize,
    max_in_flight: usize,
}

#[derive(Clone)]
struct App {
    token: String,
    shared: Arc<Mutex<Shared>>,
    script: Scripted,
}

impl App {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            == Some(self.token.as_str())
    }

    /// Counts the request in flight and waits the configured delay.
    async fn enter(&self) {
        let delay = {
            let mut s = self.lock();
            s.in_flight += 1;
            s.max_in_flight = s.max_in_flight.max(s.in_flight);
            s.delay
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    fn leave(&self, path: &str, params: String, response: Response) -> Response {
        let mut s = self.lock();
        s.in_flight -= 1;
        s.requests.push(ApiRequest {
            at: Instant::now(),
            path: path.to_owned(),
            params,
            status: response.status().as_u16(),
        });
        response
    }
}

/// What both fakes share: the events, the script, the record.
struct Fake {
    addr: std::net::SocketAddr,
    shared: Arc<Mutex<Shared>>,
    script: Scripted,
    _server: ServerGuard,
}

impl Fake {
    async fn start(token: &str, routes: impl FnOnce(App) -> Router) -> Self {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let script = Scripted::default();
        let app = App {
            token: token.to_owned(),
            shared: shared.clone(),
            script: script.clone(),
        };
        let (addr, server) = serve(routes(app)).await;
        Self {
            addr,
            shared,
            script,
            _server: server,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

macro_rules! common_api {
    ($t:ty) => {
        impl $t {
            /// The API base URL (`http://127.0.0.1:<port>`).
            pub fn base(&self) -> String {
                format!("http://{}", self.0.addr)
            }

            /// What it answers.
            pub fn script(&self) -> &Scripted {
                &self.0.script
            }

            /// Adds events to the provider's list.
            pub fn add_events(&self, events: impl IntoIterator<Item = Value>) {
                self.0.lock().events.extend(events);
            }

            /// Every request so far.
            pub fn requests(&self) -> Vec<ApiRequest> {
                self.0.lock().requests.clone()
            }

            /// Waits `delay` before every answer from now on.
            pub fn set_delay(&self, delay: Duration) {
                self.0.lock().delay = delay;
            }

            /// The most requests it was answering at once.
            pub fn max_in_flight(&self) -> usize {
                self.0.lock().max_in_flight
            }
        }
    };
}

/// Answers a scripted reply with the provider's error body and `Retry-After`.
fn scripted(status: u16, body: String, retry_after: Option<u64>) -> Response {
    let mut r = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response();
    if let Some(secs) = retry_after {
        r.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_str(&secs.to_string()).expect("digits"),
        );
    }
    r
}

// --- Stripe ---

/// A fake Stripe account's API: its events and objects.
pub struct FakeStripeApi(Fake);
common_api!(FakeStripeApi);

/// Stripe's error body.
pub fn stripe_error(kind: &str, message: &str) -> String {
    json!({"error": {"type": kind, "message": message}}).to_string()
}

impl FakeStripeApi {
    /// A fake answering requests that carry `key` as their bearer token.
    pub async fn start(key: &str) -> Self {
        Self(
            Fake::start(key, |app| {
                Router::new()
                    .route("/v1/events", get(stripe_events))
                    .route("/v1/{*path}", get(stripe_object))
                    .with_state(app)
            })
            .await,
        )
    }

    /// Makes `object` the answer to `GET <path>` (e.g. `/v1/invoices/in_1`).
    pub fn put_object(&self, path: &str, object: Value) {
        self.0.lock().objects.insert(path.to_owned(), object);
    }

    /// Makes `object` the answer to `GET <path>` with `Stripe-Context: <context>` (a connected
    /// account's object, invisible without the header).
    pub fn put_object_in(&self, context: &str, path: &str, object: Value) {
        self.0
            .lock()
            .objects
            .insert(format!("{context}:{path}"), object);
    }

    /// A 429 as Stripe sends it, asking to wait `secs`.
    pub fn rate_limited(secs: u64) -> Reply {
        Reply::Status {
            status: 429,
            body: stripe_error(
                "rate_limit_error",
                "Too many requests hit the API too quickly.",
            ),
            retry_after: Some(secs),
        }
    }

    /// A 500 as Stripe sends it.
    pub fn api_error() -> Reply {
        Reply::Status {
            status: 500,
            body: stripe_error("api_error", "An unknown error occurred"),
            retry_after: None,
        }
    }
}

fn stripe_refusal(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        stripe_error(kind, message),
    )
        .into_response()
}

async fn stripe_events(
    State(app): State<App>,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    app.enter().await;
    let params = pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let response = stripe_list(&app, &headers, &pairs);
    app.leave("/v1/events", params, response)
}

fn stripe_list(app: &App, headers: &HeaderMap, pairs: &[(String, String)]) -> Response {
    if !app.authorized(headers) {
        return stripe_refusal(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "Invalid API Key provided: sk_test_****",
        );
    }
    if let Reply::Status {
        status,
        body,
        retry_after,
    } = app.script.take()
    {
        return scripted(status, body, retry_after);
    }
    let one = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let int = |k: &str| one(k).map(|v| v.parse::<i64>());
    let limit = match int("limit").unwrap_or(Ok(10)) {
        Ok(l) if (1..=100).contains(&l) => l as usize,
        _ => {
            return stripe_refusal(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "Invalid limit: must be between 1 and 100",
            );
        }
    };
    let mut bounds = Vec::new();
    for op in ["gt", "gte", "lt", "lte"] {
        match int(&format!("created[{op}]")) {
            None => {}
            Some(Ok(v)) => bounds.push((op, v)),
            Some(Err(_)) => {
                return stripe_refusal(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "Invalid integer: created",
                );
            }
        }
    }
    let types: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "types[]" || k == "type")
        .map(|(_, v)| v.as_str())
        .collect();
    let s = app.lock();
    // Newest first; among equal times, the later-added first (as Stripe lists them).
    let mut all: Vec<&Value> = s.events.iter().rev().collect();
    all.sort_by_key(|e| std::cmp::Reverse(e["created"].as_i64().unwrap_or(0)));
    let matching: Vec<&Value> = all
        .into_iter()
        .filter(|e| {
            let c = e["created"].as_i64().unwrap_or(0);
            bounds.iter().all(|(op, v)| match *op {
                "gt" => c > *v,
                "gte" => c >= *v,
                "lt" => c < *v,
                _ => c <= *v,
            })
        })
        .filter(|e| types.is_empty() || types.contains(&e["type"].as_str().unwrap_or("")))
        .collect();
    let start = match one("starting_after") {
        None => 0,
        Some(after) => match matching.iter().position(|e| e["id"] == after) {
            Some(i) => i + 1,
            None => {
                return stripe_refusal(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    &format!("No such event: '{after}'"),
                );
            }
        },
    };
    let page: Vec<&Value> = matching.iter().skip(start).take(limit).copied().collect();
    let has_more = start + page.len() < matching.len();
    Json(json!({"object": "list", "url": "/v1/events", "has_more": has_more, "data": page}))
        .into_response()
}

async fn stripe_object(
    State(app): State<App>,
    headers: HeaderMap,
    Path(path): Path<String>,
) -> Response {
    app.enter().await;
    let full = format!("/v1/{path}");
    let response = if !app.authorized(&headers) {
        stripe_refusal(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "Invalid API Key provided: sk_test_****",
        )
    } else if let Reply::Status {
        status,
        body,
        retry_after,
    } = app.script.take()
    {
        scripted(status, body, retry_after)
    } else {
        let key = match headers.get("stripe-context").and_then(|c| c.to_str().ok()) {
            Some(context) => format!("{context}:{full}"),
            None => full.clone(),
        };
        match app.lock().objects.get(&key) {
            Some(o) => Json(o.clone()).into_response(),
            None => stripe_refusal(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                &format!(
                    "No such object: '{}'",
                    full.rsplit('/').next().unwrap_or_default()
                ),
            ),
        }
    };
    app.leave(&full, String::new(), response)
}

// --- Square ---

/// A fake Square seller account's Events API.
pub struct FakeSquareApi(Fake);
common_api!(FakeSquareApi);

/// Square's error body.
pub fn square_error(category: &str, code: &str, detail: &str) -> String {
    json!({"errors": [{"category": category, "code": code, "detail": detail}]}).to_string()
}

impl FakeSquareApi {
    /// A fake answering requests that carry `token` as their bearer token.
    pub async fn start(token: &str) -> Self {
        Self(
            Fake::start(token, |app| {
                Router::new()
                    .route("/v2/events", post(square_search))
                    .with_state(app)
            })
            .await,
        )
    }

    /// A 429 as Square sends it, asking to wait `secs`.
    pub fn rate_limited(secs: u64) -> Reply {
        Reply::Status {
            status: 429,
            body: square_error("RATE_LIMIT_ERROR", "RATE_LIMITED", "Rate limit exceeded."),
            retry_after: Some(secs),
        }
    }
}

fn square_refusal(status: StatusCode, category: &str, code: &str, detail: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        square_error(category, code, detail),
    )
        .into_response()
}

async fn square_search(State(app): State<App>, headers: HeaderMap, body: String) -> Response {
    app.enter().await;
    let response = square_page(&app, &headers, &body);
    app.leave("/v2/events", body, response)
}

fn square_page(app: &App, headers: &HeaderMap, body: &str) -> Response {
    if !app.authorized(headers) {
        return square_refusal(
            StatusCode::UNAUTHORIZED,
            "AUTHENTICATION_ERROR",
            "UNAUTHORIZED",
            "This request could not be authorized.",
        );
    }
    if let Reply::Status {
        status,
        body,
        retry_after,
    } = app.script.take()
    {
        return scripted(status, body, retry_after);
    }
    let Ok(request) = serde_json::from_str::<Value>(body) else {
        return square_refusal(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST_ERROR",
            "INVALID_BODY",
            "Invalid JSON body.",
        );
    };
    let limit = request["limit"].as_u64().unwrap_or(100);
    if !(1..=100).contains(&limit) {
        return square_refusal(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST_ERROR",
            "INVALID_VALUE",
            "`limit` must be between 1 and 100.",
        );
    }
    let filter = &request["query"]["filter"];
    let time = |v: &Value| {
        v.as_str().map(|s| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map(|t| t.unix_timestamp_nanos())
        })
    };
    let (start, end) = match (
        time(&filter["created_at"]["start_at"]).transpose(),
        time(&filter["created_at"]["end_at"]).transpose(),
    ) {
        (Ok(s), Ok(e)) => (s, e),
        _ => {
            return square_refusal(
                StatusCode::BAD_REQUEST,
                "INVALID_REQUEST_ERROR",
                "INVALID_TIME",
                "Invalid `created_at` timestamp.",
            );
        }
    };
    let types: Vec<&str> = filter["event_types"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let offset = match request["cursor"].as_str() {
        None => 0,
        Some(c) => match c.strip_prefix("cur-").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => n,
            None => {
                return square_refusal(
                    StatusCode::BAD_REQUEST,
                    "INVALID_REQUEST_ERROR",
                    "INVALID_CURSOR",
                    "The cursor is not valid.",
                );
            }
        },
    };
    let s = app.lock();
    let mut matching: Vec<&Value> = s
        .events
        .iter()
        .filter(|e| {
            let at = time(&e["created_at"]).and_then(Result::ok).unwrap_or(0);
            start.is_none_or(|s| at >= s) && end.is_none_or(|e| at < e)
        })
        .filter(|e| types.is_empty() || types.contains(&e["type"].as_str().unwrap_or("")))
        .collect();
    matching.sort_by_key(|e| time(&e["created_at"]).and_then(Result::ok).unwrap_or(0));
    let page: Vec<&Value> = matching
        .iter()
        .skip(offset)
        .take(limit as usize)
        .copied()
        .collect();
    let metadata: Vec<Value> = page
        .iter()
        .map(|e| json!({"event_id": e["event_id"], "api_version": "2025-10-16"}))
        .collect();
    let mut answer = json!({});
    if !page.is_empty() {
        answer["events"] = json!(page);
        answer["metadata"] = json!(metadata);
    }
    if offset + page.len() < matching.len() {
        answer["cursor"] = json!(format!("cur-{}", offset + page.len()));
    }
    Json(answer).into_response()
}

// --- PayPal ---

/// A fake PayPal REST app: OAuth client credentials and its event notifications.
pub struct FakePaypalApi(Fake, Arc<Mutex<Vec<String>>>);
common_api!(FakePaypalApi);

/// PayPal's REST error body.
pub fn paypal_error(name: &str, message: &str, issue: Option<&str>) -> String {
    let mut v = json!({"name": name, "message": message, "debug_id": "f00dfeed1234"});
    if let Some(issue) = issue {
        v["details"] = json!([{"issue": issue}]);
    }
    v.to_string()
}

#[derive(Clone)]
struct PaypalApp {
    app: App,
    client_id: String,
    secret: String,
    tokens: Arc<Mutex<Vec<String>>>,
}

impl FakePaypalApi {
    /// A fake app with these client credentials.
    pub async fn start(client_id: &str, secret: &str) -> Self {
        let tokens = Arc::new(Mutex::new(Vec::new()));
        let (client_id, secret, issued) = (client_id.to_owned(), secret.to_owned(), tokens.clone());
        let fake = Fake::start("", move |app| {
            let state = PaypalApp {
                app,
                client_id,
                secret,
                tokens: issued,
            };
            Router::new()
                .route("/v1/oauth2/token", post(paypal_token))
                .route("/v1/notifications/webhooks-events", get(paypal_events))
                .with_state(state)
        })
        .await;
        Self(fake, tokens)
    }

    /// Revokes every access token issued so far (as an expiry would).
    pub fn expire_tokens(&self) {
        self.1
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }
}

fn paypal_json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn paypal_token(State(s): State<PaypalApp>, headers: HeaderMap, body: String) -> Response {
    s.app.enter().await;
    let expected = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{}:{}", s.client_id, s.secret)
        )
    );
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(expected.as_str());
    let response = if !authorized {
        paypal_json(
            StatusCode::UNAUTHORIZED,
            json!({"error": "invalid_client", "error_description": "Client Authentication failed"})
                .to_string(),
        )
    } else if body.trim() != "grant_type=client_credentials" {
        paypal_json(
            StatusCode::BAD_REQUEST,
            json!({"error": "unsupported_grant_type", "error_description": "Grant Type is NULL"})
                .to_string(),
        )
    } else {
        let token = format!("A21AA{}", crate::unique_id());
        s.tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(token.clone());
        Json(json!({"scope": "https://uri.paypal.com/services/applications/webhooks",
                    "access_token": token, "token_type": "Bearer",
                    "app_id": "APP-80W284485P519543T", "expires_in": 32400, "nonce": "2026-12-05T00:00:00Zn0nce"}))
        .into_response()
    };
    s.app.leave("/v1/oauth2/token", String::new(), response)
}

async fn paypal_events(
    State(s): State<PaypalApp>,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    s.app.enter().await;
    let params = pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let response = paypal_list(&s, &headers, &pairs);
    s.app
        .leave("/v1/notifications/webhooks-events", params, response)
}

fn paypal_list(s: &PaypalApp, headers: &HeaderMap, pairs: &[(String, String)]) -> Response {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let valid = s
        .tokens
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .any(|t| t == bearer);
    if !valid {
        return paypal_json(
            StatusCode::UNAUTHORIZED,
            paypal_error(
                "AUTHENTICATION_FAILURE",
                "Authentication failed due to invalid authentication credentials or a missing Authorization header.",
                None,
            ),
        );
    }
    if let Reply::Status {
        status,
        body,
        retry_after,
    } = s.app.script.take()
    {
        return scripted(status, body, retry_after);
    }
    let one = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let parse = |k: &str| {
        one(k).map(|v| {
            time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
                .map(|t| t.unix_timestamp())
        })
    };
    let invalid = |issue: &str| {
        paypal_json(
            StatusCode::BAD_REQUEST,
            paypal_error("VALIDATION_ERROR", "Invalid data provided", Some(issue)),
        )
    };
    let (Ok(start), Ok(end)) = (
        parse("start_time").transpose(),
        parse("end_time").transpose(),
    ) else {
        return invalid("INVALID_DATE_FORMAT");
    };
    if start.is_some_and(|t| t < crate::now_secs() - 45 * 86_400) {
        return invalid("start_time must be within the last 45 days");
    }
    let Ok(page_size) = one("page_size").unwrap_or("10").parse::<usize>() else {
        return invalid("INVALID_PAGE_SIZE");
    };
    let page: usize = one("page").and_then(|p| p.parse().ok()).unwrap_or(0);
    let created = |e: &Value| {
        time::OffsetDateTime::parse(
            e["create_time"].as_str().unwrap_or_default(),
            &time::format_description::well_known::Rfc3339,
        )
        .map(|t| t.unix_timestamp())
        .unwrap_or(0)
    };
    let guard = s.app.lock();
    let mut matching: Vec<&Value> = guard
        .events
        .iter()
        .filter(|e| start.is_none_or(|t| created(e) >= t) && end.is_none_or(|t| created(e) <= t))
        .filter(|e| one("event_type").is_none_or(|t| e["event_type"] == t))
        .collect();
    // Newest first.
    matching.sort_by_key(|e| std::cmp::Reverse(created(e)));
    let items: Vec<&Value> = matching
        .iter()
        .skip(page * page_size)
        .take(page_size)
        .copied()
        .collect();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let link = |page: usize| {
        let mut rest: Vec<String> = pairs
            .iter()
            .filter(|(k, _)| k != "page")
            .map(|(k, v)| format!("{k}={}", v.replace(':', "%3A").replace('+', "%2B")))
            .collect();
        rest.push(format!("page={page}"));
        format!(
            "http://{host}/v1/notifications/webhooks-events?{}",
            rest.join("&")
        )
    };
    let mut links = vec![json!({"href": link(page), "rel": "self", "method": "GET"})];
    if (page + 1) * page_size < matching.len() {
        links.push(json!({"href": link(page + 1), "rel": "next", "method": "GET"}));
    }
    Json(json!({"events": items, "count": items.len(), "links": links})).into_response()
}

// --- Authorize.Net ---

/// A fake Authorize.Net merchant's webhook notification history (REST API, HTTP Basic with
/// the API login id and transaction key).
pub struct FakeAuthorizeNetHistory(Fake);
common_api!(FakeAuthorizeNetHistory);

impl FakeAuthorizeNetHistory {
    /// A fake accepting `login_id:transaction_key`.
    pub async fn start(login_id: &str, transaction_key: &str) -> Self {
        let basic = format!(
            "Basic {}",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                format!("{login_id}:{transaction_key}")
            )
        );
        Self(
            Fake::start(&basic, |app| {
                Router::new()
                    .route("/rest/v1/notifications", get(anet_history))
                    .route("/rest/v1/notifications/{id}", get(anet_notification))
                    .with_state(app)
            })
            .await,
        )
    }
}

fn anet_refusal(status: StatusCode, reason: &str, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"status": status.as_u16(), "reason": reason, "message": message,
               "correlationId": "0f4a8c8e-bench-fake"})
        .to_string(),
    )
        .into_response()
}

/// The App's token holds the whole expected `Authorization` value here.
fn anet_authorized(app: &App, headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(app.token.as_str())
}

async fn anet_history(
    State(app): State<App>,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    app.enter().await;
    let params = pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let response = if !anet_authorized(&app, &headers) {
        anet_refusal(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "The credentials are invalid.",
        )
    } else if let Reply::Status {
        status,
        body,
        retry_after,
    } = app.script.take()
    {
        scripted(status, body, retry_after)
    } else {
        let one = |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        let number = |k: &str, default: usize| one(k).map_or(Ok(default), str::parse::<usize>);
        match (number("offset", 0), number("limit", 1000)) {
            (Ok(offset), Ok(limit)) if (1..=1000).contains(&limit) => {
                let (from, to) = (one("from_date"), one("to_date"));
                let s = app.lock();
                let summaries: Vec<Value> = s
                    .events
                    .iter()
                    .filter(|e| {
                        let day = e["eventDate"]
                            .as_str()
                            .unwrap_or_default()
                            .get(..10)
                            .unwrap_or("");
                        from.is_none_or(|f| day >= f) && to.is_none_or(|t| day <= t)
                    })
                    .skip(offset)
                    .take(limit)
                    .map(|e| {
                        let id = e["notificationId"].as_str().unwrap_or_default();
                        // The history shows the time without a zone.
                        let date = e["eventDate"]
                            .as_str()
                            .unwrap_or_default()
                            .trim_end_matches('Z');
                        json!({"_links": {"self": {"href": format!("/rest/v1/notifications/{id}")}},
                               "notificationId": id, "deliveryStatus": "Failed",
                               "eventType": e["eventType"], "eventDate": date})
                    })
                    .collect();
                Json(json!({"_links": {"self": {"href": format!("/rest/v1/notifications?offset={offset}&limit={limit}")}},
                            "notifications": summaries}))
                .into_response()
            }
            _ => anet_refusal(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                "offset and limit must be numbers, limit at most 1000.",
            ),
        }
    };
    app.leave("/rest/v1/notifications", params, response)
}

async fn anet_notification(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    app.enter().await;
    let path = format!("/rest/v1/notifications/{id}");
    let response = if !anet_authorized(&app, &headers) {
        anet_refusal(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "The credentials are invalid.",
        )
    } else {
        let s = app.lock();
        match s.events.iter().find(|e| {
            e["notificationId"]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(&id))
        }) {
            Some(body) => Json(body.clone()).into_response(),
            None => anet_refusal(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "The notification was not found.",
            ),
        }
    };
    app.leave(&path, String::new(), response)
}
