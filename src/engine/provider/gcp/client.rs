//! The Cloud KMS calls the provider makes, over REST.
//!
//! [`CloudKmsApi`] is the provider's whole view of Google: one method per
//! call, each sent once (the provider's retry loop decides about repeats).
//! Requests and answers are the official `google-cloud-kms-v1` model types,
//! and [`RestKms`] authenticates with `google-cloud-auth`. The transport is
//! our own `reqwest` client, sending what the official client sends
//! (`$alt=json;enum-encoding=int`, integer enums): the official client's
//! transport offers no way to trust extra CA certificates in addition to
//! the system roots (`SSL_CERT_FILE` replaces them), and it retries neither
//! POSTs nor 429s, which ours must.

use std::time::Duration;

use google_cloud_kms_v1::model::{
    CryptoKey, CryptoKeyVersion, ImportCryptoKeyVersionRequest, ImportJob,
    ListCryptoKeyVersionsResponse, PublicKey, crypto_key_version::CryptoKeyVersionState,
};
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::super::ProviderError;
use super::super::client::{ApiError, ErrorClass, bounded, error_chain, read_ca_bundle};
use super::config::{ENV_CA_FILE, Identity, Settings};

/// The Cloud KMS REST calls the provider uses. Resource names are full
/// (`projects/.../cryptoKeys/...`).
#[async_trait::async_trait]
pub trait CloudKmsApi: Send + Sync {
    /// `POST v1/{parent}/cryptoKeys?cryptoKeyId=...&skipInitialVersionCreation=true`.
    async fn create_crypto_key(
        &self,
        parent: &str,
        id: &str,
        key: &CryptoKey,
    ) -> Result<CryptoKey, ApiError>;
    async fn get_crypto_key(&self, name: &str) -> Result<CryptoKey, ApiError>;
    async fn create_import_job(
        &self,
        parent: &str,
        id: &str,
        job: &ImportJob,
    ) -> Result<ImportJob, ApiError>;
    async fn get_import_job(&self, name: &str) -> Result<ImportJob, ApiError>;
    /// `POST v1/{parent}/cryptoKeyVersions:import`.
    async fn import_version(
        &self,
        request: &ImportCryptoKeyVersionRequest,
    ) -> Result<CryptoKeyVersion, ApiError>;
    /// One page of `GET v1/{parent}/cryptoKeyVersions`.
    async fn list_versions(
        &self,
        parent: &str,
        page_token: &str,
    ) -> Result<ListCryptoKeyVersionsResponse, ApiError>;
    /// `PATCH v1/{name}?updateMask=state`.
    async fn set_version_state(
        &self,
        name: &str,
        state: CryptoKeyVersionState,
    ) -> Result<CryptoKeyVersion, ApiError>;
    /// `POST v1/{name}:destroy`.
    async fn destroy_version(&self, name: &str) -> Result<CryptoKeyVersion, ApiError>;
    /// `GET v1/{name}/publicKey` of an enabled asymmetric version.
    async fn get_public_key(&self, name: &str) -> Result<PublicKey, ApiError>;
    /// `POST v1/{name}:updatePrimaryVersion`.
    async fn update_primary_version(
        &self,
        name: &str,
        version_id: &str,
    ) -> Result<CryptoKey, ApiError>;
}

/// Google's error body: `{"error": {"code", "message", "status"}}`.
#[derive(serde::Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(serde::Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
}

/// Classifies a `google.rpc.Code` name (or, without one, the HTTP status).
pub fn class_of(status: &str, http: u16) -> ErrorClass {
    match status {
        "RESOURCE_EXHAUSTED" => ErrorClass::Throttled,
        "UNAVAILABLE" | "INTERNAL" | "DEADLINE_EXCEEDED" | "UNKNOWN" => ErrorClass::Unavailable,
        "PERMISSION_DENIED" | "UNAUTHENTICATED" => ErrorClass::AccessDenied,
        "NOT_FOUND" => ErrorClass::NotFound,
        "ALREADY_EXISTS" => ErrorClass::AlreadyExists,
        "FAILED_PRECONDITION" => ErrorClass::InvalidState,
        _ => match http {
            429 => ErrorClass::Throttled,
            401 | 403 => ErrorClass::AccessDenied,
            404 => ErrorClass::NotFound,
            409 => ErrorClass::AlreadyExists,
            s if s >= 500 => ErrorClass::Unavailable,
            _ => ErrorClass::Invalid,
        },
    }
}

/// The REST client.
pub struct RestKms {
    http: reqwest::Client,
    endpoint: String,
    credentials: google_cloud_auth::credentials::Credentials,
}

impl RestKms {
    pub fn new(settings: &Settings) -> Result<Self, ProviderError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &settings.ca_file {
            let pem = read_ca_bundle(ENV_CA_FILE, path).map_err(ProviderError::Config)?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                ProviderError::Config(format!("{ENV_CA_FILE} {}: {e}", path.display()))
            })?;
            // Added to the system roots, not in their place.
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder
            .build()
            .map_err(|e| ProviderError::Config(format!("building the HTTPS client failed: {e}")))?;
        let credentials = match &settings.identity {
            Identity::ServiceAccount(json) => {
                let key: serde_json::Value = serde_json::from_str(json).map_err(|_| {
                    ProviderError::Config("the service account key is not JSON".into())
                })?;
                google_cloud_auth::credentials::service_account::Builder::new(key).build()
            }
            Identity::ApplicationDefault => {
                google_cloud_auth::credentials::Builder::default().build()
            }
        }
        .map_err(|e| {
            ProviderError::Config(format!("Google credentials: {}", bounded(e.to_string())))
        })?;
        Ok(Self {
            http,
            endpoint: settings.endpoint.clone(),
            credentials,
        })
    }

    async fn auth_headers(&self) -> Result<http::HeaderMap, ApiError> {
        use google_cloud_auth::credentials::CacheableResource;
        match self.credentials.headers(http::Extensions::new()).await {
            Ok(CacheableResource::New { data, .. }) => Ok(data),
            Ok(CacheableResource::NotModified) => Err(ApiError::new(
                ErrorClass::Unavailable,
                "credentials",
                "no authentication headers were returned",
            )),
            Err(e) => {
                let class = if e.is_transient() {
                    ErrorClass::Network
                } else {
                    ErrorClass::AccessDenied
                };
                Err(ApiError::new(
                    class,
                    "authenticating to Google failed",
                    &error_chain(&e),
                ))
            }
        }
    }

    async fn send<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&B>,
    ) -> Result<T, ApiError> {
        let headers = self.auth_headers().await?;
        let url = format!("{}/v1/{path}", self.endpoint);
        let mut request = self
            .http
            .request(method, url)
            .headers(headers)
            .query(query)
            .query(&[("$alt", "json;enum-encoding=int")]);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| {
            ApiError::new(ErrorClass::Network, "connection failed", &error_chain(&e))
        })?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ApiError::new(ErrorClass::Network, "response failed", &error_chain(&e)))?;
        if (200..300).contains(&status) {
            return serde_json::from_slice(&bytes).map_err(|e| {
                ApiError::new(ErrorClass::Invalid, "unreadable answer", &e.to_string())
            });
        }
        let (code, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => (body.error.status, body.error.message),
            Err(_) => (String::new(), String::from_utf8_lossy(&bytes).into_owned()),
        };
        let shown = if code.is_empty() {
            format!("HTTP {status}")
        } else {
            code.clone()
        };
        Err(ApiError::new(class_of(&code, status), &shown, &message))
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StateOnly {
    state: CryptoKeyVersionState,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PrimaryVersion<'a> {
    name: &'a str,
    crypto_key_version_id: &'a str,
}

#[derive(Serialize)]
struct NameOnly<'a> {
    name: &'a str,
}

#[async_trait::async_trait]
impl CloudKmsApi for RestKms {
    async fn create_crypto_key(
        &self,
        parent: &str,
        id: &str,
        key: &CryptoKey,
    ) -> Result<CryptoKey, ApiError> {
        let query = [("cryptoKeyId", id), ("skipInitialVersionCreation", "true")];
        self.send(
            Method::POST,
            &format!("{parent}/cryptoKeys"),
            &query,
            Some(key),
        )
        .await
    }

    async fn get_crypto_key(&self, name: &str) -> Result<CryptoKey, ApiError> {
        self.send::<(), _>(Method::GET, name, &[], None).await
    }

    async fn create_import_job(
        &self,
        parent: &str,
        id: &str,
        job: &ImportJob,
    ) -> Result<ImportJob, ApiError> {
        self.send(
            Method::POST,
            &format!("{parent}/importJobs"),
            &[("importJobId", id)],
            Some(job),
        )
        .await
    }

    async fn get_import_job(&self, name: &str) -> Result<ImportJob, ApiError> {
        self.send::<(), _>(Method::GET, name, &[], None).await
    }

    async fn import_version(
        &self,
        request: &ImportCryptoKeyVersionRequest,
    ) -> Result<CryptoKeyVersion, ApiError> {
        let path = format!("{}/cryptoKeyVersions:import", request.parent);
        self.send(Method::POST, &path, &[], Some(request)).await
    }

    async fn list_versions(
        &self,
        parent: &str,
        page_token: &str,
    ) -> Result<ListCryptoKeyVersionsResponse, ApiError> {
        let mut query = vec![("pageSize", "100")];
        if !page_token.is_empty() {
            query.push(("pageToken", page_token));
        }
        self.send::<(), _>(
            Method::GET,
            &format!("{parent}/cryptoKeyVersions"),
            &query,
            None,
        )
        .await
    }

    async fn set_version_state(
        &self,
        name: &str,
        state: CryptoKeyVersionState,
    ) -> Result<CryptoKeyVersion, ApiError> {
        self.send(
            Method::PATCH,
            name,
            &[("updateMask", "state")],
            Some(&StateOnly { state }),
        )
        .await
    }

    async fn destroy_version(&self, name: &str) -> Result<CryptoKeyVersion, ApiError> {
        self.send(
            Method::POST,
            &format!("{name}:destroy"),
            &[],
            Some(&NameOnly { name }),
        )
        .await
    }

    async fn get_public_key(&self, name: &str) -> Result<PublicKey, ApiError> {
        self.send::<(), _>(Method::GET, &format!("{name}/publicKey"), &[], None)
            .await
    }

    async fn update_primary_version(
        &self,
        name: &str,
        version_id: &str,
    ) -> Result<CryptoKey, ApiError> {
        let body = PrimaryVersion {
            name,
            crypto_key_version_id: version_id,
        };
        self.send(
            Method::POST,
            &format!("{name}:updatePrimaryVersion"),
            &[],
            Some(&body),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_classes() {
        assert_eq!(class_of("RESOURCE_EXHAUSTED", 429), ErrorClass::Throttled);
        assert_eq!(class_of("", 429), ErrorClass::Throttled);
        assert_eq!(class_of("UNAVAILABLE", 503), ErrorClass::Unavailable);
        assert_eq!(class_of("PERMISSION_DENIED", 403), ErrorClass::AccessDenied);
        assert_eq!(class_of("UNAUTHENTICATED", 401), ErrorClass::AccessDenied);
        assert_eq!(class_of("NOT_FOUND", 404), ErrorClass::NotFound);
        assert_eq!(class_of("ALREADY_EXISTS", 409), ErrorClass::AlreadyExists);
        assert_eq!(
            class_of("FAILED_PRECONDITION", 400),
            ErrorClass::InvalidState
        );
        assert_eq!(class_of("INVALID_ARGUMENT", 400), ErrorClass::Invalid);
        assert_eq!(class_of("", 502), ErrorClass::Unavailable);
    }

    #[test]
    fn enums_are_sent_as_proto_numbers() {
        let body = serde_json::to_value(StateOnly {
            state: CryptoKeyVersionState::Disabled,
        })
        .unwrap();
        assert_eq!(body, serde_json::json!({"state": 2}));
    }
}
