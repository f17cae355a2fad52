//! `key/...`: create, update, read, list, rotate and delete keys, and list
//! the providers a key is distributed to.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::key_type::KeyType;
use super::keys::{Key, rfc3339_nano};
use super::locks::LockKey;
use super::propagate::summarize;
use super::provider::aws;
use super::schedule::Entry;
use super::settings::MAX_ROTATE_PERIOD;
use super::state::KeyManagement;
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
                    .allowed(KEY_TYPES)
                    .create_only(),
            )
            .field(Field::new(
                "deletion_allowed",
                FieldType::Bool,
                "Whether the key may be deleted. Keys are protected from deletion by default.",
            ))
            .field(
                Field::new(
                    "min_enabled_version",
                    FieldType::Int,
                    "Versions below this one are disabled in every KMS provider the key is distributed to, \
                     and hidden from reads. 0 enables all versions.",
                )
                .update_only(),
            )
            .field(
                Field::new(
                    "replica_regions",
                    FieldType::CommaStringSlice,
                    "AWS regions that the key's multi-Region copies are replicated to, as a list or a \
                     comma-separated string. Set only at creation; used by kms/:name/key/:key_name/replicate.",
                )
                .create_only(),
            )
            .field(Field::new(
                "auto_rotate_period",
                FieldType::DurationSeconds,
                "How often the key is rotated on schedule, counted from the latest version's creation \
                 time, as a duration (\"24h\", \"90m\", \"7d\") or seconds; 0 turns scheduled rotation \
                 off. At least 1h. New versions are pushed to every KMS provider the key is distributed to.",
            ))
            .existence_check(existence(key_exists))
            .operation(Operation::Create, "keyManagementUpdateKey", "Create a key.", handler(write_key))
            .operation(Operation::Update, "keyManagementUpdateKey", "Update a key.", handler(write_key))
            .operation(Operation::Read, "keyManagementReadKey", "Read a key.", handler(read_key))
            .operation(Operation::Delete, "keyManagementDeleteKey", "Delete a key.", handler(delete_key))
            .help(
                "Create, update, read and delete keys.",
                "A key is created with a type and version 1; Vault generates and keeps its material. \
                 An update sets deletion_allowed, min_enabled_version or auto_rotate_period; a change of \
                 min_enabled_version is pushed to every KMS provider the key is distributed to. With \
                 auto_rotate_period set, the key is rotated when its latest version is that old, and \
                 the new version is pushed like a manual rotation's; a push that fails is retried about \
                 once a minute and shown in reads as pending_pushes. A read shows each enabled \
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
                 becomes the current version there. A provider that fails is retried about once a \
                 minute until it holds the version; key reads show it as pending_pushes.",
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

/// `replica_regions`, checked as AWS region names, without duplicates.
fn parse_replica_regions(req: &Request) -> Result<Option<Vec<String>>, Error> {
    let Some(raw) = req.strings("replica_regions") else {
        return Ok(None);
    };
    let mut regions: Vec<String> = Vec::new();
    for region in raw {
        let region = region.trim();
        if region.is_empty() {
            continue;
        }
        aws::config::check_region(region)
            .map_err(|m| Error::bad_request(format!("replica_regions: {m}")))?;
        if !regions.iter().any(|r| r == region) {
            regions.push(region.to_owned());
        }
    }
    Ok(Some(regions))
}

/// Checks a creation's other fields before the (possibly slow) key
/// generation, so that a refused request costs nothing.
fn check_new_key_fields(req: &Request) -> Result<(), Error> {
    if let Some(min) = req.int("min_enabled_version")
        && !(0..=1).contains(&min)
    {
        return Err(Error::bad_request(format!(
            "min_enabled_version must be between 0 and the latest version (1 for a new key), got {min}"
        )));
    }
    Ok(())
}

/// `auto_rotate_period` in seconds, if given: 0 (off), or from the
/// engine's minimum to the longest Go duration.
fn parse_auto_rotate_period(
    req: &Request,
    minimum: std::time::Duration,
) -> Result<Option<u64>, Error> {
    let Some(seconds) = req.seconds("auto_rotate_period") else {
        return Ok(None);
    };
    let Ok(period) = u64::try_from(seconds) else {
        return Err(Error::bad_request(format!(
            "auto_rotate_period must not be negative, got {seconds}s"
        )));
    };
    if period != 0 && period < minimum.as_secs() {
        return Err(Error::bad_request(format!(
            "auto_rotate_period must be 0 to disable or at least {}, got {}",
            format_seconds(minimum.as_secs()),
            format_seconds(period)
        )));
    }
    if period > MAX_ROTATE_PERIOD.as_secs() {
        return Err(Error::bad_request(format!(
            "auto_rotate_period must be at most {}, got {period}s",
            format_seconds(MAX_ROTATE_PERIOD.as_secs())
        )));
    }
    Ok(Some(period))
}

/// Seconds as a short duration: `1h`, `1h30m`, `45s`.
fn format_seconds(seconds: u64) -> String {
    let (h, m, s) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
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
    let auto_rotate_period = parse_auto_rotate_period(&req, engine.settings.min_rotate_period)?;
    let requested_type = parse_type(&req)?;
    let replica_regions = parse_replica_regions(&req)?;
    let _guard = engine.locks.lock(LockKey::key(name)).await;
    let existing = engine.keys.get(name).await?;
    let created = existing.is_none();
    let scheduled = existing.as_deref().and_then(Entry::for_key);
    let mut key = match existing {
        Some(existing) => {
            if req.is_set("type") && requested_type != existing.key_type {
                return Err(Error::bad_request(format!(
                    "type cannot be changed after creation: key {} is {}",
                    quote(name),
                    existing.key_type
                )));
            }
            if replica_regions
                .as_ref()
                .is_some_and(|r| *r != existing.replica_regions)
            {
                return Err(Error::bad_request(format!(
                    "replica_regions cannot be changed after creation: key {} has [{}]",
                    quote(name),
                    existing.replica_regions.join(", ")
                )));
            }
            (*existing).clone()
        }
        None => {
            check_new_key_fields(&req)?;
            let mut key = Key::generate_at(name, requested_type, engine.now()).await?;
            key.replica_regions = replica_regions.unwrap_or_default();
            key
        }
    };
    let previous_min = key.min_enabled_version;
    if let Some(period) = auto_rotate_period {
        key.auto_rotate_period = period;
    }
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
    let next = Entry::for_key(&key);
    let key = engine
        .schedule
        .around(scheduled, next, || engine.keys.put(key))
        .await?;
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
            version.insert("fingerprint".into(), v.material.fingerprint().into());
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
    if !key.replica_regions.is_empty() {
        data.insert("replica_regions".into(), key.replica_regions.clone().into());
    }
    // Seconds, as transit reads it (the CLI shows it as a duration).
    data.insert("auto_rotate_period".into(), key.auto_rotate_period.into());
    if let Some(due) = key.rotation_due() {
        data.insert("next_rotation_time".into(), rfc3339_nano(due).into());
    }
    data
}

async fn read_key(engine: Arc<KeyManagement>, req: Request) -> Result<Option<Response>, Error> {
    let name = req.capture("name");
    let Some(key) = engine.keys.get(name).await? else {
        return Ok(None);
    };
    let mut data = key_data(&key);
    if let Some(pending) = engine.pending.get_cached(name).await? {
        data.insert("pending_pushes".into(), pending.to_data());
    }
    Ok(Some(Response::data(data)))
}

async fn delete_key(engine: Arc<KeyManagement>, req: Request) -> Result<Option<Response>, Error> {
    let name = req.capture("name");
    let _guard = engine.locks.lock(LockKey::key(name)).await;
    let Some(key) = engine.keys.get(name).await? else {
        return Ok(None);
    };
    if !key.deletion_allowed {
        return Err(Error::bad_request(format!(
            "deletion is not allowed for key {}; set deletion_allowed=true first",
            quote(name)
        )));
    }
    let providers = engine.distributions.providers_of(name).await?;
    if !providers.is_empty() {
        let shown: Vec<String> = providers.iter().map(|p| quote(p)).collect();
        return Err(Error::bad_request(format!(
            "key {} is still distributed to KMS providers [{}]; remove it from them first",
            quote(name),
            shown.join(", ")
        )));
    }
    engine.keys.delete(name).await?;
    if let Some(entry) = Entry::for_key(&key) {
        engine.schedule.delete_stale(&entry).await;
    }
    if let Err(err) = engine.pending.delete(name).await {
        log::warn!(key = name; "deleting the pending pushes of a deleted key: {err}");
    }
    Ok(None)
}

async fn rotate_key(engine: Arc<KeyManagement>, req: Request) -> Result<Option<Response>, Error> {
    let name = req.capture("name");
    let _guard = engine.locks.lock(LockKey::key(name)).await;
    let current = engine.keys.require(name).await?;
    let key = engine.rotate_locked(&current).await?;
    let failures = engine.push_tracked(&key).await?;
    // Not "repeat the request": another rotation would add a version.
    summarize(
        failures,
        &format!(
            "key {} was rotated to version {} in Vault",
            quote(name),
            key.latest_version
        ),
        " (retried about once a minute; the key's read shows it under pending_pushes)",
    )?;
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
