//! The console's sessions and its login limit, kept in the worker's memory.
//!
//! Rule of thumb: a session is a random id in an HttpOnly cookie and a CSRF token that every
//! state-changing form must echo; nothing about the admin token is stored in it. Sessions live in
//! this process only: behind several workers, operators keep to one (the admin listener is
//! per process anyway). Time is an argument, so the rules are tested without waiting.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use rand::RngCore;
use subtle::ConstantTimeEq;

/// A session ends after this long without a request.
pub const IDLE: Duration = Duration::from_secs(8 * 3600);
/// A session ends this long after the login, used or not.
pub const ABSOLUTE: Duration = Duration::from_secs(24 * 3600);
/// At most this many sessions; a new login ends the oldest beyond it.
pub const MAX_SESSIONS: usize = 256;
/// Failed logins allowed per client address within [`FAILURE_WINDOW`].
pub const MAX_FAILURES: usize = 5;
/// The window failed logins are counted in.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// 32 random bytes as hex, from the thread's CSPRNG.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// One operator's session.
#[derive(Debug, Clone)]
pub struct Session {
    /// The token its forms carry.
    pub csrf: String,
    /// A one-time notice for the next page ("Retried 12 dead letters").
    pub flash: Option<String>,
    started: Instant,
    seen: Instant,
}

/// The sessions of this process.
#[derive(Debug, Default)]
pub struct Sessions {
    by_id: HashMap<String, Session>,
}

impl Sessions {
    /// Starts a session; returns its id (the cookie's value).
    pub fn start(&mut self, now: Instant) -> String {
        self.by_id.retain(|_, s| alive(s, now));
        while self.by_id.len() >= MAX_SESSIONS {
            let Some(oldest) = self
                .by_id
                .iter()
                .min_by_key(|(_, s)| s.started)
                .map(|(id, _)| id.clone())
            else {
                break;
            };
            self.by_id.remove(&oldest);
        }
        let id = random_token();
        self.by_id.insert(
            id.clone(),
            Session {
                csrf: random_token(),
                flash: None,
                started: now,
                seen: now,
            },
        );
        id
    }

    /// The live session `id`, touched; an expired one is removed.
    pub fn touch(&mut self, id: &str, now: Instant) -> Option<&mut Session> {
        let live = self.by_id.get(id).is_some_and(|s| alive(s, now));
        if !live {
            self.by_id.remove(id);
            return None;
        }
        let session = self.by_id.get_mut(id)?;
        session.seen = now;
        Some(session)
    }

    /// Ends session `id`.
    pub fn end(&mut self, id: &str) {
        self.by_id.remove(id);
    }
}

fn alive(s: &Session, now: Instant) -> bool {
    now.saturating_duration_since(s.seen) < IDLE
        && now.saturating_duration_since(s.started) < ABSOLUTE
}

/// Whether `presented` equals `expected`, compared in constant time (a length mismatch is
/// refused without comparing): the admin token at login, a form's CSRF token.
pub fn same_secret(expected: &str, presented: &str) -> bool {
    presented.len() == expected.len() && bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))
}

/// Failed logins per client address in a sliding window.
#[derive(Debug, Default)]
pub struct LoginLimiter {
    failures: HashMap<IpAddr, VecDeque<Instant>>,
}

impl LoginLimiter {
    /// `Some(wait)` when `addr` has used up its failures: no attempt is checked until then.
    pub fn blocked(&mut self, addr: IpAddr, now: Instant) -> Option<Duration> {
        let recent = self.failures.get_mut(&addr)?;
        while recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= FAILURE_WINDOW)
        {
            recent.pop_front();
        }
        if recent.is_empty() {
            self.failures.remove(&addr);
            return None;
        }
        (recent.len() >= MAX_FAILURES).then(|| {
            let oldest = recent.front().copied().unwrap_or(now);
            FAILURE_WINDOW.saturating_sub(now.saturating_duration_since(oldest))
        })
    }

    /// Counts a failed attempt from `addr`.
    pub fn failed(&mut self, addr: IpAddr, now: Instant) {
        // Bounded: an address past its limit is refused before it can fail again.
        if self.failures.len() > 10_000 {
            self.failures.retain(|_, v| {
                v.back()
                    .is_some_and(|t| now.saturating_duration_since(*t) < FAILURE_WINDOW)
            });
        }
        self.failures.entry(addr).or_default().push_back(now);
    }

    /// A successful login from `addr` clears its failures.
    pub fn succeeded(&mut self, addr: IpAddr) {
        self.failures.remove(&addr);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const HOME: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 9));

    #[test]
    fn a_session_lives_until_idle_or_absolute_expiry_and_ends_on_logout() {
        let t0 = Instant::now();
        let mut s = Sessions::default();
        let id = s.start(t0);
        assert_eq!(id.len(), 64);
        assert!(s.touch(&id, t0 + IDLE - Duration::from_secs(1)).is_some());
        // Touched: idle counts again from there, but the absolute limit holds.
        let mut t = t0;
        while t + IDLE / 2 < t0 + ABSOLUTE {
            t += IDLE / 2;
            assert!(s.touch(&id, t).is_some(), "alive at {:?}", t - t0);
        }
        assert!(s.touch(&id, t0 + ABSOLUTE).is_none());
        assert!(s.touch(&id, t0).is_none(), "an expired session is gone");

        let id = s.start(t0);
        assert!(s.touch(&id, t0 + IDLE).is_none(), "idle too long");
        let id = s.start(t0);
        s.end(&id);
        assert!(s.touch(&id, t0).is_none());
        assert!(s.touch("not-a-session", t0).is_none());
    }

    #[test]
    fn sessions_are_distinct_bounded_and_check_their_own_csrf_token() {
        let t0 = Instant::now();
        let mut s = Sessions::default();
        let ids: Vec<String> = (0..MAX_SESSIONS + 3)
            .map(|i| s.start(t0 + Duration::from_millis(i as u64)))
            .collect();
        assert_eq!(s.by_id.len(), MAX_SESSIONS);
        assert!(s.touch(&ids[0], t0).is_none(), "the oldest made room");
        let last = ids.last().unwrap();
        let csrf = s.touch(last, t0).unwrap().csrf.clone();
        let other = s.touch(&ids[10], t0).unwrap().clone();
        assert_ne!(csrf, other.csrf);
        let session = s.touch(last, t0).unwrap().clone();
        assert!(same_secret(&session.csrf, &csrf));
        assert!(!same_secret(&session.csrf, &other.csrf));
        assert!(!same_secret(&session.csrf, ""));
        assert!(!same_secret(&session.csrf, &csrf[..63]));
    }

    #[test]
    fn five_failures_a_minute_block_that_address_only_until_the_oldest_ages_out() {
        let t0 = Instant::now();
        let mut l = LoginLimiter::default();
        for i in 0..MAX_FAILURES {
            assert_eq!(l.blocked(HOME, t0), None, "attempt {i}");
            l.failed(HOME, t0 + Duration::from_secs(i as u64));
        }
        let now = t0 + Duration::from_secs(10);
        assert_eq!(l.blocked(HOME, now), Some(Duration::from_secs(50)));
        assert_eq!(
            l.blocked(OTHER, now),
            None,
            "another address is not blocked"
        );
        // The first failure ages out at t0 + 60 s: one more attempt is allowed.
        assert_eq!(l.blocked(HOME, t0 + FAILURE_WINDOW), None);
        l.failed(HOME, t0 + FAILURE_WINDOW);
        assert!(l.blocked(HOME, t0 + FAILURE_WINDOW).is_some());
        l.succeeded(HOME);
        assert_eq!(l.blocked(HOME, t0 + FAILURE_WINDOW), None);
    }
}
