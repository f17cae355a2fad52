//! Keys and their versions: the model, its storage form, and a cache.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::RwLock;
use zeroize::{Zeroize, Zeroizing};

use super::key_type::KeyType;
use super::material::KeyMaterial;
use crate::framework::Error;
use crate::framework::error::{quote, stored_json_error};
use crate::runtime::storage::{Storage, StorageEntry};

/// Storage prefix of key records; declared as seal-wrapped.
pub const KEY_PREFIX: &str = "key/";

/// RFC 3339 with nanoseconds and trailing zeros trimmed, like Go's
/// `time.RFC3339Nano`, which Vault uses for every timestamp it returns.
pub fn rfc3339_nano(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

/// One version of a key.
pub struct KeyVersion {
    pub creation_time: String,
    pub material: KeyMaterial,
    /// PEM SPKI, computed once at creation (None for symmetric keys).
    pub public_key: Option<String>,
}

/// A named key with all its versions.
#[derive(Clone)]
pub struct Key {
    pub name: String,
    pub key_type: KeyType,
    pub deletion_allowed: bool,
    /// Versions below this are disabled in providers and hidden on read.
    /// Always at least 1: 0 ("all enabled") is stored as 1.
    pub min_enabled_version: u32,
    pub latest_version: u32,
    pub versions: BTreeMap<u32, Arc<KeyVersion>>,
    /// Regions a multi-Region (awskms) copy is replicated to; fixed at
    /// creation.
    pub replica_regions: Vec<String>,
    /// Seconds between scheduled rotations, counted from the latest
    /// version's creation time; 0 is off.
    pub auto_rotate_period: u64,
}

impl Key {
    /// A new key with version 1.
    pub async fn generate(name: &str, key_type: KeyType) -> Result<Self, Error> {
        Self::generate_at(name, key_type, OffsetDateTime::now_utc()).await
    }

    /// A new key whose version 1 was created `at`.
    pub async fn generate_at(
        name: &str,
        key_type: KeyType,
        at: OffsetDateTime,
    ) -> Result<Self, Error> {
        let mut key = Self {
            name: name.to_owned(),
            key_type,
            deletion_allowed: false,
            min_enabled_version: 1,
            latest_version: 0,
            versions: BTreeMap::new(),
            replica_regions: Vec::new(),
            auto_rotate_period: 0,
        };
        key.rotate_at(at).await?;
        Ok(key)
    }

    /// Adds a version with fresh material; returns its number.
    pub async fn rotate(&mut self) -> Result<u32, Error> {
        self.rotate_at(OffsetDateTime::now_utc()).await
    }

    /// Adds a version created `at`; returns its number.
    pub async fn rotate_at(&mut self, at: OffsetDateTime) -> Result<u32, Error> {
        let key_type = self.key_type;
        // Off the async workers: an RSA-4096 generation takes long enough
        // to stall every request that shares the worker.
        let material = tokio::task::spawn_blocking(move || KeyMaterial::generate(key_type))
            .await
            .map_err(|e| Error::internal(format!("key generation did not finish: {e}")))?
            .map_err(|e| Error::internal(e.to_string()))?;
        let version = self.latest_version + 1;
        let public_key = material.public_key_pem();
        self.versions.insert(
            version,
            Arc::new(KeyVersion {
                creation_time: rfc3339_nano(at),
                material,
                public_key,
            }),
        );
        self.latest_version = version;
        Ok(version)
    }

    pub fn is_enabled(&self, version: u32) -> bool {
        version >= self.min_enabled_version
    }

    /// When the schedule next rotates the key: the latest version's
    /// creation time plus the period, or None when the schedule is off. A
    /// creation time that cannot be read counts as the epoch, so such a key
    /// is due at once and its next version has a readable one.
    pub fn rotation_due(&self) -> Option<OffsetDateTime> {
        if self.auto_rotate_period == 0 {
            return None;
        }
        let created = self
            .versions
            .get(&self.latest_version)
            .and_then(|v| OffsetDateTime::parse(&v.creation_time, &Rfc3339).ok())
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let period = i64::try_from(self.auto_rotate_period).unwrap_or(i64::MAX);
        // Periods are bounded when written, so this cannot overflow.
        created.checked_add(time::Duration::seconds(period))
    }

    fn to_stored(&self) -> StoredKey {
        StoredKey {
            name: self.name.clone(),
            key_type: self.key_type,
            deletion_allowed: self.deletion_allowed,
            min_enabled_version: self.min_enabled_version,
            latest_version: self.latest_version,
            versions: self
                .versions
                .iter()
                .map(|(n, v)| {
                    (
                        n.to_string(),
                        StoredVersion {
                            creation_time: v.creation_time.clone(),
                            public_key: v.public_key.clone(),
                            material: Zeroizing::new(STANDARD.encode(v.material.as_bytes())),
                        },
                    )
                })
                .collect(),
            replica_regions: self.replica_regions.clone(),
            auto_rotate_period: self.auto_rotate_period,
        }
    }

    fn from_stored(mut stored: StoredKey) -> Result<Self, String> {
        let mut versions = BTreeMap::new();
        for (number, version) in std::mem::take(&mut stored.versions) {
            let number: u32 = number
                .parse()
                // Not echoed: a damaged record may have anything there.
                .map_err(|_| "a version number is not a whole number".to_owned())?;
            let bytes = Zeroizing::new(
                STANDARD
                    .decode(version.material.as_bytes())
                    .map_err(|_| format!("version {number}: bad encoding"))?,
            );
            let material = KeyMaterial::from_bytes(stored.key_type, bytes)
                .map_err(|e| format!("version {number}: {e}"))?;
            let public_key = version
                .public_key
                .clone()
                .or_else(|| material.public_key_pem());
            versions.insert(
                number,
                Arc::new(KeyVersion {
                    creation_time: version.creation_time.clone(),
                    material,
                    public_key,
                }),
            );
        }
        Ok(Self {
            name: stored.name.clone(),
            key_type: stored.key_type,
            deletion_allowed: stored.deletion_allowed,
            min_enabled_version: stored.min_enabled_version.max(1),
            latest_version: stored.latest_version,
            versions,
            replica_regions: std::mem::take(&mut stored.replica_regions),
            auto_rotate_period: stored.auto_rotate_period,
        })
    }
}

/// The storage form of a key. Material is base64 in a zeroizing string.
#[derive(Serialize, Deserialize)]
struct StoredKey {
    name: String,
    #[serde(rename = "type")]
    key_type: KeyType,
    deletion_allowed: bool,
    min_enabled_version: u32,
    latest_version: u32,
    versions: BTreeMap<String, StoredVersion>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    replica_regions: Vec<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    auto_rotate_period: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Serialize, Deserialize)]
struct StoredVersion {
    creation_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    public_key: Option<String>,
    material: Zeroizing<String>,
}

/// How long a cached entry may be used on an HA standby.
///
/// Standbys learn of changes through `InvalidateKey` after each Raft
/// apply, but a standby that catches up by installing a snapshot gets no
/// invalidations at all (ha-standbys reference). Rather than keep no cache
/// there, entries expire after this long: repeated reads stay cheap, and a
/// missed invalidation is outlived by at most one second beyond the
/// replication lag (50-110 ms measured). The active node writes all
/// storage itself, so its entries never expire.
pub const STANDBY_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(1);

struct Cached<T> {
    value: T,
    filled: std::time::Instant,
}

/// The caches and the generation that guards their fills.
#[derive(Default)]
struct Caches {
    keys: HashMap<String, Cached<Arc<Key>>>,
    /// The sorted key names, loaded by the first list.
    names: Option<Cached<BTreeSet<String>>>,
    /// Bumped by every invalidation and every write. A fill made from a
    /// storage read is kept only if the generation is the one seen before
    /// the read, so an invalidation always wins its race with a fill.
    generation: u64,
}

/// Keys in storage, with a read cache. Writers must hold the key's lock
/// (see [`super::locks::NamedLocks`]) across read-modify-write.
///
/// The cache follows Vault's model: this mount is the only writer of its
/// storage, and changes made on another node arrive as `InvalidateKey`,
/// which drops what they could have made stale. On a standby, entries
/// also expire after [`STANDBY_CACHE_TTL`].
pub struct KeyStore {
    storage: Arc<dyn Storage>,
    caches: RwLock<Caches>,
    /// `Some` on a standby: how long entries may be used.
    max_age: std::sync::RwLock<Option<std::time::Duration>>,
}

impl KeyStore {
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        Self {
            storage,
            caches: RwLock::default(),
            max_age: std::sync::RwLock::new(None),
        }
    }

    /// Sets the node's role: a standby's entries expire.
    pub fn set_standby(&self, standby: bool) {
        *self.max_age.write().unwrap_or_else(|p| p.into_inner()) =
            standby.then_some(STANDBY_CACHE_TTL);
    }

    fn fresh<T>(&self, entry: &Cached<T>) -> bool {
        let max_age = *self.max_age.read().unwrap_or_else(|p| p.into_inner());
        max_age.is_none_or(|age| entry.filled.elapsed() < age)
    }

    pub async fn get(&self, name: &str) -> Result<Option<Arc<Key>>, Error> {
        self.get_with(name, || async {}).await
    }

    /// [`KeyStore::get`], running `between` after the storage read and
    /// before the fill: the seam where tests stage an invalidation's race.
    async fn get_with<F, Fut>(&self, name: &str, between: F) -> Result<Option<Arc<Key>>, Error>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let generation = {
            let caches = self.caches.read().await;
            if let Some(entry) = caches.keys.get(name)
                && self.fresh(entry)
            {
                return Ok(Some(entry.value.clone()));
            }
            // With the names loaded, a miss needs no round trip to storage:
            // existence checks and creations are the common case.
            if caches
                .names
                .as_ref()
                .is_some_and(|names| self.fresh(names) && !names.value.contains(name))
            {
                return Ok(None);
            }
            caches.generation
        };
        let entry = self.storage.get(&format!("{KEY_PREFIX}{name}")).await?;
        between().await;
        let Some(entry) = entry else {
            return Ok(None);
        };
        let stored: StoredKey = serde_json::from_slice(&entry.value).map_err(|e| {
            Error::internal(format!(
                "key {} in storage is unreadable: {}",
                quote(name),
                stored_json_error(&e)
            ))
        })?;
        let key = Arc::new(
            Key::from_stored(stored)
                .map_err(|e| Error::internal(format!("key {}: {e}", quote(name))))?,
        );
        let mut caches = self.caches.write().await;
        if caches.generation == generation {
            caches.keys.insert(
                name.to_owned(),
                Cached {
                    value: key.clone(),
                    filled: std::time::Instant::now(),
                },
            );
        }
        Ok(Some(key))
    }

    /// Like [`KeyStore::get`], with Vault's not-found error.
    pub async fn require(&self, name: &str) -> Result<Arc<Key>, Error> {
        self.get(name)
            .await?
            .ok_or_else(|| Error::not_found(format!("key {} not found", quote(name))))
    }

    pub async fn put(&self, key: Key) -> Result<Arc<Key>, Error> {
        let mut stored = key.to_stored();
        let value = Zeroizing::new(
            serde_json::to_vec(&stored).map_err(|e| Error::internal(e.to_string()))?,
        );
        stored
            .versions
            .values_mut()
            .for_each(|v| v.material.zeroize());
        self.storage
            .put(StorageEntry {
                key: format!("{KEY_PREFIX}{}", key.name),
                value,
            })
            .await?;
        let key = Arc::new(key);
        let mut caches = self.caches.write().await;
        caches.generation += 1;
        let now = std::time::Instant::now();
        caches.keys.insert(
            key.name.clone(),
            Cached {
                value: key.clone(),
                filled: now,
            },
        );
        if let Some(names) = caches.names.as_mut() {
            names.value.insert(key.name.clone());
        }
        Ok(key)
    }

    pub async fn delete(&self, name: &str) -> Result<(), Error> {
        self.storage.delete(&format!("{KEY_PREFIX}{name}")).await?;
        let mut caches = self.caches.write().await;
        caches.generation += 1;
        caches.keys.remove(name);
        if let Some(names) = caches.names.as_mut() {
            names.value.remove(name);
        }
        Ok(())
    }

    /// Key names, sorted.
    pub async fn list(&self) -> Result<Vec<String>, Error> {
        let generation = {
            let caches = self.caches.read().await;
            if let Some(names) = caches.names.as_ref()
                && self.fresh(names)
            {
                return Ok(names.value.iter().cloned().collect());
            }
            caches.generation
        };
        let loaded: BTreeSet<String> = self.storage.list(KEY_PREFIX).await?.into_iter().collect();
        let listed = loaded.iter().cloned().collect();
        let mut caches = self.caches.write().await;
        if caches.generation == generation {
            caches.names = Some(Cached {
                value: loaded,
                filled: std::time::Instant::now(),
            });
        }
        Ok(listed)
    }

    /// Drops the cached copy of a storage key, if it is a key record.
    pub async fn invalidate(&self, storage_key: &str) {
        if let Some(name) = storage_key.strip_prefix(KEY_PREFIX) {
            let mut caches = self.caches.write().await;
            caches.generation += 1;
            caches.keys.remove(name);
            caches.names = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::storage::InMemoryStorage;

    #[test]
    fn timestamps_are_rfc3339_nano() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_688_559_292_173_163_449).unwrap();
        assert_eq!(rfc3339_nano(at), "2023-07-05T12:14:52.173163449Z");
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_688_559_292_100_000_000).unwrap();
        assert_eq!(rfc3339_nano(at), "2023-07-05T12:14:52.1Z");
    }

    #[tokio::test]
    async fn an_invalidation_wins_its_race_with_a_fill() {
        let storage = Arc::new(InMemoryStorage::new());
        let store = KeyStore::new(storage.clone());
        let old = Key::generate("k", KeyType::Aes256Gcm96).await.unwrap();
        store.put(old.clone()).await.unwrap();
        store.invalidate("key/k").await;
        // Another node rewrites the key between this store's storage read
        // and its fill, and the invalidation arrives in between.
        let mut newer = old.clone();
        newer.rotate().await.unwrap();
        let writer = KeyStore::new(storage.clone());
        let read = store
            .get_with("k", || async {
                writer.put(newer).await.unwrap();
                store.invalidate("key/k").await;
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read.latest_version, 1, "the read itself saw the old copy");
        let again = store.get("k").await.unwrap().unwrap();
        assert_eq!(again.latest_version, 2, "the stale fill was not kept");
    }

    #[tokio::test]
    async fn standby_entries_expire() {
        let storage = Arc::new(InMemoryStorage::new());
        let store = KeyStore::new(storage.clone());
        store.set_standby(true);
        store
            .put(Key::generate("k", KeyType::Aes256Gcm96).await.unwrap())
            .await
            .unwrap();
        assert_eq!(store.list().await.unwrap(), ["k"]);
        // A change this node never hears of (a Raft snapshot install).
        let mut changed = (*store.get("k").await.unwrap().unwrap()).clone();
        changed.rotate().await.unwrap();
        KeyStore::new(storage.clone()).put(changed).await.unwrap();
        assert_eq!(store.get("k").await.unwrap().unwrap().latest_version, 1);
        std::thread::sleep(STANDBY_CACHE_TTL);
        assert_eq!(store.get("k").await.unwrap().unwrap().latest_version, 2);
        // On the active node entries do not expire.
        store.set_standby(false);
        let mut third = (*store.get("k").await.unwrap().unwrap()).clone();
        third.rotate().await.unwrap();
        KeyStore::new(storage.clone()).put(third).await.unwrap();
        std::thread::sleep(STANDBY_CACHE_TTL);
        assert_eq!(store.get("k").await.unwrap().unwrap().latest_version, 2);
    }

    /// Found by the storage_entry fuzz target: a damaged record's 500 quoted
    /// the value serde stopped at, which may be key material.
    #[tokio::test]
    async fn an_unreadable_record_shows_none_of_its_material() {
        let storage = Arc::new(InMemoryStorage::new());
        let key = Key::generate("k", KeyType::EcdsaP256).await.unwrap();
        let good = KeyStore::new(storage.clone()).put(key).await.unwrap();
        let raw = storage.get("key/k").await.unwrap().unwrap();
        let text = String::from_utf8(raw.value.to_vec()).unwrap();
        let material = STANDARD.encode(good.versions[&1].material.as_bytes());
        assert!(text.contains(&material));
        // The material moved where serde quotes what it finds: the type,
        // a boolean, a version number.
        for damaged in [
            text.replace("\"ecdsa-p256\"", &format!("\"{material}\"")),
            text.replace(
                "\"deletion_allowed\":false",
                &format!("\"deletion_allowed\":\"{material}\""),
            ),
            text.replace("\"1\":{", &format!("\"{material}\":{{")),
        ] {
            storage
                .put(StorageEntry {
                    key: "key/k".into(),
                    value: Zeroizing::new(damaged.clone().into_bytes()),
                })
                .await
                .unwrap();
            let err = KeyStore::new(storage.clone()).get("k").await.err();
            let Some(Error::Internal(message)) = &err else {
                panic!("{damaged}: {err:?}");
            };
            assert_ne!(damaged, text);
            assert!(message.starts_with("key \"k\""), "{message}");
            assert!(!message.contains(&material[..16]), "{message}");
        }
    }

    #[tokio::test]
    async fn round_trips_through_storage_and_invalidation() {
        let storage = Arc::new(InMemoryStorage::new());
        let store = KeyStore::new(storage.clone());
        let mut key = Key::generate("k", KeyType::EcdsaP256).await.unwrap();
        key.rotate().await.unwrap();
        key.min_enabled_version = 2;
        let written = store.put(key).await.unwrap();
        let raw = storage.get("key/k").await.unwrap().unwrap();
        let text = String::from_utf8(raw.value.to_vec()).unwrap();
        assert!(text.contains("\"type\":\"ecdsa-p256\""));
        // A fresh store (no cache) reads the same key back.
        let reread = KeyStore::new(storage.clone()).require("k").await.unwrap();
        assert_eq!(reread.latest_version, 2);
        assert_eq!(reread.min_enabled_version, 2);
        for n in [1, 2] {
            assert_eq!(
                reread.versions[&n].material.as_bytes(),
                written.versions[&n].material.as_bytes()
            );
            assert_eq!(
                reread.versions[&n].public_key,
                written.versions[&n].public_key
            );
        }
        // Invalidation drops the caches so a changed record is re-read.
        assert_eq!(store.list().await.unwrap(), ["k"]);
        store
            .put(Key::generate("j", KeyType::Aes256Gcm96).await.unwrap())
            .await
            .unwrap();
        assert_eq!(
            store.list().await.unwrap(),
            ["j", "k"],
            "a put updates loaded names"
        );
        store.delete("j").await.unwrap();
        storage.delete("key/k").await.unwrap();
        assert!(store.get("k").await.unwrap().is_some());
        assert_eq!(store.list().await.unwrap(), ["k"]);
        store.invalidate("key/k").await;
        assert!(store.get("k").await.unwrap().is_none());
        assert!(store.list().await.unwrap().is_empty());
        let err = store.require("k").await.err().unwrap();
        assert_eq!(err, Error::not_found("key \"k\" not found"));

        // A key another node wrote is seen once its invalidation arrives,
        // even though the loaded names answered "missing" before.
        assert!(store.list().await.unwrap().is_empty());
        let other = KeyStore::new(storage.clone());
        other
            .put(Key::generate("n", KeyType::Aes256Gcm96).await.unwrap())
            .await
            .unwrap();
        assert!(store.get("n").await.unwrap().is_none());
        store.invalidate("key/n").await;
        assert!(store.get("n").await.unwrap().is_some());
        assert_eq!(store.list().await.unwrap(), ["n"]);
    }
}
