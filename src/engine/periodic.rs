//! Scheduled rotation and the retry of failed pushes, run by the host's
//! periodic call (every minute, on the active node only).
//!
//! A key is due when its latest version's creation time plus its
//! `auto_rotate_period` has passed. Because that time is in the key record,
//! a key rotates at most once per period, whatever restarts or failovers
//! happen: a rotation moves the time forward in the same write that adds
//! the version. Rotation is the same as `key/:name/rotate`: the key's lock,
//! the same writes, then the push to every provider. A push that fails is
//! kept in `push-pending/<key>` and retried on every later periodic call,
//! never by rotating again; the schedule itself holds while it fails.
//!
//! Each call does a bounded amount of work: at most
//! `Settings::periodic_max_keys` keys, `Settings::periodic_concurrency` at
//! once, and none started after `Settings::periodic_budget`; the rest waits
//! for the next call, as does a key whose lock a request holds.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::join_all;
use futures_util::stream::{FuturesUnordered, StreamExt};
use time::OffsetDateTime;

use super::distribution::Distribution;
use super::keys::{Key, rfc3339_nano};
use super::locks::LockKey;
use super::pending::PendingPushes;
use super::schedule::{Entry, ceil_seconds};
use super::state::KeyManagement;
use crate::framework::Error;

/// Vault versions of `key` that the provider of `record` does not hold.
fn missing_versions(key: &Key, record: &Distribution) -> Vec<u32> {
    key.versions
        .keys()
        .copied()
        .filter(|v| !record.versions.contains_key(v))
        .collect()
}

impl KeyManagement {
    /// The engine's time: the system clock, or a test's.
    pub fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    /// Adds a version to `current`, whose lock the caller holds, and
    /// stores it. Before the key record, a pending push is recorded for
    /// every provider the key is distributed to (so that a crash before
    /// the push is retried) and the schedule entry for the new due time
    /// is written; the old entry is deleted after.
    pub async fn rotate_locked(&self, current: &Key) -> Result<Arc<Key>, Error> {
        let mut key = current.clone();
        let version = key.rotate_at(self.now()).await?;
        let records = self.distributions.of_key(&key.name).await?;
        if !records.is_empty() {
            let mut pending = self.pending.get(&key.name).await?.unwrap_or_default();
            for (provider, record) in &records {
                pending
                    .providers
                    .entry(provider.clone())
                    .or_default()
                    .missing_versions = missing_versions(&key, record);
            }
            self.pending.put(&key.name, &pending).await?;
        }
        debug_assert_eq!(version, key.latest_version);
        self.schedule
            .around(Entry::for_key(current), Entry::for_key(&key), || {
                self.keys.put(key)
            })
            .await
    }

    /// Imports every version that the key's providers lack, in every
    /// provider at once, and records the outcome in `push-pending/<key>`:
    /// a provider that now holds everything is cleared, one that failed
    /// keeps the versions it lacks, the error and the time. Only providers
    /// that lack a version or have a pending push are called. The caller
    /// holds the key's lock; the failures are returned.
    pub async fn push_tracked(&self, key: &Key) -> Result<Vec<Error>, Error> {
        let records = self.distributions.of_key(&key.name).await?;
        let previous = self.pending.get(&key.name).await?.unwrap_or_default();
        let targets: Vec<(String, Distribution)> = records
            .into_iter()
            .filter(|(provider, record)| {
                previous.providers.contains_key(provider)
                    || !record.started.is_empty()
                    || !missing_versions(key, record).is_empty()
            })
            .collect();
        let pushes = targets.iter().map(|(provider, record)| async move {
            let result = self
                .distribute(provider, key, record.purposes.clone(), record.protection)
                .await;
            (provider, result)
        });
        let at = rfc3339_nano(self.now());
        let results = join_all(pushes).await;
        let mut next = PendingPushes::default();
        let mut failures = Vec::new();
        for (provider, result) in results {
            let Err(err) = result else {
                if previous
                    .providers
                    .get(provider)
                    .is_some_and(|p| p.failed_attempts > 0)
                {
                    log::info!(key = key.name.as_str(), provider = provider.as_str(); "the provider holds every version of the key now");
                }
                continue;
            };
            let mut push = previous
                .providers
                .get(provider)
                .cloned()
                .unwrap_or_default();
            let missing = match self.distributions.get(provider, &key.name).await {
                Ok(Some(record)) => missing_versions(key, &record),
                _ => push.missing_versions.clone(),
            };
            log::warn!(key = key.name.as_str(), provider = provider.as_str(); "pushing versions {missing:?} failed; retried at the next periodic call: {err}");
            push.failed(missing, &err, &at);
            next.providers.insert(provider.clone(), push);
            failures.push(err);
        }
        if next != previous {
            self.pending.put(&key.name, &next).await?;
        }
        Ok(failures)
    }

    /// The host's periodic call: rotates the keys that are due and retries
    /// pending pushes, within the bounds of the settings. Failures of one
    /// key are logged and do not stop the others; a second call while one
    /// runs returns at once.
    pub async fn run_periodic(&self) -> Result<(), Error> {
        let Ok(_running) = self.periodic_running.try_lock() else {
            log::debug!("periodic work still running from an earlier call");
            return Ok(());
        };
        let started = Instant::now();
        let now = self.now();
        let limit = self.settings.periodic_max_keys;
        let mut work = self.schedule.due(ceil_seconds(now), limit).await?;
        if work.len() < limit {
            let pending = self.pending.list().await?;
            // Round robin: start after the key the last call stopped at, so
            // that more failing keys than one call takes all get retried.
            let cursor = self
                .pending_cursor
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let scheduled: BTreeSet<String> = work.iter().map(|(k, _)| k.clone()).collect();
            let (after, before): (Vec<String>, Vec<String>) = pending
                .into_iter()
                .partition(|name| cursor.as_ref().is_none_or(|c| name > c));
            let mut last = None;
            for name in after.into_iter().chain(before) {
                if work.len() >= limit {
                    break;
                }
                if !scheduled.contains(&name) {
                    last = Some(name.clone());
                    work.push((name, Vec::new()));
                }
            }
            if last.is_some() {
                *self
                    .pending_cursor
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = last;
            }
        }
        let concurrency = self.settings.periodic_concurrency.max(1);
        let mut queue = work.into_iter();
        let mut running = FuturesUnordered::new();
        let mut left = 0usize;
        loop {
            while running.len() < concurrency {
                if started.elapsed() >= self.settings.periodic_budget {
                    left = queue.len();
                    break;
                }
                let Some((name, listed)) = queue.next() else {
                    break;
                };
                running.push(async move {
                    let result = self.tend(&name, &listed, now).await;
                    (name, result)
                });
            }
            let Some((name, result)) = running.next().await else {
                break;
            };
            if let Err(err) = result {
                log::warn!(key = name.as_str(); "periodic work on the key failed; retried at the next periodic call: {err}");
            }
        }
        if left > 0 {
            log::info!("periodic work took its time budget; {left} keys wait for the next call");
        }
        Ok(())
    }

    /// One key's periodic work: rotate it if due, drop stale schedule
    /// entries, push what its providers lack.
    async fn tend(&self, name: &str, listed: &[Entry], now: OffsetDateTime) -> Result<(), Error> {
        // A key a request is working on (a long distribution, say) waits
        // for the next call rather than holding up this one.
        let Some(_guard) = self.locks.try_lock(LockKey::key(name)) else {
            log::debug!(key = name; "the key is busy; its periodic work waits for the next call");
            return Ok(());
        };
        let Some(mut key) = self.keys.get(name).await? else {
            for entry in listed {
                self.schedule.delete_stale(entry).await;
            }
            return self.pending.delete(name).await;
        };
        let mut handled = vec![Entry::for_key(&key)];
        let mut rotated = false;
        if key.rotation_due().is_some_and(|due| due <= now) {
            key = self.rotate_locked(&key).await?;
            log::info!(key = name, version = key.latest_version; "rotated the key on its schedule");
            rotated = true;
        }
        let wanted = Entry::for_key(&key);
        handled.push(wanted.clone());
        let mut stale = false;
        for entry in listed {
            if !handled.iter().flatten().any(|h| h == entry) {
                self.schedule.delete_stale(entry).await;
                stale = true;
            }
        }
        if stale && let Some(wanted) = &wanted {
            // The entry the key calls for exists unless a write was cut
            // short; writing it again costs one put, and only here.
            self.schedule.put(wanted).await?;
        }
        if rotated || self.pending.get_cached(name).await?.is_some() {
            // Each failure is logged and recorded by push_tracked.
            self.push_tracked(&key).await?;
        }
        Ok(())
    }
}
