//! `kms/...`: KMS provider records.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Map;

use super::locks::LockKey;
use super::provider::registry::{self, ConfigError};
use super::provider::{ProviderConfig, ProviderKind};
use super::state::KeyManagement;
use crate::framework::error::quote;
use crate::framework::{
    Error, Field, FieldType, Operation, Path, Request, Response, Secret, existence, handler,
};

fn name_field() -> Field {
    Field::new("name", FieldType::Name, "Name of the KMS provider.")
}

pub fn paths() -> Vec<Path<KeyManagement>> {
    vec![
        Path::new("kms/")
            .operation(Operation::List, "keyManagementListKmsProviders", "List KMS providers.", handler(list_providers))
            .help("List the names of the KMS providers.", ""),
        Path::new("kms/{name}")
            .field(name_field())
            .field(
                Field::new("provider", FieldType::String, "The KMS provider type. Cannot be changed after creation.")
                    .allowed(registry::names())
                    .create_only()
                    .required_on_create(),
            )
            .field(
                Field::new("key_collection", FieldType::String, registry::key_collection_help())
                    .create_only()
                    .required_on_create(),
            )
            .field(
                Field::new("credentials", FieldType::KvPairs, registry::credentials_help()).sensitive(),
            )
            .existence_check(existence(provider_exists))
            .operation(Operation::Create, "keyManagementWriteKmsProvider", "Create a KMS provider.", handler(write_provider))
            .operation(Operation::Update, "keyManagementWriteKmsProvider", "Update a KMS provider.", handler(write_provider))
            .operation(Operation::Read, "keyManagementReadKmsProvider", "Read a KMS provider.", handler(read_provider))
            .operation(Operation::Delete, "keyManagementDeleteKmsProvider", "Delete a KMS provider.", handler(delete_provider))
            .help(
                "Configure KMS providers: destinations that keys are distributed to.",
                "A KMS provider names a provider type and a key collection in it, with the credentials \
                 Vault uses there. The provider type and key collection are fixed at creation; the \
                 credentials can be replaced at any time and are never returned. A provider can be \
                 deleted only when no key is distributed to it.",
            ),
    ]
}

async fn provider_exists(engine: Arc<KeyManagement>, req: Request) -> Result<bool, Error> {
    Ok(engine.providers.get(req.capture("name")).await?.is_some())
}

async fn list_providers(
    engine: Arc<KeyManagement>,
    _req: Request,
) -> Result<Option<Response>, Error> {
    Ok(Response::list(engine.providers.list().await?))
}

fn config_error(err: ConfigError) -> Error {
    Error::BadRequest(err.to_string())
}

fn credentials_of(
    kind: ProviderKind,
    credentials: Option<&BTreeMap<String, Secret>>,
) -> Result<BTreeMap<String, Secret>, Error> {
    let credentials = credentials.cloned().unwrap_or_default();
    kind.descriptor()
        .check_credential_keys(credentials.keys().map(String::as_str))
        .map_err(config_error)?;
    Ok(credentials)
}

async fn write_provider(
    engine: Arc<KeyManagement>,
    req: Request,
) -> Result<Option<Response>, Error> {
    let name = req.capture("name");
    let requested_kind = match req.string("provider") {
        Some(raw) => Some(ProviderKind::parse_field("provider", raw).map_err(Error::BadRequest)?),
        None => None,
    };
    let _guard = engine.locks.lock(LockKey::provider(name)).await;
    let collection = req.string("key_collection").map(str::trim);
    let config = match engine.providers.get(name).await? {
        Some(mut existing) => {
            if requested_kind.is_some_and(|k| k != existing.kind) {
                return Err(Error::bad_request(format!(
                    "provider cannot be changed after creation: KMS provider {} is {}",
                    quote(name),
                    existing.kind.as_str()
                )));
            }
            if collection.is_some_and(|c| c != existing.key_collection) {
                return Err(Error::bad_request(format!(
                    "key_collection cannot be changed after creation: KMS provider {} uses {}",
                    quote(name),
                    quote(&existing.key_collection)
                )));
            }
            if req.is_set("credentials") {
                existing.credentials = credentials_of(existing.kind, req.pairs("credentials"))?;
            }
            existing
        }
        None => {
            let kind = requested_kind.ok_or_else(|| {
                Error::bad_request(format!(
                    "missing required field \"provider\"; must be one of {}",
                    registry::names().join(", ")
                ))
            })?;
            let key_collection = collection
                .filter(|c| !c.is_empty())
                .ok_or_else(|| Error::bad_request("missing required field \"key_collection\""))?;
            ProviderConfig {
                kind,
                key_collection: key_collection.to_owned(),
                credentials: credentials_of(kind, req.pairs("credentials"))?,
            }
        }
    };
    // The provider's own rules, on every write: a refusal changes nothing.
    (config.kind.descriptor().validate)(&config).map_err(config_error)?;
    engine.providers.put(name, &config).await?;
    engine.forget_client(name).await;
    Ok(None)
}

async fn read_provider(
    engine: Arc<KeyManagement>,
    req: Request,
) -> Result<Option<Response>, Error> {
    let Some(config) = engine.providers.get(req.capture("name")).await? else {
        return Ok(None);
    };
    // Credentials are write-only.
    let mut data = Map::new();
    data.insert("provider".into(), config.kind.as_str().into());
    data.insert("key_collection".into(), config.key_collection.into());
    Ok(Some(Response::data(data)))
}

async fn delete_provider(
    engine: Arc<KeyManagement>,
    req: Request,
) -> Result<Option<Response>, Error> {
    let name = req.capture("name");
    let _guard = engine.locks.lock(LockKey::provider(name)).await;
    let keys = engine.distributions.keys_of(name).await?;
    if !keys.is_empty() {
        let shown: Vec<String> = keys.iter().take(10).map(|k| quote(k)).collect();
        return Err(Error::bad_request(format!(
            "KMS provider {} still has keys distributed to it [{}{}]; remove them first",
            quote(name),
            shown.join(", "),
            if keys.len() > shown.len() {
                format!(", and {} more", keys.len() - shown.len())
            } else {
                String::new()
            }
        )));
    }
    engine.providers.delete(name).await?;
    engine.forget_client(name).await;
    Ok(None)
}
