//! Backoff for throttled and failed Key Vault calls.
//!
//! Key Vault throttles per vault and per subscription and answers 429 with
//! `Retry-After`; 5xx and dropped connections are transient too. Each call
//! is retried with exponential backoff and "equal jitter" (half fixed, half
//! random, so concurrent Vault nodes spread out without ever retrying
//! immediately), never sooner than the service asked, and within a total
//! budget so a Vault request cannot hang behind an outage.
//!
//! The SDK's own retry policy is switched off: ours must run the
//! idempotency check between import attempts (see `client.rs`), and keeping
//! the policy a pure function makes its bounds testable.

use std::time::Duration;

/// Retry bounds for one logical Key Vault call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay after the first failure, before jitter.
    pub base: Duration,
    /// Largest delay computed from the exponent (Retry-After may ask more).
    pub max_delay: Duration,
    /// Total time a call may spend, including waits.
    pub budget: Duration,
    /// Most attempts, the first included.
    pub max_attempts: u32,
}

impl RetryPolicy {
    /// The production bounds with the given base delay: at most 8 attempts
    /// within 30 s, each backoff at most 8 s.
    pub fn with_base(base: Duration) -> Self {
        Self {
            base,
            max_delay: Duration::from_secs(8),
            budget: Duration::from_secs(30),
            max_attempts: 8,
        }
    }

    /// How long to wait after `failures` failed attempts (1 after the
    /// first) when `elapsed` has passed since the call started, or `None`
    /// to give up. `jitter` is uniform in [0, 1]; `retry_after` is what the
    /// service asked for.
    pub fn delay(
        &self,
        failures: u32,
        elapsed: Duration,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Option<Duration> {
        if failures == 0 || failures >= self.max_attempts {
            return None;
        }
        let exponent = failures.saturating_sub(1).min(30);
        let backoff = self
            .base
            .saturating_mul(1u32 << exponent)
            .min(self.max_delay);
        let jitter = jitter.clamp(0.0, 1.0);
        let jittered = backoff.mul_f64(0.5 + 0.5 * jitter);
        let wait = match retry_after {
            Some(asked) => jittered.max(asked),
            None => jittered,
        };
        if elapsed.saturating_add(wait) > self.budget {
            return None;
        }
        Some(wait)
    }
}

/// Parses a `Retry-After` value: delta-seconds, or an HTTP date relative
/// to `now` (RFC 9110 §10.2.3). Key Vault sends seconds.
pub fn parse_retry_after(value: &str, now: time::OffsetDateTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let date = time::PrimitiveDateTime::parse(value, &format)
        .ok()?
        .assume_utc();
    Some(Duration::try_from(date - now).unwrap_or(Duration::ZERO))
}

/// Parses the millisecond variants Azure services also send
/// (`retry-after-ms`, `x-ms-retry-after-ms`).
pub fn parse_retry_after_ms(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::with_base(Duration::from_millis(500))
    }

    #[test]
    fn delays_grow_exponentially_within_jitter_bounds() {
        let p = policy();
        for failures in 1..p.max_attempts {
            let full = Duration::from_millis(500 * (1 << (failures - 1))).min(p.max_delay);
            let low = p.delay(failures, Duration::ZERO, None, 0.0).unwrap();
            let high = p.delay(failures, Duration::ZERO, None, 1.0).unwrap();
            assert_eq!(low, full / 2, "failures={failures}");
            assert_eq!(high, full, "failures={failures}");
            let mid = p.delay(failures, Duration::ZERO, None, 0.3).unwrap();
            assert!(low <= mid && mid <= high);
        }
    }

    #[test]
    fn delays_are_capped() {
        let p = policy();
        assert_eq!(p.delay(7, Duration::ZERO, None, 1.0), Some(p.max_delay));
        // Large failure counts must not overflow.
        let big = RetryPolicy {
            max_attempts: u32::MAX,
            budget: Duration::MAX,
            ..p
        };
        assert_eq!(
            big.delay(1000, Duration::ZERO, None, 1.0),
            Some(p.max_delay)
        );
    }

    #[test]
    fn attempts_and_total_time_are_bounded() {
        let p = policy();
        assert_eq!(p.delay(0, Duration::ZERO, None, 0.5), None);
        assert_eq!(p.delay(p.max_attempts, Duration::ZERO, None, 0.5), None);
        assert_eq!(p.delay(1, Duration::from_secs(30), None, 0.0), None);
        // A whole sequence of maximal waits stays within the budget.
        let mut elapsed = Duration::ZERO;
        let mut failures = 0;
        while let Some(wait) = p.delay(failures + 1, elapsed, None, 1.0) {
            failures += 1;
            elapsed += wait;
        }
        assert!(elapsed <= p.budget, "{elapsed:?}");
        assert!(failures >= 4, "{failures}");
    }

    #[test]
    fn retry_after_is_a_minimum_and_counts_against_the_budget() {
        let p = policy();
        let asked = Duration::from_secs(3);
        assert_eq!(p.delay(1, Duration::ZERO, Some(asked), 1.0), Some(asked));
        // A shorter Retry-After does not shorten our own backoff.
        let d = p
            .delay(4, Duration::ZERO, Some(Duration::from_millis(10)), 1.0)
            .unwrap();
        assert_eq!(d, Duration::from_secs(4));
        // Waiting as asked would exceed the budget: give up instead.
        assert_eq!(p.delay(1, Duration::from_secs(28), Some(asked), 0.0), None);
        assert_eq!(
            p.delay(1, Duration::ZERO, Some(Duration::from_secs(31)), 0.0),
            None
        );
    }

    #[test]
    fn retry_after_values() {
        let now = time::macros::datetime!(2015-10-21 07:28:00 UTC);
        assert_eq!(parse_retry_after("1", now), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:05 GMT", now),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(
            parse_retry_after_ms("250"),
            Some(Duration::from_millis(250))
        );
    }
}
