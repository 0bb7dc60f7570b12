//! The operator console: server-rendered pages on the worker's admin listener (never the
//! public webhook port), on when `PAYSYNC_ADMIN_TOKEN` is set. An operator logs in with that
//! token and gets a session cookie; every page needs the session, every form that changes
//! something carries the session's CSRF token, and failed logins are limited per address.
//!
//! Rule of thumb: the console reads through the store and acts only through [`crate::ops`],
//! the code behind the CLI and the admin API, with the actor `console` in the audit trail. It
//! renders templates embedded in the binary and needs no JavaScript; a page never shows a
//! secret, a signature header or card data beyond what the provider itself sends.

mod pages;
mod session;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use minijinja::{AutoEscape, Environment, Value, context};
use secrecy::{ExposeSecret, SecretString};

use crate::admin::ReconcileDoor;
use crate::metrics::WorkerMetrics;
use crate::ops::{Ops, OpsError};
use session::{LoginLimiter, Sessions};

/// The audit trail's actor for everything done in the console.
pub const ACTOR: &str = "console";
/// The session cookie's name.
pub const COOKIE: &str = "paysync_console";
/// Rows per page of every list.
pub const PAGE: i64 = 50;

/// The templates, embedded: (name, source).
const TEMPLATES: &[(&str, &str)] = &[
    ("layout.html", include_str!("templates/layout.html")),
    ("macros.html", include_str!("templates/macros.html")),
    ("login.html", include_str!("templates/login.html")),
    ("overview.html", include_str!("templates/overview.html")),
    ("dlq.html", include_str!("templates/dlq.html")),
    ("letters.html", include_str!("templates/letters.html")),
    ("letter.html", include_str!("templates/letter.html")),
    ("preview.html", include_str!("templates/preview.html")),
    ("events.html", include_str!("templates/events.html")),
    ("event.html", include_str!("templates/event.html")),
    ("accounts.html", include_str!("templates/accounts.html")),
    ("account.html", include_str!("templates/account.html")),
    ("outbox.html", include_str!("templates/outbox.html")),
    ("delivery.html", include_str!("templates/delivery.html")),
    ("audit.html", include_str!("templates/audit.html")),
    ("error.html", include_str!("templates/error.html")),
];

const CSS: &str = include_str!("assets/console.css");

/// What the console is built from.
pub struct ConsoleParts {
    /// The operator actions (shared with the admin API).
    pub ops: Ops,
    /// The admin token, the console's password.
    pub token: SecretString,
    /// Reconciliation's checkpoints and sources.
    pub reconcile: ReconcileDoor,
    /// The worker's gauges (queue depths).
    pub metrics: WorkerMetrics,
}

struct Inner {
    parts: ConsoleParts,
    sessions: Mutex<Sessions>,
    logins: Mutex<LoginLimiter>,
    templates: Environment<'static>,
}

/// The console's shared state.
#[derive(Clone)]
pub(crate) struct Console(Arc<Inner>);

/// The console's routes under `/console`.
pub fn router(parts: ConsoleParts) -> anyhow::Result<Router> {
    let mut templates = Environment::new();
    templates.set_auto_escape_callback(|name| {
        if name.ends_with(".html") {
            AutoEscape::Html
        } else {
            AutoEscape::None
        }
    });
    for (name, source) in TEMPLATES {
        templates.add_template(name, source)?;
    }
    let console = Console(Arc::new(Inner {
        parts,
        sessions: Mutex::new(Sessions::default()),
        logins: Mutex::new(LoginLimiter::default()),
        templates,
    }));
    Ok(Router::new()
        .route("/console", get(pages::overview))
        .route("/console/", get(|| async { Redirect::to("/console") }))
        .route("/console/login", get(login_form).post(login))
        .route("/console/logout", post(logout))
        .route("/console/assets/console.css", get(css))
        .route("/console/dlq", get(pages::dlq))
        .route("/console/dlq/letters", get(pages::letters))
        .route("/console/dlq/letters/{id}", get(pages::letter))
        .route("/console/dlq/retry", post(pages::dlq_retry))
        .route("/console/dlq/archive", post(pages::dlq_archive))
        .route("/console/events", get(pages::events))
        .route("/console/events/replay", post(pages::replay))
        .route("/console/events/{provider}/{id}", get(pages::event))
        .route("/console/accounts", get(pages::accounts))
        .route("/console/accounts/{id}", get(pages::account))
        .route("/console/outbox", get(pages::outbox))
        .route("/console/outbox/deliveries/{id}", get(pages::delivery))
        .route("/console/outbox/retry", post(pages::outbox_retry))
        .route("/console/outbox/skip", post(pages::outbox_skip))
        .route("/console/outbox/destination", post(pages::destination))
        .route("/console/audit", get(pages::audit))
        .with_state(console))
}

impl Console {
    fn ops(&self) -> &Ops {
        &self.0.parts.ops
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.0
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Renders `name` with `ctx` plus the session's CSRF token and flash.
    fn page(&self, op: &Operator, name: &str, ctx: Value) -> Response {
        let flash = self
            .sessions()
            .touch(&op.sid, Instant::now())
            .and_then(|s| s.flash.take());
        let ctx = context! { csrf => op.csrf.clone(), flash => flash, ..ctx };
        self.render(StatusCode::OK, name, ctx)
    }

    fn render(&self, status: StatusCode, name: &str, ctx: Value) -> Response {
        let html = self
            .0
            .templates
            .get_template(name)
            .and_then(|t| t.render(ctx));
        match html {
            Ok(html) => (status, secure_headers(), html).into_response(),
            Err(err) => {
                tracing::error!(template = name, error = %err, "console page failed to render");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    secure_headers(),
                    "the page could not be rendered; the worker's log says why\n",
                )
                    .into_response()
            }
        }
    }

    /// The error page for a failed action or read.
    fn failed(&self, op: &Operator, err: &OpsError) -> Response {
        let status = match err {
            OpsError::Refused(_) => StatusCode::BAD_REQUEST,
            OpsError::NotFound(_) => StatusCode::NOT_FOUND,
            _ => {
                tracing::warn!(error = %err, "console action failed");
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        let mut chain = vec![err.to_string()];
        let mut source = std::error::Error::source(err);
        while let Some(s) = source {
            chain.push(s.to_string());
            source = s.source();
        }
        self.error(op, status, chain)
    }

    fn error(&self, op: &Operator, status: StatusCode, chain: Vec<String>) -> Response {
        let ctx = context! { csrf => op.csrf.clone(), title => "Error", status => status.as_u16(), chain };
        self.render(status, "error.html", ctx)
    }

    /// Leaves a notice for the session's next page and sends the browser to `to`.
    fn done(&self, op: &Operator, notice: String, to: &str) -> Response {
        if let Some(s) = self.sessions().touch(&op.sid, Instant::now()) {
            s.flash = Some(notice);
        }
        Redirect::to(to).into_response()
    }
}

/// Headers of every console answer: no caching, no framing, no sniffing, no referrer, and a
/// policy that allows only this console's own stylesheet and forms.
fn secure_headers() -> [(header::HeaderName, HeaderValue); 6] {
    [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; style-src 'self'; img-src 'self' data:; \
                 form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    ]
}

/// A logged-in operator: the request carried a live session cookie.
pub(crate) struct Operator {
    sid: String,
    csrf: String,
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl FromRequestParts<Console> for Operator {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, console: &Console) -> Result<Self, Response> {
        let sid = cookie_value(&parts.headers, COOKIE).unwrap_or_default();
        let csrf = console
            .sessions()
            .touch(sid, Instant::now())
            .map(|s| s.csrf.clone());
        match csrf {
            Some(csrf) => Ok(Self {
                sid: sid.to_owned(),
                csrf,
            }),
            None => {
                // Back to where the operator was going, for GETs; a form is not re-posted.
                let next = if parts.method == axum::http::Method::GET {
                    parts
                        .uri
                        .path_and_query()
                        .map(|p| p.as_str())
                        .unwrap_or("/console")
                } else {
                    "/console"
                };
                let to = format!("/console/login?next={}", url_encode(next));
                Err(Redirect::to(&to).into_response())
            }
        }
    }
}

fn url_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A posted form's fields, in order (a name may repeat: checkboxes).
pub(crate) struct Fields(Vec<(String, String)>);

impl Fields {
    fn parse(body: &[u8]) -> Self {
        Self(
            url::form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The first non-empty value of `name`.
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, v)| k == name && !v.trim().is_empty())
            .map(|(_, v)| v.trim())
    }

    /// Every value of `name`.
    fn all(&self, name: &str) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Console {
    /// The form of a state-changing post, or the refusal when its CSRF token is missing or
    /// not the session's.
    fn form(&self, op: &Operator, body: &Bytes) -> Result<Fields, Box<Response>> {
        let fields = Fields::parse(body);
        if session::same_secret(&op.csrf, fields.get("csrf").unwrap_or_default()) {
            Ok(fields)
        } else {
            tracing::warn!("console form refused: missing or wrong CSRF token");
            Err(Box::new(self.error(
                op,
                StatusCode::FORBIDDEN,
                vec![
                    "This form is missing its security token or it is out of date; nothing \
                     was changed. Go back, reload the page and try again."
                        .into(),
                ],
            )))
        }
    }
}

#[derive(serde::Deserialize)]
struct NextQuery {
    next: Option<String>,
}

/// Only a path inside the console (never another host) is a place to return to.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with("/console") && !n.starts_with("//") && !n.contains('\\') => n,
        _ => "/console",
    }
}

async fn login_form(
    State(console): State<Console>,
    axum::extract::Query(q): axum::extract::Query<NextQuery>,
) -> Response {
    login_page(&console, StatusCode::OK, safe_next(q.next.as_deref()), None)
}

fn login_page(
    console: &Console,
    status: StatusCode,
    next: &str,
    error: Option<String>,
) -> Response {
    console.render(
        status,
        "login.html",
        context! { title => "Log in", next, error, bare => true },
    )
}

/// The client's address: the peer of the connection (the admin listener is not behind a
/// proxy that the console trusts).
fn client(request_info: Option<ConnectInfo<SocketAddr>>) -> IpAddr {
    request_info.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |ConnectInfo(a)| a.ip())
}

async fn login(State(console): State<Console>, request: Request) -> Response {
    let peer = client(
        request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .copied(),
    );
    let over_tls = request
        .headers()
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let Ok(body) = axum::body::to_bytes(request.into_body(), 16 * 1024).await else {
        return login_page(
            &console,
            StatusCode::BAD_REQUEST,
            "/console",
            Some("The form could not be read.".into()),
        );
    };
    let fields = Fields::parse(&body);
    let next = safe_next(fields.get("next")).to_owned();
    let now = Instant::now();
    let blocked = console
        .0
        .logins
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .blocked(peer, now);
    if let Some(wait) = blocked {
        let secs = wait.as_secs().max(1);
        tracing::warn!(client = %peer, "console login refused: too many failed attempts");
        let mut response = login_page(
            &console,
            StatusCode::TOO_MANY_REQUESTS,
            &next,
            Some(format!("Too many failed attempts. Try again in {secs} s.")),
        );
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return response;
    }
    let ok = session::same_secret(
        console.0.parts.token.expose_secret(),
        fields.get("token").unwrap_or_default(),
    );
    let mut logins = console
        .0
        .logins
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if !ok {
        logins.failed(peer, now);
        drop(logins);
        tracing::warn!(client = %peer, "console login failed: wrong token");
        return login_page(
            &console,
            StatusCode::UNAUTHORIZED,
            &next,
            Some("That is not the admin token.".into()),
        );
    }
    logins.succeeded(peer);
    drop(logins);
    let sid = console.sessions().start(now);
    tracing::info!(client = %peer, "console login");
    let secure = if over_tls { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}={sid}; Path=/console; HttpOnly; SameSite=Strict{secure}");
    let mut response = Redirect::to(&next).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

async fn logout(State(console): State<Console>, op: Operator, body: Bytes) -> Response {
    if let Err(refused) = console.form(&op, &body) {
        return *refused;
    }
    console.sessions().end(&op.sid);
    let mut response = Redirect::to("/console/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "paysync_console=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    response
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        CSS,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn only_console_paths_are_places_to_return_to_after_login() {
        assert_eq!(
            safe_next(Some("/console/dlq?group=ab")),
            "/console/dlq?group=ab"
        );
        for bad in [
            None,
            Some("https://evil.example/console"),
            Some("//evil.example/console"),
            Some("/admin/dlq"),
            Some("/console\\..\\x"),
        ] {
            assert_eq!(safe_next(bad), "/console", "{bad:?}");
        }
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; paysync_console=abc"),
        );
        assert_eq!(cookie_value(&h, COOKIE), Some("abc"));
        assert_eq!(cookie_value(&HeaderMap::new(), COOKIE), None);
    }

    #[test]
    fn every_page_renders_with_no_rows() {
        let mut env = Environment::new();
        for (name, source) in TEMPLATES {
            env.add_template(name, source).unwrap();
        }
        let group = context! {
            group => "fp", title => "kind: why", count => 2, error_kind => "kind",
            event_types => vec!["a.b"], first_failed_at => "t", last_failed_at => "t",
        };
        let pages = [
            ("dlq.html", context! { groups => vec![group.clone()] }),
            (
                "overview.html",
                context! {
                    refresh => 15, groups => vec![group.clone()], problems => vec!["x"],
                    business => vec![context! { measure => "Checkouts completed", day => "7", week => "9" }],
                },
            ),
            (
                "letters.html",
                context! { state => "open", letters => Vec::<Value>::new(), group },
            ),
            (
                "login.html",
                context! { next => "/console", error => "e", bare => true },
            ),
            (
                "error.html",
                context! { status => 400, chain => vec!["a", "b"] },
            ),
            (
                "preview.html",
                context! { count => 3, fields => vec![("scope", "all")] },
            ),
            (
                "events.html",
                context! { q => context! {}, providers => vec!["stripe"] },
            ),
            ("accounts.html", context! { q => "" }),
            (
                "outbox.html",
                context! { q => context! {}, states => vec!["dead"] },
            ),
            ("audit.html", context! {}),
        ];
        for (name, ctx) in pages {
            let html = env
                .get_template(name)
                .unwrap()
                .render(context! { title => "T", csrf => "c", ..ctx })
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert!(html.contains("<main id=\"main\">"), "{name}");
        }
    }
}
