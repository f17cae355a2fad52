//! The AWS KMS calls the provider makes, and how their errors are read.
//!
//! [`KmsApi`] is the provider's whole view of AWS: one method per KMS
//! action, each sent once (the provider's retry loop decides about
//! repeats). [`SdkKms`] implements it with the official `aws-sdk-kms`,
//! whose own retries are switched off; the unit tests' double implements it
//! in memory. Errors are reduced to [`ApiError`]: a class, AWS's error code
//! and a bounded message, never a request, a header or a signature.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region, SharedCredentialsProvider};
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{
    AlgorithmSpec, ExpirationModelType, KeySpec, KeyState, KeyUsageType, OriginType, Tag,
    WrappingKeySpec,
};
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore, rustls_provider::CryptoMode};
use tokio::sync::{Mutex, OnceCell};
use zeroize::Zeroizing;

use super::super::ProviderError;
pub use super::super::client::{ApiError, ErrorClass};
use super::super::client::{error_chain, read_ca_bundle};
use super::config::{ENV_CA_FILE, Settings};

/// Classifies an AWS error code (the `__type` of an awsJson error).
pub fn class_of(code: &str, status: Option<u16>) -> ErrorClass {
    match code {
        "ThrottlingException" | "TooManyRequestsException" | "RequestLimitExceeded" => {
            ErrorClass::Throttled
        }
        "KMSInternalException"
        | "DependencyTimeoutException"
        | "InternalFailure"
        | "ServiceUnavailable"
        | "ServiceUnavailableException"
        | "InternalError" => ErrorClass::Unavailable,
        "AccessDeniedException"
        | "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "IncompleteSignature"
        | "InvalidClientTokenId"
        | "ExpiredTokenException"
        | "MissingAuthenticationToken" => ErrorClass::AccessDenied,
        "NotFoundException" => ErrorClass::NotFound,
        "AlreadyExistsException" => ErrorClass::AlreadyExists,
        // A disabled key refuses what needs an enabled one (GetPublicKey).
        "KMSInvalidStateException" | "DisabledException" => ErrorClass::InvalidState,
        _ => match status {
            Some(s) if s >= 500 => ErrorClass::Unavailable,
            Some(429) => ErrorClass::Throttled,
            Some(401 | 403) => ErrorClass::AccessDenied,
            _ => ErrorClass::Invalid,
        },
    }
}

/// Reads an SDK error without its request: the code, the message and
/// the status only.
fn from_sdk<E>(err: SdkError<E, aws_sdk_kms::config::http::HttpResponse>) -> ApiError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match &err {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let inner = service.err();
            let code = inner.code().unwrap_or("UnknownError");
            ApiError::new(
                class_of(code, Some(status)),
                code,
                inner.message().unwrap_or_default(),
            )
        }
        SdkError::TimeoutError(_) => ApiError::new(
            ErrorClass::Network,
            "timeout",
            "no answer within the time limit",
        ),
        SdkError::DispatchFailure(failure) => {
            let connector = failure.as_connector_error();
            let detail = connector
                .map(|c| error_chain(c))
                .unwrap_or_else(|| "the request could not be sent".into());
            // Not sent at all: no credentials could be found or loaded. An
            // operator must fix that; retrying cannot.
            if connector.is_some_and(|c| c.is_other() || c.is_user())
                && detail.contains("credentials")
            {
                return ApiError::new(ErrorClass::AccessDenied, "no usable credentials", &detail);
            }
            // An endpoint whose certificate is not trusted will not become
            // trusted by retrying.
            if detail.contains("certificate") || detail.contains("UnknownIssuer") {
                return ApiError::new(
                    ErrorClass::Invalid,
                    "untrusted endpoint",
                    &format!("{detail}; trust its CA with {ENV_CA_FILE}"),
                );
            }
            ApiError::new(ErrorClass::Network, "connection failed", &detail)
        }
        SdkError::ResponseError(_) => ApiError::new(
            ErrorClass::Network,
            "response failed",
            "the answer was cut off or unreadable",
        ),
        _ => ApiError::new(ErrorClass::Invalid, "request failed", &error_chain(&err)),
    }
}

/// A KMS key's state as `DescribeKey` gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub key_id: String,
    pub state: KeyState,
    pub multi_region: bool,
    /// `None` when AWS did not say.
    pub key_spec: Option<KeySpec>,
}

/// `GetParametersForImport`'s answer. The token is not secret (it only
/// works with the matching private key, which never leaves KMS) but it is
/// single-use material, so it is wiped.
pub struct ImportParameters {
    pub token: Zeroizing<Vec<u8>>,
    /// SubjectPublicKeyInfo DER of the RSA wrapping key.
    pub public_key_der: Vec<u8>,
}

/// What `CreateKey` is asked for.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub key_spec: KeySpec,
    pub key_usage: KeyUsageType,
    pub multi_region: bool,
    pub description: String,
    pub tags: Vec<(String, String)>,
}

/// One page of `ListKeys`.
pub struct KeyPage {
    pub key_ids: Vec<String>,
    pub next_marker: Option<String>,
}

/// The KMS actions the provider uses. `region` selects the regional
/// endpoint; everything else follows the AWS API.
#[async_trait::async_trait]
pub trait KmsApi: Send + Sync {
    /// `CreateKey` with `Origin=EXTERNAL`; returns the key id.
    async fn create_key(&self, region: &str, key: &NewKey) -> Result<String, ApiError>;
    /// `DescribeKey` of a key id, ARN or `alias/...` name.
    async fn describe_key(&self, region: &str, key_id: &str) -> Result<KeyInfo, ApiError>;
    /// `GetParametersForImport` with an RSA-4096 wrapping key.
    async fn get_parameters_for_import(
        &self,
        region: &str,
        key_id: &str,
        algorithm: AlgorithmSpec,
    ) -> Result<ImportParameters, ApiError>;
    /// `ImportKeyMaterial` with `KEY_MATERIAL_DOES_NOT_EXPIRE`.
    async fn import_key_material(
        &self,
        region: &str,
        key_id: &str,
        token: &[u8],
        encrypted: Vec<u8>,
    ) -> Result<(), ApiError>;
    async fn enable_key(&self, region: &str, key_id: &str) -> Result<(), ApiError>;
    /// `GetPublicKey` of an asymmetric key: its SubjectPublicKeyInfo DER.
    async fn get_public_key(&self, region: &str, key_id: &str) -> Result<Vec<u8>, ApiError>;
    async fn disable_key(&self, region: &str, key_id: &str) -> Result<(), ApiError>;
    /// `ScheduleKeyDeletion` with `PendingWindowInDays`.
    async fn schedule_key_deletion(
        &self,
        region: &str,
        key_id: &str,
        days: i32,
    ) -> Result<(), ApiError>;
    async fn list_keys(&self, region: &str, marker: Option<String>) -> Result<KeyPage, ApiError>;
    /// `ListResourceTags` (the first 50 tags: ours are fewer).
    async fn list_resource_tags(
        &self,
        region: &str,
        key_id: &str,
    ) -> Result<Vec<(String, String)>, ApiError>;
    async fn create_alias(&self, region: &str, alias: &str, key_id: &str) -> Result<(), ApiError>;
    async fn update_alias(&self, region: &str, alias: &str, key_id: &str) -> Result<(), ApiError>;
    async fn delete_alias(&self, region: &str, alias: &str) -> Result<(), ApiError>;
    /// `ReplicateKey` of a multi-Region primary into `replica_region`.
    async fn replicate_key(
        &self,
        region: &str,
        key_id: &str,
        replica_region: &str,
        tags: &[(String, String)],
    ) -> Result<(), ApiError>;
}

/// The official SDK. Clients are built on first use (the credential
/// chain's set-up is asynchronous), one per region, sharing one HTTPS
/// client and one credentials provider.
pub struct SdkKms {
    settings: Settings,
    shared: OnceCell<Shared>,
    clients: Mutex<HashMap<String, aws_sdk_kms::Client>>,
}

struct Shared {
    http: Option<aws_sdk_kms::config::SharedHttpClient>,
    credentials: SharedCredentialsProvider,
}

impl SdkKms {
    pub fn new(settings: Settings) -> Result<Self, ProviderError> {
        // Read now, so that a bad CA file fails before anything else.
        if let Some(path) = &settings.ca_file {
            read_ca_bundle(ENV_CA_FILE, path).map_err(ProviderError::Config)?;
        }
        Ok(Self {
            settings,
            shared: OnceCell::new(),
            clients: Mutex::default(),
        })
    }

    fn http_client(&self) -> Result<Option<aws_sdk_kms::config::SharedHttpClient>, ProviderError> {
        let Some(path) = &self.settings.ca_file else {
            return Ok(None);
        };
        let pem = read_ca_bundle(ENV_CA_FILE, path).map_err(ProviderError::Config)?;
        // The system roots stay: the extra CAs are added to them.
        let trust = TrustStore::default().with_pem_certificate(pem);
        let context = TlsContext::builder()
            .with_trust_store(trust)
            .build()
            .map_err(|e| ProviderError::Config(format!("{ENV_CA_FILE}: {e}")))?;
        Ok(Some(
            aws_smithy_http_client::Builder::new()
                .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
                .tls_context(context)
                .build_https(),
        ))
    }

    async fn shared(&self) -> Result<&Shared, ApiError> {
        self.shared
            .get_or_try_init(|| async {
                let http = self
                    .http_client()
                    .map_err(|e| ApiError::new(ErrorClass::Invalid, "configuration", &e.to_string()))?;
                let credentials = match &self.settings.keys {
                    Some(keys) => SharedCredentialsProvider::new(Credentials::new(
                        keys.access_key.clone(),
                        keys.secret_key.to_string(),
                        keys.session_token.as_ref().map(|t| t.to_string()),
                        None,
                        "keymgmt-credentials",
                    )),
                    None => {
                        let mut provider_config = aws_config::provider_config::ProviderConfig::default()
                            .with_region(Some(Region::new(self.settings.region.clone())));
                        if let Some(http) = &http {
                            provider_config = provider_config.with_http_client(http.clone());
                        }
                        let chain = aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
                            .configure(provider_config)
                            .build()
                            .await;
                        SharedCredentialsProvider::new(chain)
                    }
                };
                Ok(Shared { http, credentials })
            })
            .await
    }

    async fn client(&self, region: &str) -> Result<aws_sdk_kms::Client, ApiError> {
        if let Some(client) = self.clients.lock().await.get(region) {
            return Ok(client.clone());
        }
        let shared = self.shared().await?;
        let timeouts = aws_sdk_kms::config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(10))
            .operation_attempt_timeout(Settings::attempt_timeout())
            .build();
        let mut config = aws_sdk_kms::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.to_owned()))
            .credentials_provider(shared.credentials.clone())
            .retry_config(aws_sdk_kms::config::retry::RetryConfig::disabled())
            .timeout_config(timeouts);
        if let Some(http) = &shared.http {
            config = config.http_client(http.clone());
        }
        if let Some(endpoint) = &self.settings.endpoint {
            config = config.endpoint_url(endpoint.clone());
        }
        let client = aws_sdk_kms::Client::from_conf(config.build());
        self.clients
            .lock()
            .await
            .insert(region.to_owned(), client.clone());
        Ok(client)
    }
}

fn tags(pairs: &[(String, String)]) -> Result<Vec<Tag>, ApiError> {
    pairs
        .iter()
        .map(|(k, v)| {
            Tag::builder()
                .tag_key(k)
                .tag_value(v)
                .build()
                .map_err(|e| ApiError::new(ErrorClass::Invalid, "tag", &e.to_string()))
        })
        .collect()
}

#[async_trait::async_trait]
impl KmsApi for SdkKms {
    async fn create_key(&self, region: &str, key: &NewKey) -> Result<String, ApiError> {
        let out = self
            .client(region)
            .await?
            .create_key()
            .origin(OriginType::External)
            .key_spec(key.key_spec.clone())
            .key_usage(key.key_usage.clone())
            .multi_region(key.multi_region)
            .description(&key.description)
            .set_tags(Some(tags(&key.tags)?))
            .send()
            .await
            .map_err(from_sdk)?;
        out.key_metadata()
            .map(|m| m.key_id().to_owned())
            .ok_or_else(|| {
                ApiError::new(ErrorClass::Invalid, "CreateKey", "no key metadata returned")
            })
    }

    async fn describe_key(&self, region: &str, key_id: &str) -> Result<KeyInfo, ApiError> {
        let out = self
            .client(region)
            .await?
            .describe_key()
            .key_id(key_id)
            .send()
            .await
            .map_err(from_sdk)?;
        let meta = out.key_metadata().ok_or_else(|| {
            ApiError::new(
                ErrorClass::Invalid,
                "DescribeKey",
                "no key metadata returned",
            )
        })?;
        Ok(KeyInfo {
            key_id: meta.key_id().to_owned(),
            state: meta
                .key_state()
                .cloned()
                .unwrap_or_else(|| KeyState::from("Unknown")),
            multi_region: meta.multi_region().unwrap_or(false),
            key_spec: meta.key_spec().cloned(),
        })
    }

    async fn get_parameters_for_import(
        &self,
        region: &str,
        key_id: &str,
        algorithm: AlgorithmSpec,
    ) -> Result<ImportParameters, ApiError> {
        let out = self
            .client(region)
            .await?
            .get_parameters_for_import()
            .key_id(key_id)
            .wrapping_algorithm(algorithm)
            .wrapping_key_spec(WrappingKeySpec::Rsa4096)
            .send()
            .await
            .map_err(from_sdk)?;
        match (out.import_token(), out.public_key()) {
            (Some(token), Some(public)) => Ok(ImportParameters {
                token: Zeroizing::new(token.as_ref().to_vec()),
                public_key_der: public.as_ref().to_vec(),
            }),
            _ => Err(ApiError::new(
                ErrorClass::Invalid,
                "GetParametersForImport",
                "no import token or wrapping key returned",
            )),
        }
    }

    async fn import_key_material(
        &self,
        region: &str,
        key_id: &str,
        token: &[u8],
        encrypted: Vec<u8>,
    ) -> Result<(), ApiError> {
        self.client(region)
            .await?
            .import_key_material()
            .key_id(key_id)
            .import_token(Blob::new(token.to_vec()))
            .encrypted_key_material(Blob::new(encrypted))
            .expiration_model(ExpirationModelType::KeyMaterialDoesNotExpire)
            .send()
            .await
            .map_err(from_sdk)?;
        Ok(())
    }

    async fn enable_key(&self, region: &str, key_id: &str) -> Result<(), ApiError> {
        self.client(region)
            .await?
            .enable_key()
            .key_id(key_id)
            .send()
            .await
            .map_err(from_sdk)?;
        Ok(())
    }

    async fn get_public_key(&self, region: &str, key_id: &str) -> Result<Vec<u8>, ApiError> {
        let out = self
            .client(region)
            .await?
            .get_public_key()
            .key_id(key_id)
            .send()
            .await
            .map_err(from_sdk)?;
        out.public_key()
            .map(|der| der.as_ref().to_vec())
            .ok_or_else(|| {
                ApiError::new(
                    ErrorClass::Invalid,
                    "GetPublicKey",
                    "no public key returned",
                )
            })
    }

    async fn disable_key(&self, region: &str, key_id: &str) -> Result<(), ApiError> {
        self.client(region)
            .await?
            .disable_key()
            .key_id(key_id)
            .send()
            .await
            .map_err(from_sdk)?;
        Ok(())
    }

    async fn schedule_key_deletion(
        &self,
        region: &str,
        key_id: &str,
        days: i32,
    ) -> Result<(), ApiError> {
        self.client(region)
            .await?
            .schedule_key_deletion()
            .key_id(key_id)
            .pending_window_in_days(days)
            .send()
            .await
            .map_err(from_sdk)?;
        Ok(())
    }

    async fn list_keys(&self, region: &str, marker: Option<String>) -> Result<KeyPage, ApiError> {
        let out = self
            .client(region)
            .await?
            .list_keys()
            .limit(1000)
            .set_marker(marker)
            .send()
            .await
            .map_err(from_sdk)?;
        Ok(KeyPage {
            key_ids: out
                .keys()
                .iter()
                .filter_map(|k| k.key_id().map(str::to_owned))
                .collect(),
            next_marker: if out.truncated() {
                out.next_marker().map(str::to_owned)
            } else {
                None
            },
        })
    }

    async fn list_resource_tags(
        &self,
        region: &str,
        key_id: &str,
    ) -> Result<Vec<(String, String)>, ApiError> {
        let out = self
            .client(region)
            .await?
            .list_resource_tags()
            .key_id(key_id)
            .limit(50)
            .send()
            .await
            .map_err(from_sdk)?;
        Ok(out
            .tags()
            .iter()
            .map(|t| (t.tag_key().to_owned(), t.tag_value().to_owned()))
            .collect())
    }

    async fn create_alias(&self, region: &str, alias: &str, key_id: &str) -> Result<(), ApiError> {
        self.client(region)
            .await?
            .create_alias()
            .alias_name(alias)
            .target_key_id(key_id)
            .send()
            .await
            .map_err(from_sdk)?;
        Ok(())
    }

    async fn update_alias(&self, region: &str, alias: &str, key_id: &str) -> Result<(), ApiError> {
        self.client(region)
            .await?
            .update_alias()
            .alias_name(alias)
            .target_key_id(key_id)
            .send()
            .await
            .map_err(from_sdk)?;
        Ok(())
    }

    async fn delete_alias(&self, region: &str, alias: &str) -> Result<(), ApiError> {
        self.client(region)
            .await?
            .delete_alias()
            .alias_name(alias)
            .send()
            .await
            .map_err(from_sdk)?;
        Ok(())
    }

    async fn replicate_key(
        &self,
        region: &str,
        key_id: &str,
        replica_region: &str,
        pairs: &[(String, String)],
    ) -> Result<(), ApiError> {
        self.client(region)
            .await?
            .replicate_key()
            .key_id(key_id)
            .replica_region(replica_region)
            .set_tags(Some(tags(pairs)?))
            .send()
            .await
            .map_err(from_sdk)?;
        Ok(())
    }
}

/// For tests that need a shared API object.
pub type SharedKmsApi = Arc<dyn KmsApi>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_classes() {
        assert_eq!(
            class_of("ThrottlingException", Some(400)),
            ErrorClass::Throttled
        );
        assert_eq!(
            class_of("KMSInternalException", Some(500)),
            ErrorClass::Unavailable
        );
        assert_eq!(
            class_of("DependencyTimeoutException", Some(503)),
            ErrorClass::Unavailable
        );
        assert_eq!(
            class_of("AccessDeniedException", Some(400)),
            ErrorClass::AccessDenied
        );
        assert_eq!(
            class_of("UnrecognizedClientException", Some(400)),
            ErrorClass::AccessDenied
        );
        assert_eq!(
            class_of("NotFoundException", Some(400)),
            ErrorClass::NotFound
        );
        assert_eq!(
            class_of("AlreadyExistsException", Some(400)),
            ErrorClass::AlreadyExists
        );
        assert_eq!(
            class_of("KMSInvalidStateException", Some(400)),
            ErrorClass::InvalidState
        );
        assert_eq!(
            class_of("DisabledException", Some(400)),
            ErrorClass::InvalidState
        );
        assert_eq!(
            class_of("ValidationException", Some(400)),
            ErrorClass::Invalid
        );
        assert_eq!(class_of("Whatever", Some(502)), ErrorClass::Unavailable);
        assert!(ErrorClass::Network.transient() && ErrorClass::Network.ambiguous());
        assert!(!ErrorClass::AccessDenied.transient());
        let long = ApiError::new(ErrorClass::Invalid, "X", &"m".repeat(5000));
        assert!(long.to_string().len() < 500);
    }
}
