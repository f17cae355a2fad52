//! Per-object write serialisation.
//!
//! The host runs requests concurrently, and storage has no transactions
//! under Vault, so read-modify-write of one key (rotate, update, distribute)
//! must be serialised here. Different objects proceed in parallel. Where
//! a request needs both, it takes the provider's lock, then the key's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// What a lock protects.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LockKey {
    /// `key/<name>` and every distribution record of that key.
    Key(String),
    /// `kms/<name>`.
    Provider(String),
}

impl LockKey {
    pub fn key(name: &str) -> Self {
        Self::Key(name.to_owned())
    }

    pub fn provider(name: &str) -> Self {
        Self::Provider(name.to_owned())
    }
}

#[derive(Default)]
pub struct NamedLocks {
    locks: Mutex<HashMap<LockKey, Arc<AsyncMutex<()>>>>,
}

impl NamedLocks {
    /// Waits for exclusive use of `key`. Entries nobody holds or waits for
    /// are dropped on the way, so the table stays as small as the work in
    /// flight.
    pub async fn lock(&self, key: LockKey) -> OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.retain(|_, l| Arc::strong_count(l) > 1);
            locks.entry(key).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// [`NamedLocks::lock`] without waiting: None while someone holds it.
    pub fn try_lock(&self, key: LockKey) -> Option<OwnedMutexGuard<()>> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.retain(|_, l| Arc::strong_count(l) > 1);
            locks.entry(key).or_default().clone()
        };
        lock.try_lock_owned().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn same_name_is_exclusive() {
        let locks = Arc::new(NamedLocks::default());
        let inside = Arc::new(AtomicU32::new(0));
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (locks, inside) = (locks.clone(), inside.clone());
                tokio::spawn(async move {
                    let _guard = locks.lock(LockKey::key("k")).await;
                    assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                    tokio::task::yield_now().await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let _a = locks.lock(LockKey::key("a")).await;
        let _b = locks.lock(LockKey::key("b")).await; // different names do not block
        let _c = locks.lock(LockKey::provider("a")).await; // nor a provider of the same name
        assert!(locks.try_lock(LockKey::key("a")).is_none(), "held");
        assert!(locks.try_lock(LockKey::key("free")).is_some());
    }
}
