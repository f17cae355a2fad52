//! Distribution records: which key went to which provider, under which
//! provider-side name, and the provider's id for each Vault version.
//!
//! The record is written before the first import and after each one, so a
//! failure half-way leaves an exact account of what the provider holds and
//! a repeated request resumes instead of importing twice.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::key_type::KeyType;
use super::provider::{Protection, Purpose, Target};
use crate::framework::Error;
use crate::runtime::storage::{Storage, StorageEntry};

pub const DISTRIBUTION_PREFIX: &str = "distribution/";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Distribution {
    /// Provider-side key name: `<key>-<unix seconds>`.
    pub name: String,
    pub purposes: Vec<String>,
    pub protection: Protection,
    pub distribution_time: String,
    /// Vault version -> provider version id.
    pub versions: BTreeMap<u32, String>,
}

impl Distribution {
    pub fn purposes(&self) -> Vec<Purpose> {
        self.purposes
            .iter()
            .filter_map(|p| Purpose::parse(p))
            .collect()
    }

    pub fn target(&self, key_type: KeyType) -> Target {
        Target {
            name: self.name.clone(),
            key_type,
            purposes: self.purposes(),
            protection: self.protection,
        }
    }
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
                "distribution of {key:?} to {provider:?} in storage is unreadable: {e}"
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
