//! The business's own application receiving paysync's signed webhooks (Standard Webhooks): an
//! endpoint at `/hooks/<token>` that records every request as it came (method, target,
//! headers, the raw body bytes) and answers `200` by default. Scripted: 503s for the next few
//! requests or for a while, a stall ("down": requests held, then 503), 429 with `Retry-After`,
//! 410 Gone, and replies for one event id only. A wrong token answers 404.
//!
//! It does not check signatures itself: tests verify the recorded requests with
//! `paysync_domain::standard_webhooks::verify`, as a receiver would.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;

use super::{Reply, Scripted, ServerGuard, serve, wait};

/// One request the fake received, in arrival order.
#[derive(Debug, Clone)]
pub struct AppRequest {
    /// When it arrived.
    pub at: Instant,
    /// `POST`, …
    pub method: String,
    /// The path and query it was sent to.
    pub target: String,
    /// Every header, names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body, byte for byte.
    pub body: Vec<u8>,
    /// What the fake answered (for a stalled request: what it answers when the stall ends,
    /// even if the client gave up before).
    pub status: u16,
}

impl AppRequest {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `webhook-id` header: the event id.
    pub fn webhook_id(&self) -> Option<&str> {
        self.header("webhook-id")
    }

    /// Whether the fake accepted it (2xx).
    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

#[derive(Default)]
struct Shared {
    requests: Vec<AppRequest>,
    /// Replies for the next requests carrying this `webhook-id`, before the common script.
    by_id: HashMap<String, VecDeque<Reply>>,
    /// Requests arriving before this instant are held until it, then answered 503.
    stalled_until: Option<Instant>,
}

/// A fake application endpoint.
pub struct FakeApp {
    addr: std::net::SocketAddr,
    token: String,
    shared: Arc<Mutex<Shared>>,
    /// What it answers to every request (after the per-event replies).
    pub script: Scripted,
    _server: ServerGuard,
}

#[derive(Clone)]
struct App {
    token: String,
    shared: Arc<Mutex<Shared>>,
    script: Scripted,
}

/// A 503 as an application behind a load balancer gives while it is down.
pub fn unavailable() -> Reply {
    Reply::Status {
        status: 503,
        body: "service unavailable".into(),
        retry_after: None,
    }
}

/// A 429 with `Retry-After: <secs>`.
pub fn too_many(retry_after_secs: u64) -> Reply {
    Reply::Status {
        status: 429,
        body: "too many requests".into(),
        retry_after: Some(retry_after_secs),
    }
}

/// 410 Gone: the endpoint asks the sender to stop.
pub fn gone() -> Reply {
    Reply::Status {
        status: 410,
        body: "endpoint removed".into(),
        retry_after: None,
    }
}

impl FakeApp {
    /// Starts one.
    pub async fn start() -> Self {
        let token = format!("tok{:024x}", nonce());
        let shared = Arc::new(Mutex::new(Shared::default()));
        let script = Scripted::default();
        let app = App {
            token: token.clone(),
            shared: shared.clone(),
            script: script.clone(),
        };
        let router = Router::new()
            .route("/hooks/{token}", any(hook))
            .fallback(|| async { (StatusCode::NOT_FOUND, "not found") })
            .with_state(app);
        let (addr, server) = serve(router).await;
        Self {
            addr,
            token,
            shared,
            script,
            _server: server,
        }
    }

    /// The endpoint's URL; its last segment is a token, as an application's may be.
    pub fn url(&self) -> String {
        format!("http://{}/hooks/{}", self.addr, self.token)
    }

    /// The token in the URL (to check it never shows).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Answers `reply` to the next `times` requests whose `webhook-id` is `id` (before the
    /// common script).
    pub fn for_event(&self, id: &str, reply: Reply, times: usize) {
        let mut s = self.lock();
        let q = s.by_id.entry(id.to_owned()).or_default();
        for _ in 0..times {
            q.push_back(reply.clone());
        }
    }

    /// Holds every request arriving in the next `period` until the period ends, then answers
    /// 503: an application that hangs while it is down.
    pub fn stall_for(&self, period: Duration) {
        self.lock().stalled_until = Some(Instant::now() + period);
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<AppRequest> {
        self.lock().requests.clone()
    }

    /// The requests it accepted (2xx), in arrival order.
    pub fn delivered(&self) -> Vec<AppRequest> {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.accepted())
            .cloned()
            .collect()
    }

    /// Waits until at least `n` requests were accepted; panics after `deadline`.
    pub async fn wait_for_delivered(&self, n: usize, deadline: Duration) -> Vec<AppRequest> {
        wait(deadline, &format!("{n} accepted app webhooks"), || {
            let d = self.delivered();
            (d.len() >= n).then_some(d)
        })
        .await
    }

    /// Waits until at least `n` requests arrived; panics after `deadline`.
    pub async fn wait_for_requests(&self, n: usize, deadline: Duration) -> Vec<AppRequest> {
        wait(deadline, &format!("{n} app webhook requests"), || {
            let r = self.requests();
            (r.len() >= n).then_some(r)
        })
        .await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn nonce() -> u128 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    t ^ (u128::from(std::process::id()) << 64)
}

fn answer(status: u16, body: String, retry_after: Option<u64>) -> Response {
    let mut r = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body,
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
    Path(token): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now = Instant::now();
    let recorded: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (status, text, retry_after, stall) = {
        let mut s = app
            .shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let stall = s.stalled_until.filter(|u| *u > now);
        let reply = if token != app.token {
            Reply::Status {
                status: 404,
                body: "not found".into(),
                retry_after: None,
            }
        } else if stall.is_some() {
            unavailable()
        } else {
            id.as_ref()
                .and_then(|i| s.by_id.get_mut(i))
                .and_then(VecDeque::pop_front)
                .unwrap_or_else(|| app.script.take())
        };
        let (status, text, retry_after) = match reply {
            Reply::Normal => (200, String::new(), None),
            Reply::Status {
                status,
                body,
                retry_after,
            } => (status, body, retry_after),
        };
        s.requests.push(AppRequest {
            at: now,
            method: method.as_str().to_owned(),
            target: uri
                .path_and_query()
                .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned()),
            headers: recorded,
            body: body.to_vec(),
            status,
        });
        (status, text, retry_after, stall)
    };
    if let Some(until) = stall {
        tokio::time::sleep_until(until.into()).await;
    }
    answer(status, text, retry_after)
}
