//! The broker retry schedule: exponential backoff with multiplicative jitter, capped.
//!
//! `delay(k) = min(max_delay, base × factor^(k-1)) × (1 - jitter + 2·jitter·u)` for the k-th
//! failed attempt, with `u` uniform in `[0, 1)` supplied by the caller; `None` once `k` reaches
//! `max_attempts` (the message goes to the dead-letter queue). Pure, so it can be
//! property-tested; the worker draws `u` with `rand`.
//!
//! [`RetryPolicy::validate`] holds the schedule's own rules, whoever built the policy; whether
//! the longest delay fits the broker's delay levels is the worker's rule (it knows both).

use std::time::Duration;

/// Retry schedule parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Delay after the first failure, before jitter.
    pub base: Duration,
    /// Growth factor per further failure (≥ 1).
    pub factor: f64,
    /// Cap on the delay before jitter.
    pub max_delay: Duration,
    /// Relative jitter in `[0, 1)`: the delay is scaled by a factor in `[1 - j, 1 + j)`.
    pub jitter: f64,
    /// Total attempts, the first included; after the last one fails, dead-letter.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    /// 10 s × 3^(k-1), capped at 6 h, ±20 %, 12 attempts: about 27 h of retries in all, well
    /// inside the 3 days Stripe itself would have kept retrying.
    fn default() -> Self {
        Self {
            base: Duration::from_secs(10),
            factor: 3.0,
            max_delay: Duration::from_secs(6 * 3600),
            jitter: 0.2,
            max_attempts: 12,
        }
    }
}

/// A retry policy that makes no sense.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RetryPolicyError {
    /// `base` is zero or above `max_delay`.
    #[error("retry base must be positive and at most the max delay")]
    Base,
    /// `factor` below 1 or not finite.
    #[error("retry factor must be a finite number ≥ 1")]
    Factor,
    /// `jitter` outside `[0, 1)`.
    #[error("retry jitter must be in [0, 1)")]
    Jitter,
    /// `max_attempts` is zero.
    #[error("retry max attempts must be at least 1")]
    MaxAttempts,
}

impl RetryPolicy {
    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), RetryPolicyError> {
        if self.base.is_zero() || self.base > self.max_delay {
            return Err(RetryPolicyError::Base);
        }
        if !self.factor.is_finite() || self.factor < 1.0 {
            return Err(RetryPolicyError::Factor);
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(RetryPolicyError::Jitter);
        }
        if self.max_attempts == 0 {
            return Err(RetryPolicyError::MaxAttempts);
        }
        Ok(())
    }

    /// The longest delay the schedule can produce, in seconds: the cap scaled by the largest
    /// jitter factor, `max_delay × (1 + jitter)`.
    pub fn longest_delay_secs(&self) -> f64 {
        self.max_delay.as_secs_f64() * (1.0 + self.jitter)
    }

    /// The delay before jitter after the `failed_attempt`-th failure (1-based).
    pub fn nominal(&self, failed_attempt: u32) -> Duration {
        let exp = failed_attempt.saturating_sub(1).min(1_000) as i32;
        let secs = self.base.as_secs_f64() * self.factor.powi(exp);
        let max = self.max_delay.as_secs_f64();
        Duration::from_secs_f64(if secs.is_finite() { secs.min(max) } else { max })
    }

    /// The delay before the next attempt after the `failed_attempt`-th attempt failed, or
    /// `None` when that was the last allowed attempt. `unit` is a uniform random number in
    /// `[0, 1)` (clamped into it).
    pub fn delay(&self, failed_attempt: u32, unit: f64) -> Option<Duration> {
        if failed_attempt >= self.max_attempts {
            return None;
        }
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0 - f64::EPSILON)
        } else {
            0.5
        };
        let scale = 1.0 - self.jitter + 2.0 * self.jitter * unit;
        Some(self.nominal(failed_attempt).mul_f64(scale))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> impl Strategy<Value = RetryPolicy> {
        (
            1u64..120,
            1.0f64..5.0,
            1u64..100_000,
            0.0f64..0.99,
            1u32..30,
        )
            .prop_map(
                |(base, factor, max_extra, jitter, max_attempts)| RetryPolicy {
                    base: Duration::from_secs(base),
                    factor,
                    max_delay: Duration::from_secs(base + max_extra),
                    jitter,
                    max_attempts,
                },
            )
    }

    #[test]
    fn default_schedule_is_valid_and_as_documented() {
        let p = RetryPolicy::default();
        p.validate().unwrap();
        let secs: Vec<u64> = (1..12).map(|k| p.nominal(k).as_secs()).collect();
        assert_eq!(
            secs,
            [10, 30, 90, 270, 810, 2430, 7290, 21600, 21600, 21600, 21600]
        );
        assert_eq!(p.delay(12, 0.5), None);
    }

    #[test]
    fn invalid_policies_are_refused() {
        let ok = RetryPolicy::default();
        assert_eq!(
            RetryPolicy {
                base: Duration::ZERO,
                ..ok
            }
            .validate(),
            Err(RetryPolicyError::Base)
        );
        assert_eq!(
            RetryPolicy { factor: 0.5, ..ok }.validate(),
            Err(RetryPolicyError::Factor)
        );
        assert_eq!(
            RetryPolicy { jitter: 1.0, ..ok }.validate(),
            Err(RetryPolicyError::Jitter)
        );
        assert_eq!(
            RetryPolicy {
                max_attempts: 0,
                ..ok
            }
            .validate(),
            Err(RetryPolicyError::MaxAttempts)
        );
        assert_eq!(
            RetryPolicy {
                max_delay: Duration::from_secs(5),
                ..ok
            }
            .validate(),
            Err(RetryPolicyError::Base),
            "a base above the cap"
        );
        assert_eq!(
            RetryPolicy {
                factor: f64::INFINITY,
                ..ok
            }
            .validate(),
            Err(RetryPolicyError::Factor)
        );
        assert_eq!(
            RetryPolicy { jitter: -0.1, ..ok }.validate(),
            Err(RetryPolicyError::Jitter)
        );
    }

    #[test]
    fn the_longest_delay_is_the_cap_with_the_largest_jitter() {
        let p = RetryPolicy::default();
        assert!((p.longest_delay_secs() - 21_600.0 * 1.2).abs() < 1e-6);
    }

    proptest! {
        #[test]
        fn nominal_delays_never_decrease_and_respect_the_cap(p in policy()) {
            let mut last = Duration::ZERO;
            for k in 1..p.max_attempts + 5 {
                let d = p.nominal(k);
                prop_assert!(d >= last, "k={k}: {d:?} < {last:?}");
                prop_assert!(d <= p.max_delay);
                last = d;
            }
        }

        #[test]
        fn jittered_delay_lies_within_its_bounds(p in policy(), k in 1u32..40, u in 0.0f64..1.0) {
            match p.delay(k, u) {
                None => prop_assert!(k >= p.max_attempts),
                Some(d) => {
                    prop_assert!(k < p.max_attempts);
                    let n = p.nominal(k).as_secs_f64();
                    let d = d.as_secs_f64();
                    prop_assert!(d >= n * (1.0 - p.jitter) - 1e-6, "{d} below {n}");
                    prop_assert!(d <= n * (1.0 + p.jitter) + 1e-6, "{d} above {n}");
                    prop_assert!(d <= p.max_delay.as_secs_f64() * (1.0 + p.jitter) + 1e-6);
                    prop_assert!(d <= p.longest_delay_secs() + 1e-6);
                }
            }
        }

        #[test]
        fn no_delay_after_the_last_attempt(p in policy(), extra in 0u32..100, u in 0.0f64..1.0) {
            prop_assert_eq!(p.delay(p.max_attempts + extra, u), None);
        }
    }
}
