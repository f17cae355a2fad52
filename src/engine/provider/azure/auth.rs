//! HTTP transport and token credentials for the Azure provider.
//!
//! Client-secret authentication and the default managed identity are the
//! official `azure_identity` credentials. Two things they cannot do are
//! done here:
//! - trust extra CA certificates: the SDK's default transport uses only the
//!   system roots, so [`http_client`] builds the `reqwest` client the SDK
//!   accepts as its transport, with the roots of [`super::config::ENV_CA_FILE`];
//! - use another IMDS endpoint: `ManagedIdentityCredential` hard-codes
//!   `169.254.169.254`, so when [`super::config::ENV_IMDS_ENDPOINT`] is set
//!   the small [`ImdsCredential`] below speaks the documented IMDS protocol
//!   (key-transfer reference §3.1) to the given URL instead.

use std::sync::Arc;
use std::time::Duration;

use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::{AccessToken, Secret, TokenCredential, TokenRequestOptions};
use azure_core::error::{Error as AzureError, ErrorKind};
use azure_core::http::{ClientOptions, RetryOptions, StatusCode, Transport, Url};
use azure_identity::{
    ClientSecretCredential, ClientSecretCredentialOptions, ManagedIdentityCredential,
    ManagedIdentityCredentialOptions, UserAssignedId,
};

use super::super::ProviderError;
use super::config::{ENV_CA_FILE, Identity, Settings};

/// IMDS api-version of the documented VM token protocol.
const IMDS_API_VERSION: &str = "2018-02-01";

/// Builds the HTTP client every Azure call goes through.
///
/// Timeouts bound a hung connection (the retry loop then decides); redirects
/// are off as in the SDK's own client, since Key Vault never redirects and
/// following one could send a bearer token elsewhere.
pub fn http_client(settings: &Settings) -> Result<reqwest::Client, ProviderError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(path) = &settings.ca_file {
        let pem = std::fs::read(path).map_err(|e| {
            ProviderError::Config(format!("reading {ENV_CA_FILE} {}: {e}", path.display()))
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            ProviderError::Config(format!(
                "{ENV_CA_FILE} {} holds no usable PEM certificates: {e}",
                path.display()
            ))
        })?;
        if certs.is_empty() {
            return Err(ProviderError::Config(format!(
                "{ENV_CA_FILE} {} holds no PEM certificates",
                path.display()
            )));
        }
        builder = builder.tls_certs_merge(certs);
    }
    builder
        .build()
        .map_err(|e| ProviderError::Config(format!("building the HTTPS client failed: {e}")))
}

/// SDK client options sharing our transport, with the SDK's retries off:
/// the provider's own retry loop (see `retry.rs`) is the only one.
pub fn client_options(http: &reqwest::Client) -> ClientOptions {
    ClientOptions {
        transport: Some(Transport::new(Arc::new(http.clone()))),
        retry: RetryOptions::none(),
        ..Default::default()
    }
}

/// The token credential for the configured identity, limited to the
/// environment's Key Vault scopes.
pub fn credential(
    settings: &Settings,
    http: &reqwest::Client,
) -> Result<Arc<dyn TokenCredential>, ProviderError> {
    let inner = identity_credential(settings, http)?;
    Ok(Arc::new(ScopeGuard::new(
        inner,
        settings.environment.keyvault_scopes(),
    )))
}

fn identity_credential(
    settings: &Settings,
    http: &reqwest::Client,
) -> Result<Arc<dyn TokenCredential>, ProviderError> {
    let failed = |e: AzureError| ProviderError::Config(format!("Azure credentials: {e}"));
    match &settings.identity {
        Identity::ClientSecret {
            client_id,
            client_secret,
        } => {
            let mut cloud = CustomConfiguration::default();
            cloud.authority_host = settings
                .authority_host
                .as_str()
                .trim_end_matches('/')
                .to_owned();
            let options = ClientSecretCredentialOptions {
                client_options: ClientOptions {
                    cloud: Some(Arc::new(CloudConfiguration::Custom(cloud))),
                    ..client_options(http)
                },
            };
            let credential = ClientSecretCredential::new(
                &settings.tenant_id,
                client_id.clone(),
                Secret::new(client_secret.to_string()),
                Some(options),
            )
            .map_err(failed)?;
            Ok(credential)
        }
        Identity::ManagedIdentity { client_id } => match &settings.imds_endpoint {
            Some(endpoint) => Ok(Arc::new(ImdsCredential {
                http: http.clone(),
                endpoint: endpoint.clone(),
                client_id: client_id.clone(),
            })),
            None => {
                let options = ManagedIdentityCredentialOptions {
                    user_assigned_id: client_id.clone().map(UserAssignedId::ClientId),
                    client_options: client_options(http),
                };
                let credential = ManagedIdentityCredential::new(Some(options)).map_err(failed)?;
                Ok(credential)
            }
        },
    }
}

/// Hands out tokens only for the Key Vault scopes of the configured cloud.
///
/// The Key Vault client learns the scope from the vault's 401 challenge.
/// With a redirected endpoint the SDK's check that the challenge matches
/// the vault's domain must be off, so this guard keeps a wrong or hostile
/// endpoint from obtaining a token for another service (say, Azure
/// Resource Manager) with our identity.
#[derive(Debug)]
pub struct ScopeGuard {
    inner: Arc<dyn TokenCredential>,
    allowed: [&'static str; 2],
}

impl ScopeGuard {
    /// Wraps `inner`, allowing only `allowed`.
    pub fn new(inner: Arc<dyn TokenCredential>, allowed: [&'static str; 2]) -> Self {
        Self { inner, allowed }
    }
}

#[async_trait::async_trait]
impl TokenCredential for ScopeGuard {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        if let Some(bad) = scopes.iter().find(|s| {
            !self
                .allowed
                .iter()
                .any(|a| a.eq_ignore_ascii_case(s.trim_end_matches('/')))
        }) {
            return Err(AzureError::with_message(
                ErrorKind::Credential,
                format!(
                    "the Key Vault endpoint asked for a token for {bad:?}, which is not a Key Vault scope of this Azure environment ({})",
                    self.allowed.join(", ")
                ),
            ));
        }
        self.inner.get_token(scopes, options).await
    }
}

/// Managed-identity tokens from an IMDS endpoint at a configurable URL.
///
/// Errors are `ErrorKind::Credential` wrapping the HTTP or network error,
/// the shape `azure_identity` uses, so the provider classifies both alike.
#[derive(Debug)]
pub struct ImdsCredential {
    http: reqwest::Client,
    endpoint: Url,
    client_id: Option<String>,
}

#[derive(serde::Deserialize)]
struct ImdsToken {
    access_token: String,
    expires_on: String,
}

fn credential_error(inner: AzureError, what: &str) -> AzureError {
    let message = format!("managed identity (IMDS) authentication failed: {what}");
    AzureError::with_error(ErrorKind::Credential, inner, message)
}

impl ImdsCredential {
    async fn fetch(&self, scopes: &[&str]) -> azure_core::Result<AccessToken> {
        let [scope] = scopes else {
            return Err(AzureError::with_message(
                ErrorKind::Credential,
                "a managed identity token is for exactly one scope",
            ));
        };
        let resource = scope.strip_suffix("/.default").unwrap_or(scope);
        let mut url = self.endpoint.clone();
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("api-version", IMDS_API_VERSION);
            query.append_pair("resource", resource);
            if let Some(id) = &self.client_id {
                query.append_pair("client_id", id);
            }
        }
        let response = self
            .http
            .get(url)
            .header("Metadata", "true")
            .send()
            .await
            .map_err(|e| {
                let kind = if e.is_connect() {
                    ErrorKind::Connection
                } else {
                    ErrorKind::Io
                };
                credential_error(
                    AzureError::with_error(kind, e, "IMDS request failed"),
                    "network error",
                )
            })?;
        let status = StatusCode::from(response.status().as_u16());
        let body = response.bytes().await.map_err(|e| {
            credential_error(
                AzureError::with_error(ErrorKind::Io, e, "reading the IMDS response failed"),
                "network error",
            )
        })?;
        if !status.is_success() {
            // IMDS errors are {"error", "error_description"}; neither holds a token.
            let description = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| {
                    let error = v.get("error")?.as_str()?.to_owned();
                    let description = v
                        .get("error_description")
                        .and_then(|d| d.as_str())
                        .unwrap_or_default();
                    Some(format!("{error}: {description}"))
                })
                .unwrap_or_else(|| format!("HTTP {}", u16::from(status)));
            let inner = AzureError::with_message(
                ErrorKind::HttpResponse {
                    status,
                    error_code: None,
                    raw_response: None,
                },
                description.clone(),
            );
            return Err(credential_error(inner, &description));
        }
        let token: ImdsToken = serde_json::from_slice(&body).map_err(|_| {
            AzureError::with_message(
                ErrorKind::Credential,
                "IMDS returned an unreadable token response",
            )
        })?;
        let expires_on = token
            .expires_on
            .trim()
            .parse::<i64>()
            .ok()
            .and_then(|s| azure_core::time::OffsetDateTime::from_unix_timestamp(s).ok())
            .ok_or_else(|| {
                AzureError::with_message(
                    ErrorKind::Credential,
                    "IMDS returned an invalid expires_on",
                )
            })?;
        Ok(AccessToken::new(token.access_token, expires_on))
    }
}

#[async_trait::async_trait]
impl TokenCredential for ImdsCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        self.fetch(scopes).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use azure_core::time::OffsetDateTime;

    #[derive(Debug)]
    struct Fixed;

    #[async_trait::async_trait]
    impl TokenCredential for Fixed {
        async fn get_token(
            &self,
            _scopes: &[&str],
            _options: Option<TokenRequestOptions<'_>>,
        ) -> azure_core::Result<AccessToken> {
            Ok(AccessToken::new("t", OffsetDateTime::now_utc()))
        }
    }

    #[tokio::test]
    async fn only_key_vault_scopes_get_tokens() {
        let guard = ScopeGuard::new(
            Arc::new(Fixed),
            super::super::config::Environment::Public.keyvault_scopes(),
        );
        assert!(
            guard
                .get_token(&["https://vault.azure.net/.default"], None)
                .await
                .is_ok()
        );
        assert!(
            guard
                .get_token(&["https://managedhsm.azure.net/.default"], None)
                .await
                .is_ok()
        );
        let err = guard
            .get_token(&["https://management.azure.com/.default"], None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not a Key Vault scope"), "{err}");
        let gov = ScopeGuard::new(
            Arc::new(Fixed),
            super::super::config::Environment::UsGovernment.keyvault_scopes(),
        );
        assert!(
            gov.get_token(&["https://vault.azure.net/.default"], None)
                .await
                .is_err()
        );
    }
}
