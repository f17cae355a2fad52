//! Key Vault calls with retries and error mapping.
//!
//! Every call goes through [`KeyVault::call`]: transient failures (429,
//! 5xx, timeouts, dropped connections, and the same from Entra ID) are
//! retried under [`RetryPolicy`]; the rest become [`ProviderError`]s whose
//! messages say what was attempted and, for 401/403, which Key Vault key
//! permission is missing. Messages are built from status codes and the
//! service's error code and message only: never from request bodies,
//! headers or tokens.

use std::future::Future;
use std::time::Duration;

use azure_core::error::{Error as AzureError, ErrorKind};
use azure_core::http::headers::HeaderName;
use azure_core::http::{RawResponse, RequestContent, StatusCode};
use azure_security_keyvault_keys::KeyClient;
use azure_security_keyvault_keys::models::{
    CreateKeyParameters, ImportKeyParameters, Key, KeyAttributes, KeyClientGetKeyOptions,
    KeyClientUpdateKeyPropertiesOptions, KeyProperties, UpdateKeyPropertiesParameters,
};
use bytes::Bytes;
use futures_util::TryStreamExt;

use super::super::ProviderError;
use super::super::client::retry::{
    self, RetryPolicy, Stop, parse_retry_after, parse_retry_after_ms,
};
use super::super::client::{bounded, error_chain, first_line};

/// What a call was for: names the permission a 403 points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `POST /keys/{kek}/create`.
    CreateKek,
    /// `PUT /keys/{name}`.
    Import,
    /// `GET /keys/{name}/{version}`.
    Get,
    /// `PATCH /keys/{name}/{version}`.
    Update,
    /// `DELETE /keys/{name}`.
    Delete,
    /// `GET /keys/{name}/versions`.
    List,
    /// `GET /deletedkeys/{name}`.
    GetDeleted,
    /// `DELETE /deletedkeys/{name}`.
    Purge,
}

impl Op {
    /// The Key Vault key permission (access-policy name) the call needs.
    pub fn permission(self) -> &'static str {
        match self {
            Self::CreateKek => "create",
            Self::Import => "import",
            Self::Get => "get",
            Self::Update => "update",
            Self::Delete => "delete",
            Self::List => "list",
            Self::GetDeleted => "get",
            Self::Purge => "purge",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::CreateKek => "creating the key-exchange key",
            Self::Import => "importing the key",
            Self::Get => "reading the key",
            Self::Update => "updating a key version",
            Self::Delete => "deleting the key",
            Self::List => "listing the key's versions",
            Self::GetDeleted => "reading the deleted key",
            Self::Purge => "purging the deleted key",
        }
    }
}

/// How a failed attempt continues.
#[derive(Debug)]
pub enum Failure {
    /// Worth another attempt, no sooner than `retry_after` if given.
    Transient {
        /// What the service asked for.
        retry_after: Option<Duration>,
        /// Summary for the final error if retries run out.
        detail: String,
    },
    /// 404: the caller decides whether that is fine.
    NotFound,
    /// Final.
    Fatal(ProviderError),
}

/// What a call ends with when it does not succeed: a 404 (`None`), or a
/// provider error.
enum Unsuccessful {
    NotFound,
    Failed(ProviderError),
}

/// `code: message` from a Key Vault (`{"error":{"code","message"}}`) or
/// Entra ID (`{"error","error_description"}`) error body.
fn service_message(raw: &RawResponse) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(raw.body()).ok()?;
    let error = value.get("error")?;
    let text = match error {
        serde_json::Value::Object(e) => {
            let code = e.get("code").and_then(|c| c.as_str()).unwrap_or("error");
            let message = e.get("message").and_then(|m| m.as_str()).unwrap_or("");
            format!("{code}: {message}")
        }
        serde_json::Value::String(code) => {
            let description = value
                .get("error_description")
                .and_then(|d| d.as_str())
                .unwrap_or("");
            format!("{code}: {description}")
        }
        _ => return None,
    };
    Some(bounded(text))
}

fn retry_after(raw: &RawResponse) -> Option<Duration> {
    let headers = raw.headers();
    for name in ["retry-after-ms", "x-ms-retry-after-ms"] {
        if let Some(d) = headers
            .get_optional_str(&HeaderName::from_static(name))
            .and_then(parse_retry_after_ms)
        {
            return Some(d);
        }
    }
    headers
        .get_optional_str(&HeaderName::from_static("retry-after"))
        .and_then(|v| parse_retry_after(v, time::OffsetDateTime::now_utc()))
}

fn is_transient_status(status: StatusCode) -> bool {
    let code = u16::from(status);
    code == 408 || code == 429 || (code >= 500 && code != 501 && code != 505)
}

/// Classifies one failed attempt of `op` against `vault`.
pub fn classify(err: &AzureError, op: Op, vault: &str) -> Failure {
    match err.kind() {
        ErrorKind::HttpResponse {
            status,
            raw_response,
            ..
        } => {
            let code = u16::from(*status);
            let detail = raw_response
                .as_deref()
                .and_then(service_message)
                .unwrap_or_else(|| first_line(err));
            let detail = format!("HTTP {code} from {vault}: {detail}");
            if is_transient_status(*status) {
                return Failure::Transient {
                    retry_after: raw_response.as_deref().and_then(retry_after),
                    detail,
                };
            }
            match code {
                401 => Failure::Fatal(ProviderError::Permission(format!(
                    "Azure Key Vault rejected the authentication while {} ({detail}); check the provider's credentials",
                    op.describe()
                ))),
                403 => Failure::Fatal(ProviderError::Permission(format!(
                    "Azure Key Vault denied {} ({detail}); the identity needs the \"{}\" key permission on the vault (access policy key permissions create, delete, get, import and update, or an RBAC role such as Key Vault Crypto Officer)",
                    op.describe(),
                    op.permission()
                ))),
                404 => Failure::NotFound,
                _ => Failure::Fatal(ProviderError::Rejected(format!(
                    "Azure Key Vault refused {}: {detail}",
                    op.describe()
                ))),
            }
        }
        ErrorKind::Connection | ErrorKind::Io => Failure::Transient {
            retry_after: None,
            detail: format!("network error talking to {vault}: {}", error_chain(err)),
        },
        ErrorKind::Credential => {
            // Entra ID or IMDS failed: the wrapped error says whether trying
            // again can help.
            let inner = err.get_ref().and_then(|e| e.downcast_ref::<AzureError>());
            let transient = inner.is_some_and(|inner| match inner.kind() {
                ErrorKind::HttpResponse { status, .. } => is_transient_status(*status),
                ErrorKind::Connection | ErrorKind::Io => true,
                _ => false,
            });
            let detail = first_line(err);
            if transient {
                Failure::Transient {
                    retry_after: None,
                    detail: format!("authenticating with Microsoft Entra ID failed: {detail}"),
                }
            } else {
                Failure::Fatal(ProviderError::Permission(format!(
                    "authenticating to Azure failed while {}: {detail}; check tenant_id, client_id and client_secret (or the managed identity)",
                    op.describe()
                )))
            }
        }
        _ => Failure::Fatal(ProviderError::Rejected(format!(
            "{} in {vault} failed: {}",
            op.describe(),
            first_line(err)
        ))),
    }
}

/// Whether `err` is Key Vault's refusal to show a disabled key version:
/// `403 Forbidden` with inner error `KeyDisabled` ("Operation get is not
/// allowed on a disabled key."). Key Vault answers `GET /keys/{name}` and
/// `GET /keys/{name}/{version}` so for a disabled version, also when the
/// identity holds every permission.
pub fn is_key_disabled(err: &AzureError) -> bool {
    let ErrorKind::HttpResponse {
        status,
        raw_response: Some(raw),
        ..
    } = err.kind()
    else {
        return false;
    };
    if u16::from(*status) != 403 {
        return false;
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(raw.body()) else {
        return false;
    };
    let error = &value["error"];
    let inner = error["innererror"]["code"]
        .as_str()
        .or_else(|| error["innerError"]["code"].as_str());
    inner == Some("KeyDisabled")
        || error["message"]
            .as_str()
            .is_some_and(|m| m.contains("not allowed on a disabled key"))
}

/// The Key Vault REST calls the provider makes, each sent once: retries
/// are [`KeyVault::call`]'s. The SDK implements it for the real service
/// and the unit tests' double in memory.
#[async_trait::async_trait]
pub trait KeyVaultApi: Send + Sync {
    /// The vault host, for messages.
    fn vault(&self) -> &str;
    /// `POST /keys/{name}/create`.
    async fn create_key(
        &self,
        name: &str,
        parameters: CreateKeyParameters,
    ) -> Result<Key, AzureError>;
    /// `PUT /keys/{name}` with a prepared `KeyImportParameters` body.
    async fn import_key(&self, name: &str, body: Bytes) -> Result<Key, AzureError>;
    /// `GET /keys/{name}` (the latest version).
    async fn latest(&self, name: &str) -> Result<Key, AzureError>;
    /// `PATCH /keys/{name}/{version}` setting `attributes.enabled`.
    async fn set_enabled(&self, name: &str, version: &str, enabled: bool)
    -> Result<(), AzureError>;
    /// `DELETE /keys/{name}`.
    async fn delete_key(&self, name: &str) -> Result<(), AzureError>;
    /// `GET /keys/{name}/versions`, every page.
    async fn versions(&self, name: &str) -> Result<Vec<KeyProperties>, AzureError>;
    /// `GET /keys/{name}/{version}`.
    async fn version(&self, name: &str, version: &str) -> Result<Key, AzureError>;
    /// `GET /deletedkeys/{name}`: succeeds when a soft-deleted key holds
    /// the name.
    async fn deleted(&self, name: &str) -> Result<(), AzureError>;
    /// `DELETE /deletedkeys/{name}`.
    async fn purge(&self, name: &str) -> Result<(), AzureError>;
}

/// The official SDK client.
pub struct SdkKeyVault {
    client: KeyClient,
    vault: String,
}

impl SdkKeyVault {
    pub fn new(client: KeyClient) -> Self {
        let vault = client
            .endpoint()
            .host_str()
            .unwrap_or("the vault")
            .to_owned();
        Self { client, vault }
    }
}

#[async_trait::async_trait]
impl KeyVaultApi for SdkKeyVault {
    fn vault(&self) -> &str {
        &self.vault
    }

    async fn create_key(
        &self,
        name: &str,
        parameters: CreateKeyParameters,
    ) -> Result<Key, AzureError> {
        let content: RequestContent<CreateKeyParameters> = parameters.try_into()?;
        self.client
            .create_key(name, content, None)
            .await?
            .into_model()
    }

    async fn import_key(&self, name: &str, body: Bytes) -> Result<Key, AzureError> {
        let content = <RequestContent<ImportKeyParameters> as From<Bytes>>::from(body);
        self.client
            .import_key(name, content, None)
            .await?
            .into_model()
    }

    async fn latest(&self, name: &str) -> Result<Key, AzureError> {
        let options = KeyClientGetKeyOptions {
            key_version: None,
            ..Default::default()
        };
        self.client.get_key(name, Some(options)).await?.into_model()
    }

    async fn set_enabled(
        &self,
        name: &str,
        version: &str,
        enabled: bool,
    ) -> Result<(), AzureError> {
        let parameters = UpdateKeyPropertiesParameters {
            key_attributes: Some(KeyAttributes {
                enabled: Some(enabled),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = KeyClientUpdateKeyPropertiesOptions {
            key_version: Some(version.to_owned()),
            ..Default::default()
        };
        self.client
            .update_key_properties(name, parameters.try_into()?, Some(options))
            .await?;
        Ok(())
    }

    async fn delete_key(&self, name: &str) -> Result<(), AzureError> {
        self.client.delete_key(name, None).await?;
        Ok(())
    }

    async fn versions(&self, name: &str) -> Result<Vec<KeyProperties>, AzureError> {
        let mut pager = self.client.list_key_properties_versions(name, None)?;
        let mut all = Vec::new();
        while let Some(version) = pager.try_next().await? {
            all.push(version);
        }
        Ok(all)
    }

    async fn version(&self, name: &str, version: &str) -> Result<Key, AzureError> {
        let options = KeyClientGetKeyOptions {
            key_version: Some(version.to_owned()),
            ..Default::default()
        };
        self.client.get_key(name, Some(options)).await?.into_model()
    }

    async fn deleted(&self, name: &str) -> Result<(), AzureError> {
        self.client.get_deleted_key(name, None).await?;
        Ok(())
    }

    async fn purge(&self, name: &str) -> Result<(), AzureError> {
        self.client.purge_deleted_key(name, None).await?;
        Ok(())
    }
}

/// A Key Vault API with the provider's retry policy.
pub struct KeyVault {
    pub api: std::sync::Arc<dyn KeyVaultApi>,
    policy: RetryPolicy,
}

impl KeyVault {
    pub fn new(api: std::sync::Arc<dyn KeyVaultApi>, policy: RetryPolicy) -> Self {
        Self { api, policy }
    }

    /// The vault host, for messages.
    pub fn vault(&self) -> &str {
        self.api.vault()
    }

    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }

    /// Runs `attempt` until it succeeds, fails for good, or the retry
    /// policy gives up. `Ok(None)` means 404. `attempt` gets the number of
    /// failures so far, so an import can check for a lost success first.
    pub async fn call<T, F, Fut>(&self, op: Op, mut attempt: F) -> Result<Option<T>, ProviderError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, AzureError>>,
    {
        let vault = self.vault();
        let label = format!("azure key vault: {}", op.describe());
        let result = retry::run(&self.policy, &label, |failures| {
            let attempt = attempt(failures);
            async move {
                let result = attempt.await;
                crate::failpoints::hit(crate::failpoints::Site::ProviderCall);
                result.map_err(|err| match classify(&err, op, vault) {
                    Failure::Transient {
                        retry_after,
                        detail,
                    } => retry::Failure::Transient {
                        retry_after,
                        detail,
                    },
                    Failure::NotFound => retry::Failure::Final(Unsuccessful::NotFound),
                    Failure::Fatal(e) => retry::Failure::Final(Unsuccessful::Failed(e)),
                })
            }
        })
        .await;
        match result {
            Ok(value) => Ok(Some(value)),
            Err(Stop::Final(Unsuccessful::NotFound)) => Ok(None),
            Err(Stop::Final(Unsuccessful::Failed(e))) => Err(e),
            Err(Stop::GaveUp {
                attempts,
                elapsed,
                detail,
            }) => Err(ProviderError::Unavailable(format!(
                "{} in Azure Key Vault failed after {attempts} attempts over {} s: {detail}",
                op.describe(),
                elapsed.as_secs()
            ))),
        }
    }

    /// Like [`Self::call`] but a 404 is an error naming `what`.
    pub async fn call_found<T, F, Fut>(
        &self,
        op: Op,
        what: &str,
        attempt: F,
    ) -> Result<T, ProviderError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, AzureError>>,
    {
        self.call(op, attempt).await?.ok_or_else(|| {
            ProviderError::Rejected(format!(
                "{what} was not found in Azure Key Vault {} while {}",
                self.vault(),
                op.describe()
            ))
        })
    }
}

/// The version segment of a versioned key id
/// (`https://<vault>/keys/<name>/<version>`).
pub fn version_of(kid: &str) -> Option<&str> {
    let path = kid.split(['?', '#']).next()?;
    let mut segments = path.trim_end_matches('/').rsplit('/');
    let version = segments.next()?;
    let _name = segments.next()?;
    (segments.next()? == "keys" && !version.is_empty()).then_some(version)
}

/// An SDK error as an HTTP response would produce it, for test doubles.
#[cfg(test)]
pub fn http_error(status: u16, headers: &[(&'static str, &str)], body: &str) -> AzureError {
    use azure_core::http::headers::Headers;
    let mut h = Headers::new();
    for (k, v) in headers {
        h.insert(HeaderName::from_static(k), (*v).to_owned());
    }
    let raw = RawResponse::from_bytes(StatusCode::from(status), h, body.as_bytes().to_vec());
    AzureError::with_message(
        ErrorKind::HttpResponse {
            status: StatusCode::from(status),
            error_code: None,
            raw_response: Some(Box::new(raw)),
        },
        "failed",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const KV_ERROR: &str = r#"{"error":{"code":"Forbidden","message":"The user does not have keys import permission"}}"#;

    #[test]
    fn throttling_and_server_errors_are_transient() {
        for status in [408, 429, 500, 502, 503, 504] {
            let failure = classify(
                &http_error(status, &[("retry-after", "2")], "{}"),
                Op::Import,
                "kv",
            );
            match failure {
                Failure::Transient { retry_after, .. } => {
                    assert_eq!(retry_after, Some(Duration::from_secs(2)), "{status}")
                }
                other => panic!("{status}: {other:?}"),
            }
        }
        let ms = classify(
            &http_error(429, &[("retry-after-ms", "1500"), ("retry-after", "9")], ""),
            Op::Get,
            "kv",
        );
        assert!(
            matches!(ms, Failure::Transient { retry_after: Some(d), .. } if d == Duration::from_millis(1500))
        );
        assert!(matches!(
            classify(
                &AzureError::with_message(ErrorKind::Io, "reset"),
                Op::Get,
                "kv"
            ),
            Failure::Transient {
                retry_after: None,
                ..
            }
        ));
        assert!(matches!(
            classify(&http_error(501, &[], ""), Op::Get, "kv"),
            Failure::Fatal(ProviderError::Rejected(_))
        ));
    }

    #[test]
    fn forbidden_names_the_missing_permission() {
        for (op, permission) in [
            (Op::CreateKek, "create"),
            (Op::Import, "import"),
            (Op::Get, "get"),
            (Op::Update, "update"),
            (Op::Delete, "delete"),
            (Op::List, "list"),
            (Op::GetDeleted, "get"),
            (Op::Purge, "purge"),
        ] {
            match classify(&http_error(403, &[], KV_ERROR), op, "kv1.vault.azure.net") {
                Failure::Fatal(ProviderError::Permission(m)) => {
                    assert!(
                        m.contains(&format!("\"{permission}\" key permission")),
                        "{m}"
                    );
                    assert!(m.contains("kv1.vault.azure.net"), "{m}");
                    assert!(m.contains("keys import permission"), "{m}");
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            classify(&http_error(401, &[], "{}"), Op::Get, "kv"),
            Failure::Fatal(ProviderError::Permission(_))
        ));
    }

    #[test]
    fn other_client_errors() {
        assert!(matches!(
            classify(&http_error(404, &[], KV_ERROR), Op::Get, "kv"),
            Failure::NotFound
        ));
        match classify(
            &http_error(
                400,
                &[],
                r#"{"error":{"code":"BadParameter","message":"bad kty"}}"#,
            ),
            Op::Import,
            "kv",
        ) {
            Failure::Fatal(ProviderError::Rejected(m)) => {
                assert!(m.contains("BadParameter: bad kty"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn credential_errors() {
        let inner = http_error(
            401,
            &[],
            r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided."}"#,
        );
        let err = AzureError::with_error(
            ErrorKind::Credential,
            inner,
            "ClientSecretCredential authentication failed. AADSTS7000215\nTo troubleshoot, visit https://aka.ms/x",
        );
        match classify(&err, Op::Import, "kv") {
            Failure::Fatal(ProviderError::Permission(m)) => {
                assert!(m.contains("AADSTS7000215"), "{m}");
                assert!(!m.contains("troubleshoot"), "{m}");
            }
            other => panic!("{other:?}"),
        }
        let err = AzureError::with_error(
            ErrorKind::Credential,
            http_error(503, &[], ""),
            "unavailable",
        );
        assert!(matches!(
            classify(&err, Op::Import, "kv"),
            Failure::Transient { .. }
        ));
        let err = AzureError::with_error(
            ErrorKind::Credential,
            AzureError::with_message(ErrorKind::Connection, "refused"),
            "down",
        );
        assert!(matches!(
            classify(&err, Op::Import, "kv"),
            Failure::Transient { .. }
        ));
    }

    #[test]
    fn details_are_bounded() {
        let long = format!(
            r#"{{"error":{{"code":"X","message":"{}"}}}}"#,
            "é".repeat(1000)
        );
        match classify(&http_error(400, &[], &long), Op::Import, "kv") {
            Failure::Fatal(ProviderError::Rejected(m)) => assert!(m.len() < 600, "{}", m.len()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn disabled_keys_are_told_from_denials() {
        let disabled = r#"{"error":{"code":"Forbidden","message":"Operation get is not allowed on a disabled key.","innererror":{"code":"KeyDisabled"}}}"#;
        assert!(is_key_disabled(&http_error(403, &[], disabled)));
        assert!(!is_key_disabled(&http_error(403, &[], KV_ERROR)));
        assert!(!is_key_disabled(&http_error(404, &[], disabled)));
        assert!(!is_key_disabled(&AzureError::with_message(
            ErrorKind::Io,
            "reset"
        )));
    }

    #[test]
    fn versions_from_key_ids() {
        assert_eq!(
            version_of(
                "https://kv1.vault.azure.net/keys/example-key-1/0123456789abcdef0123456789abcdef"
            ),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert_eq!(version_of("https://127.0.0.1:8443/keys/k/abc"), Some("abc"));
        assert_eq!(version_of("https://kv1.vault.azure.net/keys/k"), None);
        assert_eq!(version_of("nonsense"), None);
    }
}
