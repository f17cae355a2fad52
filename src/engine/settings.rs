//! Engine settings read from the server's environment when a mount starts.
//!
//! They are the operator's, not an API caller's: how hard the engine may
//! push a provider, and a test-only lower bound for rotation schedules. A
//! malformed value fails the mount with a message naming the variable, so
//! that a typo is never silently replaced by a default.

use std::time::Duration;

use super::provider::client::Env;

/// Versions imported at once within one import run, unless the provider
/// allows fewer.
pub const IMPORT_CONCURRENCY: &str = "KEYMGMT_IMPORT_CONCURRENCY";
pub const DEFAULT_IMPORT_CONCURRENCY: usize = 8;
const MAX_IMPORT_CONCURRENCY: usize = 64;

/// For tests only: lowers the shortest `auto_rotate_period` accepted.
pub const TEST_MIN_ROTATE_PERIOD: &str = "KEYMGMT_TEST_MIN_AUTO_ROTATE_PERIOD";
/// The shortest rotation period in production.
pub const MIN_ROTATE_PERIOD: Duration = Duration::from_secs(3600);

/// The longest `auto_rotate_period`: the longest Go duration, as transit.
pub const MAX_ROTATE_PERIOD: Duration = Duration::from_secs(9_223_372_036);

/// Keys the periodic call works on at once.
pub const PERIODIC_CONCURRENCY: usize = 8;
/// Keys one periodic call works on at most; the rest wait for the next.
pub const PERIODIC_MAX_KEYS: usize = 1000;
/// No key's work starts later than this into a periodic call, well within
/// the host's 90 s deadline for it.
pub const PERIODIC_BUDGET: Duration = Duration::from_secs(40);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub import_concurrency: usize,
    pub min_rotate_period: Duration,
    pub periodic_concurrency: usize,
    pub periodic_max_keys: usize,
    pub periodic_budget: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            import_concurrency: DEFAULT_IMPORT_CONCURRENCY,
            min_rotate_period: MIN_ROTATE_PERIOD,
            periodic_concurrency: PERIODIC_CONCURRENCY,
            periodic_max_keys: PERIODIC_MAX_KEYS,
            periodic_budget: PERIODIC_BUDGET,
        }
    }
}

impl Settings {
    pub fn from_env(env: Env<'_>) -> Result<Self, String> {
        let mut settings = Self::default();
        if let Some(value) = env(IMPORT_CONCURRENCY) {
            settings.import_concurrency = value
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_IMPORT_CONCURRENCY).contains(n))
                .ok_or_else(|| {
                    format!("{IMPORT_CONCURRENCY} must be a whole number from 1 to {MAX_IMPORT_CONCURRENCY}")
                })?;
        }
        if let Some(value) = env(TEST_MIN_ROTATE_PERIOD) {
            settings.min_rotate_period = value
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|s| *s >= 1)
                .map(Duration::from_secs)
                .ok_or_else(|| {
                    format!(
                        "{TEST_MIN_ROTATE_PERIOD} must be a whole number of seconds, at least 1"
                    )
                })?;
            log::warn!(
                "{TEST_MIN_ROTATE_PERIOD} lowers the shortest auto_rotate_period to {}s: for tests only",
                settings.min_rotate_period.as_secs()
            );
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(Settings::from_env(&env(&[])).unwrap(), Settings::default());
        let set = Settings::from_env(&env(&[
            (IMPORT_CONCURRENCY, " 3 "),
            (TEST_MIN_ROTATE_PERIOD, "2"),
        ]))
        .unwrap();
        assert_eq!(set.import_concurrency, 3);
        assert_eq!(set.min_rotate_period, Duration::from_secs(2));
    }

    #[test]
    fn malformed_values_name_the_variable() {
        for bad in ["0", "65", "-1", "eight", ""] {
            let pairs: &'static [(&str, &str)] =
                Box::leak(vec![(IMPORT_CONCURRENCY, bad)].into_boxed_slice());
            let err = Settings::from_env(&env(pairs)).unwrap_err();
            assert!(err.contains(IMPORT_CONCURRENCY), "{bad}: {err}");
        }
        let err = Settings::from_env(&env(&[(TEST_MIN_ROTATE_PERIOD, "0")])).unwrap_err();
        assert!(err.contains(TEST_MIN_ROTATE_PERIOD), "{err}");
    }
}
