//! Local stand-ins for the third parties paysync talks to, speaking their real wire formats: an
//! SMTP server (a real dialogue), a Slack incoming webhook, the HubSpot CRM v3 endpoints the
//! dispatcher calls, the business's application receiving signed webhooks, Authorize.Net's
//! transaction details and the providers' event lists that reconciliation reads (their JSON
//! bodies, their error bodies, 429s with `Retry-After`).
//!
//! Each one binds an ephemeral loopback port, runs on the test's runtime, records what it
//! received, and answers from a script the test sets: a base reply, and replies for the next
//! few requests.

pub mod app;
pub mod authorizenet;
pub mod hubspot;
pub mod provider_api;
pub mod slack;
pub mod smtp;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A scripted answer of an HTTP fake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// What the real service answers to a good request.
    Normal,
    /// This status and body, with a `Retry-After` header when given.
    Status {
        /// HTTP status.
        status: u16,
        /// Body (plain text for Slack, JSON for HubSpot).
        body: String,
        /// `Retry-After` in seconds.
        retry_after: Option<u64>,
    },
}

/// A fake's script: replies queued for the next requests, then the base reply.
#[derive(Debug, Default)]
pub(crate) struct Script {
    base: Option<Reply>,
    next: VecDeque<Reply>,
    /// The base reply until this instant only.
    until: Option<Instant>,
}

impl Script {
    pub(crate) fn take(&mut self) -> Reply {
        if let Some(r) = self.next.pop_front() {
            return r;
        }
        if self.until.is_some_and(|u| Instant::now() >= u) {
            self.base = None;
            self.until = None;
        }
        self.base.clone().unwrap_or(Reply::Normal)
    }
}

/// The handle tests hold to a fake's script.
#[derive(Debug, Clone, Default)]
pub struct Scripted(pub(crate) Arc<Mutex<Script>>);

impl Scripted {
    /// Answers `reply` from now on.
    pub fn always(&self, reply: Reply) {
        let mut s = self.lock();
        s.base = Some(reply);
        s.until = None;
    }

    /// Answers `reply` for `period` from now, then normally again.
    pub fn for_period(&self, reply: Reply, period: Duration) {
        let mut s = self.lock();
        s.base = Some(reply);
        s.until = Some(Instant::now() + period);
    }

    /// Answers `reply` to the next `times` requests, then as before.
    pub fn next(&self, reply: Reply, times: usize) {
        let mut s = self.lock();
        for _ in 0..times {
            s.next.push_back(reply.clone());
        }
    }

    /// Answers normally from now on.
    pub fn normal(&self) {
        let mut s = self.lock();
        s.base = None;
        s.until = None;
        s.next.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Script> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn take(&self) -> Reply {
        self.lock().take()
    }
}

/// A rolling-window rate limit an HTTP fake enforces like the real service.
#[derive(Debug)]
pub(crate) struct Window {
    max: u32,
    per: Duration,
    seen: VecDeque<Instant>,
}

impl Window {
    pub(crate) fn new(max: u32, per: Duration) -> Self {
        Self {
            max,
            per,
            seen: VecDeque::new(),
        }
    }

    /// Whether one more request fits; counts it when it does.
    pub(crate) fn admit(&mut self, now: Instant) -> bool {
        while self
            .seen
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.per)
        {
            self.seen.pop_front();
        }
        if self.seen.len() < self.max as usize {
            self.seen.push_back(now);
            true
        } else {
            false
        }
    }

    /// Requests left in the window now.
    pub(crate) fn remaining(&self) -> u32 {
        self.max.saturating_sub(self.seen.len() as u32)
    }
}

/// Serves `router` on an ephemeral loopback port until the returned guard drops.
pub(crate) async fn serve(router: axum::Router) -> (std::net::SocketAddr, ServerGuard) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port for a fake");
    let addr = listener.local_addr().expect("local addr");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (addr, ServerGuard(task))
}

/// Stops a fake's server when dropped.
#[derive(Debug)]
pub struct ServerGuard(tokio::task::JoinHandle<()>);

impl Drop for ServerGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Polls `check` every 20 ms until it is `Some`, panicking with `what` after `deadline`.
pub(crate) async fn wait<T>(
    deadline: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
