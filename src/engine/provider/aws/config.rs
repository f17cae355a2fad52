//! Where the `awskms` provider connects and as whom.
//!
//! Resolution follows Vault's documented behaviour (keymgmt-api reference
//! §4.2): `key_collection` is the region; the `credentials` map takes
//! precedence over the environment (`AWS_ACCESS_KEY_ID`, ...), then come
//! the shared credentials and config files, then the ECS or EC2 instance
//! role, which is the AWS SDK's default chain. The endpoint is
//! `credentials.endpoint`, else `AWS_KMS_ENDPOINT`, else the SDK's
//! regional endpoint.
//!
//! Settings that Vault's API has no place for are read from the server's
//! environment (OpenBao passes its environment to plugins; Vault takes
//! `vault plugin register -env=...`), named below.

use std::path::PathBuf;
use std::time::Duration;

use zeroize::Zeroizing;

use super::super::client::retry::RetryPolicy;
use super::super::client::{Env, check_endpoint_url, redact_userinfo};
use super::super::registry::ConfigError;
use super::super::{ProviderConfig, ProviderError};
use crate::framework::error::quote;

/// KMS endpoint URL, replacing the regional one (Vault's documented
/// variable); `credentials.endpoint` takes precedence.
pub const ENV_ENDPOINT: &str = "AWS_KMS_ENDPOINT";
/// A PEM file of extra CA certificates to trust for KMS and the credential
/// endpoints, in addition to the system roots.
pub const ENV_CA_FILE: &str = "KEYMGMT_AWS_CA_FILE";
/// Base delay of the retry backoff in milliseconds (default 500); the tests
/// lower it so fault-injection runs stay quick.
pub const ENV_RETRY_BASE_MS: &str = "KEYMGMT_AWS_RETRY_BASE_MS";
/// The waiting period, in days (7 to 30, default 30), of the KMS keys that
/// removal schedules for deletion: AWS deletes imported material for good
/// at its end, and until then `kms:CancelKeyDeletion` undoes a mistake.
pub const ENV_PENDING_WINDOW_DAYS: &str = "KEYMGMT_AWS_PENDING_WINDOW_DAYS";

/// The default deletion waiting period: AWS's own default and maximum.
pub const DEFAULT_PENDING_WINDOW_DAYS: i32 = 30;

/// Longest credential value accepted; session tokens are the longest real
/// values (about 1-2 KiB).
const MAX_CREDENTIAL_LEN: usize = 4096;

/// Static credentials from the `credentials` map.
pub struct StaticKeys {
    pub access_key: String,
    pub secret_key: Zeroizing<String>,
    pub session_token: Option<Zeroizing<String>>,
}

/// Redacted: never shows the secret or the token.
impl std::fmt::Debug for StaticKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticKeys")
            .field("access_key", &self.access_key)
            .finish_non_exhaustive()
    }
}

/// Everything needed to build the clients, fully resolved.
#[derive(Debug)]
pub struct Settings {
    /// The primary region: `key_collection`.
    pub region: String,
    /// `None`: the SDK's default credential chain.
    pub keys: Option<StaticKeys>,
    /// The endpoint override, if any.
    pub endpoint: Option<String>,
    /// Extra trusted CA certificates (PEM file).
    pub ca_file: Option<PathBuf>,
    pub retry: RetryPolicy,
    pub pending_window_days: i32,
}

fn config_error(message: impl Into<String>) -> ProviderError {
    ProviderError::Config(message.into())
}

fn credential<'a>(config: &'a ProviderConfig, key: &str) -> Option<&'a str> {
    config
        .credentials
        .get(key)
        .map(|s| s.expose().trim())
        .filter(|v| !v.is_empty())
}

impl Settings {
    /// Resolves a stored configuration against an environment lookup.
    pub fn resolve(config: &ProviderConfig, env: Env) -> Result<Self, ProviderError> {
        validate(config).map_err(|e| config_error(e.to_string()))?;
        let keys = match (
            credential(config, "access_key"),
            credential(config, "secret_key"),
        ) {
            (Some(access_key), Some(secret_key)) => Some(StaticKeys {
                access_key: access_key.to_owned(),
                secret_key: Zeroizing::new(secret_key.to_owned()),
                session_token: credential(config, "session_token")
                    .map(|t| Zeroizing::new(t.to_owned())),
            }),
            (None, None) => None,
            _ => {
                return Err(config_error(
                    "credentials: access_key and secret_key go together; set both, or neither to use the environment, shared files or the instance role",
                ));
            }
        };
        let endpoint = match credential(config, "endpoint") {
            Some(endpoint) => Some(endpoint.to_owned()),
            None => match env(ENV_ENDPOINT) {
                Some(endpoint) => {
                    check_endpoint_url(endpoint.trim()).map_err(|m| {
                        config_error(format!(
                            "{ENV_ENDPOINT} {} {m}",
                            quote(&redact_userinfo(endpoint.trim()))
                        ))
                    })?;
                    Some(endpoint.trim().to_owned())
                }
                None => None,
            },
        };
        let retry = RetryPolicy::from_env(ENV_RETRY_BASE_MS, env).map_err(config_error)?;
        let pending_window_days = match env(ENV_PENDING_WINDOW_DAYS) {
            None => DEFAULT_PENDING_WINDOW_DAYS,
            Some(days) => days
                .trim()
                .parse::<i32>()
                .ok()
                .filter(|d| (7..=30).contains(d))
                .ok_or_else(|| {
                    config_error(format!(
                        "{ENV_PENDING_WINDOW_DAYS} must be a number of days from 7 to 30"
                    ))
                })?,
        };
        Ok(Self {
            region: config.key_collection.trim().to_owned(),
            keys,
            endpoint,
            ca_file: env(ENV_CA_FILE).map(PathBuf::from),
            retry,
            pending_window_days,
        })
    }

    /// The timeout of one attempt: bounded so that the retry budget, not a
    /// hung connection, decides when to give up.
    pub fn attempt_timeout() -> Duration {
        Duration::from_secs(15)
    }
}

/// Checks an AWS region name: `<partition area>-<direction>-<n>`, such as
/// `us-east-1`, `eu-central-2`, `us-gov-west-1` or `cn-northwest-1`.
pub fn check_region(region: &str) -> Result<(), String> {
    let parts: Vec<&str> = region.split('-').collect();
    let valid = region.len() <= 32
        && parts.len() >= 3
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase()))
        && parts[0].len() == 2
        && parts
            .last()
            .is_some_and(|n| (1..=2).contains(&n.len()) && n.chars().all(|c| c.is_ascii_digit()));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{} is not an AWS region name (such as us-east-1 or eu-west-2)",
            quote(region)
        ))
    }
}

/// The checks of `kms/:name` writes, with AWS's own rules.
pub fn validate(config: &ProviderConfig) -> Result<(), ConfigError> {
    check_region(config.key_collection.trim())
        .map_err(|m| ConfigError::new("key_collection", m))?;
    for (key, value) in &config.credentials {
        let raw = value.expose();
        if raw.chars().any(char::is_control) || raw.len() > MAX_CREDENTIAL_LEN {
            return Err(ConfigError::credential(
                key,
                format!("must be at most {MAX_CREDENTIAL_LEN} bytes, without control characters"),
            ));
        }
    }
    if let Some(access_key) = credential(config, "access_key") {
        // AWS: 16-128 word characters. LocalStack and other local doubles
        // take short ids such as "test", which the word rule still covers.
        let word = access_key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !word || access_key.len() > 128 {
            return Err(ConfigError::credential(
                "access_key",
                "must be an access key id: letters and digits, at most 128",
            ));
        }
    }
    if let Some(secret_key) = credential(config, "secret_key")
        && secret_key.contains(char::is_whitespace)
    {
        return Err(ConfigError::credential(
            "secret_key",
            "must not contain spaces",
        ));
    }
    if let Some(token) = credential(config, "session_token")
        && token.contains(char::is_whitespace)
    {
        return Err(ConfigError::credential(
            "session_token",
            "must not contain spaces",
        ));
    }
    if credential(config, "session_token").is_some() && credential(config, "access_key").is_none() {
        return Err(ConfigError::credential(
            "session_token",
            "needs access_key and secret_key",
        ));
    }
    if credential(config, "access_key").is_some() != credential(config, "secret_key").is_some() {
        let missing = if credential(config, "access_key").is_some() {
            "secret_key"
        } else {
            "access_key"
        };
        return Err(ConfigError::credential(
            missing,
            "access_key and secret_key go together: set both, or neither to use the environment, shared files or the instance role",
        ));
    }
    if let Some(endpoint) = credential(config, "endpoint") {
        check_endpoint_url(endpoint).map_err(|m| {
            ConfigError::credential(
                "endpoint",
                format!("{} {m}", quote(&redact_userinfo(endpoint))),
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::Secret;

    fn config(region: &str, pairs: &[(&str, &str)]) -> ProviderConfig {
        ProviderConfig {
            kind: super::super::super::ProviderKind::parse("awskms").unwrap(),
            key_collection: region.into(),
            credentials: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Secret::new((*v).to_owned())))
                .collect(),
        }
    }

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn regions() {
        for ok in [
            "us-east-1",
            "eu-central-2",
            "us-gov-west-1",
            "cn-northwest-1",
            "ap-southeast-5",
            "il-central-1",
        ] {
            assert!(check_region(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "us-east",
            "US-EAST-1",
            "us_east_1",
            "useast1",
            "us-east-1a",
            "mars-1",
        ] {
            assert!(check_region(bad).is_err(), "{bad}");
        }
        let long = "a".repeat(1000);
        assert!(check_region(&long).unwrap_err().len() < 200);
    }

    #[test]
    fn stored_configuration_is_checked_at_write() {
        let good = [
            ("access_key", "AKIAIOSFODNN7EXAMPLE"),
            ("secret_key", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
            ("session_token", "FwoGZXIvYXdzEBYaDH+token/=="),
            (
                "endpoint",
                "https://vpce-1.kms.us-east-1.vpce.amazonaws.com",
            ),
        ];
        assert_eq!(validate(&config("us-east-1", &good)), Ok(()));
        assert_eq!(validate(&config("us-east-1", &[])), Ok(()));
        let local = [
            ("access_key", "test"),
            ("secret_key", "test"),
            ("endpoint", "http://127.0.0.1:4566"),
        ];
        assert_eq!(validate(&config("us-east-1", &local)), Ok(()));
        let field = |c: ProviderConfig| validate(&c).unwrap_err().field;
        assert_eq!(field(config("Mars", &[])), "key_collection");
        assert_eq!(field(config("us-east-1\u{0}", &[])), "key_collection");
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("access_key", "AKIA EXAMPLE"), ("secret_key", "x")],
                "credentials.access_key",
            ),
            (
                &[("access_key", "AKIA"), ("secret_key", "x y")],
                "credentials.secret_key",
            ),
            (&[("access_key", "AKIA")], "credentials.secret_key"),
            (&[("secret_key", "x")], "credentials.access_key"),
            (&[("session_token", "t")], "credentials.session_token"),
            (
                &[("endpoint", "http://kms.example.com")],
                "credentials.endpoint",
            ),
            (
                &[("endpoint", "https://kms.example.com/#x")],
                "credentials.endpoint",
            ),
        ];
        for (pairs, want) in cases {
            assert_eq!(field(config("us-east-1", pairs)), *want, "{pairs:?}");
        }
        let leaky = [("endpoint", "https://AKIA:wJalrXUtn@kms.example.com")];
        let err = validate(&config("us-east-1", &leaky)).unwrap_err();
        assert_eq!(err.field, "credentials.endpoint");
        assert!(!err.to_string().contains("wJalrXUtn"), "{err}");
        let secret = "wJalr\nXUtn";
        let err = validate(&config(
            "us-east-1",
            &[("access_key", "AKIA"), ("secret_key", secret)],
        ))
        .unwrap_err();
        assert_eq!(err.field, "credentials.secret_key");
        assert!(!err.to_string().contains("wJalr"), "{err}");
    }

    #[test]
    fn credentials_map_before_the_environment() {
        const ENV: &[(&str, &str)] = &[
            (ENV_ENDPOINT, "http://127.0.0.1:9"),
            (ENV_RETRY_BASE_MS, "5"),
            (ENV_PENDING_WINDOW_DAYS, "7"),
            (ENV_CA_FILE, "/tmp/ca.pem"),
        ];
        let s = Settings::resolve(
            &config(
                "eu-west-1",
                &[
                    ("access_key", "AK"),
                    ("secret_key", "SK"),
                    ("endpoint", "http://localhost:1"),
                ],
            ),
            &env_of(ENV),
        )
        .unwrap();
        assert_eq!(s.region, "eu-west-1");
        let keys = s.keys.as_ref().unwrap();
        assert_eq!(
            (keys.access_key.as_str(), keys.secret_key.as_str()),
            ("AK", "SK")
        );
        assert!(keys.session_token.is_none());
        assert_eq!(s.endpoint.as_deref(), Some("http://localhost:1"));
        assert_eq!(s.retry.base, Duration::from_millis(5));
        assert_eq!(s.pending_window_days, 7);
        assert_eq!(s.ca_file, Some(PathBuf::from("/tmp/ca.pem")));
        assert!(!format!("{s:?}").contains("SK"));

        let s = Settings::resolve(&config("eu-west-1", &[]), &env_of(ENV)).unwrap();
        assert!(s.keys.is_none(), "the SDK's chain");
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:9"));

        const NO_ENV: &[(&str, &str)] = &[];
        let s = Settings::resolve(&config("eu-west-1", &[]), &env_of(NO_ENV)).unwrap();
        assert_eq!(s.endpoint, None);
        assert_eq!(s.pending_window_days, DEFAULT_PENDING_WINDOW_DAYS);

        const BAD: &[(&str, &str)] = &[(ENV_PENDING_WINDOW_DAYS, "3")];
        assert!(Settings::resolve(&config("eu-west-1", &[]), &env_of(BAD)).is_err());
        const BAD_URL: &[(&str, &str)] = &[(ENV_ENDPOINT, "http://kms.example.com")];
        assert!(Settings::resolve(&config("eu-west-1", &[]), &env_of(BAD_URL)).is_err());
    }
}
