//! A destination's circuit breaker, as a pure state machine.
//!
//! Closed → open on `consecutive_failures` counted failures in a row, or when at least
//! `failure_ratio` of the last `window` outcomes failed once `min_calls` are in. Open for
//! `min(base_open · 2^(trips−1), max_open)`, jittered, then half-open: exactly **one** probe is
//! admitted; its success closes the breaker (and forgets the trips), its failure opens it again
//! for longer. Operators can force it open or closed.
//!
//! Only counted outcomes are fed to it: a 429, a quota, a configuration or a payload error say
//! nothing about the destination's health and are handled elsewhere (a pause, a disabled
//! destination, a dead item). Time is a `Duration` since any fixed epoch the caller picks;
//! jitter takes a uniform `unit` in `[0, 1)`.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// When the breaker trips and for how long it stays open.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreakerPolicy {
    /// Trip on this many consecutive counted failures.
    pub consecutive_failures: u32,
    /// The last outcomes the failure ratio is taken over.
    pub window: u32,
    /// The ratio counts only once this many outcomes are in the window.
    pub min_calls: u32,
    /// Trip when at least this share of the window failed.
    pub failure_ratio: f64,
    /// Open time after the first trip.
    pub base_open: Duration,
    /// Cap on the open time.
    pub max_open: Duration,
    /// The open time is scaled by a factor in `[1 − jitter, 1 + jitter)`.
    pub jitter: f64,
}

impl Default for BreakerPolicy {
    /// 5 in a row, or half of the last 20 once 10 are in; open 30 s doubling up to 10 min,
    /// ±20 % (a few hundred sends an hour would take hours to fill a window of 100).
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            window: 20,
            min_calls: 10,
            failure_ratio: 0.5,
            base_open: Duration::from_secs(30),
            max_open: Duration::from_secs(600),
            jitter: 0.2,
        }
    }
}

/// A breaker policy that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BreakerPolicyError {
    /// `consecutive_failures` is zero.
    #[error("breaker: consecutive failures must be at least 1")]
    Consecutive,
    /// `min_calls` is zero or above `window`.
    #[error("breaker: minimum calls must be between 1 and the window size")]
    Window,
    /// `failure_ratio` outside `(0, 1]`.
    #[error("breaker: failure ratio must be in (0, 1]")]
    Ratio,
    /// `base_open` zero or above `max_open`.
    #[error("breaker: the base open time must be positive and at most the maximum")]
    Open,
    /// `jitter` outside `[0, 1)`.
    #[error("breaker: jitter must be in [0, 1)")]
    Jitter,
}

impl BreakerPolicy {
    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), BreakerPolicyError> {
        if self.consecutive_failures == 0 {
            return Err(BreakerPolicyError::Consecutive);
        }
        if self.min_calls == 0 || self.min_calls > self.window {
            return Err(BreakerPolicyError::Window);
        }
        if !(self.failure_ratio > 0.0 && self.failure_ratio <= 1.0) {
            return Err(BreakerPolicyError::Ratio);
        }
        if self.base_open.is_zero() || self.base_open > self.max_open {
            return Err(BreakerPolicyError::Open);
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(BreakerPolicyError::Jitter);
        }
        Ok(())
    }

    /// The open time after trip number `trips` (1-based; 0 counts as 1), jittered by `unit`:
    /// `min(base_open · 2^(trips−1), max_open) × (1 − jitter + 2·jitter·unit)`.
    ///
    /// `unit` is clamped into `[0, 1)` (0.5 when not finite). Never panics, whatever the
    /// policy: an invalid jitter counts as none, the result is at least a nanosecond and
    /// saturates at `Duration::MAX`.
    pub fn open_for(&self, trips: u32, unit: f64) -> Duration {
        // 2^127 exceeds Duration::MAX / 1 ns, so every base reaches the cap.
        let exp = trips.saturating_sub(1).min(127) as i32;
        let nominal =
            (self.base_open.as_secs_f64() * 2f64.powi(exp)).min(self.max_open.as_secs_f64());
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0 - f64::EPSILON)
        } else {
            0.5
        };
        let jitter = if (0.0..1.0).contains(&self.jitter) {
            self.jitter
        } else {
            0.0
        };
        let secs = nominal * (1.0 - jitter + 2.0 * jitter * unit);
        Duration::try_from_secs_f64(secs)
            .unwrap_or(Duration::MAX)
            .max(Duration::from_nanos(1))
    }
}

/// The breaker's own state (an operator's override is kept beside it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Nothing goes through until `until`.
    Open {
        /// When it turns half-open.
        until: Duration,
    },
    /// One probe may go through.
    HalfOpen {
        /// Whether the probe is out.
        probe_in_flight: bool,
    },
}

/// An operator's override.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Forced {
    /// The breaker decides.
    Auto,
    /// Nothing goes through.
    Open,
    /// Everything goes through.
    Closed,
}

/// Whether a call may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Yes.
    Yes,
    /// Yes, as the half-open breaker's single probe: report its outcome, or
    /// [`Breaker::probe_abandoned`] if it was never made.
    Probe,
    /// No; look again at `until` (`None`: when something changes, e.g. forced open or a probe
    /// in flight).
    No {
        /// When it may admit again.
        until: Option<Duration>,
    },
}

/// A counted outcome: one that says whether the destination is healthy.
///
/// A 429, a quota, a configuration or a payload error is not an outcome: do not record it
/// (if the call was the probe, call [`Breaker::probe_abandoned`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The destination did its job.
    Success,
    /// The destination is sick (timeout, connection error, 5xx).
    Failure,
}

/// A state change, by state name (see [`Breaker::state_name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The state before.
    pub from: &'static str,
    /// The state after.
    pub to: &'static str,
}

/// A circuit breaker. It serializes (policy included) so its owner can persist it and the
/// next owner carry on where it stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Breaker {
    policy: BreakerPolicy,
    state: BreakerState,
    forced: Forced,
    /// Consecutive counted failures (closed).
    consecutive: u32,
    /// The last outcomes (true = failure), at most `window`.
    window: VecDeque<bool>,
    /// Trips since the last close.
    trips: u32,
}

impl Breaker {
    /// A closed breaker, not forced, no trips. The policy is taken as is: check it with
    /// [`BreakerPolicy::validate`] first (an invalid one makes odd decisions, never a panic).
    pub fn new(policy: BreakerPolicy) -> Self {
        Self {
            policy,
            state: BreakerState::Closed,
            forced: Forced::Auto,
            consecutive: 0,
            window: VecDeque::new(),
            trips: 0,
        }
    }

    /// The policy it runs by.
    pub fn policy(&self) -> &BreakerPolicy {
        &self.policy
    }

    /// Runs by `policy` from now on, keeping the state: e.g. a saved breaker loaded under a
    /// changed configuration. The window is cut to the new size; the new thresholds apply
    /// from the next outcome, the new open times from the next trip.
    pub fn set_policy(&mut self, policy: BreakerPolicy) {
        while self.window.len() > policy.window as usize {
            self.window.pop_front();
        }
        self.policy = policy;
    }

    /// Its own state.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// The operator's override.
    pub fn forced(&self) -> Forced {
        self.forced
    }

    /// Trips since it last closed.
    pub fn trips(&self) -> u32 {
        self.trips
    }

    /// `closed`, `open`, `half_open`, `forced_open` or `forced_closed`.
    pub fn state_name(&self) -> &'static str {
        match (self.forced, self.state) {
            (Forced::Open, _) => "forced_open",
            (Forced::Closed, _) => "forced_closed",
            (Forced::Auto, BreakerState::Closed) => "closed",
            (Forced::Auto, BreakerState::Open { .. }) => "open",
            (Forced::Auto, BreakerState::HalfOpen { .. }) => "half_open",
        }
    }

    /// Sets the operator's override (`Auto` hands control back in the state it was in).
    pub fn force(&mut self, forced: Forced) {
        self.forced = forced;
    }

    /// Whether a call may go now.
    ///
    /// - Forced open: `No { until: None }`; forced closed: `Yes`, whatever the state.
    /// - Closed: `Yes`.
    /// - Open before `until`: `No { until: Some(until) }`.
    /// - Open from `until` on, or half-open with no probe out: turns half-open with the probe
    ///   out and answers `Probe`.
    /// - Half-open with the probe out: `No { until: None }`. No time is given because the
    ///   answer changes when the probe is settled ([`record`](Self::record) or
    ///   [`probe_abandoned`](Self::probe_abandoned)), not at a time; a caller polls.
    pub fn admit(&mut self, now: Duration) -> Admit {
        match self.forced {
            Forced::Open => return Admit::No { until: None },
            Forced::Closed => return Admit::Yes,
            Forced::Auto => {}
        }
        match self.state {
            BreakerState::Closed => Admit::Yes,
            BreakerState::Open { until } if now < until => Admit::No { until: Some(until) },
            BreakerState::Open { .. }
            | BreakerState::HalfOpen {
                probe_in_flight: false,
            } => {
                self.state = BreakerState::HalfOpen {
                    probe_in_flight: true,
                };
                Admit::Probe
            }
            BreakerState::HalfOpen {
                probe_in_flight: true,
            } => Admit::No { until: None },
        }
    }

    /// The probe admitted was never made (no work, rate-limited, lease lost) or its outcome
    /// is not counted: the next admit may probe again. No effect unless a probe is out.
    pub fn probe_abandoned(&mut self) {
        if let BreakerState::HalfOpen {
            probe_in_flight: true,
        } = self.state
        {
            self.state = BreakerState::HalfOpen {
                probe_in_flight: false,
            };
        }
    }

    /// Records a counted outcome at `now`; the transition it caused, if any (by
    /// [`state_name`](Self::state_name), so none while forced). `unit` jitters the open time
    /// if this trips the breaker.
    ///
    /// - Closed: a success resets the consecutive count; a failure trips the breaker when it
    ///   makes `consecutive_failures` in a row, or when at least `failure_ratio` of the last
    ///   `window` outcomes failed with `min_calls` in. A trip opens it for
    ///   [`BreakerPolicy::open_for`]`(trips)` and clears the count and the window.
    /// - Half-open: the probe's outcome (the breaker cannot tell calls apart, so any outcome
    ///   settles it): a success closes it (trips back to 0, window cleared), a failure opens
    ///   it again for the next, longer time.
    /// - Open: ignored, a late outcome of a call admitted before the trip.
    ///
    /// Outcomes are recorded while forced too, so the breaker's own state stays current.
    pub fn record(&mut self, now: Duration, outcome: Outcome, unit: f64) -> Option<Transition> {
        let from = self.state_name();
        let failed = outcome == Outcome::Failure;
        match self.state {
            BreakerState::Closed => {
                self.consecutive = if failed {
                    self.consecutive.saturating_add(1)
                } else {
                    0
                };
                self.window.push_back(failed);
                while self.window.len() > self.policy.window as usize {
                    self.window.pop_front();
                }
                if failed
                    && (self.consecutive >= self.policy.consecutive_failures
                        || self.ratio_tripped())
                {
                    self.trip(now, unit);
                }
            }
            BreakerState::HalfOpen { .. } => {
                if failed {
                    self.trip(now, unit);
                } else {
                    self.close();
                }
            }
            // A late outcome of a call admitted before the trip: the trip already counted it.
            BreakerState::Open { .. } => {}
        }
        let to = self.state_name();
        (from != to).then_some(Transition { from, to })
    }

    fn ratio_tripped(&self) -> bool {
        let n = self.window.len();
        if n < self.policy.min_calls as usize {
            return false;
        }
        let failures = self.window.iter().filter(|f| **f).count();
        failures as f64 / n as f64 >= self.policy.failure_ratio
    }

    fn trip(&mut self, now: Duration, unit: f64) {
        self.trips = self.trips.saturating_add(1);
        self.state = BreakerState::Open {
            until: now.saturating_add(self.policy.open_for(self.trips, unit)),
        };
        self.consecutive = 0;
        self.window.clear();
    }

    fn close(&mut self) {
        self.state = BreakerState::Closed;
        self.trips = 0;
        self.consecutive = 0;
        self.window.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// The defaults without jitter, so open times are exact.
    fn exact() -> BreakerPolicy {
        BreakerPolicy {
            jitter: 0.0,
            ..BreakerPolicy::default()
        }
    }

    /// Only the window decides (the consecutive rule is out of reach).
    fn ratio_only(window: u32, min_calls: u32, failure_ratio: f64) -> BreakerPolicy {
        BreakerPolicy {
            consecutive_failures: 1_000,
            window,
            min_calls,
            failure_ratio,
            ..exact()
        }
    }

    /// Only the consecutive rule decides (the ratio needs every call of a full window failed).
    fn consecutive_only(n: u32) -> BreakerPolicy {
        BreakerPolicy {
            consecutive_failures: n,
            window: 1_000,
            min_calls: 1_000,
            failure_ratio: 1.0,
            ..exact()
        }
    }

    fn feed(b: &mut Breaker, now: Duration, outcomes: &str) {
        for c in outcomes.chars() {
            let o = match c {
                'F' => Outcome::Failure,
                'S' => Outcome::Success,
                _ => panic!("outcome {c:?}"),
            };
            b.record(now, o, 0.5);
        }
    }

    fn is_open(b: &Breaker) -> bool {
        matches!(b.state(), BreakerState::Open { .. })
    }

    /// A breaker with the exact defaults, tripped once at `at` (open until `at + 30 s`).
    fn tripped(at: Duration) -> Breaker {
        let mut b = Breaker::new(exact());
        feed(&mut b, at, "FFFFF");
        assert_eq!(
            b.state(),
            BreakerState::Open {
                until: at + secs(30)
            }
        );
        b
    }

    fn t(from: &'static str, to: &'static str) -> Option<Transition> {
        Some(Transition { from, to })
    }

    #[test]
    fn the_defaults_are_the_documented_ones_and_valid() {
        let p = BreakerPolicy::default();
        assert_eq!(p.consecutive_failures, 5);
        assert_eq!(p.window, 20);
        assert_eq!(p.min_calls, 10);
        assert_eq!(p.failure_ratio, 0.5);
        assert_eq!(p.base_open, secs(30));
        assert_eq!(p.max_open, secs(600));
        assert_eq!(p.jitter, 0.2);
        p.validate().expect("the defaults are valid");
    }

    #[test]
    fn each_bad_parameter_is_refused() {
        let d = BreakerPolicy::default;
        let bad = [
            (
                BreakerPolicy {
                    consecutive_failures: 0,
                    ..d()
                },
                BreakerPolicyError::Consecutive,
            ),
            (
                BreakerPolicy {
                    min_calls: 0,
                    ..d()
                },
                BreakerPolicyError::Window,
            ),
            (
                BreakerPolicy {
                    min_calls: 21,
                    ..d()
                },
                BreakerPolicyError::Window,
            ),
            (
                BreakerPolicy {
                    window: 0,
                    min_calls: 0,
                    ..d()
                },
                BreakerPolicyError::Window,
            ),
            (
                BreakerPolicy {
                    failure_ratio: 0.0,
                    ..d()
                },
                BreakerPolicyError::Ratio,
            ),
            (
                BreakerPolicy {
                    failure_ratio: 1.01,
                    ..d()
                },
                BreakerPolicyError::Ratio,
            ),
            (
                BreakerPolicy {
                    failure_ratio: f64::NAN,
                    ..d()
                },
                BreakerPolicyError::Ratio,
            ),
            (
                BreakerPolicy {
                    failure_ratio: f64::INFINITY,
                    ..d()
                },
                BreakerPolicyError::Ratio,
            ),
            (
                BreakerPolicy {
                    base_open: Duration::ZERO,
                    ..d()
                },
                BreakerPolicyError::Open,
            ),
            (
                BreakerPolicy {
                    base_open: secs(601),
                    ..d()
                },
                BreakerPolicyError::Open,
            ),
            (
                BreakerPolicy { jitter: 1.0, ..d() },
                BreakerPolicyError::Jitter,
            ),
            (
                BreakerPolicy {
                    jitter: -0.01,
                    ..d()
                },
                BreakerPolicyError::Jitter,
            ),
            (
                BreakerPolicy {
                    jitter: f64::NAN,
                    ..d()
                },
                BreakerPolicyError::Jitter,
            ),
        ];
        for (p, e) in bad {
            assert_eq!(p.validate(), Err(e), "{p:?}");
        }
    }

    #[test]
    fn the_edges_of_each_parameter_are_accepted() {
        let d = BreakerPolicy::default;
        let good = [
            BreakerPolicy {
                consecutive_failures: 1,
                ..d()
            },
            BreakerPolicy {
                min_calls: 20,
                ..d()
            },
            BreakerPolicy {
                window: 1,
                min_calls: 1,
                ..d()
            },
            BreakerPolicy {
                failure_ratio: 1.0,
                ..d()
            },
            BreakerPolicy {
                failure_ratio: 1e-9,
                ..d()
            },
            BreakerPolicy {
                base_open: secs(600),
                ..d()
            },
            BreakerPolicy {
                base_open: Duration::from_nanos(1),
                ..d()
            },
            BreakerPolicy { jitter: 0.0, ..d() },
            BreakerPolicy {
                jitter: 0.999,
                ..d()
            },
        ];
        for p in good {
            assert_eq!(p.validate(), Ok(()), "{p:?}");
        }
    }

    #[test]
    fn each_error_message_names_its_parameter() {
        let cases = [
            (BreakerPolicyError::Consecutive, "consecutive failures"),
            (BreakerPolicyError::Window, "window"),
            (BreakerPolicyError::Ratio, "failure ratio"),
            (BreakerPolicyError::Open, "open time"),
            (BreakerPolicyError::Jitter, "jitter"),
        ];
        for (e, words) in cases {
            let msg = e.to_string();
            assert!(msg.starts_with("breaker: "), "{msg}");
            assert!(msg.contains(words), "{msg} should mention {words}");
        }
    }

    #[test]
    fn a_new_breaker_is_closed_unforced_and_admits() {
        let mut b = Breaker::new(BreakerPolicy::default());
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.forced(), Forced::Auto);
        assert_eq!(b.trips(), 0);
        assert_eq!(b.state_name(), "closed");
        assert_eq!(b.admit(secs(0)), Admit::Yes);
        assert_eq!(b.record(secs(0), Outcome::Success, 0.5), None);
        assert_eq!(b.record(secs(0), Outcome::Failure, 0.5), None);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn consecutive_failures_trip_it_and_a_success_resets_the_count() {
        let mut b = Breaker::new(exact());
        for _ in 0..4 {
            assert_eq!(b.record(secs(1), Outcome::Failure, 0.5), None);
        }
        assert_eq!(b.record(secs(1), Outcome::Success, 0.5), None);
        for _ in 0..4 {
            assert_eq!(b.record(secs(2), Outcome::Failure, 0.5), None);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(
            b.record(secs(2), Outcome::Failure, 0.5),
            t("closed", "open")
        );
        assert_eq!(b.state(), BreakerState::Open { until: secs(32) });
        assert_eq!(b.trips(), 1);
        assert_eq!(b.state_name(), "open");
    }

    #[test]
    fn a_success_in_closed_zeroes_the_run_of_failures() {
        let mut b = Breaker::new(consecutive_only(3));
        feed(&mut b, secs(0), "FFSFFSFFS");
        assert_eq!(b.state(), BreakerState::Closed, "never three in a row");
        assert_eq!(b.consecutive, 0);
        feed(&mut b, secs(0), "FF");
        assert_eq!(b.consecutive, 2);
        feed(&mut b, secs(0), "F");
        assert!(is_open(&b));
    }

    #[test]
    fn a_single_failure_trips_a_breaker_of_one() {
        let mut b = Breaker::new(consecutive_only(1));
        assert_eq!(
            b.record(secs(5), Outcome::Failure, 0.5),
            t("closed", "open")
        );
        assert_eq!(b.state(), BreakerState::Open { until: secs(35) });
    }

    #[test]
    fn the_ratio_counts_only_once_min_calls_are_in_and_trips_at_the_threshold() {
        let mut b = Breaker::new(ratio_only(10, 10, 0.5));
        feed(&mut b, secs(0), "SSSSSFFFF");
        assert_eq!(b.state(), BreakerState::Closed, "9 calls: below min");
        assert_eq!(
            b.record(secs(0), Outcome::Failure, 0.5),
            t("closed", "open"),
            "5 of 10 is exactly the ratio"
        );

        let mut b = Breaker::new(ratio_only(10, 10, 0.5));
        feed(&mut b, secs(0), "SSSSSSFFFF");
        assert_eq!(b.state(), BreakerState::Closed, "4 of 10 is below");
    }

    #[test]
    fn the_default_ratio_trips_on_alternating_failures() {
        let mut b = Breaker::new(exact());
        feed(&mut b, secs(1), "FSFSFSFSF");
        assert_eq!(b.state(), BreakerState::Closed, "9 calls");
        feed(&mut b, secs(1), "S");
        assert_eq!(b.state(), BreakerState::Closed, "a success never trips");
        feed(&mut b, secs(1), "F");
        assert!(is_open(&b), "6 of 11");
    }

    #[test]
    fn a_success_never_trips_even_above_the_ratio() {
        let mut b = Breaker::new(ratio_only(4, 4, 0.5));
        feed(&mut b, secs(0), "FFFS");
        assert_eq!(b.state(), BreakerState::Closed, "3 of 4, but a success");
        feed(&mut b, secs(0), "F");
        assert!(is_open(&b));
    }

    #[test]
    fn the_window_forgets_old_outcomes() {
        // Old successes slide out: 3 of the last 4 failed (3 of all 7 would not trip).
        let mut b = Breaker::new(ratio_only(4, 4, 0.75));
        feed(&mut b, secs(0), "SSSSFF");
        assert_eq!(b.state(), BreakerState::Closed);
        feed(&mut b, secs(0), "F");
        assert!(is_open(&b));

        // Old failures slide out: 2 of the last 4 (4 of all 6 would trip).
        let mut b = Breaker::new(ratio_only(4, 4, 0.6));
        feed(&mut b, secs(0), "FFFSSF");
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.window.len(), 4);
    }

    #[test]
    fn a_trip_forgets_the_run_and_the_window() {
        let mut b = tripped(secs(0));
        assert_eq!(b.consecutive, 0);
        assert!(b.window.is_empty());
        assert_eq!(b.admit(secs(30)), Admit::Probe);
        assert_eq!(
            b.record(secs(30), Outcome::Success, 0.5),
            t("half_open", "closed")
        );
        assert!(b.window.is_empty());
        feed(&mut b, secs(31), "FFFF");
        assert_eq!(b.state(), BreakerState::Closed, "a fresh run of failures");
    }

    #[test]
    fn open_refuses_until_its_time_then_turns_half_open_with_one_probe() {
        let mut b = tripped(secs(100));
        let until = secs(130);
        assert_eq!(b.admit(secs(100)), Admit::No { until: Some(until) });
        assert_eq!(
            b.admit(until - Duration::from_nanos(1)),
            Admit::No { until: Some(until) }
        );
        assert_eq!(b.state_name(), "open");
        assert_eq!(b.admit(until), Admit::Probe);
        assert_eq!(
            b.state(),
            BreakerState::HalfOpen {
                probe_in_flight: true
            }
        );
        assert_eq!(b.state_name(), "half_open");
        assert_eq!(b.admit(until), Admit::No { until: None });
        assert_eq!(b.admit(until + secs(3_600)), Admit::No { until: None });
    }

    #[test]
    fn a_late_admit_after_the_open_time_still_probes_once() {
        let mut b = tripped(secs(0));
        assert_eq!(b.admit(secs(86_400)), Admit::Probe);
        assert_eq!(b.admit(secs(86_400)), Admit::No { until: None });
    }

    #[test]
    fn a_failed_probe_reopens_for_longer_each_time_up_to_the_cap() {
        let p = exact();
        let mut b = tripped(secs(0));
        let mut opens = vec![secs(30)];
        for k in 2..=8u32 {
            let BreakerState::Open { until } = b.state() else {
                panic!("open expected, got {:?}", b.state());
            };
            let mut now = until;
            assert_eq!(b.admit(now), Admit::Probe);
            now += secs(1);
            assert_eq!(b.record(now, Outcome::Failure, 0.5), t("half_open", "open"));
            assert_eq!(b.trips(), k);
            let BreakerState::Open { until } = b.state() else {
                panic!("open expected");
            };
            assert_eq!(until - now, p.open_for(k, 0.5));
            opens.push(until - now);
        }
        let opens: Vec<u64> = opens.iter().map(Duration::as_secs).collect();
        assert_eq!(opens, [30, 60, 120, 240, 480, 600, 600, 600]);
    }

    #[test]
    fn a_successful_probe_closes_and_forgets_the_trips() {
        let mut b = tripped(secs(0));
        assert_eq!(b.admit(secs(30)), Admit::Probe);
        b.record(secs(31), Outcome::Failure, 0.5);
        assert_eq!(b.trips(), 2);
        assert_eq!(b.admit(secs(91)), Admit::Probe);
        assert_eq!(
            b.record(secs(92), Outcome::Success, 0.5),
            t("half_open", "closed")
        );
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.trips(), 0);
        assert_eq!(b.admit(secs(92)), Admit::Yes);
        // The next trip starts again at the base open time.
        feed(&mut b, secs(100), "FFFFF");
        assert_eq!(b.state(), BreakerState::Open { until: secs(130) });
        assert_eq!(b.trips(), 1);
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_admit_probe() {
        let mut b = tripped(secs(0));
        assert_eq!(b.admit(secs(40)), Admit::Probe);
        b.probe_abandoned();
        assert_eq!(
            b.state(),
            BreakerState::HalfOpen {
                probe_in_flight: false
            }
        );
        assert_eq!(b.state_name(), "half_open");
        assert_eq!(b.trips(), 1, "abandoning is no verdict");
        assert_eq!(b.admit(secs(40)), Admit::Probe);
        assert_eq!(b.admit(secs(40)), Admit::No { until: None });
    }

    #[test]
    fn abandoning_without_a_probe_out_changes_nothing() {
        let mut closed = Breaker::new(exact());
        feed(&mut closed, secs(0), "FF");
        let before = closed.clone();
        closed.probe_abandoned();
        assert_eq!(closed, before);

        let mut open = tripped(secs(0));
        let before = open.clone();
        open.probe_abandoned();
        assert_eq!(open, before);

        let mut idle = tripped(secs(0));
        idle.admit(secs(30));
        idle.probe_abandoned();
        let before = idle.clone();
        idle.probe_abandoned();
        assert_eq!(idle, before);
    }

    #[test]
    fn an_outcome_while_half_open_without_a_probe_out_still_decides() {
        let mut b = tripped(secs(0));
        b.admit(secs(30));
        b.probe_abandoned();
        assert_eq!(
            b.record(secs(31), Outcome::Success, 0.5),
            t("half_open", "closed")
        );

        let mut b = tripped(secs(0));
        b.admit(secs(30));
        b.probe_abandoned();
        assert_eq!(
            b.record(secs(31), Outcome::Failure, 0.5),
            t("half_open", "open")
        );
        assert_eq!(b.trips(), 2);
    }

    #[test]
    fn outcomes_while_open_are_ignored() {
        let mut b = tripped(secs(0));
        let before = b.clone();
        assert_eq!(b.record(secs(1), Outcome::Failure, 0.9), None);
        assert_eq!(b.record(secs(2), Outcome::Success, 0.1), None);
        assert_eq!(b, before);
    }

    #[test]
    fn open_time_doubles_to_its_cap_and_is_jittered() {
        let p = exact();
        let open: Vec<u64> = (1..=7).map(|k| p.open_for(k, 0.5).as_secs()).collect();
        assert_eq!(open, [30, 60, 120, 240, 480, 600, 600]);
        assert_eq!(p.open_for(0, 0.5), secs(30), "0 counts as the first trip");
        assert_eq!(p.open_for(u32::MAX, 0.5), secs(600));
        let j = BreakerPolicy::default();
        assert_eq!(j.open_for(1, 0.0), secs(24));
        assert_eq!(j.open_for(1, 0.5), secs(30));
        assert!(j.open_for(1, 0.999_999) < secs(36));
        assert!(j.open_for(1, 0.999_999) > secs(35));
        assert_eq!(j.open_for(9, 0.0), secs(480));
        assert!(j.open_for(9, 0.999_999) < secs(720));
    }

    #[test]
    fn the_jitter_unit_is_clamped() {
        let j = BreakerPolicy::default();
        assert_eq!(j.open_for(1, -3.0), j.open_for(1, 0.0));
        assert_eq!(
            j.open_for(1, f64::NEG_INFINITY),
            secs(30),
            "not finite: 0.5"
        );
        assert_eq!(j.open_for(1, f64::NAN), secs(30));
        assert_eq!(j.open_for(1, f64::INFINITY), secs(30));
        let top = j.open_for(1, 1.0 - f64::EPSILON);
        assert_eq!(j.open_for(1, 7.0), top);
        assert_eq!(j.open_for(1, 1.0), top);
        assert!(top <= secs(36));
    }

    #[test]
    fn odd_policies_give_odd_times_but_never_panic() {
        let huge = BreakerPolicy {
            base_open: Duration::MAX,
            max_open: Duration::MAX,
            jitter: 0.9,
            ..BreakerPolicy::default()
        };
        assert_eq!(huge.open_for(u32::MAX, 0.99), Duration::MAX);
        let zero = BreakerPolicy {
            base_open: Duration::ZERO,
            max_open: Duration::ZERO,
            ..BreakerPolicy::default()
        };
        assert_eq!(zero.open_for(3, 0.0), Duration::from_nanos(1));
        let nan = BreakerPolicy {
            jitter: f64::NAN,
            ..BreakerPolicy::default()
        };
        assert_eq!(nan.open_for(1, 0.0), secs(30), "an invalid jitter is none");
        let wide = BreakerPolicy {
            jitter: 5.0,
            ..BreakerPolicy::default()
        };
        assert_eq!(wide.open_for(2, 0.0), secs(60));
        let tiny = BreakerPolicy {
            base_open: Duration::from_nanos(1),
            max_open: secs(1_000_000),
            jitter: 0.0,
            ..BreakerPolicy::default()
        };
        assert_eq!(
            tiny.open_for(100, 0.5),
            secs(1_000_000),
            "the cap is reached"
        );

        // A trip at the end of time saturates instead of overflowing.
        let mut b = Breaker::new(huge);
        feed(&mut b, Duration::MAX - secs(1), "FFFFF");
        assert_eq!(
            b.state(),
            BreakerState::Open {
                until: Duration::MAX
            }
        );
    }

    #[test]
    fn forced_open_admits_nothing_and_keeps_counting() {
        let mut b = Breaker::new(exact());
        b.force(Forced::Open);
        assert_eq!(b.forced(), Forced::Open);
        assert_eq!(b.state_name(), "forced_open");
        assert_eq!(b.admit(secs(0)), Admit::No { until: None });
        // Outcomes of calls admitted before still count, without a visible transition.
        for _ in 0..5 {
            assert_eq!(b.record(secs(1), Outcome::Failure, 0.5), None);
        }
        assert_eq!(b.state(), BreakerState::Open { until: secs(31) });
        assert_eq!(b.admit(secs(9_999)), Admit::No { until: None });
        assert_eq!(
            b.state(),
            BreakerState::Open { until: secs(31) },
            "no probe"
        );
        b.force(Forced::Auto);
        assert_eq!(b.state_name(), "open");
        assert_eq!(b.admit(secs(9_999)), Admit::Probe);
    }

    #[test]
    fn forced_closed_admits_everything_and_auto_hands_back() {
        let mut b = tripped(secs(0));
        b.force(Forced::Closed);
        assert_eq!(b.forced(), Forced::Closed);
        assert_eq!(b.state_name(), "forced_closed");
        assert_eq!(b.admit(secs(1)), Admit::Yes);
        assert_eq!(b.admit(secs(1)), Admit::Yes);
        assert_eq!(b.state(), BreakerState::Open { until: secs(30) });
        b.force(Forced::Auto);
        assert_eq!(b.state_name(), "open");
        assert_eq!(
            b.admit(secs(1)),
            Admit::No {
                until: Some(secs(30))
            }
        );
        assert_eq!(b.admit(secs(30)), Admit::Probe);

        // Forced closed while a probe is out: every call goes, and an outcome settles it.
        b.force(Forced::Closed);
        assert_eq!(b.admit(secs(30)), Admit::Yes);
        assert_eq!(b.record(secs(31), Outcome::Success, 0.5), None);
        b.force(Forced::Auto);
        assert_eq!(b.state_name(), "closed");
    }

    #[test]
    fn forcing_and_unforcing_changes_only_the_override() {
        let mut b = tripped(secs(0));
        let before = b.clone();
        for f in [Forced::Open, Forced::Closed, Forced::Open, Forced::Auto] {
            b.force(f);
            b.admit(secs(500));
            if f == Forced::Auto {
                break;
            }
        }
        assert_eq!(b.trips(), before.trips());
        assert_eq!(b.forced(), Forced::Auto);
        // The admit after Auto found the open time over.
        assert_eq!(
            b.state(),
            BreakerState::HalfOpen {
                probe_in_flight: true
            }
        );
    }

    #[test]
    fn it_round_trips_through_json() {
        let mut b = Breaker::new(BreakerPolicy::default());
        feed(&mut b, secs(10), "SFFFFF");
        b.force(Forced::Closed);
        let json = serde_json::to_value(&b).expect("encode");
        let back: Breaker = serde_json::from_value(json).expect("decode");
        assert_eq!(back, b);
    }

    #[test]
    fn the_persisted_json_keeps_its_shape() {
        let mut b = Breaker::new(exact());
        feed(&mut b, secs(0), "SF");
        let json = serde_json::to_value(&b).expect("encode");
        let want = serde_json::json!({
            "policy": {
                "consecutive_failures": 5,
                "window": 20,
                "min_calls": 10,
                "failure_ratio": 0.5,
                "base_open": {"secs": 30, "nanos": 0},
                "max_open": {"secs": 600, "nanos": 0},
                "jitter": 0.0
            },
            "state": "Closed",
            "forced": "Auto",
            "consecutive": 1,
            "window": [false, true],
            "trips": 0
        });
        assert_eq!(json, want);
        let open = serde_json::to_value(tripped(secs(1)).state()).expect("encode");
        assert_eq!(
            open,
            serde_json::json!({"Open": {"until": {"secs": 31, "nanos": 0}}})
        );
        let half = serde_json::to_value(BreakerState::HalfOpen {
            probe_in_flight: true,
        })
        .expect("encode");
        assert_eq!(
            half,
            serde_json::json!({"HalfOpen": {"probe_in_flight": true}})
        );
    }

    #[test]
    fn a_new_policy_keeps_the_state_and_applies_from_the_next_outcome() {
        let mut b = Breaker::new(exact());
        feed(&mut b, secs(0), "SSFSFFF");
        b.set_policy(BreakerPolicy {
            consecutive_failures: 3,
            window: 4,
            min_calls: 4,
            failure_ratio: 1.0,
            ..exact()
        });
        assert_eq!(b.policy().consecutive_failures, 3);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.consecutive, 3, "kept");
        assert_eq!(
            b.window.iter().copied().collect::<Vec<_>>(),
            [false, true, true, true],
            "cut to the last 4"
        );
        feed(&mut b, secs(0), "S");
        assert_eq!(b.state(), BreakerState::Closed);
        feed(&mut b, secs(0), "FF");
        assert_eq!(b.state(), BreakerState::Closed);
        feed(&mut b, secs(0), "F");
        assert_eq!(b.state(), BreakerState::Open { until: secs(30) });

        // An open time already running is kept; the next trip uses the new times.
        b.set_policy(BreakerPolicy {
            base_open: secs(5),
            max_open: secs(5),
            ..exact()
        });
        assert_eq!(b.state(), BreakerState::Open { until: secs(30) });
        assert_eq!(b.admit(secs(30)), Admit::Probe);
        b.record(secs(30), Outcome::Failure, 0.5);
        assert_eq!(b.state(), BreakerState::Open { until: secs(35) });
    }

    #[test]
    fn a_saved_window_longer_than_the_policy_is_cut_on_the_next_outcome() {
        let mut json = serde_json::to_value(Breaker::new(ratio_only(4, 4, 0.75))).expect("encode");
        json["window"] = serde_json::json!([true, true, true, true, false, false, false]);
        let mut b: Breaker = serde_json::from_value(json).expect("decode");
        feed(&mut b, secs(0), "S");
        assert_eq!(b.window.len(), 4);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    // ---- properties -------------------------------------------------------------------------

    fn policy() -> impl Strategy<Value = BreakerPolicy> {
        (
            1u32..8,
            1u32..30,
            0.05f64..=1.0,
            1u64..60,
            0u64..600,
            0.0f64..0.99,
        )
            .prop_flat_map(|(consecutive, window, ratio, base, extra, jitter)| {
                (1..=window).prop_map(move |min_calls| BreakerPolicy {
                    consecutive_failures: consecutive,
                    window,
                    min_calls,
                    failure_ratio: ratio,
                    base_open: secs(base),
                    max_open: secs(base + extra),
                    jitter,
                })
            })
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// Admit after this many milliseconds.
        Admit(u64),
        /// Record after this many milliseconds: failed?, jitter unit.
        Record(u64, bool, f64),
        Abandon,
        Force(Forced),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0u64..120_000).prop_map(Step::Admit),
            6 => (0u64..5_000, any::<bool>(), 0.0f64..1.0)
                .prop_map(|(t, f, u)| Step::Record(t, f, u)),
            1 => Just(Step::Abandon),
            1 => prop_oneof![Just(Forced::Auto), Just(Forced::Open), Just(Forced::Closed)]
                .prop_map(Step::Force),
        ]
    }

    /// What `admit` must answer, from the state before it.
    fn expected_admit(b: &Breaker, now: Duration) -> Admit {
        match (b.forced(), b.state()) {
            (Forced::Open, _) => Admit::No { until: None },
            (Forced::Closed, _) | (Forced::Auto, BreakerState::Closed) => Admit::Yes,
            (Forced::Auto, BreakerState::Open { until }) if now < until => {
                Admit::No { until: Some(until) }
            }
            (
                Forced::Auto,
                BreakerState::Open { .. }
                | BreakerState::HalfOpen {
                    probe_in_flight: false,
                },
            ) => Admit::Probe,
            (
                Forced::Auto,
                BreakerState::HalfOpen {
                    probe_in_flight: true,
                },
            ) => Admit::No { until: None },
        }
    }

    fn expected_name(b: &Breaker) -> &'static str {
        match (b.forced(), b.state()) {
            (Forced::Open, _) => "forced_open",
            (Forced::Closed, _) => "forced_closed",
            (Forced::Auto, BreakerState::Closed) => "closed",
            (Forced::Auto, BreakerState::Open { .. }) => "open",
            (Forced::Auto, BreakerState::HalfOpen { .. }) => "half_open",
        }
    }

    /// Runs `steps` on a breaker with `p`, checking every invariant after each step.
    fn run(p: &BreakerPolicy, steps: &[Step]) -> Result<Breaker, TestCaseError> {
        let mut b = Breaker::new(p.clone());
        let mut now = Duration::ZERO;
        let mut probes_out = 0u32;
        // A model of the closed window: the outcomes since the last trip or close.
        let mut seen: Vec<bool> = Vec::new();
        let mut run_of_failures = 0u32;
        for s in steps {
            match *s {
                Step::Admit(dt) => {
                    now += Duration::from_millis(dt);
                    let want = expected_admit(&b, now);
                    let before = b.clone();
                    let got = b.admit(now);
                    prop_assert_eq!(got, want);
                    match got {
                        Admit::Probe => {
                            probes_out += 1;
                            prop_assert!(probes_out <= 1, "two probes in flight");
                            prop_assert_eq!(b.trips(), before.trips());
                        }
                        Admit::No { until: Some(u) } => {
                            prop_assert!(u > now);
                            prop_assert_eq!(&b, &before);
                        }
                        Admit::Yes | Admit::No { until: None } => prop_assert_eq!(&b, &before),
                    }
                }
                Step::Record(dt, failed, unit) => {
                    now += Duration::from_millis(dt);
                    let before = b.clone();
                    let outcome = if failed {
                        Outcome::Failure
                    } else {
                        Outcome::Success
                    };
                    let transition = b.record(now, outcome, unit);
                    let (from, to) = (before.state_name(), b.state_name());
                    prop_assert_eq!(transition, (from != to).then_some(Transition { from, to }));
                    match (before.state(), b.state()) {
                        (BreakerState::Closed, BreakerState::Closed) => {
                            prop_assert!(!failed || b.consecutive > 0);
                            if !failed {
                                prop_assert_eq!(b.consecutive, 0, "a success resets the run");
                            }
                            prop_assert_eq!(b.trips(), before.trips());
                        }
                        (
                            BreakerState::Closed | BreakerState::HalfOpen { .. },
                            BreakerState::Open { until },
                        ) => {
                            prop_assert!(failed);
                            prop_assert_eq!(b.trips(), before.trips() + 1);
                            prop_assert!(until > now, "open until {until:?} at {now:?}");
                            let open = until - now;
                            prop_assert_eq!(open, p.open_for(b.trips(), unit));
                            prop_assert!(open >= p.base_open.mul_f64(1.0 - p.jitter));
                            prop_assert!(open <= p.max_open.mul_f64(1.0 + p.jitter));
                        }
                        (BreakerState::HalfOpen { .. }, BreakerState::Closed) => {
                            prop_assert!(!failed);
                            prop_assert_eq!(b.trips(), 0);
                        }
                        (BreakerState::Open { .. }, after) => {
                            prop_assert_eq!(&b, &before, "{:?} while open", after);
                        }
                        (x, y) => prop_assert!(false, "{x:?} → {y:?} on a record"),
                    }
                    if before.state() == BreakerState::Closed {
                        seen.push(failed);
                        run_of_failures = if failed { run_of_failures + 1 } else { 0 };
                        let last = &seen[seen.len().saturating_sub(p.window as usize)..];
                        let failures = last.iter().filter(|f| **f).count();
                        let ratio = last.len() >= p.min_calls as usize
                            && failures as f64 / last.len() as f64 >= p.failure_ratio;
                        let trip = failed && (run_of_failures >= p.consecutive_failures || ratio);
                        prop_assert_eq!(
                            is_open(&b),
                            trip,
                            "window {:?}, run {}",
                            last,
                            run_of_failures
                        );
                    }
                    if matches!(before.state(), BreakerState::HalfOpen { .. }) {
                        probes_out = 0;
                    }
                    if b.state() != BreakerState::Closed {
                        seen.clear();
                        run_of_failures = 0;
                    }
                }
                Step::Abandon => {
                    if b.state()
                        == (BreakerState::HalfOpen {
                            probe_in_flight: true,
                        })
                    {
                        probes_out = 0;
                    }
                    let trips = b.trips();
                    b.probe_abandoned();
                    prop_assert_eq!(b.trips(), trips);
                }
                Step::Force(f) => {
                    let before = b.clone();
                    b.force(f);
                    prop_assert_eq!(b.forced(), f);
                    prop_assert_eq!(b.state(), before.state());
                    prop_assert_eq!(b.trips(), before.trips());
                }
            }
            // Invariants after every step.
            let probe_out = b.state()
                == BreakerState::HalfOpen {
                    probe_in_flight: true,
                };
            prop_assert_eq!(probes_out, u32::from(probe_out));
            prop_assert_eq!(b.state_name(), expected_name(&b));
            prop_assert!(b.window.len() <= p.window as usize);
            prop_assert!(b.consecutive < p.consecutive_failures);
            prop_assert_eq!(b.state() == BreakerState::Closed, b.trips() == 0);
        }
        Ok(b)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn random_runs_keep_every_invariant(
            p in policy(),
            steps in proptest::collection::vec(step(), 1..300),
        ) {
            let b = run(&p, &steps)?;
            let json = serde_json::to_string(&b).expect("encode");
            let mut back: Breaker = serde_json::from_str(&json).expect("decode");
            // serde_json (without `float_roundtrip`) may be one ulp off on the policy's floats.
            prop_assert!((back.policy.jitter - b.policy.jitter).abs() <= 1e-12);
            prop_assert!((back.policy.failure_ratio - b.policy.failure_ratio).abs() <= 1e-12);
            back.policy.jitter = b.policy.jitter;
            back.policy.failure_ratio = b.policy.failure_ratio;
            prop_assert_eq!(back, b);
        }

        #[test]
        fn random_runs_with_the_defaults_keep_every_invariant(
            steps in proptest::collection::vec(step(), 1..300),
        ) {
            run(&BreakerPolicy::default(), &steps)?;
        }

        #[test]
        fn a_forced_breaker_admits_by_the_override_alone_and_auto_resumes(
            p in policy(),
            steps in proptest::collection::vec(step(), 0..100),
            admits in proptest::collection::vec(0u64..10_000_000, 1..20),
            open_first in any::<bool>(),
        ) {
            let mut b = run(&p, &steps)?;
            b.force(Forced::Auto);
            let before = b.clone();
            let order = if open_first {
                [Forced::Open, Forced::Closed]
            } else {
                [Forced::Closed, Forced::Open]
            };
            for f in order {
                b.force(f);
                for &ms in &admits {
                    let want = if f == Forced::Open { Admit::No { until: None } } else { Admit::Yes };
                    prop_assert_eq!(b.admit(Duration::from_millis(ms)), want);
                }
            }
            b.force(Forced::Auto);
            prop_assert_eq!(&b, &before, "forced admits leave the breaker as it was");
            let at = Duration::from_millis(admits[0]);
            let want = expected_admit(&b, at);
            prop_assert_eq!(b.admit(at), want);
        }

        #[test]
        fn open_times_grow_with_trips_and_unit_and_stay_in_bounds(
            p in policy(),
            k in 1u32..200,
            u in 0.0f64..1.0,
            v in 0.0f64..1.0,
        ) {
            let d = p.open_for(k, u);
            prop_assert!(d >= p.base_open.mul_f64(1.0 - p.jitter));
            prop_assert!(d <= p.max_open.mul_f64(1.0 + p.jitter));
            prop_assert!(p.open_for(k + 1, u) >= d);
            let (lo, hi) = if u <= v { (u, v) } else { (v, u) };
            prop_assert!(p.open_for(k, lo) <= p.open_for(k, hi));
        }

        #[test]
        fn open_for_never_panics(
            base in any::<u64>(),
            base_nanos in 0u32..1_000_000_000,
            max in any::<u64>(),
            jitter in any::<f64>(),
            k in any::<u32>(),
            u in any::<f64>(),
        ) {
            let p = BreakerPolicy {
                base_open: Duration::new(base, base_nanos),
                max_open: Duration::from_secs(max),
                jitter,
                ..BreakerPolicy::default()
            };
            prop_assert!(p.open_for(k, u) > Duration::ZERO);
        }
    }
}
