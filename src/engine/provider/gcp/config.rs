//! Where the `gcpckms` provider connects and as whom.
//!
//! Resolution follows Vault's documented behaviour (keymgmt-api reference
//! §4.3): `key_collection` is the key ring's resource name; the
//! `GOOGLE_CREDENTIALS` environment variable takes precedence over
//! `credentials.service_account_file`, and without either the application
//! default credentials are used (`GOOGLE_APPLICATION_CREDENTIALS`, gcloud's
//! file, the metadata server). `GOOGLE_CREDENTIALS` and
//! `service_account_file` may hold a path or the JSON itself.

use std::path::PathBuf;

use zeroize::Zeroizing;

use super::super::client::retry::RetryPolicy;
use super::super::client::{Env, check_endpoint_url};
use super::super::registry::ConfigError;
use super::super::{ProviderConfig, ProviderError};
use crate::framework::error::quote;

/// A service account key (path or JSON) that takes precedence over
/// `credentials.service_account_file` (Vault's documented variable).
pub const ENV_CREDENTIALS: &str = "GOOGLE_CREDENTIALS";
/// An `https://` URL that replaces `https://cloudkms.googleapis.com`: for
/// private connectivity and tests.
pub const ENV_ENDPOINT: &str = "KEYMGMT_GCP_KMS_ENDPOINT";
/// A PEM file of extra CA certificates trusted for Cloud KMS, in addition
/// to the system roots.
pub const ENV_CA_FILE: &str = "KEYMGMT_GCP_CA_FILE";
/// Base delay of the retry backoff in milliseconds (default 500).
pub const ENV_RETRY_BASE_MS: &str = "KEYMGMT_GCP_RETRY_BASE_MS";

/// Google's Cloud KMS endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://cloudkms.googleapis.com";

/// Longest credential value: a service account key JSON is about 2.3 KiB.
const MAX_CREDENTIAL_LEN: usize = 16 * 1024;

/// How the provider authenticates.
pub enum Identity {
    /// A service account key, parsed (its `private_key` wiped on drop).
    ServiceAccount(Zeroizing<String>),
    /// The application default credentials.
    ApplicationDefault,
}

/// Redacted: never shows the key.
impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ServiceAccount(_) => f.write_str("ServiceAccount(<redacted>)"),
            Self::ApplicationDefault => f.write_str("ApplicationDefault"),
        }
    }
}

/// A key ring's resource name, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRing {
    pub project: String,
    pub location: String,
    pub ring: String,
}

impl KeyRing {
    pub fn name(&self) -> String {
        format!(
            "projects/{}/locations/{}/keyRings/{}",
            self.project, self.location, self.ring
        )
    }
}

fn segment_ok(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Parses `projects/<p>/locations/<l>/keyRings/<r>`.
pub fn parse_key_ring(value: &str) -> Result<KeyRing, String> {
    let parts: Vec<&str> = value.trim().split('/').collect();
    match parts.as_slice() {
        ["projects", project, "locations", location, "keyRings", ring]
            if segment_ok(project) && segment_ok(location) && segment_ok(ring) =>
        {
            Ok(KeyRing {
                project: (*project).to_owned(),
                location: (*location).to_owned(),
                ring: (*ring).to_owned(),
            })
        }
        _ => Err(format!(
            "{} is not a key ring resource name: projects/<project>/locations/<location>/keyRings/<ring>",
            quote(value)
        )),
    }
}

/// Everything needed to build the client, fully resolved.
#[derive(Debug)]
pub struct Settings {
    pub key_ring: KeyRing,
    pub identity: Identity,
    /// The Cloud KMS base URL.
    pub endpoint: String,
    pub ca_file: Option<PathBuf>,
    pub retry: RetryPolicy,
}

/// A path to a service account key, or the key itself.
fn read_key(what: &str, value: &str) -> Result<Zeroizing<String>, ProviderError> {
    let value = value.trim();
    let json =
        if value.starts_with('{') {
            Zeroizing::new(value.to_owned())
        } else {
            Zeroizing::new(std::fs::read_to_string(value).map_err(|e| {
                ProviderError::Config(format!("{what}: reading {}: {e}", quote(value)))
            })?)
        };
    let parsed: serde_json::Value = serde_json::from_str(&json)
        .map_err(|_| ProviderError::Config(format!("{what}: not a service account key (JSON)")))?;
    if parsed.get("type").and_then(|t| t.as_str()) != Some("service_account") {
        return Err(ProviderError::Config(format!(
            "{what}: not a service account key (\"type\": \"service_account\"); other credentials work through the application default credentials"
        )));
    }
    Ok(json)
}

impl Settings {
    pub fn resolve(config: &ProviderConfig, env: Env) -> Result<Self, ProviderError> {
        validate(config).map_err(|e| ProviderError::Config(e.to_string()))?;
        let key_ring = parse_key_ring(&config.key_collection)
            .map_err(|m| ProviderError::Config(format!("key_collection: {m}")))?;
        let file = config
            .credentials
            .get("service_account_file")
            .map(|s| s.expose().trim())
            .filter(|s| !s.is_empty());
        let identity = match (env(ENV_CREDENTIALS), file) {
            (Some(value), _) => Identity::ServiceAccount(read_key(ENV_CREDENTIALS, &value)?),
            (None, Some(value)) => {
                Identity::ServiceAccount(read_key("credentials.service_account_file", value)?)
            }
            (None, None) => Identity::ApplicationDefault,
        };
        let endpoint = match env(ENV_ENDPOINT) {
            Some(url) => {
                let url = url.trim().trim_end_matches('/').to_owned();
                if !url.starts_with("https://") {
                    return Err(ProviderError::Config(format!(
                        "{ENV_ENDPOINT} must be an https:// URL"
                    )));
                }
                check_endpoint_url(&url)
                    .map_err(|m| ProviderError::Config(format!("{ENV_ENDPOINT} {m}")))?;
                url
            }
            None => DEFAULT_ENDPOINT.to_owned(),
        };
        Ok(Self {
            key_ring,
            identity,
            endpoint,
            ca_file: env(ENV_CA_FILE).map(PathBuf::from),
            retry: RetryPolicy::from_env(ENV_RETRY_BASE_MS, env).map_err(ProviderError::Config)?,
        })
    }
}

/// The checks of `kms/:name` writes, with Google's rules. A file's content
/// is read when the provider connects, not here: it may be provisioned
/// on the Vault host after the provider record.
pub fn validate(config: &ProviderConfig) -> Result<(), ConfigError> {
    let ring = parse_key_ring(&config.key_collection)
        .map_err(|m| ConfigError::new("key_collection", m))?;
    for (key, value) in &config.credentials {
        let raw = value.expose();
        if raw.len() > MAX_CREDENTIAL_LEN
            || (key != "service_account_file" && raw.chars().any(char::is_control))
        {
            return Err(ConfigError::credential(
                key,
                format!("must be at most {MAX_CREDENTIAL_LEN} bytes, without control characters"),
            ));
        }
    }
    // Accepted as the Terraform provider sends them, but they must agree
    // with the key ring, which is what addresses the keys.
    for (key, want) in [("project", &ring.project), ("location", &ring.location)] {
        if let Some(given) = config.credentials.get(key).map(|s| s.expose().trim())
            && !given.is_empty()
            && given != want
        {
            return Err(ConfigError::credential(
                key,
                format!(
                    "{} does not match key_collection's {key} {}",
                    quote(given),
                    quote(want)
                ),
            ));
        }
    }
    if let Some(file) = config
        .credentials
        .get("service_account_file")
        .map(|s| s.expose().trim())
        && !file.is_empty()
        && !file.starts_with('{')
        && !file.starts_with('/')
    {
        return Err(ConfigError::credential(
            "service_account_file",
            "must be an absolute path on the Vault host, or the key's JSON",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::Secret;

    fn config(ring: &str, pairs: &[(&str, &str)]) -> ProviderConfig {
        ProviderConfig {
            kind: super::super::super::ProviderKind::parse("gcpckms").unwrap(),
            key_collection: ring.into(),
            credentials: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Secret::new((*v).to_owned())))
                .collect(),
        }
    }

    #[test]
    fn key_rings() {
        let ring = parse_key_ring("projects/p-1/locations/us-east1/keyRings/r_1").unwrap();
        assert_eq!(ring.name(), "projects/p-1/locations/us-east1/keyRings/r_1");
        for bad in [
            "",
            "projects/p/locations/global",
            "projects/p/locations/global/keyRings/",
            "projects/p/locations/global/keyRings/r/cryptoKeys/k",
            "projects/p q/locations/global/keyRings/r",
            "projects/p/locations/global/keyRings/r#x",
            "keyRings/r",
        ] {
            assert!(parse_key_ring(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stored_configuration_is_checked_at_write() {
        let ring = "projects/p/locations/global/keyRings/r";
        assert_eq!(
            validate(&config(ring, &[("service_account_file", "/etc/sa.json")])),
            Ok(())
        );
        assert_eq!(
            validate(&config(ring, &[("project", "p"), ("location", "global")])),
            Ok(())
        );
        let field = |c: ProviderConfig| validate(&c).unwrap_err().field;
        assert_eq!(field(config("my-ring", &[])), "key_collection");
        assert_eq!(
            field(config(ring, &[("project", "other")])),
            "credentials.project"
        );
        assert_eq!(
            field(config(ring, &[("service_account_file", "sa.json")])),
            "credentials.service_account_file"
        );
    }

    #[test]
    fn credential_precedence() {
        let dir = std::env::temp_dir().join(format!("keymgmt-gcp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("sa.json");
        std::fs::write(
            &file,
            r#"{"type":"service_account","client_email":"file@p.iam"}"#,
        )
        .unwrap();
        let ring = "projects/p/locations/global/keyRings/r";
        let from_map = config(ring, &[("service_account_file", file.to_str().unwrap())]);
        let none = |_: &str| None;
        let s = Settings::resolve(&from_map, &none).unwrap();
        assert!(matches!(&s.identity, Identity::ServiceAccount(j) if j.contains("file@p.iam")));
        assert_eq!(s.endpoint, DEFAULT_ENDPOINT);
        let env = |name: &str| {
            (name == ENV_CREDENTIALS)
                .then(|| r#"{"type":"service_account","client_email":"env@p.iam"}"#.to_owned())
        };
        let s = Settings::resolve(&from_map, &env).unwrap();
        assert!(matches!(&s.identity, Identity::ServiceAccount(j) if j.contains("env@p.iam")));
        let s = Settings::resolve(&config(ring, &[]), &none).unwrap();
        assert!(matches!(s.identity, Identity::ApplicationDefault));
        assert!(!format!("{s:?}").contains("p.iam"));
        let user = config(
            ring,
            &[("service_account_file", r#"{"type":"authorized_user"}"#)],
        );
        assert!(Settings::resolve(&user, &none).is_err());
        let endpoint = |name: &str| (name == ENV_ENDPOINT).then(|| "http://127.0.0.1:1".to_owned());
        assert!(Settings::resolve(&config(ring, &[]), &endpoint).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
