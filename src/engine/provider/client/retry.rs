//! Retries for provider calls: one policy and one loop for every provider.
//!
//! Cloud KMS services throttle (Azure and AWS answer 429 or
//! `ThrottlingException`, often with `Retry-After`) and fail transiently
//! (5xx, dropped connections). Each logical call is retried with
//! exponential backoff and "equal jitter" (half fixed, half random, so that
//! concurrent Vault nodes spread out without ever retrying immediately),
//! never sooner than the service asked, and within an overall deadline per
//! call, so that a Vault request cannot hang behind an outage: the deadline
//! is well under the 90 s the server gives a request.
//!
//! What counts as transient is each provider's decision: its attempt
//! closure turns its SDK's error into a [`Failure`]. The SDKs' own retry
//! layers are switched off, so that this loop is the only one and can run
//! the providers' idempotency checks between attempts.

use std::future::Future;
use std::time::{Duration, Instant};

use super::{ApiError, ErrorClass};

/// Retry bounds for one logical provider call.
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

/// The default base delay of the backoff.
pub const DEFAULT_BASE: Duration = Duration::from_millis(500);

impl RetryPolicy {
    /// The production policy, with the base delay read from `variable` (in
    /// milliseconds) when it is set: the tests lower it so that
    /// fault-injection runs stay quick.
    pub fn from_env(variable: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, String> {
        match env(variable) {
            None => Ok(Self::with_base(DEFAULT_BASE)),
            Some(ms) => ms
                .trim()
                .parse::<u64>()
                .map(|ms| Self::with_base(Duration::from_millis(ms)))
                .map_err(|_| format!("{variable} must be a number of milliseconds")),
        }
    }
}

/// How one failed attempt continues.
#[derive(Debug)]
pub enum Failure<E> {
    /// Worth another attempt, no sooner than `retry_after` if given.
    Transient {
        /// What the service asked for.
        retry_after: Option<Duration>,
        /// Summary for the final error if retries run out. Never holds a
        /// secret: built from status codes and service messages only.
        detail: String,
    },
    /// No retry can help.
    Final(E),
}

/// Why a retried call stopped without success.
#[derive(Debug)]
pub enum Stop<E> {
    /// An attempt failed for good.
    Final(E),
    /// Transient failures outlasted the policy.
    GaveUp {
        /// Attempts made, the first included.
        attempts: u32,
        /// Time spent, waits included.
        elapsed: Duration,
        /// The last failure's detail.
        detail: String,
    },
}

/// Runs `attempt` until it succeeds, fails for good, or `policy` gives up.
/// `attempt` gets the number of failures so far, so that an import can
/// check for a lost earlier success before it sends again. `label` names
/// the provider and the call in the warning logged before each retry.
pub async fn run<T, E, F, Fut>(
    policy: &RetryPolicy,
    label: &str,
    mut attempt: F,
) -> Result<T, Stop<E>>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, Failure<E>>>,
{
    let start = Instant::now();
    let mut failures = 0u32;
    loop {
        let (retry_after, detail) = match attempt(failures).await {
            Ok(value) => return Ok(value),
            Err(Failure::Final(err)) => return Err(Stop::Final(err)),
            Err(Failure::Transient {
                retry_after,
                detail,
            }) => (retry_after, detail),
        };
        failures += 1;
        let jitter: f64 = rand::random();
        match policy.delay(failures, start.elapsed(), retry_after, jitter) {
            Some(wait) => {
                log::warn!(
                    "{label} failed (attempt {failures}), retrying in {} ms: {detail}",
                    wait.as_millis()
                );
                tokio::time::sleep(wait).await;
            }
            None => {
                return Err(Stop::GaveUp {
                    attempts: failures,
                    elapsed: start.elapsed(),
                    detail,
                });
            }
        }
    }
}

/// Runs one provider call under `policy`, retrying the failures whose class
/// is transient. Each attempt's duration goes to `observe` (for the share
/// of time spent waiting on the provider). After the retries ran out the
/// error is [`ErrorClass::Unavailable`] and says for how long it tried.
pub async fn call_api<T, F, Fut>(
    policy: &RetryPolicy,
    label: &str,
    mut attempt: F,
    observe: impl Fn(Duration),
) -> Result<T, ApiError>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
{
    let observe = &observe;
    let result = run(policy, label, |failures| {
        let attempt = attempt(failures);
        async move {
            let started = Instant::now();
            let result = attempt.await;
            observe(started.elapsed());
            crate::failpoints::hit(crate::failpoints::Site::ProviderCall);
            result.map_err(|err| {
                if err.class.transient() {
                    Failure::Transient {
                        retry_after: None,
                        detail: err.to_string(),
                    }
                } else {
                    Failure::Final(err)
                }
            })
        }
    })
    .await;
    match result {
        Ok(value) => Ok(value),
        Err(Stop::Final(err)) => Err(err),
        Err(Stop::GaveUp {
            attempts,
            elapsed,
            detail,
        }) => Err(ApiError::new(
            ErrorClass::Unavailable,
            "unavailable",
            &format!(
                "{detail} (gave up after {attempts} attempts over {} s)",
                elapsed.as_secs()
            ),
        )),
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

    #[tokio::test]
    async fn run_retries_transient_failures_only() {
        // Real time, so short delays.
        let p = RetryPolicy::with_base(Duration::from_millis(2));
        let mut seen = Vec::new();
        let result: Result<u32, Stop<&str>> = run(&p, "test call", |failures| {
            seen.push(failures);
            async move {
                if failures < 2 {
                    Err(Failure::Transient {
                        retry_after: None,
                        detail: "busy".into(),
                    })
                } else {
                    Ok(7)
                }
            }
        })
        .await;
        assert_eq!(result.unwrap(), 7);
        assert_eq!(seen, [0, 1, 2]);

        let mut calls = 0;
        let result: Result<(), Stop<&str>> = run(&p, "test call", |_| {
            calls += 1;
            async { Err(Failure::Final("no")) }
        })
        .await;
        assert!(matches!(result, Err(Stop::Final("no"))));
        assert_eq!(calls, 1, "a final failure is never retried");

        let started = tokio::time::Instant::now();
        let result: Result<(), Stop<&str>> = run(&p, "test call", |_| async {
            Err(Failure::Transient {
                retry_after: None,
                detail: "down".into(),
            })
        })
        .await;
        match result {
            Err(Stop::GaveUp {
                attempts, detail, ..
            }) => {
                assert!(attempts >= 4 && attempts <= p.max_attempts, "{attempts}");
                assert_eq!(detail, "down");
            }
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() <= p.budget);
    }

    #[test]
    fn base_from_the_environment() {
        let none = |_: &str| None;
        assert_eq!(
            RetryPolicy::from_env("X", &none).unwrap().base,
            DEFAULT_BASE
        );
        let set = |_: &str| Some("20".to_owned());
        assert_eq!(
            RetryPolicy::from_env("X", &set).unwrap().base,
            Duration::from_millis(20)
        );
        let bad = |_: &str| Some("fast".to_owned());
        assert!(RetryPolicy::from_env("X", &bad).unwrap_err().contains("X"));
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
