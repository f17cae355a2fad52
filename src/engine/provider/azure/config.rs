//! Where the `azurekeyvault` provider connects and as whom.
//!
//! Resolution follows Vault's documented behaviour (keymgmt-api reference
//! §4.1): the `AZURE_*` environment variables take precedence over the
//! provider's `credentials` map, the environment picks the Key Vault DNS
//! suffix and the Entra ID authority, and without a client id *and* secret
//! the plugin authenticates as the machine's managed identity.
//!
//! Private clouds and the test suite additionally need to redirect every
//! endpoint and trust an extra CA. The plugin inherits the server's
//! environment under OpenBao (whose `plugin register` has no `-env`) and
//! takes `-env` under Vault, so those overrides are environment variables
//! too, named below.

use std::collections::BTreeMap;
use std::path::PathBuf;

use azure_core::http::Url;
use zeroize::Zeroizing;

use super::super::client::retry::RetryPolicy;
use super::super::client::{Env, check_endpoint_url, redact_userinfo};
use super::super::registry::ConfigError;
use super::super::{ProviderConfig, ProviderError};
use crate::framework::Secret;
use crate::framework::error::quote;

/// Tenant (directory) id; takes precedence over `credentials.tenant_id`.
pub const ENV_TENANT_ID: &str = "AZURE_TENANT_ID";
/// Application (client) id; takes precedence over `credentials.client_id`.
pub const ENV_CLIENT_ID: &str = "AZURE_CLIENT_ID";
/// Client secret; takes precedence over `credentials.client_secret`.
pub const ENV_CLIENT_SECRET: &str = "AZURE_CLIENT_SECRET";
/// Cloud name (`AzurePublicCloud`, `AzureUSGovernmentCloud`,
/// `AzureChinaCloud`); takes precedence over `credentials.environment`.
pub const ENV_ENVIRONMENT: &str = "AZURE_ENVIRONMENT";
/// Entra ID authority host (e.g. `https://login.example.net`), replacing the
/// environment's. This is the variable the official Azure identity
/// libraries read, kept under the same name so existing setups carry over.
pub const ENV_AUTHORITY_HOST: &str = "AZURE_AUTHORITY_HOST";
/// Key Vault base URL (e.g. `https://kv.internal:8443`) that replaces
/// `https://<key_collection>.<suffix>` for every `azurekeyvault` provider
/// of this plugin process: for private endpoints without matching DNS and
/// for tests. Also stops the client from insisting that the
/// authentication challenge's resource matches the host, which cannot hold
/// for a redirected endpoint.
pub const ENV_KEYVAULT_ENDPOINT: &str = "KEYMGMT_AZURE_KEYVAULT_ENDPOINT";
/// Managed-identity (IMDS) token endpoint, replacing
/// `http://169.254.169.254`. Either a base URL (the standard
/// `/metadata/identity/oauth2/token` path is appended) or the full token
/// URL.
pub const ENV_IMDS_ENDPOINT: &str = "KEYMGMT_AZURE_IMDS_ENDPOINT";
/// A PEM file of extra CA certificates to trust for Key Vault, Entra ID
/// and IMDS connections, in addition to the system roots.
pub const ENV_CA_FILE: &str = "KEYMGMT_AZURE_CA_FILE";
/// Base delay of the retry backoff in milliseconds (default 500); the tests
/// lower it so fault-injection runs stay quick.
pub const ENV_RETRY_BASE_MS: &str = "KEYMGMT_AZURE_RETRY_BASE_MS";

/// The IMDS token path on an Azure VM.
pub const IMDS_TOKEN_PATH: &str = "/metadata/identity/oauth2/token";
const IMDS_DEFAULT: &str = "http://169.254.169.254";

/// An Azure cloud, with the names go-autorest (and so Vault) uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    /// `AzurePublicCloud`, the default.
    Public,
    /// `AzureUSGovernmentCloud`.
    UsGovernment,
    /// `AzureChinaCloud`.
    China,
}

impl Environment {
    /// Every accepted environment, for error messages.
    pub const ALL: [Environment; 3] = [Self::Public, Self::UsGovernment, Self::China];

    /// Parses a go-autorest environment name, case-insensitively as
    /// go-autorest's `EnvironmentFromName` does.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|e| e.name().eq_ignore_ascii_case(name.trim()))
    }

    /// The go-autorest name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Public => "AzurePublicCloud",
            Self::UsGovernment => "AzureUSGovernmentCloud",
            Self::China => "AzureChinaCloud",
        }
    }

    /// Key Vault DNS suffix: a vault is `https://<name>.<suffix>`.
    pub fn keyvault_suffix(self) -> &'static str {
        match self {
            Self::Public => "vault.azure.net",
            Self::UsGovernment => "vault.usgovcloudapi.net",
            Self::China => "vault.azure.cn",
        }
    }

    /// The token scopes a Key Vault or Managed HSM of this cloud may ask
    /// for in its authentication challenge.
    pub fn keyvault_scopes(self) -> [&'static str; 2] {
        match self {
            Self::Public => [
                "https://vault.azure.net/.default",
                "https://managedhsm.azure.net/.default",
            ],
            Self::UsGovernment => [
                "https://vault.usgovcloudapi.net/.default",
                "https://managedhsm.usgovcloudapi.net/.default",
            ],
            Self::China => [
                "https://vault.azure.cn/.default",
                "https://managedhsm.azure.cn/.default",
            ],
        }
    }

    /// Entra ID authority host.
    pub fn authority_host(self) -> &'static str {
        match self {
            Self::Public => "https://login.microsoftonline.com",
            Self::UsGovernment => "https://login.microsoftonline.us",
            Self::China => "https://login.chinacloudapi.cn",
        }
    }
}

/// How the provider authenticates.
pub enum Identity {
    /// An app registration's client id and secret (client credentials).
    ClientSecret {
        /// Application (client) id.
        client_id: String,
        /// The secret, wiped on drop.
        client_secret: Zeroizing<String>,
    },
    /// The machine's managed identity; `client_id` selects a user-assigned one.
    ManagedIdentity {
        /// Client id of a user-assigned identity, if given.
        client_id: Option<String>,
    },
}

/// Redacted: never shows the secret.
impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ClientSecret { client_id, .. } => f
                .debug_struct("ClientSecret")
                .field("client_id", client_id)
                .finish_non_exhaustive(),
            Self::ManagedIdentity { client_id } => f
                .debug_struct("ManagedIdentity")
                .field("client_id", client_id)
                .finish(),
        }
    }
}

/// Everything needed to build the clients, fully resolved.
#[derive(Debug)]
pub struct Settings {
    /// Key Vault (or Managed HSM) base URL.
    pub endpoint: Url,
    /// Whether the endpoint came from [`ENV_KEYVAULT_ENDPOINT`].
    pub endpoint_overridden: bool,
    /// Entra ID tenant.
    pub tenant_id: String,
    /// Entra ID authority host URL.
    pub authority_host: Url,
    /// The cloud the settings were derived from.
    pub environment: Environment,
    /// Client credentials or managed identity.
    pub identity: Identity,
    /// The IMDS token URL, when overridden.
    pub imds_endpoint: Option<Url>,
    /// Extra trusted CA certificates (PEM file).
    pub ca_file: Option<PathBuf>,
    /// Retries of every call.
    pub retry: RetryPolicy,
}

fn config_error(message: impl Into<String>) -> ProviderError {
    ProviderError::Config(message.into())
}

impl Settings {
    /// Resolves a stored provider configuration against an environment
    /// lookup (the real one is [`process_env`]; tests pass a map).
    pub fn resolve(config: &ProviderConfig, env: Env) -> Result<Self, ProviderError> {
        Self::from_parts(&config.key_collection, &config.credentials, env)
    }

    fn from_parts(
        key_collection: &str,
        credentials: &BTreeMap<String, Secret>,
        env: Env,
    ) -> Result<Self, ProviderError> {
        // Environment first, then the credentials map (Vault's order).
        let pick = |var: &str, key: &str| -> Option<Zeroizing<String>> {
            env(var).map(Zeroizing::new).or_else(|| {
                credentials
                    .get(key)
                    .map(|s| s.expose().trim())
                    .filter(|s| !s.is_empty())
                    .map(|s| Zeroizing::new(s.to_owned()))
            })
        };
        let environment = match pick(ENV_ENVIRONMENT, "environment") {
            None => Environment::Public,
            Some(name) => Environment::parse(&name).ok_or_else(|| {
                config_error(format!(
                    "credentials.environment: unknown Azure environment {}; expected one of {}",
                    quote(&name),
                    Environment::ALL.map(Environment::name).join(", ")
                ))
            })?,
        };
        let tenant_id = pick(ENV_TENANT_ID, "tenant_id")
            .map(|t| t.to_string())
            .ok_or_else(|| {
                config_error(format!(
                    "the azurekeyvault provider needs a tenant id (credentials tenant_id or {ENV_TENANT_ID}), also with a managed identity"
                ))
            })?;
        let client_id = pick(ENV_CLIENT_ID, "client_id").map(|c| c.to_string());
        let identity = match (client_id, pick(ENV_CLIENT_SECRET, "client_secret")) {
            (Some(client_id), Some(client_secret)) => Identity::ClientSecret {
                client_id,
                client_secret,
            },
            (client_id, _) => Identity::ManagedIdentity { client_id },
        };
        let (endpoint, endpoint_overridden) = match env(ENV_KEYVAULT_ENDPOINT) {
            Some(url) => (parse_url(ENV_KEYVAULT_ENDPOINT, &url, true)?, true),
            None => (keyvault_endpoint(key_collection, environment)?, false),
        };
        let authority_host = match env(ENV_AUTHORITY_HOST) {
            Some(url) => parse_url(ENV_AUTHORITY_HOST, &url, true)?,
            None => parse_url("authority host", environment.authority_host(), true)?,
        };
        let imds_endpoint = env(ENV_IMDS_ENDPOINT)
            .map(|url| imds_token_url(&url))
            .transpose()?;
        let retry = RetryPolicy::from_env(ENV_RETRY_BASE_MS, env).map_err(config_error)?;
        Ok(Self {
            endpoint,
            endpoint_overridden,
            tenant_id,
            authority_host,
            environment,
            identity,
            imds_endpoint,
            ca_file: env(ENV_CA_FILE).map(PathBuf::from),
            retry,
        })
    }
}

fn parse_url(what: &str, value: &str, https_only: bool) -> Result<Url, ProviderError> {
    let shown = quote(value);
    let url = Url::parse(value.trim())
        .map_err(|e| config_error(format!("{what} {shown} is not a URL: {e}")))?;
    if https_only && url.scheme() != "https" {
        return Err(config_error(format!("{what} {shown} must use https")));
    }
    if url.host_str().is_none() {
        return Err(config_error(format!("{what} {shown} has no host")));
    }
    Ok(url)
}

/// Longest credential value accepted: Entra client secrets are about 40
/// characters; anything near this bound is a pasted file, not a secret.
const MAX_CREDENTIAL_LEN: usize = 1024;

/// The checks of `kms/:name` writes: the stored `key_collection` and
/// credential values, each with Azure's own rules. Environment variables
/// may still override some of them when the provider connects.
pub fn validate(config: &ProviderConfig) -> Result<(), ConfigError> {
    let credentials = &config.credentials;
    let value = |key: &str| {
        credentials
            .get(key)
            .map(|s| s.expose().trim())
            .filter(|v| !v.is_empty())
    };
    for (key, secret) in credentials {
        let raw = secret.expose();
        if raw.chars().any(char::is_control) || raw.len() > MAX_CREDENTIAL_LEN {
            return Err(ConfigError::credential(
                key,
                format!("must be at most {MAX_CREDENTIAL_LEN} bytes, without control characters"),
            ));
        }
    }
    let environment = match value("environment") {
        None => Environment::Public,
        Some(name) => Environment::parse(name).ok_or_else(|| {
            ConfigError::credential(
                "environment",
                format!(
                    "unknown Azure environment {}; expected one of {}",
                    quote(name),
                    Environment::ALL.map(Environment::name).join(", ")
                ),
            )
        })?,
    };
    if let Some(tenant) = value("tenant_id")
        && !(is_guid(tenant) || is_dns_name(tenant))
    {
        return Err(ConfigError::credential(
            "tenant_id",
            "must be a directory (tenant) id: a GUID, or a verified domain name such as contoso.onmicrosoft.com",
        ));
    }
    if let Some(client) = value("client_id")
        && !is_guid(client)
    {
        return Err(ConfigError::credential(
            "client_id",
            "must be an application (client) id: a GUID such as 00000000-0000-0000-0000-000000000000",
        ));
    }
    keyvault_endpoint(&config.key_collection, environment).map_err(|e| {
        let message = e.to_string();
        let message = message.strip_prefix("key_collection ").unwrap_or(&message);
        ConfigError::new("key_collection", message.to_owned())
    })?;
    Ok(())
}

fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.chars().all(|c| c.is_ascii_hexdigit()))
}

fn is_dns_name(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The Key Vault base URL for a `key_collection`:
/// - a vault name (`my-vault`) becomes `https://my-vault.<suffix>`;
/// - a host name (`my-hsm.managedhsm.azure.net`, or a vault's full host)
///   is used as the host, which is how Managed HSMs are addressed;
/// - an `https://` URL is used as given.
pub fn keyvault_endpoint(
    key_collection: &str,
    environment: Environment,
) -> Result<Url, ProviderError> {
    let collection = key_collection.trim().trim_end_matches('/');
    if collection.contains("://") {
        let shown = quote(&redact_userinfo(collection));
        check_endpoint_url(collection)
            .map_err(|m| config_error(format!("key_collection {shown} {m}")))?;
        return parse_url("key_collection", collection, true);
    }
    if collection.contains('.') {
        let valid = collection.split('.').all(|label| {
            !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
        if !valid {
            return Err(config_error(format!(
                "key_collection {} is neither a Key Vault name nor a host name",
                quote(collection)
            )));
        }
        return parse_url("key_collection", &format!("https://{collection}"), true);
    }
    // Key Vault names: 3-24 characters, letters, digits and hyphens,
    // starting with a letter.
    let valid = (3..=24).contains(&collection.len())
        && collection.starts_with(|c: char| c.is_ascii_alphabetic())
        && collection
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !valid {
        return Err(config_error(format!(
            "key_collection {} is not a Key Vault name (3-24 letters, digits and hyphens, starting with a letter), a Managed HSM host or an https:// URL",
            quote(collection)
        )));
    }
    parse_url(
        "key_collection",
        &format!("https://{collection}.{}", environment.keyvault_suffix()),
        true,
    )
}

/// The IMDS token URL from [`ENV_IMDS_ENDPOINT`]'s value. Plain http is
/// allowed: IMDS is a link-local, unencrypted endpoint on real VMs.
pub fn imds_token_url(value: &str) -> Result<Url, ProviderError> {
    let mut url = parse_url(ENV_IMDS_ENDPOINT, value, false)?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(config_error(format!(
            "{ENV_IMDS_ENDPOINT} {value:?} must be an http(s) URL"
        )));
    }
    if url.path().is_empty() || url.path() == "/" {
        url.set_path(IMDS_TOKEN_PATH);
    }
    Ok(url)
}

/// The IMDS token URL used when [`ENV_IMDS_ENDPOINT`] is unset.
pub fn default_imds_token_url() -> Result<Url, ProviderError> {
    imds_token_url(IMDS_DEFAULT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(pairs: &[(&str, &str)]) -> BTreeMap<String, Secret> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Secret::new((*v).to_owned())))
            .collect()
    }

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    const NO_ENV: &[(&str, &str)] = &[];

    #[test]
    fn vault_names_follow_the_environment() {
        let cases = [
            (Environment::Public, "https://my-vault.vault.azure.net/"),
            (
                Environment::UsGovernment,
                "https://my-vault.vault.usgovcloudapi.net/",
            ),
            (Environment::China, "https://my-vault.vault.azure.cn/"),
        ];
        for (env, want) in cases {
            assert_eq!(keyvault_endpoint("my-vault", env).unwrap().as_str(), want);
        }
    }

    #[test]
    fn managed_hsm_hosts_and_urls_are_used_directly() {
        assert_eq!(
            keyvault_endpoint("contoso.managedhsm.azure.net", Environment::Public)
                .unwrap()
                .as_str(),
            "https://contoso.managedhsm.azure.net/"
        );
        assert_eq!(
            keyvault_endpoint("https://contoso.managedhsm.azure.net/", Environment::China)
                .unwrap()
                .as_str(),
            "https://contoso.managedhsm.azure.net/"
        );
        assert!(keyvault_endpoint("http://plain.example", Environment::Public).is_err());
        assert!(keyvault_endpoint("bad_name", Environment::Public).is_err());
        assert!(keyvault_endpoint("ab", Environment::Public).is_err());
        assert!(keyvault_endpoint("a..b", Environment::Public).is_err());
    }

    #[test]
    fn environment_names_are_case_insensitive_and_checked() {
        assert_eq!(
            Environment::parse("azureusgovernmentcloud"),
            Some(Environment::UsGovernment)
        );
        assert_eq!(
            Environment::parse("AzureChinaCloud"),
            Some(Environment::China)
        );
        let err = Settings::from_parts(
            "kv1",
            &creds(&[("tenant_id", "t"), ("environment", "Mars")]),
            &env_of(NO_ENV),
        )
        .unwrap_err();
        assert!(err.to_string().contains("AzurePublicCloud"), "{err}");
    }

    #[test]
    fn credentials_map_with_defaults() {
        let s = Settings::from_parts(
            "kv1",
            &creds(&[
                ("tenant_id", "t1"),
                ("client_id", "c1"),
                ("client_secret", "s1"),
            ]),
            &env_of(NO_ENV),
        )
        .unwrap();
        assert_eq!(s.endpoint.as_str(), "https://kv1.vault.azure.net/");
        assert!(!s.endpoint_overridden);
        assert_eq!(
            s.authority_host.as_str(),
            "https://login.microsoftonline.com/"
        );
        assert_eq!(s.tenant_id, "t1");
        assert!(
            matches!(&s.identity, Identity::ClientSecret { client_id, client_secret }
            if client_id == "c1" && client_secret.as_str() == "s1")
        );
        assert_eq!(s.imds_endpoint, None);
        assert_eq!(s.retry.base, std::time::Duration::from_millis(500));
        assert!(!format!("{s:?}").contains("s1"));
    }

    #[test]
    fn environment_variables_take_precedence() {
        const ENV: &[(&str, &str)] = &[
            (ENV_TENANT_ID, "t-env"),
            (ENV_CLIENT_ID, "c-env"),
            (ENV_CLIENT_SECRET, "s-env"),
            (ENV_ENVIRONMENT, "AzureUSGovernmentCloud"),
        ];
        let s = Settings::from_parts(
            "kv1",
            &creds(&[
                ("tenant_id", "t1"),
                ("client_id", "c1"),
                ("client_secret", "s1"),
                ("environment", "AzureChinaCloud"),
            ]),
            &env_of(ENV),
        )
        .unwrap();
        assert_eq!(s.tenant_id, "t-env");
        assert_eq!(s.environment, Environment::UsGovernment);
        assert_eq!(s.endpoint.as_str(), "https://kv1.vault.usgovcloudapi.net/");
        assert_eq!(
            s.authority_host.as_str(),
            "https://login.microsoftonline.us/"
        );
        assert!(
            matches!(&s.identity, Identity::ClientSecret { client_id, client_secret }
            if client_id == "c-env" && client_secret.as_str() == "s-env")
        );
    }

    #[test]
    fn env_and_map_mix_per_field() {
        const ENV: &[(&str, &str)] = &[(ENV_CLIENT_SECRET, "s-env")];
        let s = Settings::from_parts(
            "kv1",
            &creds(&[
                ("tenant_id", "t1"),
                ("client_id", "c1"),
                ("client_secret", "s1"),
            ]),
            &env_of(ENV),
        )
        .unwrap();
        assert!(
            matches!(&s.identity, Identity::ClientSecret { client_id, client_secret }
            if client_id == "c1" && client_secret.as_str() == "s-env")
        );
    }

    #[test]
    fn without_a_secret_the_managed_identity_is_used() {
        let s =
            Settings::from_parts("kv1", &creds(&[("tenant_id", "t1")]), &env_of(NO_ENV)).unwrap();
        assert!(matches!(
            s.identity,
            Identity::ManagedIdentity { client_id: None }
        ));
        let s = Settings::from_parts(
            "kv1",
            &creds(&[
                ("tenant_id", "t1"),
                ("client_id", "uai"),
                ("client_secret", " "),
            ]),
            &env_of(NO_ENV),
        )
        .unwrap();
        assert!(
            matches!(s.identity, Identity::ManagedIdentity { client_id: Some(ref c) } if c == "uai")
        );
        // Vault requires the tenant even with a managed identity.
        let err = Settings::from_parts("kv1", &creds(&[]), &env_of(NO_ENV)).unwrap_err();
        assert!(err.to_string().contains("tenant"), "{err}");
    }

    #[test]
    fn endpoint_overrides() {
        const ENV: &[(&str, &str)] = &[
            (ENV_TENANT_ID, "t"),
            (ENV_KEYVAULT_ENDPOINT, "https://127.0.0.1:8443"),
            (ENV_AUTHORITY_HOST, "https://127.0.0.1:9443/"),
            (ENV_IMDS_ENDPOINT, "http://127.0.0.1:7070"),
            (ENV_CA_FILE, "/tmp/ca.pem"),
            (ENV_RETRY_BASE_MS, "20"),
        ];
        let s = Settings::from_parts("kv1", &creds(&[]), &env_of(ENV)).unwrap();
        assert_eq!(s.endpoint.as_str(), "https://127.0.0.1:8443/");
        assert!(s.endpoint_overridden);
        assert_eq!(s.authority_host.as_str(), "https://127.0.0.1:9443/");
        assert_eq!(
            s.imds_endpoint.unwrap().as_str(),
            "http://127.0.0.1:7070/metadata/identity/oauth2/token"
        );
        assert_eq!(s.ca_file, Some(PathBuf::from("/tmp/ca.pem")));
        assert_eq!(s.retry.base, std::time::Duration::from_millis(20));
        // A full IMDS URL is kept as given.
        assert_eq!(
            imds_token_url("http://10.0.0.1/custom/token")
                .unwrap()
                .as_str(),
            "http://10.0.0.1/custom/token"
        );
        assert_eq!(
            default_imds_token_url().unwrap().as_str(),
            "http://169.254.169.254/metadata/identity/oauth2/token"
        );
    }

    fn config(collection: &str, pairs: &[(&str, &str)]) -> ProviderConfig {
        ProviderConfig {
            kind: super::super::super::ProviderKind::parse("azurekeyvault").unwrap(),
            key_collection: collection.into(),
            credentials: creds(pairs),
        }
    }

    #[test]
    fn stored_configuration_is_checked_at_write() {
        let tenant = ("tenant_id", "cd4bf224-d114-4f96-9bbc-b8f45751c43f");
        let client = ("client_id", "a0454cd1-e28e-405e-bc50-7477fa8a00b7");
        let secret = ("client_secret", "x~y");
        assert_eq!(validate(&config("kv1", &[tenant, client, secret])), Ok(()));
        let domain = ("tenant_id", "contoso.onmicrosoft.com");
        assert_eq!(validate(&config("kv1", &[domain])), Ok(()));
        let hsm = "https://hsm1.managedhsm.azure.net";
        assert_eq!(validate(&config(hsm, &[])), Ok(()));
        let china = ("environment", "AzureChinaCloud");
        assert_eq!(validate(&config("kv1", &[china])), Ok(()));
        let field = |c: ProviderConfig| validate(&c).unwrap_err().field;
        for collection in [
            "kv\u{7}1",
            "https://kv1.vault.azure.net/#frag",
            "https://kv1.vault.azure.net/?x=1",
            "http://kv1.vault.azure.net",
            "a",
            "bad_name",
        ] {
            assert_eq!(
                field(config(collection, &[])),
                "key_collection",
                "{collection:?}"
            );
        }
        let mars = ("environment", "Mars");
        assert_eq!(field(config("kv1", &[mars])), "credentials.environment");
        let spaced = ("tenant_id", "a b");
        assert_eq!(field(config("kv1", &[spaced])), "credentials.tenant_id");
        let app = ("client_id", "app");
        assert_eq!(field(config("kv1", &[app])), "credentials.client_id");
        let err = validate(&config("kv1", &[("client_secret", "line1\nline2")])).unwrap_err();
        assert_eq!(err.field, "credentials.client_secret");
        assert!(!err.to_string().contains("line1"), "{err}");
    }

    #[test]
    fn overrides_must_be_https() {
        const ENV: &[(&str, &str)] = &[
            (ENV_TENANT_ID, "t"),
            (ENV_KEYVAULT_ENDPOINT, "http://127.0.0.1:1"),
        ];
        assert!(Settings::from_parts("kv1", &creds(&[]), &env_of(ENV)).is_err());
        const ENV2: &[(&str, &str)] = &[
            (ENV_TENANT_ID, "t"),
            (ENV_AUTHORITY_HOST, "http://127.0.0.1:1"),
        ];
        assert!(Settings::from_parts("kv1", &creds(&[]), &env_of(ENV2)).is_err());
    }
}
