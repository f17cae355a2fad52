//! Distribution records: which key went to which provider, under which
//! provider-side name, and the provider's id for each Vault version.
//!
//! The record is written before each import and after it, so a failure
//! half-way leaves an exact account of what the provider holds (and of
//! what it may hold without Vault having heard back), and a repeated
//! request resumes instead of importing twice.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::keys::{Key, rfc3339_nano};
use super::provider::{Protection, Purpose, Target};
use crate::framework::Error;
use crate::framework::error::{quote, stored_json_error};
use crate::runtime::storage::{Storage, StorageEntry};

pub const DISTRIBUTION_PREFIX: &str = "distribution/";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Distribution {
    /// Provider-side key name: `<key>-<unix seconds>`.
    pub name: String,
    /// Unique id, written into provider-side tags (see [`Target::id`]).
    #[serde(default)]
    pub id: String,
    /// Sorted and without duplicates.
    pub purposes: Vec<Purpose>,
    pub protection: Protection,
    pub distribution_time: String,
    /// Vault version -> provider version id.
    pub versions: BTreeMap<u32, String>,
    /// Versions whose import began but is not recorded: an attempt may
    /// have reached the provider without Vault hearing back.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub started: BTreeSet<u32>,
    /// Whether the key has been replicated to its replica regions.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replicated: bool,
}

impl Distribution {
    /// A new, empty record for distributing `key` at `now`.
    pub fn new(
        key: &str,
        mut purposes: Vec<Purpose>,
        protection: Protection,
        now: OffsetDateTime,
    ) -> Self {
        purposes.sort();
        purposes.dedup();
        Self {
            name: format!("{key}-{}", now.unix_timestamp()),
            id: random_id(),
            purposes,
            protection,
            distribution_time: rfc3339_nano(now),
            versions: BTreeMap::new(),
            started: BTreeSet::new(),
            replicated: false,
        }
    }

    /// The purposes as the API shows them: sorted and comma-joined.
    pub fn purpose_list(&self) -> String {
        self.purposes
            .iter()
            .map(|p| p.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn target(&self, key: &Key) -> Target {
        Target {
            name: self.name.clone(),
            id: if self.id.is_empty() {
                self.name.clone()
            } else {
                self.id.clone()
            },
            key_name: key.name.clone(),
            key_type: key.key_type,
            purposes: self.purposes.clone(),
            protection: self.protection,
            replica_regions: key.replica_regions.clone(),
            replicated: self.replicated,
        }
    }
}

/// 128 random bits, hex: unique across mounts and clusters.
fn random_id() -> String {
    (0..16)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

pub struct DistributionStore {
    storage: Arc<dyn Storage>,
}

fn storage_key(provider: &str, key: &str) -> String {
    format!("{DISTRIBUTION_PREFIX}{provider}/{key}")
}

impl DistributionStore {
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        Self { storage }
    }

    pub async fn get(&self, provider: &str, key: &str) -> Result<Option<Distribution>, Error> {
        let Some(entry) = self.storage.get(&storage_key(provider, key)).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&entry.value).map(Some).map_err(|e| {
            Error::internal(format!(
                "distribution of {} to {} in storage is unreadable: {}",
                quote(key),
                quote(provider),
                stored_json_error(&e)
            ))
        })
    }

    pub async fn put(&self, provider: &str, key: &str, record: &Distribution) -> Result<(), Error> {
        let value =
            Zeroizing::new(serde_json::to_vec(record).map_err(|e| Error::internal(e.to_string()))?);
        Ok(self
            .storage
            .put(StorageEntry {
                key: storage_key(provider, key),
                value,
            })
            .await?)
    }

    pub async fn delete(&self, provider: &str, key: &str) -> Result<(), Error> {
        Ok(self.storage.delete(&storage_key(provider, key)).await?)
    }

    /// Keys distributed to a provider.
    pub async fn keys_of(&self, provider: &str) -> Result<Vec<String>, Error> {
        Ok(self
            .storage
            .list(&format!("{DISTRIBUTION_PREFIX}{provider}/"))
            .await?)
    }

    /// Names of the providers a key is distributed to.
    pub async fn providers_of(&self, key: &str) -> Result<Vec<String>, Error> {
        Ok(self
            .of_key(key)
            .await?
            .into_iter()
            .map(|(provider, _)| provider)
            .collect())
    }

    /// Providers a key is distributed to, with their records.
    pub async fn of_key(&self, key: &str) -> Result<Vec<(String, Distribution)>, Error> {
        let mut found = Vec::new();
        for folder in self.storage.list(DISTRIBUTION_PREFIX).await? {
            let provider = folder.trim_end_matches('/');
            if let Some(record) = self.get(provider, key).await? {
                found.push((provider.to_owned(), record));
            }
        }
        Ok(found)
    }
}
