//! Pushes of new versions that have not reached every provider yet.
//!
//! `push-pending/<key>` exists while some provider the key is distributed
//! to lacks a version: it is written before a rotation's push starts (so
//! that a crash half-way is retried too), updated after each failed
//! attempt, and deleted once every provider holds every version. It is
//! both the index the periodic call retries from, without reading every
//! key, and what a key read shows. Messages are the handlers' error
//! messages, which never carry a secret.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::RwLock;
use zeroize::Zeroizing;

use super::keys::STANDBY_CACHE_TTL;
use crate::framework::Error;
use crate::framework::error::quote;
use crate::runtime::storage::{Storage, StorageEntry};

pub const PENDING_PREFIX: &str = "push-pending/";

/// Longest error message kept per provider.
const MAX_ERROR_LEN: usize = 2048;

/// The pending pushes of one key, by provider name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PendingPushes {
    pub providers: BTreeMap<String, ProviderPush>,
}

/// What one provider still lacks, and how the attempts went.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProviderPush {
    /// Vault versions the provider does not hold (as of the last attempt).
    pub missing_versions: Vec<u32>,
    #[serde(default)]
    pub failed_attempts: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_error: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_attempt_time: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub first_failure_time: String,
}

impl ProviderPush {
    /// Records a failed attempt at `at` (RFC 3339).
    pub fn failed(&mut self, missing: Vec<u32>, error: &Error, at: &str) {
        let mut message = error.to_string();
        if message.len() > MAX_ERROR_LEN {
            let mut cut = MAX_ERROR_LEN;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str("...");
        }
        self.missing_versions = missing;
        self.failed_attempts = self.failed_attempts.saturating_add(1);
        self.last_error = message;
        self.last_attempt_time = at.to_owned();
        if self.first_failure_time.is_empty() {
            self.first_failure_time = at.to_owned();
        }
    }
}

impl PendingPushes {
    /// The read shape: provider -> what it lacks and the last failure.
    pub fn to_data(&self) -> Value {
        let providers: Map<String, Value> = self
            .providers
            .iter()
            .map(|(name, push)| {
                let mut entry = Map::new();
                entry.insert(
                    "missing_versions".into(),
                    push.missing_versions.clone().into(),
                );
                entry.insert("failed_attempts".into(), push.failed_attempts.into());
                for (field, value) in [
                    ("last_error", &push.last_error),
                    ("last_attempt_time", &push.last_attempt_time),
                    ("first_failure_time", &push.first_failure_time),
                ] {
                    if !value.is_empty() {
                        entry.insert(field.into(), value.clone().into());
                    }
                }
                (name.clone(), Value::Object(entry))
            })
            .collect();
        Value::Object(providers)
    }
}

/// The names of keys with pending pushes, and the generation that guards
/// their fill (as in [`super::keys::KeyStore`]).
#[derive(Default)]
struct Names {
    names: Option<(BTreeSet<String>, Instant)>,
    generation: u64,
}

/// Pending pushes in storage. Writers hold the key's lock. Reads of keys
/// with nothing pending, the common case, cost no storage round trip: the
/// names are cached, dropped on every invalidation, and on a standby
/// expire after [`STANDBY_CACHE_TTL`].
pub struct PendingStore {
    storage: Arc<dyn Storage>,
    names: RwLock<Names>,
    max_age: std::sync::RwLock<Option<Duration>>,
}

fn storage_key(key: &str) -> String {
    format!("{PENDING_PREFIX}{key}")
}

impl PendingStore {
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        Self {
            storage,
            names: RwLock::default(),
            max_age: std::sync::RwLock::new(None),
        }
    }

    pub fn set_standby(&self, standby: bool) {
        *self.max_age.write().unwrap_or_else(|p| p.into_inner()) =
            standby.then_some(STANDBY_CACHE_TTL);
    }

    pub async fn get(&self, key: &str) -> Result<Option<PendingPushes>, Error> {
        let Some(entry) = self.storage.get(&storage_key(key)).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&entry.value).map(Some).map_err(|e| {
            Error::internal(format!(
                "pending pushes of key {} in storage are unreadable: {e}",
                quote(key)
            ))
        })
    }

    /// [`PendingStore::get`] for reads: no round trip when the cached
    /// names say there is nothing.
    pub async fn get_cached(&self, key: &str) -> Result<Option<PendingPushes>, Error> {
        let generation = {
            let names = self.names.read().await;
            if let Some((set, filled)) = &names.names
                && self.fresh(*filled)
            {
                if !set.contains(key) {
                    return Ok(None);
                }
                return self.get(key).await;
            }
            names.generation
        };
        let listed = self.fill(generation).await?;
        if listed.contains(key) {
            self.get(key).await
        } else {
            Ok(None)
        }
    }

    fn fresh(&self, filled: Instant) -> bool {
        let max_age = *self.max_age.read().unwrap_or_else(|p| p.into_inner());
        max_age.is_none_or(|age| filled.elapsed() < age)
    }

    async fn fill(&self, generation: u64) -> Result<BTreeSet<String>, Error> {
        let listed: BTreeSet<String> = self
            .storage
            .list(PENDING_PREFIX)
            .await?
            .into_iter()
            .collect();
        let mut names = self.names.write().await;
        if names.generation == generation {
            names.names = Some((listed.clone(), Instant::now()));
        }
        Ok(listed)
    }

    /// Every key with pending pushes, sorted, from storage.
    pub async fn list(&self) -> Result<Vec<String>, Error> {
        let generation = self.names.read().await.generation;
        Ok(self.fill(generation).await?.into_iter().collect())
    }

    /// Writes `pending`, or deletes the entry when nothing is pending.
    pub async fn put(&self, key: &str, pending: &PendingPushes) -> Result<(), Error> {
        if pending.providers.is_empty() {
            return self.delete(key).await;
        }
        let value = Zeroizing::new(
            serde_json::to_vec(pending).map_err(|e| Error::internal(e.to_string()))?,
        );
        self.storage
            .put(StorageEntry {
                key: storage_key(key),
                value,
            })
            .await?;
        let mut names = self.names.write().await;
        names.generation += 1;
        if let Some((set, _)) = names.names.as_mut() {
            set.insert(key.to_owned());
        }
        Ok(())
    }

    pub async fn delete(&self, key: &str) -> Result<(), Error> {
        self.storage.delete(&storage_key(key)).await?;
        let mut names = self.names.write().await;
        names.generation += 1;
        if let Some((set, _)) = names.names.as_mut() {
            set.remove(key);
        }
        Ok(())
    }

    /// Forgets one provider's pending push of `key` (it was completed or
    /// the key was removed from the provider).
    pub async fn clear_provider(&self, key: &str, provider: &str) -> Result<(), Error> {
        let Some(mut pending) = self.get(key).await? else {
            return Ok(());
        };
        if pending.providers.remove(provider).is_some() {
            self.put(key, &pending).await?;
        }
        Ok(())
    }

    pub async fn invalidate(&self, storage_key: &str) {
        if storage_key.starts_with(PENDING_PREFIX) {
            let mut names = self.names.write().await;
            names.generation += 1;
            names.names = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::storage::InMemoryStorage;

    #[tokio::test]
    async fn cached_names_follow_writes_and_invalidations() {
        let storage = Arc::new(InMemoryStorage::new());
        let store = PendingStore::new(storage.clone());
        assert_eq!(store.get_cached("k").await.unwrap(), None);
        let mut pending = PendingPushes::default();
        pending
            .providers
            .insert("az".into(), ProviderPush::default());
        store.put("k", &pending).await.unwrap();
        assert_eq!(store.get_cached("k").await.unwrap(), Some(pending.clone()));
        // Another node's write is seen once its invalidation arrives.
        PendingStore::new(storage.clone())
            .put("j", &pending)
            .await
            .unwrap();
        assert_eq!(store.get_cached("j").await.unwrap(), None);
        store.invalidate("push-pending/j").await;
        assert_eq!(store.get_cached("j").await.unwrap(), Some(pending.clone()));
        assert_eq!(store.list().await.unwrap(), ["j", "k"]);
        store.clear_provider("k", "az").await.unwrap();
        assert_eq!(store.get_cached("k").await.unwrap(), None);
        assert!(storage.get("push-pending/k").await.unwrap().is_none());
    }

    #[test]
    fn long_errors_are_cut() {
        let mut push = ProviderPush::default();
        let error = Error::BadGateway("é".repeat(MAX_ERROR_LEN));
        push.failed(vec![2], &error, "2026-01-01T00:00:00Z");
        push.failed(vec![2, 3], &error, "2026-01-01T00:01:00Z");
        assert!(push.last_error.len() <= MAX_ERROR_LEN + 3);
        assert_eq!(push.failed_attempts, 2);
        assert_eq!(push.first_failure_time, "2026-01-01T00:00:00Z");
        assert_eq!(push.last_attempt_time, "2026-01-01T00:01:00Z");
        assert_eq!(push.missing_versions, [2, 3]);
    }
}
