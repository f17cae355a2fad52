//! `kms/:name/key/...`: distributing keys to a KMS provider, reading and
//! removing the distribution.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::distribution::Distribution;
use super::keys::Key;
use super::locks::LockKey;
use super::provider::{Protection, Purpose};
use super::state::KeyManagement;
use crate::framework::error::quote;
use crate::framework::{
    Error, Field, FieldType, Operation, Path, Request, Response, existence, handler,
};

const PURPOSES: &[&str] = &Purpose::NAMES;
const PROTECTIONS: &[&str] = &Protection::NAMES;

fn name_field() -> Field {
    Field::new("name", FieldType::Name, "Name of the KMS provider.")
}

pub fn paths() -> Vec<Path<KeyManagement>> {
    vec![
        Path::new("kms/{name}/key/")
            .field(name_field())
            .operation(
                Operation::List,
                "keyManagementListKeysInKmsProvider",
                "List the keys distributed to a KMS provider.",
                handler(list_distributed),
            )
            .help("List the keys distributed to a KMS provider.", ""),
        Path::new("kms/{name}/key/{key_name}")
            .field(name_field())
            .field(Field::new("key_name", FieldType::Name, "Name of the key."))
            .field(
                Field::new(
                    "purpose",
                    FieldType::CommaStringSlice,
                    "Operations the key may perform in the provider, as a list or a comma-separated string. \
                     Fixed after distribution.",
                )
                .allowed(PURPOSES)
                .required_on_create(),
            )
            .field(
                Field::new("protection", FieldType::String, "Where the provider keeps the key. Fixed after distribution.")
                    .default_value("hsm")
                    .allowed(PROTECTIONS)
                    .create_only(),
            )
            .existence_check(existence(distribution_exists))
            .operation(
                Operation::Create,
                "keyManagementDistributeKeyInKmsProvider",
                "Distribute a key to a KMS provider.",
                handler(distribute),
            )
            .operation(
                Operation::Update,
                "keyManagementDistributeKeyInKmsProvider",
                "Distribute a key to a KMS provider, or finish an interrupted distribution.",
                handler(distribute),
            )
            .operation(
                Operation::Read,
                "keyManagementReadKeyInKmsProvider",
                "Read the distribution of a key to a KMS provider.",
                handler(read_distribution),
            )
            .operation(
                Operation::Delete,
                "keyManagementDeleteKeyInKmsProvider",
                "Remove a key from a KMS provider.",
                handler(remove),
            )
            .help(
                "Distribute keys to a KMS provider, and remove them from it.",
                "Distribution imports every version of the key into the provider through its secure key \
                 import specification, under the name <key>-<unix time>. Later rotations and \
                 min_enabled_version changes are pushed to it. If a distribution fails part-way, the \
                 versions already imported are recorded and repeating the request imports the rest. \
                 Removal deletes the key from the provider; it stays in Vault and can be distributed \
                 again.",
            ),
        Path::new("kms/{name}/key/{key_name}/status")
            .field(name_field())
            .field(Field::new("key_name", FieldType::Name, "Name of the key."))
            .operation(
                Operation::Read,
                "keyManagementReadKeyStatusInKmsProvider",
                "Compare the provider's copy of a distributed key with Vault's record.",
                handler(read_status),
            )
            .help(
                "Compare the provider's copy of a distributed key with Vault's record (drift detection).",
                "Reads the provider's live state and reports every difference from Vault's record in \
                 drift, most serious first: a key deleted outside Vault, a foreign version that became \
                 current, material that differs, enabled flags that differ, versions missing or extra. \
                 Each version shows Vault's fingerprint and the one the provider shows (sha256 of the \
                 public key for asymmetric keys; AES material cannot be read from the clouds and is \
                 reported as unverifiable). Changes nothing.",
            ),
        Path::new("kms/{name}/key/{key_name}/reconcile")
            .field(name_field())
            .field(Field::new("key_name", FieldType::Name, "Name of the key."))
            .field(Field::new(
                "dry_run",
                FieldType::Bool,
                "Only report what would be repaired; change nothing.",
            ))
            .field(Field::new(
                "disable_foreign",
                FieldType::Bool,
                "Also disable provider-side versions that Vault did not create. They are never deleted.",
            ))
            .operation(
                Operation::Update,
                "keyManagementReconcileKeyInKmsProvider",
                "Repair the provider's copy of a distributed key.",
                handler(reconcile),
            )
            .answers_with_data(Operation::Update)
            .help(
                "Repair the provider's copy of a distributed key to match Vault's record.",
                "Re-applies the enabled flags that min_enabled_version asks for, imports versions the \
                 provider lost or never received, and makes the latest version current. Versions that \
                 Vault did not create are reported, and disabled only with disable_foreign=true. \
                 Material that differs cannot be replaced in place and is only reported; a key deleted \
                 outside Vault is an error. Answers with the actions taken and the state after them; \
                 with dry_run=true, with the actions it would take and the state now.",
            ),
        Path::new("kms/{name}/key/{key_name}/replicate")
            .field(name_field())
            .field(Field::new("key_name", FieldType::Name, "Name of the key."))
            .operation(
                Operation::Update,
                "keyManagementReplicateKeyReplicateInKmsProvider",
                "Replicate a distributed key to its replica regions.",
                handler(replicate),
            )
            .help(
                "Replicate a distributed multi-Region key to the regions set at its creation.",
                "For providers that replicate (awskms): every version of the key becomes a \
                 multi-Region replica in each of the key's replica_regions, with the same key \
                 material imported there. Repeating the request is safe. From then on, rotations \
                 and min_enabled_version reach the replicas too, and removal deletes them.",
            ),
    ]
}

async fn distribution_exists(engine: Arc<KeyManagement>, req: Request) -> Result<bool, Error> {
    Ok(engine
        .distributions
        .get(req.capture("name"), req.capture("key_name"))
        .await?
        .is_some())
}

async fn list_distributed(
    engine: Arc<KeyManagement>,
    req: Request,
) -> Result<Option<Response>, Error> {
    let name = req.capture("name");
    engine.providers.require(name).await?;
    Ok(Response::list(engine.distributions.keys_of(name).await?))
}

fn parse_purposes(req: &Request) -> Result<Option<Vec<Purpose>>, Error> {
    let Some(raw) = req.strings("purpose") else {
        return Ok(None);
    };
    let mut purposes = Vec::new();
    for item in raw {
        let purpose = Purpose::parse(item).ok_or_else(|| {
            Error::bad_request(format!(
                "purpose: unsupported value {}; allowed: {}",
                quote(item),
                PURPOSES.join(", ")
            ))
        })?;
        if !purposes.contains(&purpose) {
            purposes.push(purpose);
        }
    }
    if purposes.is_empty() {
        return Err(Error::bad_request(format!(
            "purpose must name at least one of: {}",
            PURPOSES.join(", ")
        )));
    }
    purposes.sort();
    Ok(Some(purposes))
}

fn parse_protection(req: &Request) -> Result<Protection, Error> {
    let raw = req.string("protection").unwrap_or("hsm");
    Protection::parse(raw).ok_or_else(|| {
        Error::bad_request(format!(
            "protection: unsupported value {}; allowed: hsm, software",
            quote(raw)
        ))
    })
}

async fn distribute(engine: Arc<KeyManagement>, req: Request) -> Result<Option<Response>, Error> {
    let (provider, key_name) = (req.capture("name"), req.capture("key_name"));
    let purposes = parse_purposes(&req)?;
    let protection = parse_protection(&req)?;
    // Lock order everywhere: provider, then key.
    let _provider_guard = engine.locks.lock(LockKey::provider(provider)).await;
    let _key_guard = engine.locks.lock(LockKey::key(key_name)).await;
    let config = engine.providers.require(provider).await?;
    let key = engine.keys.require(key_name).await?;
    let descriptor = config.kind.descriptor();
    let (purposes, protection) = match engine.distributions.get(provider, key_name).await? {
        Some(existing) => {
            let fixed = existing.purposes.clone();
            if purposes.as_ref().is_some_and(|p| *p != fixed) {
                return Err(Error::bad_request(format!(
                    "purpose cannot be changed after distribution: key {} has purpose {:?} in KMS provider {}",
                    quote(key_name),
                    existing.purpose_list(),
                    quote(provider)
                )));
            }
            if req.is_set("protection") && protection != existing.protection {
                return Err(Error::bad_request(format!(
                    "protection cannot be changed after distribution: key {} has protection {:?} in KMS provider {}",
                    quote(key_name),
                    existing.protection.as_str(),
                    quote(provider)
                )));
            }
            (fixed, existing.protection)
        }
        None => {
            let purposes = purposes.ok_or_else(|| {
                Error::bad_request(format!(
                    "missing required field \"purpose\"; allowed: {}",
                    PURPOSES.join(", ")
                ))
            })?;
            // Everything the provider would refuse is refused here, before
            // any record or call exists.
            descriptor
                .check_support(key.key_type, &purposes, protection)
                .map_err(Error::BadRequest)?;
            (descriptor.check_key_name)(key_name).map_err(|m| {
                Error::bad_request(format!(
                    "key {} cannot be distributed to the {} provider: {m}",
                    quote(key_name),
                    descriptor.name
                ))
            })?;
            if !key.replica_regions.is_empty() && !descriptor.replicates {
                return Err(Error::bad_request(format!(
                    "key {} has replica_regions, which the {} provider cannot hold: only multi-Region providers (awskms) can",
                    quote(key_name),
                    descriptor.name
                )));
            }
            (purposes, protection)
        }
    };
    engine
        .distribute(provider, &key, purposes, protection)
        .await?;
    // The provider holds every version now: nothing is pending for it.
    engine.pending.clear_provider(key_name, provider).await?;
    Ok(None)
}

async fn read_distribution(
    engine: Arc<KeyManagement>,
    req: Request,
) -> Result<Option<Response>, Error> {
    let Some(record) = engine
        .distributions
        .get(req.capture("name"), req.capture("key_name"))
        .await?
    else {
        return Ok(None);
    };
    let Some(key) = engine.keys.get(req.capture("key_name")).await? else {
        return Ok(None);
    };
    let mut data = Map::new();
    data.insert("name".into(), record.name.clone().into());
    // One comma-joined, sorted string: the wire format real servers use.
    data.insert("purpose".into(), record.purpose_list().into());
    data.insert("protection".into(), record.protection.as_str().into());
    data.insert(
        "distribution_time".into(),
        record.distribution_time.clone().into(),
    );
    let versions: Map<String, Value> = record
        .versions
        .iter()
        .map(|(v, id)| (v.to_string(), Value::String(id.clone())))
        .collect();
    data.insert("versions".into(), Value::Object(versions));
    // What the provider's copy of each version must show; `status`
    // reads the provider's own and compares.
    let fingerprints: Map<String, Value> = record
        .versions
        .keys()
        .filter_map(|v| {
            let material = &key.versions.get(v)?.material;
            Some((v.to_string(), Value::String(material.fingerprint())))
        })
        .collect();
    data.insert("fingerprints".into(), Value::Object(fingerprints));
    Ok(Some(Response::data(data)))
}

async fn remove(engine: Arc<KeyManagement>, req: Request) -> Result<Option<Response>, Error> {
    let (provider, key_name) = (req.capture("name"), req.capture("key_name"));
    let _provider_guard = engine.locks.lock(LockKey::provider(provider)).await;
    let _key_guard = engine.locks.lock(LockKey::key(key_name)).await;
    let Some(key) = engine.keys.get(key_name).await? else {
        return Ok(None);
    };
    engine.remove_distribution(provider, &key).await?;
    engine.pending.clear_provider(key_name, provider).await?;
    Ok(None)
}

/// The distribution of a key that exists, or a clear error.
async fn require_distribution(
    engine: &KeyManagement,
    provider: &str,
    key_name: &str,
) -> Result<(Arc<Key>, Distribution), Error> {
    engine.providers.require(provider).await?;
    let key = engine.keys.require(key_name).await?;
    let record = engine
        .distributions
        .get(provider, key_name)
        .await?
        .ok_or_else(|| {
            Error::not_found(format!(
                "key {} is not distributed to KMS provider {}",
                quote(key_name),
                quote(provider)
            ))
        })?;
    Ok((key, record))
}

async fn read_status(engine: Arc<KeyManagement>, req: Request) -> Result<Option<Response>, Error> {
    let (provider, key_name) = (req.capture("name"), req.capture("key_name"));
    // The locks keep an import in progress from showing as drift.
    let _provider_guard = engine.locks.lock(LockKey::provider(provider)).await;
    let _key_guard = engine.locks.lock(LockKey::key(key_name)).await;
    let (key, record) = require_distribution(&engine, provider, key_name).await?;
    let assessment = engine.assess_distribution(provider, &key, &record).await?;
    Ok(Some(Response::data(assessment.to_json(&record))))
}

async fn reconcile(engine: Arc<KeyManagement>, req: Request) -> Result<Option<Response>, Error> {
    let (provider, key_name) = (req.capture("name"), req.capture("key_name"));
    let dry_run = req.bool("dry_run").unwrap_or(false);
    let disable_foreign = req.bool("disable_foreign").unwrap_or(false);
    let _provider_guard = engine.locks.lock(LockKey::provider(provider)).await;
    let _key_guard = engine.locks.lock(LockKey::key(key_name)).await;
    let (key, record) = require_distribution(&engine, provider, key_name).await?;
    let done = engine
        .reconcile(provider, &key, record, disable_foreign, dry_run)
        .await?;
    let mut data = done.status;
    data.insert("dry_run".into(), dry_run.into());
    data.insert("actions".into(), done.actions.into());
    Ok(Some(Response::data(data)))
}

async fn replicate(engine: Arc<KeyManagement>, req: Request) -> Result<Option<Response>, Error> {
    let (provider, key_name) = (req.capture("name"), req.capture("key_name"));
    let _provider_guard = engine.locks.lock(LockKey::provider(provider)).await;
    let _key_guard = engine.locks.lock(LockKey::key(key_name)).await;
    let config = engine.providers.require(provider).await?;
    let key = engine.keys.require(key_name).await?;
    let descriptor = config.kind.descriptor();
    if !descriptor.replicates {
        return Err(Error::bad_request(format!(
            "key replication is only supported for multi-Region providers (awskms); KMS provider {} is {}",
            quote(provider),
            descriptor.name
        )));
    }
    if key.replica_regions.is_empty() {
        return Err(Error::bad_request(format!(
            "key {} does not have replica_regions: set them when the key is created",
            quote(key_name)
        )));
    }
    engine.replicate(provider, &key).await?;
    Ok(None)
}
