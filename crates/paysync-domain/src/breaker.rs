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

    /// The open time after trip number `trips` (1-based), jittered by `unit`.
    pub fn open_for(&self, trips: u32, unit: f64) -> Duration {
        let exp = trips.saturating_sub(1).min(30) as i32;
        let nominal =
            (self.base_open.as_secs_f64() * 2f64.powi(exp)).min(self.max_open.as_secs_f64());
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0 - f64::EPSILON)
        } else {
            0.5
        };
        Duration::from_secs_f64(nominal * (1.0 - self.jitter + 2.0 * self.jitter * unit))
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

/// A counted outcome.
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

/// A circuit breaker.
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
    /// A closed breaker.
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

    /// The probe admitted was never made: the next admit may probe again.
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

    /// Records a counted outcome at `now`; the transition it caused, if any.
    pub fn record(&mut self, now: Duration, outcome: Outcome, unit: f64) -> Option<Transition> {
        let from = self.state_name();
        let failed = outcome == Outcome::Failure;
        match self.state {
            BreakerState::Closed => {
                self.consecutive = if failed { self.consecutive + 1 } else { 0 };
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
            until: now + self.policy.open_for(self.trips, unit),
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

    fn exact() -> BreakerPolicy {
        BreakerPolicy {
            jitter: 0.0,
            ..BreakerPolicy::default()
        }
    }

    #[test]
    fn the_defaults_are_valid_and_each_bad_parameter_is_refused() {
        BreakerPolicy::default().validate().expect("valid");
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
                    failure_ratio: 0.0,
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
                    base_open: Duration::ZERO,
                    ..d()
                },
                BreakerPolicyError::Open,
            ),
            (
                BreakerPolicy {
                    base_open: secs(700),
                    ..d()
                },
                BreakerPolicyError::Open,
            ),
            (
                BreakerPolicy { jitter: 1.0, ..d() },
                BreakerPolicyError::Jitter,
            ),
        ];
        for (p, e) in bad {
            assert_eq!(p.validate(), Err(e));
        }
    }

    #[test]
    fn consecutive_failures_trip_it_and_a_success_resets_the_count() {
        let mut b = Breaker::new(exact());
        for _ in 0..4 {
            assert_eq!(b.record(secs(1), Outcome::Failure, 0.5), None);
        }
        b.record(secs(1), Outcome::Success, 0.5);
        for _ in 0..4 {
            b.record(secs(2), Outcome::Failure, 0.5);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        let t = b.record(secs(2), Outcome::Failure, 0.5);
        assert_eq!(
            t,
            Some(Transition {
                from: "closed",
                to: "open"
            })
        );
        assert_eq!(b.state(), BreakerState::Open { until: secs(32) });
        assert_eq!(
            b.admit(secs(31)),
            Admit::No {
                until: Some(secs(32))
            }
        );
    }

    #[test]
    fn a_failure_ratio_trips_it_once_enough_calls_are_in() {
        let mut b = Breaker::new(exact());
        // Alternate: never 5 in a row, but half of the window failed.
        for i in 0..9 {
            let o = if i % 2 == 0 {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            b.record(secs(1), o, 0.5);
        }
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "9 calls: below the minimum"
        );
        b.record(secs(1), Outcome::Success, 0.5);
        b.record(secs(1), Outcome::Failure, 0.5);
        assert!(matches!(b.state(), BreakerState::Open { .. }));
    }

    #[test]
    fn half_open_admits_exactly_one_probe_and_its_outcome_decides() {
        let mut b = Breaker::new(exact());
        for _ in 0..5 {
            b.record(secs(0), Outcome::Failure, 0.5);
        }
        assert_eq!(b.admit(secs(30)), Admit::Probe);
        assert_eq!(b.state_name(), "half_open");
        assert_eq!(b.admit(secs(30)), Admit::No { until: None });
        assert_eq!(b.admit(secs(99)), Admit::No { until: None });
        // The probe failed: open again, twice as long.
        let t = b.record(secs(31), Outcome::Failure, 0.5);
        assert_eq!(
            t,
            Some(Transition {
                from: "half_open",
                to: "open"
            })
        );
        assert_eq!(b.state(), BreakerState::Open { until: secs(91) });
        assert_eq!(b.trips(), 2);
        assert_eq!(b.admit(secs(91)), Admit::Probe);
        let t = b.record(secs(92), Outcome::Success, 0.5);
        assert_eq!(
            t,
            Some(Transition {
                from: "half_open",
                to: "closed"
            })
        );
        assert_eq!(b.trips(), 0);
        assert_eq!(b.admit(secs(92)), Admit::Yes);
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_admit_probe() {
        let mut b = Breaker::new(exact());
        for _ in 0..5 {
            b.record(secs(0), Outcome::Failure, 0.5);
        }
        assert_eq!(b.admit(secs(40)), Admit::Probe);
        b.probe_abandoned();
        assert_eq!(b.admit(secs(40)), Admit::Probe);
    }

    #[test]
    fn open_time_doubles_to_its_cap_and_is_jittered() {
        let p = exact();
        let open: Vec<u64> = (1..=7).map(|k| p.open_for(k, 0.5).as_secs()).collect();
        assert_eq!(open, [30, 60, 120, 240, 480, 600, 600]);
        let j = BreakerPolicy::default();
        assert_eq!(j.open_for(1, 0.0), secs(24));
        assert!(j.open_for(1, 0.999_999) < secs(36));
    }

    #[test]
    fn forcing_overrides_and_auto_hands_back() {
        let mut b = Breaker::new(exact());
        b.force(Forced::Open);
        assert_eq!(b.admit(secs(0)), Admit::No { until: None });
        assert_eq!(b.state_name(), "forced_open");
        b.force(Forced::Auto);
        assert_eq!(b.admit(secs(0)), Admit::Yes);
        for _ in 0..5 {
            b.record(secs(0), Outcome::Failure, 0.5);
        }
        b.force(Forced::Closed);
        assert_eq!(b.admit(secs(1)), Admit::Yes);
        assert_eq!(b.state_name(), "forced_closed");
        b.force(Forced::Auto);
        assert_eq!(b.state_name(), "open");
    }

    #[test]
    fn it_round_trips_through_json() {
        let mut b = Breaker::new(BreakerPolicy::default());
        for _ in 0..5 {
            b.record(secs(10), Outcome::Failure, 0.3);
        }
        let json = serde_json::to_value(&b).expect("encode");
        let back: Breaker = serde_json::from_value(json).expect("decode");
        assert_eq!(back, b);
    }

    #[derive(Debug, Clone)]
    enum Step {
        Admit(u64),
        Record(u64, bool, f64),
        Abandon,
        Force(u8),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u64..5_000).prop_map(Step::Admit),
            (0u64..5_000, any::<bool>(), 0.0f64..1.0).prop_map(|(t, f, u)| Step::Record(t, f, u)),
            Just(Step::Abandon),
            (0u8..3).prop_map(Step::Force),
        ]
    }

    proptest! {
        #[test]
        fn never_two_probes_and_open_times_stay_in_bounds(steps in proptest::collection::vec(step(), 1..200)) {
            let p = BreakerPolicy::default();
            let mut b = Breaker::new(p.clone());
            let mut now = Duration::ZERO;
            let mut probes_out = 0u32;
            for s in steps {
                match s {
                    Step::Admit(dt) => {
                        now += Duration::from_millis(dt * 20);
                        match b.admit(now) {
                            Admit::Probe => {
                                probes_out += 1;
                                prop_assert!(probes_out <= 1, "two probes in flight");
                            }
                            Admit::Yes => prop_assert!(
                                b.forced() == Forced::Closed || b.state() == BreakerState::Closed
                            ),
                            Admit::No { until } => {
                                if let Some(u) = until { prop_assert!(u > now); }
                            }
                        }
                    }
                    Step::Record(dt, failed, unit) => {
                        now += Duration::from_millis(dt);
                        let trips = b.trips();
                        let was_half_open = matches!(b.state(), BreakerState::HalfOpen { .. });
                        let outcome = if failed { Outcome::Failure } else { Outcome::Success };
                        b.record(now, outcome, unit);
                        if was_half_open { probes_out = 0; }
                        match b.state() {
                            // A trip just now: open for a bounded, positive time.
                            BreakerState::Open { until } if b.trips() > trips => {
                                prop_assert!(until > now);
                                let d = until - now;
                                prop_assert!(d >= p.base_open.mul_f64(1.0 - p.jitter));
                                prop_assert!(d <= p.max_open.mul_f64(1.0 + p.jitter));
                            }
                            BreakerState::Open { .. } => prop_assert_eq!(b.trips(), trips),
                            BreakerState::Closed => prop_assert!(b.trips() == 0 || b.trips() == trips),
                            BreakerState::HalfOpen { .. } => {}
                        }
                        prop_assert!(b.trips() >= trips || b.state() == BreakerState::Closed);
                    }
                    Step::Abandon => {
                        if matches!(b.state(), BreakerState::HalfOpen { probe_in_flight: true }) {
                            probes_out = 0;
                        }
                        b.probe_abandoned();
                    }
                    Step::Force(f) => b.force(match f { 0 => Forced::Auto, 1 => Forced::Open, _ => Forced::Closed }),
                }
            }
        }
    }
}
