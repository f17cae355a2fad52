//! KMS provider records: where keys can be distributed to, and with which
//! credentials. Credentials are write-only: stored (seal-wrapped), never
//! returned, never logged.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::provider::{ProviderConfig, ProviderKind};
use crate::framework::error::{quote, stored_json_error};
use crate::framework::{Error, Secret};
use crate::runtime::storage::{Storage, StorageEntry};

/// Storage prefix of provider records; declared as seal-wrapped.
pub const KMS_PREFIX: &str = "kms/";

#[derive(Serialize, Deserialize)]
struct StoredProvider {
    provider: ProviderKind,
    key_collection: String,
    #[serde(default)]
    credentials: BTreeMap<String, Zeroizing<String>>,
}

pub struct ProviderStore {
    storage: Arc<dyn Storage>,
}

impl ProviderStore {
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        Self { storage }
    }

    pub async fn get(&self, name: &str) -> Result<Option<ProviderConfig>, Error> {
        let Some(entry) = self.storage.get(&format!("{KMS_PREFIX}{name}")).await? else {
            return Ok(None);
        };
        let stored: StoredProvider = serde_json::from_slice(&entry.value).map_err(|e| {
            Error::internal(format!(
                "KMS provider {name:?} in storage is unreadable: {}",
                stored_json_error(&e)
            ))
        })?;
        Ok(Some(ProviderConfig {
            kind: stored.provider,
            key_collection: stored.key_collection,
            credentials: stored
                .credentials
                .into_iter()
                .map(|(k, v)| (k, Secret::new(v.to_string())))
                .collect(),
        }))
    }

    pub async fn require(&self, name: &str) -> Result<ProviderConfig, Error> {
        self.get(name)
            .await?
            .ok_or_else(|| Error::not_found(format!("KMS provider {} not found", quote(name))))
    }

    pub async fn put(&self, name: &str, config: &ProviderConfig) -> Result<(), Error> {
        let stored = StoredProvider {
            provider: config.kind,
            key_collection: config.key_collection.clone(),
            credentials: config
                .credentials
                .iter()
                .map(|(k, v)| (k.clone(), Zeroizing::new(v.expose().to_owned())))
                .collect(),
        };
        let value = Zeroizing::new(
            serde_json::to_vec(&stored).map_err(|e| Error::internal(e.to_string()))?,
        );
        self.storage
            .put(StorageEntry {
                key: format!("{KMS_PREFIX}{name}"),
                value,
            })
            .await?;
        Ok(())
    }

    pub async fn delete(&self, name: &str) -> Result<(), Error> {
        Ok(self.storage.delete(&format!("{KMS_PREFIX}{name}")).await?)
    }

    pub async fn list(&self) -> Result<Vec<String>, Error> {
        Ok(self.storage.list(KMS_PREFIX).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::storage::InMemoryStorage;

    /// Found by the storage_entry fuzz target: a damaged record's 500 quoted
    /// the value serde stopped at, which may be a credential.
    #[tokio::test]
    async fn an_unreadable_record_shows_none_of_its_credentials() {
        let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        let records = [
            format!(r#"{{"provider":"awskms","key_collection":"r","credentials":"{secret}"}}"#),
            format!(r#"{{"provider":"{secret}","key_collection":"r"}}"#),
            format!(
                r#"{{"provider":"awskms","key_collection":"r","credentials":{{"k":["{secret}"]}}}}"#
            ),
        ];
        for record in records {
            let storage = Arc::new(InMemoryStorage::new());
            storage
                .put(StorageEntry {
                    key: "kms/p".into(),
                    value: Zeroizing::new(record.clone().into_bytes()),
                })
                .await
                .unwrap();
            let err = ProviderStore::new(storage).get("p").await.err().unwrap();
            let Error::Internal(message) = &err else {
                panic!("{err:?}");
            };
            assert!(!message.contains(secret), "{message}");
            assert!(
                message.starts_with("KMS provider \"p\" in storage is unreadable: a missing field, or a field of the wrong type or value at line 1 column "),
                "{message}"
            );
        }
    }
}
