//! A Slack incoming webhook: `POST /services/T…/B…/<secret>` with `{"text", "blocks"}`,
//! answered `200 ok` in plain text; its error codes as plain-text bodies (`invalid_payload`,
//! `no_text`, `no_service`, `invalid_token`, `channel_is_archived`, `rollup_error`); 429 with
//! `Retry-After` over a rate limit.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use super::{Reply, Scripted, ServerGuard, Window, serve, wait};

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct SlackRequest {
    /// When it arrived.
    pub at: Instant,
    /// What the fake answered.
    pub status: u16,
    /// The JSON body (`Null` when it was not JSON).
    pub body: serde_json::Value,
}

#[derive(Default)]
struct Shared {
    requests: Vec<SlackRequest>,
    limit: Option<Window>,
}

/// A fake Slack incoming webhook.
pub struct FakeSlack {
    addr: std::net::SocketAddr,
    secret: String,
    shared: Arc<Mutex<Shared>>,
    /// What it answers.
    pub script: Scripted,
    _server: ServerGuard,
}

#[derive(Clone)]
struct App {
    secret: String,
    shared: Arc<Mutex<Shared>>,
    script: Scripted,
}

impl FakeSlack {
    /// Starts one.
    pub async fn start() -> Self {
        let secret = format!("{:024x}", rand_u128());
        let shared = Arc::new(Mutex::new(Shared::default()));
        let script = Scripted::default();
        let app = App {
            secret: secret.clone(),
            shared: shared.clone(),
            script: script.clone(),
        };
        let router = Router::new()
            .route("/services/{team}/{bot}/{secret}", post(hook))
            .fallback(|| async { (StatusCode::NOT_FOUND, "no_service") })
            .with_state(app);
        let (addr, server) = serve(router).await;
        Self {
            addr,
            secret,
            shared,
            script,
            _server: server,
        }
    }

    /// The webhook URL (the secret is its last segment, as with Slack).
    pub fn webhook_url(&self) -> String {
        format!("http://{}/services/T0001/B0001/{}", self.addr, self.secret)
    }

    /// Answers 429 (`Retry-After: 1`) to requests over `per_second` in any rolling second;
    /// `None` lifts the limit.
    pub fn set_rate_limit(&self, per_second: Option<u32>) {
        self.lock().limit = per_second.map(|n| Window::new(n, Duration::from_secs(1)));
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<SlackRequest> {
        self.lock().requests.clone()
    }

    /// The bodies of the messages it accepted.
    pub fn delivered(&self) -> Vec<serde_json::Value> {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.status == 200)
            .map(|r| r.body.clone())
            .collect()
    }

    /// How many requests it answered 429.
    pub fn throttled(&self) -> usize {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.status == 429)
            .count()
    }

    /// Waits until at least `n` messages were accepted; panics after `deadline`.
    pub async fn wait_for_delivered(&self, n: usize, deadline: Duration) -> Vec<serde_json::Value> {
        wait(deadline, &format!("{n} Slack messages"), || {
            let d = self.delivered();
            (d.len() >= n).then_some(d)
        })
        .await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn rand_u128() -> u128 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    t ^ (u128::from(std::process::id()) << 64)
}

fn text(status: u16, body: &str, retry_after: Option<u64>) -> Response {
    let mut r = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body.to_owned(),
    )
        .into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some(s) = retry_after {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    r
}

async fn hook(
    State(app): State<App>,
    Path((_team, _bot, secret)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now = Instant::now();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let (status, answer, retry_after) = if secret != app.secret {
        (404, "no_service".to_owned(), None)
    } else {
        let throttled = {
            let mut s = app
                .shared
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            s.limit.as_mut().is_some_and(|w| !w.admit(now))
        };
        if throttled {
            (429, "rate_limited".to_owned(), Some(1))
        } else {
            match app.script.take() {
                Reply::Status {
                    status,
                    body,
                    retry_after,
                } => (status, body, retry_after),
                Reply::Normal => {
                    let is_json = headers
                        .get(header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.starts_with("application/json"));
                    if !is_json || !json.is_object() {
                        (400, "invalid_payload".to_owned(), None)
                    } else if json
                        .get("text")
                        .and_then(|t| t.as_str())
                        .is_none_or(str::is_empty)
                        && json.get("blocks").is_none()
                    {
                        (400, "no_text".to_owned(), None)
                    } else {
                        (200, "ok".to_owned(), None)
                    }
                }
            }
        }
    };
    app.shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .requests
        .push(SlackRequest {
            at: now,
            status,
            body: json,
        });
    text(status, &answer, retry_after)
}
