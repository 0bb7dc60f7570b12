//! The contract between a lane and a destination: what is to be delivered ([`Job`]), what a
//! destination answers ([`Verdict`]), and the seam a new destination implements ([`Sender`]).

use std::time::Duration;

use futures::future::BoxFuture;
use paysync_domain::billing::AccountFacts;
use paysync_domain::intent::{Intent, Notice};
use paysync_domain::outbound::{Destination, Operation};
use time::OffsetDateTime;

/// One delivery to make, with everything needed to render it.
#[derive(Debug, Clone)]
pub struct Job {
    /// Delivery id (stable across retries: the email `Message-ID` is built from it).
    pub id: i64,
    /// What to do.
    pub operation: Operation,
    /// Unique per destination (the CRM's upsert keys are derived from the source, not this).
    pub key: String,
    /// The intent's provider (`stripe`).
    pub provider: String,
    /// The intent.
    pub intent: Intent,
    /// The object the intent is about (`pi_…`, `in_…`, `sub_…`, `dp_…`, `account:<id>`).
    pub source_id: String,
    /// This attempt's number (1 for the first).
    pub attempt: u32,
    /// When the intent was recorded.
    pub created_at: OffsetDateTime,
    /// What the message needs that the state does not keep (messages only).
    pub notice: Notice,
    /// The account as it is now, when the intent is linked to one.
    pub account: Option<AccountFacts>,
    /// A follow-up's due time (unix seconds), when it has one.
    pub due_at: Option<i64>,
    /// An application event's body (`app.webhook`): the exact text to sign and send, as
    /// stored. `None` for every other operation, or when its event row is missing.
    pub app_body: Option<String>,
}

/// What became of one attempt at a destination.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Delivered; the destination's id for what it created, if any.
    Sent {
        /// CRM record id, SMTP queue id.
        external_ref: Option<String>,
    },
    /// Not sent, on purpose: `no_recipient`, `superseded`, `not_won`.
    Skip {
        /// Why.
        reason: &'static str,
    },
    /// Not delivered.
    Failed(SendError),
}

/// A failed attempt: how to treat it, and what to tell operators.
#[derive(Debug, Clone, PartialEq)]
pub struct SendError {
    /// How the lane treats it.
    pub kind: FailureKind,
    /// HTTP status or SMTP reply code.
    pub status: Option<u16>,
    /// The vendor's short error code (`invalid_payload`, `VALIDATION_ERROR`, `5.1.1`,
    /// `timeout`): part of a dead delivery's fingerprint, so keep it low-cardinality.
    pub code: String,
    /// A human-readable excerpt, already redacted: never a URL with a secret, a token or a
    /// password. At most 2 KiB is stored.
    pub detail: String,
    /// The destination's `Retry-After`, when it sent one.
    pub retry_after: Option<Duration>,
}

/// How a failure is treated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FailureKind {
    /// The destination is sick (timeout, connection error, 5xx, SMTP 4xx): retry later with
    /// backoff; counts against the breaker. `ambiguous`: it may have been delivered (a timeout
    /// after the request or the SMTP DATA was sent).
    Transient {
        /// Whether it may have been delivered anyway.
        ambiguous: bool,
    },
    /// Throttled (429): pause the destination for `pause` (at least the `Retry-After`), the
    /// attempt not counted, the breaker not fed.
    RateLimited {
        /// How long to pause.
        pause: Duration,
    },
    /// A quota ran out (HubSpot `DAILY`): pause until it resets, like a rate limit.
    Quota {
        /// How long to pause.
        pause: Duration,
    },
    /// Our credentials or configuration are wrong (401, Slack `no_service`, `invalid_token`,
    /// `channel_not_found`): disable the destination until an operator resumes it; the item
    /// stays pending, its attempt not counted.
    Config,
    /// The destination refused this item (other 4xx, SMTP 5xx): dead, with a fingerprint.
    Payload,
}

impl SendError {
    /// A transient failure.
    pub fn transient(
        status: Option<u16>,
        code: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            kind: FailureKind::Transient { ambiguous: false },
            status,
            code: code.into(),
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// A failure of `kind`.
    pub fn new(
        kind: FailureKind,
        status: Option<u16>,
        code: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            status,
            code: code.into(),
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// With the destination's `Retry-After`.
    pub fn retry_after(mut self, after: Option<Duration>) -> Self {
        self.retry_after = after;
        self
    }
}

/// A destination: sends one job. Implementations classify every answer into a [`Verdict`]
/// themselves (they know their vendor's codes); the lane does the rest (leases, breaker, rate
/// limit, retries, pauses). A new destination is a new implementation plus its routes in
/// `paysync_domain::outbound`.
pub trait Sender: Send + Sync + 'static {
    /// Which destination this is.
    fn destination(&self) -> Destination;

    /// Makes one attempt. Calls `throttle.ready().await` before each request it makes to the
    /// destination (one job may take several: a CRM upsert of contact, deal and association).
    /// Must not panic and must finish within its own timeout (well under the lease).
    fn send<'a>(&'a self, job: &'a Job, throttle: &'a Throttle) -> BoxFuture<'a, Verdict>;
}

/// The destination's rate limit (a GCRA token bucket): every request waits its turn, and none
/// goes while the destination is paused (a 429 seen by any request pauses them all).
pub struct Throttle {
    bucket: governor::DefaultDirectRateLimiter,
    paused_until: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl Throttle {
    /// `per_second` requests a second on average, at most `burst` at once.
    pub fn new(per_second: f64, burst: u32) -> Self {
        let period = Duration::from_secs_f64(1.0 / per_second.max(1e-6));
        let quota = governor::Quota::with_period(period)
            .unwrap_or_else(|| governor::Quota::per_second(std::num::NonZeroU32::MIN))
            .allow_burst(std::num::NonZeroU32::new(burst).unwrap_or(std::num::NonZeroU32::MIN));
        Self {
            bucket: governor::RateLimiter::direct(quota),
            paused_until: std::sync::Mutex::new(None),
        }
    }

    /// No limit (tests of a sender on its own).
    pub fn unlimited() -> Self {
        Self::new(1e6, 1_000_000)
    }

    /// Holds every request for `d` from now (never shortening a longer pause).
    pub fn pause(&self, d: Duration) {
        let until = tokio::time::Instant::now() + d;
        let mut p = self
            .paused_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if p.is_none_or(|current| current < until) {
            *p = Some(until);
        }
    }

    /// Waits until a request may go: no pause, and a token. A pause that began while this
    /// request waited for its token holds it too.
    pub async fn ready(&self) {
        loop {
            while let Some(u) = self.paused() {
                tokio::time::sleep_until(u).await;
            }
            self.bucket.until_ready().await;
            if self.paused().is_none() {
                return;
            }
        }
    }

    fn paused(&self) -> Option<tokio::time::Instant> {
        let until = *self
            .paused_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        until.filter(|u| *u > tokio::time::Instant::now())
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn excerpt(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A `Retry-After` header's value: delay-seconds or an HTTP-date (RFC 9110 §10.2.3), as a
/// delay from `now`. `None` when absent or unparseable.
pub fn parse_retry_after(value: &str, now: OffsetDateTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = OffsetDateTime::parse(v, &time::format_description::well_known::Rfc2822).ok()?;
    let d = at - now;
    Some(if d.is_negative() {
        Duration::ZERO
    } else {
        d.unsigned_abs()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_cut_on_a_character_boundary() {
        assert_eq!(excerpt("abc", 5), "abc");
        assert_eq!(excerpt("abcdef", 3), "abc…");
        assert_eq!(excerpt("éé", 3), "é…");
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time");
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        let later = now + time::Duration::seconds(30);
        let date = later
            .format(&time::format_description::well_known::Rfc2822)
            .expect("format");
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }
}
