//! `key/...`: create, update, read, list, rotate and delete keys, and list
//! the providers a key is distributed to.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::backend::KeyManagement;
use super::key_type::KeyType;
use super::keys::Key;
use crate::framework::error::quote;
use crate::framework::{
    Error, Field, FieldType, Operation, Path, Request, Response, existence, handler,
};

const KEY_TYPES: &[&str] = &KeyType::NAMES;

fn name_field() -> Field {
    Field::new("name", FieldType::Name, "Name of the key.")
}

pub fn paths() -> Vec<Path<KeyManagement>> {
    vec![
        Path::new("key/")
            .operation(Operation::List, "keyManagementListKeys", "List keys.", handler(list_keys))
            .help("List the names of the keys.", ""),
        Path::new("key/{name}")
            .field(name_field())
            .field(
                Field::new("type", FieldType::String, "Type of the key; set at creation and never changed.")
                    .default_value("rsa-2048")
                    .allowed(KEY_TYPES),
            )
            .field(Field::new(
                "deletion_allowed",
                FieldType::Bool,
                "Whether the key may be deleted. Keys are protected from deletion by default.",
            ))
            .field(Field::new(
                "min_enabled_version",
                FieldType::Int,
                "Versions below this one are disabled in every KMS provider the key is distributed to, \
                 and hidden from reads. 0 enables all versions.",
            ))
            .existence_check(existence(key_exists))
            .operation(Operation::Create, "keyManagementUpdateKey", "Create a key.", handler(write_key))
            .operation(Operation::Update, "keyManagementUpdateKey", "Update a key.", handler(write_key))
            .operation(Operation::Read, "keyManagementReadKey", "Read a key.", handler(read_key))
            .operation(Operation::Delete, "keyManagementDeleteKey", "Delete a key.", handler(delete_key))
            .help(
                "Create, update, read and delete keys.",
                "A key is created with a type and version 1; Vault generates and keeps its material. \
                 An update sets deletion_allowed or min_enabled_version; a change of min_enabled_version \
                 is pushed to every KMS provider the key is distributed to. A read shows each enabled \
                 version's creation time and, for asymmetric keys, its public key; private material is \
                 never returned. A key can be deleted only when deletion_allowed is true and it is \
                 distributed to no KMS provider.",
            ),
        Path::new("key/{name}/rotate")
            .field(name_field())
            .operation(Operation::Update, "keyManagementRotateKey", "Rotate a key.", handler(rotate_key))
            .help(
                "Rotate a key: add a version with new material.",
                "The new version is imported into every KMS provider the key is distributed to, and \
                 becomes the current version there.",
            ),
        Path::new("key/{name}/kms/")
            .field(name_field())
            .operation(
                Operation::List,
                "keyManagementListKmsProvidersForKey",
                "List the KMS providers a key is distributed to.",
                handler(list_key_providers),
            )
            .help("List the KMS providers a key is distributed to.", ""),
    ]
}

async fn key_exists(engine: Arc<KeyManagement>, req: Request) -> Result<bool, Error> {
    Ok(engine.keys.get(req.capture("name")).await?.is_some())
}

async fn list_keys(engine: Arc<KeyManagement>, _req: Request) -> Result<Option<Response>, Error> {
    Ok(Response::list(engine.keys.list().await?))
}

fn parse_type(req: &Request) -> Result<KeyType, Error> {
    let raw = req.string("type").unwrap_or("rsa-2048");
    raw.parse().map_err(|_| {
        Error::bad_request(format!(
            "unsupported key type {}; supported types: {}",
            quote(raw),
            KEY_TYPES.join(", ")
        ))
    })
}

async fn write_key(engine: Arc<KeyManagement>, req: Request) -> Result<Option<Response>, Error> {
    let name = req.capture("name");
    let requested_type = parse_type(&req)?;
    let _guard = engine.locks.lock(&format!("key/{name}")).await;
    let existing = engine.keys.get(name).await?;
    let created = existing.is_none();
    let mut key = match existing {
        Some(existing) => {
            if req.is_set("type") && requested_type != existing.key_type {
                return Err(Error::bad_request(format!(
                    "type cannot be changed after creation: key {name:?} is {}",
                    existing.key_type
                )));
            }
            (*existing).clone()
        }
        None => Key::generate(name, requested_type).await?,
    };
    let previous_min = key.min_enabled_version;
    if let Some(allowed) = req.bool("deletion_allowed") {
        key.deletion_allowed = allowed;
    }
    if let Some(min) = req.int("min_enabled_version") {
        if min < 0 || min > i64::from(key.latest_version) {
            return Err(Error::bad_request(format!(
                "min_enabled_version must be between 0 and the latest version ({}), got {min}",
                key.latest_version
            )));
        }
        // 0 means "all versions", which is the same as 1.
        key.min_enabled_version = u32::try_from(min).unwrap_or(0).max(1);
    }
    let key = engine.keys.put(key).await?;
    // Pushed on every update that names min_enabled_version, even when it
    // did not change, so repeating a failed update retries the providers.
    if !created && (req.is_set("min_enabled_version") || key.min_enabled_version != previous_min) {
        engine.push_enabled_versions(&key).await?;
    }
    Ok(None)
}

/// The read shape real servers give.
pub fn key_data(key: &Key) -> Map<String, Value> {
    let versions: Map<String, Value> = key
        .versions
        .range(key.min_enabled_version..)
        .map(|(n, v)| {
            let mut version = Map::new();
            version.insert("creation_time".into(), v.creation_time.clone().into());
            if let Some(pem) = &v.public_key {
                version.insert("public_key".into(), pem.clone().into());
            }
            (n.to_string(), Value::Object(version))
        })
        .collect();
    let mut data = Map::new();
    data.insert("name".into(), key.name.clone().into());
    data.insert("type".into(), key.key_type.as_str().into());
    data.insert("deletion_allowed".into(), key.deletion_allowed.into());
    data.insert("latest_version".into(), key.latest_version.into());
    data.insert("min_enabled_version".into(), key.min_enabled_version.into());
    data.insert("versions".into(), Value::Object(versions));
    data
}

async fn read_key(engine: Arc<KeyManagement>, req: Request) -> Result<Option<Response>, Error> {
    Ok(engine
        .keys
        .get(req.capture("name"))
        .await?
        .map(|key| Response::data(key_data(&key))))
}

async fn delete_key(engine: Arc<KeyManagement>, req: Request) -> Result<Option<Response>, Error> {
    let name = req.capture("name");
    let _guard = engine.locks.lock(&format!("key/{name}")).await;
    let Some(key) = engine.keys.get(name).await? else {
        return Ok(None);
    };
    if !key.deletion_allowed {
        return Err(Error::bad_request(format!(
            "deletion is not allowed for key {name:?}; set deletion_allowed=true first"
        )));
    }
    let providers = engine.distributions.providers_of(name).await?;
    if !providers.is_empty() {
        return Err(Error::bad_request(format!(
            "key {name:?} is still distributed to KMS providers [{}]; remove it from them first",
            providers.join(", ")
        )));
    }
    engine.keys.delete(name).await?;
    Ok(None)
}

async fn rotate_key(engine: Arc<KeyManagement>, req: Request) -> Result<Option<Response>, Error> {
    let name = req.capture("name");
    let _guard = engine.locks.lock(&format!("key/{name}")).await;
    let mut key = (*engine.keys.require(name).await?).clone();
    key.rotate().await?;
    let key = engine.keys.put(key).await?;
    engine.push_new_versions(&key).await?;
    Ok(None)
}

async fn list_key_providers(
    engine: Arc<KeyManagement>,
    req: Request,
) -> Result<Option<Response>, Error> {
    let name = req.capture("name");
    engine.keys.require(name).await?;
    Ok(Response::list(
        engine.distributions.providers_of(name).await?,
    ))
}
