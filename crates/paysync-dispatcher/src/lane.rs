//! One destination's lane: owns the destination across the cluster (a session advisory lock),
//! claims its due deliveries, sends them through the breaker and the rate limit, and completes
//! each with a fenced statement.
//!
//! Rule of thumb: the lane's in-memory breaker and token bucket are exact because only the
//! owner sends; the owner saves the breaker, so the next owner after a failover starts where
//! it stopped (an open breaker stays open: no herd). The lease and its fencing token are what
//! guarantee a delivery is never sent by two processes at once, even if two owners overlapped.

use std::sync::Arc;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use paysync_domain::billing::{AccountFacts, ObjectKind};
use paysync_domain::breaker::{Admit, Breaker, BreakerPolicy, Forced, Outcome};
use paysync_domain::intent::Intent;
use paysync_domain::outbound::{Destination, Operation};
use paysync_domain::retry::RetryPolicy;
use paysync_store::{AttemptRecord, Claimed, Completion, LaneConnection, Store, StoreError};
use paysync_telemetry::Shutdown;

use crate::job::{FailureKind, Job, SendError, Sender, Throttle, Verdict, excerpt};
use crate::metrics::DispatcherMetrics;

/// How one destination's lane runs.
#[derive(Debug, Clone, PartialEq)]
pub struct LaneConfig {
    /// Requests per second to the destination (the token bucket's rate).
    pub rate_per_second: f64,
    /// Requests at once after a quiet spell.
    pub burst: u32,
    /// Deliveries claimed and sent at once.
    pub concurrency: usize,
    /// When a failed delivery is tried again, and how often in all.
    pub retry: RetryPolicy,
    /// Deliveries older than this are expired instead of sent (chat: news goes stale).
    pub max_age: Option<Duration>,
    /// New deliveries wait this long before their first attempt, so the other events about
    /// the same payment fill in what the message shows (email: the invoice's address and
    /// link may come a second after the payment's event).
    pub hold: Duration,
    /// When the breaker opens and for how long.
    pub breaker: BreakerPolicy,
}

impl LaneConfig {
    /// The defaults of `destination`, from the vendors' limits (docs/outbox.md).
    pub fn default_for(destination: Destination) -> Self {
        let retry = |base: u64, max: u64, attempts: u32| RetryPolicy {
            base: Duration::from_secs(base),
            factor: 4.0,
            max_delay: Duration::from_secs(max),
            jitter: 0.2,
            max_attempts: attempts,
        };
        match destination {
            // A relay takes a few connections; lettre pools them.
            Destination::Email => Self {
                rate_per_second: 5.0,
                burst: 5,
                concurrency: 4,
                retry: retry(10, 12 * 3600, 8),
                max_age: None,
                hold: Duration::from_secs(10),
                breaker: BreakerPolicy::default(),
            },
            // Slack: "no more than one message per second", short bursts allowed.
            Destination::Chat => Self {
                rate_per_second: 1.0,
                burst: 3,
                concurrency: 1,
                retry: retry(5, 30 * 60, 6),
                max_age: Some(Duration::from_secs(6 * 3600)),
                hold: Duration::ZERO,
                breaker: BreakerPolicy::default(),
            },
            // HubSpot: 100 requests per 10 s per app on the smallest plans; 9/s keeps a
            // rolling 10 s window at or under 90 whatever the phase.
            Destination::Hubspot => Self {
                rate_per_second: 9.0,
                burst: 1,
                concurrency: 4,
                retry: retry(30, 24 * 3600, 9),
                max_age: None,
                hold: Duration::ZERO,
                breaker: BreakerPolicy::default(),
            },
            // The business's own endpoint: an account's events go one after another, so
            // several at once only across accounts. Retries span about a day (Standard
            // Webhooks senders retry for days; an application's outage is ours to ride out).
            Destination::App => Self {
                rate_per_second: 20.0,
                burst: 20,
                concurrency: 4,
                retry: retry(5, 3600, 30),
                max_age: None,
                hold: Duration::ZERO,
                breaker: BreakerPolicy::default(),
            },
        }
    }
}

impl LaneConfig {
    /// Checks the lane's numbers; what is wrong, in words.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.rate_per_second.is_finite() && self.rate_per_second > 0.0) {
            return Err("rate must be a positive number of requests per second".into());
        }
        if self.burst == 0 || self.concurrency == 0 {
            return Err("burst and concurrency must be at least 1".into());
        }
        if self.max_age.is_some_and(|a| a.is_zero()) {
            return Err("maximum age must be positive".into());
        }
        self.retry.validate().map_err(|e| e.to_string())?;
        self.breaker.validate().map_err(|e| e.to_string())
    }
}

/// What every lane of a process shares.
#[derive(Clone)]
pub struct LaneEnv {
    /// The database.
    pub store: Store,
    /// Metrics.
    pub metrics: DispatcherMetrics,
    /// This process's name in leases and attempts.
    pub owner: String,
    /// How long a claim holds a delivery.
    pub lease: Duration,
    /// The poll backstop when no wake-up comes.
    pub poll: Duration,
}

/// A destination's lane.
pub struct Lane {
    ctx: Arc<Ctx>,
    breaker: Breaker,
    saved_state: &'static str,
}

/// What the lane's attempts share while they run beside its breaker.
struct Ctx {
    sender: Arc<dyn Sender>,
    config: LaneConfig,
    env: LaneEnv,
    throttle: Throttle,
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// How one claimed delivery ended.
struct Finished {
    claimed: Claimed,
    operation: &'static str,
    verdict: Verdict,
    took: Duration,
}

impl Lane {
    /// A lane for `sender` (not yet running).
    pub fn new(sender: Arc<dyn Sender>, config: LaneConfig, env: LaneEnv) -> Self {
        let throttle = Throttle::new(config.rate_per_second, config.burst);
        let breaker = Breaker::new(config.breaker.clone());
        Self {
            ctx: Arc::new(Ctx {
                sender,
                config,
                env,
                throttle,
            }),
            breaker,
            saved_state: "closed",
        }
    }

    fn destination(&self) -> Destination {
        self.ctx.sender.destination()
    }

    fn name(&self) -> &'static str {
        self.destination().as_str()
    }

    /// Runs until `stop`: waits to own the destination, then delivers while it does.
    pub async fn run(mut self, stop: Shutdown) {
        let owned = self
            .ctx
            .env
            .metrics
            .lane_owned
            .with_label_values(&[self.name()]);
        while !stop.fired() {
            let mut conn = match self.ctx.env.store.lane_connection(self.name()).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(destination = self.name(), error = %e, "lane connection failed");
                    pause(self.ctx.env.poll, &stop).await;
                    continue;
                }
            };
            match self.acquire(&mut conn, &stop).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(destination = self.name(), error = %e, "lane lock failed");
                    pause(self.ctx.env.poll, &stop).await;
                    continue;
                }
            }
            tracing::info!(destination = self.name(), owner = %self.ctx.env.owner, "lane owned");
            owned.set(1);
            if let Err(e) = self.deliver(&mut conn, &stop).await {
                tracing::warn!(destination = self.name(), error = %e, "lane stopped delivering");
                pause(self.ctx.env.poll, &stop).await;
            }
            owned.set(0);
            self.ctx.env.metrics.lane_lost(self.destination());
            let _ = self
                .ctx
                .env
                .store
                .save_lane(
                    self.name(),
                    &self.breaker_json(),
                    self.breaker.state_name(),
                    None,
                )
                .await;
        }
    }

    /// Waits until this connection holds the lane's lock. `Ok(false)` when the connection
    /// died or `stop` fired first.
    async fn acquire(
        &mut self,
        conn: &mut LaneConnection,
        stop: &Shutdown,
    ) -> Result<bool, StoreError> {
        loop {
            if stop.fired() || !conn.is_alive() {
                return Ok(false);
            }
            if conn.try_lock().await? {
                return Ok(true);
            }
            tokio::select! {
                _ = stop.wait() => return Ok(false),
                _ = tokio::time::sleep(self.ctx.env.poll) => {}
            }
        }
    }

    fn breaker_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.breaker).unwrap_or_default()
    }

    /// Records a change of the breaker's state in the metrics and the destination's row.
    async fn note_breaker(&mut self) -> Result<(), StoreError> {
        let state = self.breaker.state_name();
        if state != self.saved_state {
            let d = self.destination();
            self.ctx.env.metrics.set_breaker(d, state);
            self.ctx
                .env
                .metrics
                .breaker_transitions
                .with_label_values(&[d.as_str(), state])
                .inc();
            tracing::info!(
                destination = d.as_str(),
                from = self.saved_state,
                to = state,
                "breaker"
            );
            self.saved_state = state;
            self.ctx
                .env
                .store
                .save_lane(
                    d.as_str(),
                    &self.breaker_json(),
                    state,
                    Some(&self.ctx.env.owner),
                )
                .await?;
        }
        Ok(())
    }

    /// Delivers while the lane's connection (and lock) lives.
    async fn deliver(
        &mut self,
        conn: &mut LaneConnection,
        stop: &Shutdown,
    ) -> Result<(), StoreError> {
        let d = self.destination();
        let name = d.as_str();
        // The previous owner's breaker: an open breaker stays open across a failover.
        if let Some(control) = self.ctx.env.store.destination_control(name).await?
            && let Some(saved) = control.breaker
            && let Ok(mut breaker) = serde_json::from_value::<Breaker>(saved)
        {
            // Its state, with this process's policy (the configuration may have changed).
            breaker.set_policy(self.ctx.config.breaker.clone());
            self.breaker = breaker;
        }
        self.saved_state = "";
        self.note_breaker().await?;
        let mut last_ping = Instant::now();
        loop {
            if stop.fired() || !conn.is_alive() {
                return Ok(());
            }
            if last_ping.elapsed() > self.ctx.env.poll {
                conn.ping().await?;
                last_ping = Instant::now();
            }
            let Some(control) = self.ctx.env.store.destination_control(name).await? else {
                return Ok(());
            };
            self.breaker.force(match control.forced.as_str() {
                "open" => Forced::Open,
                "closed" => Forced::Closed,
                _ => Forced::Auto,
            });
            self.note_breaker().await?;
            let disabled = control.disabled_reason.is_some();
            self.ctx
                .env
                .metrics
                .disabled
                .with_label_values(&[name])
                .set(i64::from(disabled));
            let paused = control.paused_ms > 0.0;
            self.ctx
                .env
                .metrics
                .paused
                .with_label_values(&[name])
                .set(i64::from(paused));
            if disabled {
                wait(conn, self.ctx.env.poll, stop).await;
                continue;
            }
            if paused {
                let left = Duration::from_secs_f64(control.paused_ms / 1000.0);
                // Wake-ups do not end a pause: sleep it out (or until the next look).
                tokio::select! {
                    _ = stop.wait() => return Ok(()),
                    _ = tokio::time::sleep(left.min(self.ctx.env.poll)) => {}
                }
                continue;
            }
            let now = unix_now();
            let (limit, probe) = match self.breaker.admit(now) {
                Admit::Yes => (self.ctx.config.concurrency as i64, false),
                Admit::Probe => (1, true),
                Admit::No { until } => {
                    self.note_breaker().await?;
                    let wait_for = until
                        .map(|u| u.saturating_sub(now))
                        .unwrap_or(self.ctx.env.poll)
                        .min(self.ctx.env.poll)
                        .max(Duration::from_millis(10));
                    tokio::select! {
                        _ = stop.wait() => return Ok(()),
                        _ = tokio::time::sleep(wait_for) => {}
                    }
                    continue;
                }
            };
            self.note_breaker().await?;
            let claimed = self
                .ctx
                .env
                .store
                .claim(
                    name,
                    limit,
                    self.ctx.env.lease,
                    &self.ctx.env.owner,
                    d.keeps_account_order(),
                )
                .await?;
            if claimed.is_empty() {
                if probe {
                    self.breaker.probe_abandoned();
                }
                wait(conn, self.ctx.env.poll, stop).await;
                continue;
            }
            // Each attempt runs as a task of its own and is completed as soon as it ends, not
            // when the slowest of the batch does: a stalled send cannot hold the others'
            // completions (and a crash then resends only what was really in flight). Tasks,
            // not futures polled here: an attempt waiting on the database must progress while
            // this loop completes another one. Dropping the set (the lane stopped) ends them.
            let mut running = tokio::task::JoinSet::new();
            for c in claimed {
                let ctx = self.ctx.clone();
                running.spawn(async move { ctx.attempt(c).await });
            }
            while let Some(done) = running.join_next().await {
                match done {
                    Ok(f) => self.settle(f, probe).await?,
                    // Its lease expires and the reaper hands the delivery back.
                    Err(e) => {
                        tracing::error!(destination = d.as_str(), error = %e, "an attempt panicked")
                    }
                }
            }
            self.note_breaker().await?;
        }
    }

    /// Completes one attempt: the delivery's new state, the breaker, the destination's pause
    /// or disablement, the metrics.
    async fn settle(&mut self, f: Finished, probe: bool) -> Result<(), StoreError> {
        let d = self.destination();
        let name = d.as_str();
        let m = &self.ctx.env.metrics;
        let now = unix_now();
        let unit: f64 = rand::random();
        let mut record = AttemptRecord {
            owner: self.ctx.env.owner.clone(),
            duration_ms: i32::try_from(f.took.as_millis()).unwrap_or(i32::MAX),
            outcome: String::new(),
            status: None,
            error: None,
            retry_after_s: None,
        };
        m.attempt_duration
            .with_label_values(&[name])
            .observe(f.took.as_secs_f64());
        let completion = match &f.verdict {
            Verdict::Sent { external_ref } => {
                self.breaker.record(now, Outcome::Success, unit);
                record.outcome = "sent".into();
                Completion::Sent {
                    external_ref: external_ref.clone(),
                }
            }
            Verdict::Skip { reason } if *reason == EXPIRED => {
                if probe {
                    self.breaker.probe_abandoned();
                }
                record.outcome = "expired".into();
                m.expired.with_label_values(&[name]).inc();
                Completion::Expired
            }
            Verdict::Skip { reason } => {
                if probe {
                    self.breaker.probe_abandoned();
                }
                record.outcome = "skipped".into();
                record.error = Some(format!("skipped: {reason}"));
                m.skipped.with_label_values(&[name, reason]).inc();
                Completion::Skipped {
                    reason: (*reason).to_owned(),
                }
            }
            Verdict::Failed(e) => {
                record.status = e.status.map(i32::from);
                record.error = Some(excerpt(&format!("{}: {}", e.code, e.detail), 2048));
                record.retry_after_s = e.retry_after.map(|r| r.as_secs_f64());
                match e.kind {
                    FailureKind::Transient { .. } => {
                        self.breaker.record(now, Outcome::Failure, unit);
                        let attempt = u32::try_from(f.claimed.attempts).unwrap_or(u32::MAX);
                        match self.ctx.config.retry.delay(attempt, unit) {
                            Some(step) => {
                                record.outcome = "retry".into();
                                // A Retry-After lengthens a step, never shortens it.
                                let delay = step.max(e.retry_after.unwrap_or_default());
                                Completion::Retry {
                                    delay_ms: delay.as_secs_f64() * 1000.0,
                                }
                            }
                            None => {
                                record.outcome = "dead".into();
                                let fingerprint = format!("{name}:exhausted:{}", e.code);
                                m.dead.with_label_values(&[name]).inc();
                                Completion::Dead { fingerprint }
                            }
                        }
                    }
                    FailureKind::RateLimited { pause: p } | FailureKind::Quota { pause: p } => {
                        if probe {
                            self.breaker.probe_abandoned();
                        }
                        let p = p.max(e.retry_after.unwrap_or_default());
                        // Hold every request of this lane at once, the ones in flight included.
                        self.ctx.throttle.pause(p);
                        let why = if matches!(e.kind, FailureKind::Quota { .. }) {
                            "quota"
                        } else {
                            "rate_limited"
                        };
                        self.ctx
                            .env
                            .store
                            .pause_destination(
                                name,
                                p,
                                &format!("{why}: {}", e.code),
                                &self.ctx.env.owner,
                            )
                            .await?;
                        m.rate_limit_pauses.with_label_values(&[name]).inc();
                        m.paused.with_label_values(&[name]).set(1);
                        tracing::info!(
                            destination = name,
                            pause_s = p.as_secs_f64(),
                            why,
                            "destination paused"
                        );
                        record.outcome = "rate_limited".into();
                        Completion::Release {
                            delay_ms: p.as_secs_f64() * 1000.0,
                        }
                    }
                    FailureKind::Config => {
                        if probe {
                            self.breaker.probe_abandoned();
                        }
                        let reason = excerpt(&format!("{}: {}", e.code, e.detail), 512);
                        self.ctx
                            .env
                            .store
                            .disable_destination(name, &reason, &self.ctx.env.owner)
                            .await?;
                        m.disabled.with_label_values(&[name]).set(1);
                        tracing::error!(destination = name, code = %e.code, "destination disabled: fix its configuration, then `paysync outbox resume`");
                        record.outcome = "disabled".into();
                        Completion::Release { delay_ms: 0.0 }
                    }
                    FailureKind::Payload => {
                        // The destination answered: it is up.
                        self.breaker.record(now, Outcome::Success, unit);
                        record.outcome = "dead".into();
                        let fingerprint = format!("{name}:{}", e.code);
                        m.dead.with_label_values(&[name]).inc();
                        Completion::Dead { fingerprint }
                    }
                }
            }
        };
        match self
            .ctx
            .env
            .store
            .complete(&f.claimed, &completion, &record)
            .await?
        {
            Some(age) => {
                m.attempts
                    .with_label_values(&[name, f.operation, &record.outcome])
                    .inc();
                if matches!(completion, Completion::Sent { .. }) {
                    m.latency.with_label_values(&[name]).observe(age.max(0.0));
                }
            }
            None => {
                m.attempts
                    .with_label_values(&[name, f.operation, "lease_lost"])
                    .inc();
                tracing::warn!(
                    destination = name,
                    delivery = f.claimed.id,
                    "lease lost before completion: the reaper or an operator took the delivery back"
                );
            }
        }
        Ok(())
    }
}

impl Ctx {
    /// One attempt: prepare the job, check it still holds, send it.
    async fn attempt(&self, claimed: Claimed) -> Finished {
        let started = Instant::now();
        let operation = Operation::parse(&claimed.operation);
        let op_name = operation.map_or("unknown", Operation::as_str);
        let verdict = match self.prepare(&claimed, operation).await {
            Ok(Prepared::Send(job)) => self.sender.send(&job, &self.throttle).await,
            Ok(Prepared::Verdict(v)) => v,
            Err(e) => Verdict::Failed(SendError::transient(
                None,
                "database",
                format!("reading what to send: {e}"),
            )),
        };
        Finished {
            claimed,
            operation: op_name,
            verdict,
            took: started.elapsed(),
        }
    }

    async fn prepare(
        &self,
        claimed: &Claimed,
        operation: Option<Operation>,
    ) -> Result<Prepared, StoreError> {
        let (Some(operation), Some(intent)) = (operation, Intent::parse(&claimed.intent)) else {
            return Ok(Prepared::Verdict(Verdict::Failed(SendError::new(
                FailureKind::Payload,
                None,
                "unknown_operation",
                format!(
                    "{} / {} is not known to this release",
                    claimed.operation, claimed.intent
                ),
            ))));
        };
        if let Some(max) = self.config.max_age {
            let age = time::OffsetDateTime::now_utc() - claimed.created_at;
            if age > max {
                return Ok(Prepared::Verdict(Verdict::Skip { reason: EXPIRED }));
            }
        }
        let store = &self.env.store;
        let ctx = store.delivery_context(claimed.id).await?;
        // An application event carries everything in its body: no account to read.
        let account = match ctx.account_id {
            Some(id) if operation != Operation::AppWebhook => store.account_facts(id).await?,
            _ => None,
        };
        if let Some(reason) = self
            .still_holds(claimed, operation, account.as_ref())
            .await?
        {
            return Ok(Prepared::Verdict(Verdict::Skip { reason }));
        }
        Ok(Prepared::Send(Box::new(Job {
            id: claimed.id,
            operation,
            key: claimed.idempotency_key.clone(),
            provider: claimed.provider.clone(),
            intent,
            source_id: claimed.source_id.clone(),
            attempt: u32::try_from(claimed.attempts).unwrap_or(1),
            created_at: claimed.created_at,
            notice: ctx.notice,
            account,
            due_at: ctx.due_at,
            app_body: ctx.app_body,
        })))
    }

    /// Why the intent no longer holds (`superseded`: the invoice or payment it is about
    /// succeeded since, the dispute was answered; `not_won`: a payment failed for an account
    /// that never paid), or `None`.
    async fn still_holds(
        &self,
        claimed: &Claimed,
        operation: Operation,
        account: Option<&AccountFacts>,
    ) -> Result<Option<&'static str>, StoreError> {
        let store = &self.env.store;
        let (p, id) = (claimed.provider.as_str(), claimed.source_id.as_str());
        match operation {
            Operation::EmailPaymentFailed | Operation::ChatPaymentFailed => {
                let invoice = store.object_status(p, ObjectKind::Invoice, id).await?;
                let payment = store.object_status(p, ObjectKind::Payment, id).await?;
                let subscription = store.object_status(p, ObjectKind::Subscription, id).await?;
                if invoice.as_deref() == Some("paid")
                    || payment.as_deref() == Some("succeeded")
                    || matches!(subscription.as_deref(), Some("active" | "trialing"))
                {
                    return Ok(Some("superseded"));
                }
                let won =
                    account.is_some_and(|a| a.payments.iter().any(|p| p.status == "succeeded"));
                if operation == Operation::ChatPaymentFailed && !won {
                    return Ok(Some("not_won"));
                }
            }
            Operation::ChatDisputeOpened => {
                let status = store.object_status(p, ObjectKind::Dispute, id).await?;
                if status.is_some_and(|s| !s.contains("needs_response")) {
                    return Ok(Some("superseded"));
                }
            }
            _ => {}
        }
        Ok(None)
    }
}

/// The skip reason the lane uses for deliveries past their destination's maximum age.
const EXPIRED: &str = "too_old";

enum Prepared {
    Send(Box<Job>),
    Verdict(Verdict),
}

/// Waits for a wake-up, `poll`, or `stop`.
async fn wait(conn: &mut LaneConnection, poll: Duration, stop: &Shutdown) {
    tokio::select! {
        _ = stop.wait() => {}
        _ = conn.wait(poll) => {}
    }
}

async fn pause(d: Duration, stop: &Shutdown) {
    tokio::select! {
        _ = stop.wait() => {}
        _ = tokio::time::sleep(d) => {}
    }
}
