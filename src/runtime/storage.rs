//! The mount's storage: one trait, served by the host over the broker in
//! production and by memory in unit tests.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::RwLock;
use tonic::transport::Channel;
use zeroize::Zeroizing;

use super::proto::pb;
use super::proto::pb::storage_client::StorageClient;

/// One stored value. Values may hold key material or credentials, so they
/// are wiped from memory when dropped.
#[derive(Clone)]
pub struct StorageEntry {
    pub key: String,
    pub value: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for StorageEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageEntry")
            .field("key", &self.key)
            .field("value", &format_args!("<{} bytes>", self.value.len()))
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The host answered with an error of its own (for example, sealed).
    #[error("storage: {0}")]
    Host(String),
    /// The brokered connection failed.
    #[error("storage unavailable: {0}")]
    Transport(#[from] tonic::Status),
}

/// Vault's `logical.Storage`: a flat key space where `list` returns the
/// immediate children of a prefix (sub-folders end in `/`).
#[async_trait::async_trait]
pub trait Storage: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<StorageEntry>, StorageError>;
    async fn put(&self, entry: StorageEntry) -> Result<(), StorageError>;
    async fn delete(&self, key: &str) -> Result<(), StorageError>;
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError>;
}

/// Storage served by the host on the brokered connection.
#[derive(Clone)]
pub struct GrpcStorage {
    client: StorageClient<Channel>,
}

impl GrpcStorage {
    pub fn new(channel: Channel) -> Self {
        let client = StorageClient::new(channel)
            .max_decoding_message_size(super::MAX_MESSAGE_SIZE)
            .max_encoding_message_size(super::MAX_MESSAGE_SIZE);
        Self { client }
    }
}

fn host_error(err: String) -> Result<(), StorageError> {
    if err.is_empty() {
        Ok(())
    } else {
        Err(StorageError::Host(err))
    }
}

#[async_trait::async_trait]
impl Storage for GrpcStorage {
    async fn get(&self, key: &str) -> Result<Option<StorageEntry>, StorageError> {
        let reply = self
            .client
            .clone()
            .get(pb::StorageGetArgs {
                key: key.to_owned(),
            })
            .await?
            .into_inner();
        host_error(reply.err)?;
        Ok(reply.entry.map(|e| StorageEntry {
            key: e.key,
            value: Zeroizing::new(e.value),
        }))
    }

    async fn put(&self, entry: StorageEntry) -> Result<(), StorageError> {
        let mut message = pb::StoragePutArgs {
            entry: Some(pb::StorageEntry {
                key: entry.key.clone(),
                value: entry.value.to_vec(),
                seal_wrap: false,
            }),
        };
        let result = self.client.clone().put(message.clone()).await;
        // The request buffers held a copy of the value; wipe ours.
        if let Some(e) = message.entry.as_mut() {
            zeroize::Zeroize::zeroize(&mut e.value);
        }
        let result = host_error(result?.into_inner().err);
        crate::failpoints::hit(crate::failpoints::Site::StorageWrite);
        result
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let reply = self
            .client
            .clone()
            .delete(pb::StorageDeleteArgs {
                key: key.to_owned(),
            })
            .await?
            .into_inner();
        let result = host_error(reply.err);
        crate::failpoints::hit(crate::failpoints::Site::StorageWrite);
        result
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let reply = self
            .client
            .clone()
            .list(pb::StorageListArgs {
                prefix: prefix.to_owned(),
            })
            .await?
            .into_inner();
        host_error(reply.err)?;
        Ok(reply.keys)
    }
}

/// In-memory storage with Vault's list semantics, for unit tests.
#[derive(Default, Clone)]
pub struct InMemoryStorage {
    entries: Arc<RwLock<BTreeMap<String, Zeroizing<Vec<u8>>>>>,
}

impl InMemoryStorage {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait::async_trait]
impl Storage for InMemoryStorage {
    async fn get(&self, key: &str) -> Result<Option<StorageEntry>, StorageError> {
        Ok(self.entries.read().await.get(key).map(|v| StorageEntry {
            key: key.to_owned(),
            value: v.clone(),
        }))
    }

    async fn put(&self, entry: StorageEntry) -> Result<(), StorageError> {
        self.entries.write().await.insert(entry.key, entry.value);
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.entries.write().await.remove(key);
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let entries = self.entries.read().await;
        let mut children: Vec<String> = Vec::new();
        for key in entries.range(prefix.to_owned()..).map(|(k, _)| k) {
            let Some(rest) = key.strip_prefix(prefix) else {
                break;
            };
            let child = match rest.find('/') {
                Some(i) => &rest[..=i],
                None => rest,
            };
            if children.last().map(String::as_str) != Some(child) {
                children.push(child.to_owned());
            }
        }
        Ok(children)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, value: &str) -> StorageEntry {
        StorageEntry {
            key: key.into(),
            value: Zeroizing::new(value.as_bytes().to_vec()),
        }
    }

    #[tokio::test]
    async fn in_memory_round_trip_and_list_children() {
        let s = InMemoryStorage::new();
        s.put(entry("key/a", "1")).await.unwrap();
        s.put(entry("key/b/x", "2")).await.unwrap();
        s.put(entry("key/b/y", "3")).await.unwrap();
        s.put(entry("kms/z", "4")).await.unwrap();
        assert_eq!(s.list("key/").await.unwrap(), vec!["a", "b/"]);
        assert_eq!(s.list("").await.unwrap(), vec!["key/", "kms/"]);
        assert_eq!(&*s.get("key/a").await.unwrap().unwrap().value, b"1");
        s.delete("key/a").await.unwrap();
        assert!(s.get("key/a").await.unwrap().is_none());
        assert_eq!(s.list("key/").await.unwrap(), vec!["b/"]);
    }

    #[test]
    fn debug_never_shows_values() {
        let text = format!("{:?}", entry("k", "secret-value"));
        assert!(!text.contains("secret-value"));
    }
}
