//! The rotation schedule's index: which keys are due when, without reading
//! every key.
//!
//! One empty entry per scheduled key, named by its due time:
//! `schedule/<hour>/<due>-<key>`, where `<due>` is the Unix second the key
//! is due (the latest version's creation time plus the period, rounded
//! up) and `<hour>` is `<due>` divided by 3600. Both are zero-padded, so
//! storage lists them in time order. The periodic call lists the hour
//! folders, then only the folders up to the current hour, and reads no
//! key that is not due.
//!
//! The key record is the truth; an entry is a hint. Every write that moves
//! a key's due time puts the new entry before the key record and deletes
//! the old one after it, so a scheduled key always has its entry, and an
//! interrupted write leaves at most a stale entry behind. A stale entry is
//! dropped when it comes due and the key says otherwise.

use std::collections::BTreeSet;
use std::sync::Arc;

use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::keys::Key;
use crate::framework::Error;
use crate::runtime::storage::{Storage, StorageEntry};

pub const SCHEDULE_PREFIX: &str = "schedule/";
const BUCKET_SECONDS: i64 = 3600;

/// One index entry: `key` is due at Unix second `due`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub due: i64,
    pub key: String,
}

/// Whole seconds, rounded up: an entry never comes due before its key.
pub fn ceil_seconds(at: OffsetDateTime) -> i64 {
    at.unix_timestamp() + i64::from(at.nanosecond() > 0)
}

impl Entry {
    /// The entry a key's record calls for, if it is scheduled.
    pub fn for_key(key: &Key) -> Option<Self> {
        key.rotation_due().map(|due| Self {
            due: ceil_seconds(due).max(0),
            key: key.name.clone(),
        })
    }

    fn storage_key(&self) -> String {
        format!(
            "{SCHEDULE_PREFIX}{:08}/{:012}-{}",
            self.due.div_euclid(BUCKET_SECONDS),
            self.due,
            self.key
        )
    }

    /// Parses a leaf of a bucket's listing; None for anything else.
    fn parse(leaf: &str) -> Option<Self> {
        let (due, key) = leaf.split_once('-')?;
        if key.is_empty() || key.contains('/') {
            return None;
        }
        Some(Self {
            due: due.parse().ok()?,
            key: key.to_owned(),
        })
    }
}

pub struct ScheduleIndex {
    storage: Arc<dyn Storage>,
}

impl ScheduleIndex {
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        Self { storage }
    }

    pub async fn put(&self, entry: &Entry) -> Result<(), Error> {
        Ok(self
            .storage
            .put(StorageEntry {
                key: entry.storage_key(),
                value: Zeroizing::new(b"{}".to_vec()),
            })
            .await?)
    }

    pub async fn delete(&self, entry: &Entry) -> Result<(), Error> {
        Ok(self.storage.delete(&entry.storage_key()).await?)
    }

    /// Deletes an entry that is no longer needed. A failure only leaves a
    /// stale entry, which is dropped when it comes due, so it is logged
    /// rather than failing the write that made the entry stale.
    pub async fn delete_stale(&self, entry: &Entry) {
        if let Err(err) = self.delete(entry).await {
            log::warn!(key = entry.key.as_str(); "deleting a stale rotation schedule entry: {err}");
        }
    }

    /// Moves a key's entry from `old` to `new`, around the key's own
    /// write (`write`): the new entry first, the old one deleted after.
    pub async fn around<T, F, Fut>(
        &self,
        old: Option<Entry>,
        new: Option<Entry>,
        write: F,
    ) -> Result<T, Error>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        if old == new {
            return write().await;
        }
        if let Some(new) = &new {
            self.put(new).await?;
        }
        let written = write().await?;
        if let Some(old) = &old {
            self.delete_stale(old).await;
        }
        Ok(written)
    }

    /// The entries due at `now` (Unix seconds, rounded up: an entry within
    /// the current second may be listed, and its key then says whether it
    /// is due yet), grouped by key, earliest first, for at most `limit`
    /// keys. Only the hour folders up to now are listed.
    pub async fn due(&self, now: i64, limit: usize) -> Result<Vec<(String, Vec<Entry>)>, Error> {
        let now_bucket = now.div_euclid(BUCKET_SECONDS);
        let mut buckets: Vec<i64> = self
            .storage
            .list(SCHEDULE_PREFIX)
            .await?
            .iter()
            .filter_map(|b| b.strip_suffix('/')?.parse().ok())
            .filter(|b| *b <= now_bucket)
            .collect();
        buckets.sort_unstable();
        let mut due: Vec<Entry> = Vec::new();
        let mut keys: BTreeSet<String> = BTreeSet::new();
        for bucket in buckets {
            let mut found: Vec<Entry> = self
                .storage
                .list(&format!("{SCHEDULE_PREFIX}{bucket:08}/"))
                .await?
                .iter()
                .filter_map(|leaf| Entry::parse(leaf))
                .filter(|e| e.due <= now)
                .collect();
            found.sort();
            for entry in found {
                if keys.len() >= limit && !keys.contains(&entry.key) {
                    continue;
                }
                keys.insert(entry.key.clone());
                due.push(entry);
            }
            if keys.len() >= limit {
                break;
            }
        }
        // Grouped by key, in the order of each key's earliest entry.
        let mut grouped: Vec<(String, Vec<Entry>)> = Vec::new();
        for entry in due {
            match grouped.iter_mut().find(|(k, _)| *k == entry.key) {
                Some((_, entries)) => entries.push(entry),
                None => grouped.push((entry.key.clone(), vec![entry])),
            }
        }
        Ok(grouped)
    }

    /// Every entry, for tests.
    #[cfg(test)]
    pub async fn all(&self) -> Result<Vec<Entry>, Error> {
        self.due(i64::MAX / 2, usize::MAX)
            .await
            .map(|g| g.into_iter().flat_map(|(_, e)| e).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::storage::InMemoryStorage;

    #[test]
    fn entries_sort_by_time_in_storage() {
        let e = Entry {
            due: 1_800_000_000,
            key: "a-b.c".into(),
        };
        assert_eq!(e.storage_key(), "schedule/00500000/001800000000-a-b.c");
        assert_eq!(Entry::parse("001800000000-a-b.c"), Some(e));
        for bad in ["", "x-k", "123", "123-", "123-a/b"] {
            assert_eq!(Entry::parse(bad), None, "{bad}");
        }
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_000_000_000_000_000_001).unwrap();
        assert_eq!(ceil_seconds(at), 1_000_000_001);
    }

    #[tokio::test]
    async fn due_lists_only_past_entries_earliest_first_and_bounded() {
        let storage = Arc::new(InMemoryStorage::new());
        let index = ScheduleIndex::new(storage.clone());
        let now = 1_800_000_000;
        for (due, key) in [
            (now - 7200, "old"),
            (now, "now"),
            (now + 1, "soon"),
            (now + 86_400, "tomorrow"),
            (now - 10, "stale"),
            (now - 20_000, "stale"),
        ] {
            index
                .put(&Entry {
                    due,
                    key: key.into(),
                })
                .await
                .unwrap();
        }
        let due = index.due(now, 10).await.unwrap();
        let names: Vec<&str> = due.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["stale", "old", "now"]);
        assert_eq!(due[0].1.len(), 2, "both entries of a key");
        let bounded = index.due(now, 2).await.unwrap();
        assert_eq!(bounded.len(), 2);
    }
}
