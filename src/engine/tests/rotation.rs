//! Scheduled rotation and the retry of failed pushes, through the
//! framework (the host's `rollback` request), on a settable clock.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::macros::datetime;

use super::super::KeyManagement;
use super::super::backend::framework_backend;
use super::super::clock::ManualClock;
use super::super::keys::rfc3339_nano;
use super::super::provider::testing::TestProvider;
use super::super::schedule::{Entry, ScheduleIndex};
use super::super::settings::Settings;
use super::{Harness, Outcome};
use crate::runtime::backend::LogicalBackend;
use crate::runtime::proto::pb;
use crate::runtime::storage::{InMemoryStorage, Storage, StorageEntry, StorageError};
use crate::runtime::system_view::{ReplicationState, SystemView, SystemViewError};

const T0: OffsetDateTime = datetime!(2026-03-01 12:00:00.25 UTC);
const HOUR: time::Duration = time::Duration::hours(1);
const MINUTE: time::Duration = time::Duration::minutes(1);

/// Storage that counts reads by key prefix (the part before the first `/`).
#[derive(Clone, Default)]
struct Counting {
    inner: InMemoryStorage,
    gets: Arc<Mutex<BTreeMap<String, u32>>>,
}

impl Counting {
    fn gets(&self, prefix: &str) -> u32 {
        self.gets.lock().unwrap().get(prefix).copied().unwrap_or(0)
    }
}

#[async_trait::async_trait]
impl Storage for Counting {
    async fn get(&self, key: &str) -> Result<Option<StorageEntry>, StorageError> {
        let prefix = key.split('/').next().unwrap_or_default().to_owned();
        *self.gets.lock().unwrap().entry(prefix).or_default() += 1;
        self.inner.get(key).await
    }
    async fn put(&self, entry: StorageEntry) -> Result<(), StorageError> {
        self.inner.put(entry).await
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        self.inner.list(prefix).await
    }
}

/// A node whose replication state a test sets.
struct Node(AtomicU32);

#[async_trait::async_trait]
impl SystemView for Node {
    async fn server_version(&self) -> Result<String, SystemViewError> {
        Ok("2.7.2".into())
    }
    async fn replication_state(&self) -> Result<ReplicationState, SystemViewError> {
        Ok(ReplicationState(self.0.load(Ordering::SeqCst)))
    }
}

const ACTIVE: u32 = 8224;
const STANDBY: u32 = 24576;

/// One mount on `storage`, as the host starts it (a restart is another).
struct Mount {
    h: Harness,
    clock: Arc<ManualClock>,
    counting: Counting,
    node: Arc<Node>,
}

impl std::ops::Deref for Mount {
    type Target = Harness;
    fn deref(&self) -> &Harness {
        &self.h
    }
}

impl Mount {
    async fn new(settings: Settings) -> Self {
        Self::start(
            Counting::default(),
            TestProvider::default(),
            Arc::new(ManualClock::new(T0)),
            settings,
        )
        .await
    }

    async fn start(
        counting: Counting,
        provider: TestProvider,
        clock: Arc<ManualClock>,
        settings: Settings,
    ) -> Self {
        let node = Arc::new(Node(AtomicU32::new(ACTIVE)));
        let engine = KeyManagement::new(Arc::new(counting.clone()), Arc::new(provider.clone()))
            .with_settings(settings)
            .with_clock(clock.clone())
            .with_system(node.clone());
        let backend = framework_backend(engine).with_system(node.clone());
        backend.initialize().await.unwrap();
        Self {
            h: Harness {
                backend,
                provider,
                storage: counting.inner.clone(),
            },
            clock,
            counting,
            node,
        }
    }

    /// The same storage, provider and clock in a fresh process.
    async fn restart(&self) -> Self {
        Self::start(
            self.counting.clone(),
            self.h.provider.clone(),
            self.clock.clone(),
            self.h.backend.state().settings.clone(),
        )
        .await
    }

    /// The host's periodic call at `at`.
    async fn tick_at(&self, at: OffsetDateTime) {
        self.clock.set(at);
        let reply = self
            .backend
            .handle_request(pb::Request {
                operation: "rollback".into(),
                ..Default::default()
            })
            .await;
        // What Vault's framework answers when there is nothing to roll back.
        assert_eq!(reply.err.map(|e| e.err_type), Some(5));
    }

    async fn read(&self, key: &str) -> Value {
        self.ok("read", &format!("key/{key}"), Value::Null).await
    }

    async fn latest(&self, key: &str) -> u64 {
        self.read(key).await["latest_version"].as_u64().unwrap()
    }

    async fn entries(&self) -> Vec<Entry> {
        ScheduleIndex::new(Arc::new(self.counting.inner.clone()))
            .all()
            .await
            .unwrap()
    }

    async fn raw(&self, key: &str) -> Option<String> {
        self.storage
            .get(key)
            .await
            .unwrap()
            .map(|e| String::from_utf8(e.value.to_vec()).unwrap())
    }

    /// Provider-side versions of the key's one distribution, in import order.
    fn imported(&self) -> Vec<u32> {
        let state = self.provider.state();
        let (_, versions) = state.keys.iter().next().expect("one distribution");
        versions.iter().map(|v| v.version).collect()
    }
}

fn unix(at: OffsetDateTime) -> i64 {
    at.unix_timestamp()
}

fn short_periods() -> Settings {
    Settings {
        min_rotate_period: std::time::Duration::from_secs(1),
        ..Settings::default()
    }
}

#[tokio::test]
async fn auto_rotate_period_is_checked_first_and_read_like_transit() {
    let m = Mount::new(Settings::default()).await;
    // Refused before anything else, with the field named: not even the
    // type (which is also wrong here) is looked at first.
    for (value, wanted) in [
        (
            json!("abc"),
            "invalid value for field \"auto_rotate_period\"",
        ),
        (json!(-1), "auto_rotate_period must not be negative"),
        (
            json!("30m"),
            "auto_rotate_period must be 0 to disable or at least 1h, got 30m",
        ),
        (json!(3599), "at least 1h, got 59m59s"),
        (json!("2562048h"), "auto_rotate_period must be at most"),
        (json!("1d2h"), "auto_rotate_period"),
    ] {
        let (status, msg) = m
            .status(
                "write",
                "key/k",
                json!({"type": "nope", "auto_rotate_period": value}),
            )
            .await;
        assert_eq!(status, 400, "{value}: {msg}");
        assert!(msg.contains(wanted), "{value}: {msg}");
        assert!(matches!(
            m.call("read", "key/k", Value::Null).await,
            Outcome::NoContent
        ));
    }
    assert!(m.entries().await.is_empty());

    // Accepted as transit accepts it, and read as seconds.
    m.ok("write", "key/k", json!({"type": "aes256-gcm96"}))
        .await;
    let read = m.read("k").await;
    assert_eq!(read["auto_rotate_period"], 0);
    assert!(read.get("next_rotation_time").is_none(), "off: absent");
    for (value, seconds) in [
        (json!("1h"), 3600),
        (json!("90m"), 5400),
        (json!(7200), 7200),
        (json!("7200"), 7200),
        (json!("1d"), 86_400),
        (json!("1h30m15.9s"), 5415),
        (json!(0), 0),
        (json!("3h"), 10_800),
        (json!(""), 0),
        (json!("2562047h"), 9_223_369_200),
    ] {
        m.ok("write", "key/k", json!({"auto_rotate_period": value}))
            .await;
        let read = m.read("k").await;
        assert_eq!(read["auto_rotate_period"], seconds, "{value}");
        let created = read["versions"]["1"]["creation_time"].as_str().unwrap();
        assert_eq!(created, rfc3339_nano(T0));
        if seconds == 0 {
            assert!(read.get("next_rotation_time").is_none());
        } else {
            assert_eq!(
                read["next_rotation_time"],
                rfc3339_nano(T0 + time::Duration::seconds(seconds)),
                "{value}"
            );
        }
    }
    // A refused update changes nothing.
    m.ok("write", "key/k", json!({"auto_rotate_period": "2h"}))
        .await;
    let before = m.raw("key/k").await;
    let entries = m.entries().await;
    assert_eq!(entries.len(), 1);
    for bad in [json!("59m"), json!(-5), json!("soon")] {
        let (status, msg) = m
            .status(
                "write",
                "key/k",
                json!({"auto_rotate_period": bad, "deletion_allowed": true}),
            )
            .await;
        assert!(status == 400 && msg.contains("auto_rotate_period"), "{msg}");
    }
    assert_eq!(m.raw("key/k").await, before);
    assert_eq!(m.entries().await, entries);

    // Set at creation.
    m.ok(
        "write",
        "key/c",
        json!({"type": "ecdsa-p256", "auto_rotate_period": "24h"}),
    )
    .await;
    assert_eq!(
        m.read("c").await["next_rotation_time"],
        rfc3339_nano(T0 + 24 * HOUR)
    );
}

#[tokio::test]
async fn rotates_when_due_and_at_most_once_per_period() {
    let m = Mount::new(Settings::default()).await;
    m.ok(
        "write",
        "key/k",
        json!({"type": "ecdsa-p256", "auto_rotate_period": "2h"}),
    )
    .await;
    m.ok("write", "key/off", json!({"type": "ecdsa-p256"}))
        .await;
    m.tick_at(T0 + 2 * HOUR - time::Duration::milliseconds(1))
        .await;
    assert_eq!(m.latest("k").await, 1, "not due yet");
    m.tick_at(T0 + 2 * HOUR).await;
    assert_eq!(m.latest("k").await, 2, "due exactly then");
    // Again in the same instant, and a minute later: nothing more.
    m.tick_at(T0 + 2 * HOUR).await;
    m.tick_at(T0 + 2 * HOUR + MINUTE).await;
    let read = m.read("k").await;
    assert_eq!(read["latest_version"], 2);
    assert_eq!(
        read["versions"]["2"]["creation_time"],
        rfc3339_nano(T0 + 2 * HOUR)
    );
    assert_eq!(read["next_rotation_time"], rfc3339_nano(T0 + 4 * HOUR));
    // Late ticks (the server was down) rotate once, not once per period missed.
    m.tick_at(T0 + 9 * HOUR).await;
    assert_eq!(m.latest("k").await, 3);
    m.tick_at(T0 + 9 * HOUR + MINUTE).await;
    assert_eq!(m.latest("k").await, 3);
    assert_eq!(m.latest("off").await, 1, "no schedule, no rotation");
    assert_eq!(
        m.entries().await,
        [Entry {
            due: unix(T0 + HOUR * 11) + 1,
            key: "k".into()
        }],
        "one entry, at the next due time (rounded up)"
    );
}

#[tokio::test]
async fn a_changed_period_counts_from_the_latest_version() {
    let m = Mount::new(short_periods()).await;
    m.ok("write", "key/k", json!({"type": "aes256-gcm96"}))
        .await;
    m.tick_at(T0 + 3 * HOUR).await;
    assert_eq!(m.latest("k").await, 1);
    // 2h from version 1's creation is already past: the next call rotates.
    m.ok("write", "key/k", json!({"auto_rotate_period": "2h"}))
        .await;
    assert_eq!(
        m.read("k").await["next_rotation_time"],
        rfc3339_nano(T0 + 2 * HOUR)
    );
    m.tick_at(T0 + 3 * HOUR + MINUTE).await;
    assert_eq!(m.latest("k").await, 2);
    // Lengthened: counted from version 2's creation, not from the change.
    let v2 = T0 + 3 * HOUR + MINUTE;
    m.clock.set(v2 + HOUR);
    m.ok("write", "key/k", json!({"auto_rotate_period": "5h"}))
        .await;
    m.tick_at(v2 + 5 * HOUR - MINUTE).await;
    assert_eq!(m.latest("k").await, 2);
    m.tick_at(v2 + 5 * HOUR).await;
    assert_eq!(m.latest("k").await, 3);
    // Shortened to seconds (the test-only minimum), then turned off.
    let v3 = v2 + 5 * HOUR;
    m.ok("write", "key/k", json!({"auto_rotate_period": "5s"}))
        .await;
    m.tick_at(v3 + time::Duration::seconds(5)).await;
    assert_eq!(m.latest("k").await, 4);
    m.ok("write", "key/k", json!({"auto_rotate_period": 0}))
        .await;
    assert!(m.entries().await.is_empty());
    m.tick_at(v3 + 100 * HOUR).await;
    assert_eq!(m.latest("k").await, 4);
}

#[tokio::test]
async fn a_manual_rotation_moves_the_schedule() {
    let m = Mount::new(Settings::default()).await;
    m.ok(
        "write",
        "key/k",
        json!({"type": "aes256-gcm96", "auto_rotate_period": "2h"}),
    )
    .await;
    m.clock.set(T0 + HOUR);
    m.ok("write", "key/k/rotate", Value::Null).await;
    assert_eq!(
        m.read("k").await["next_rotation_time"],
        rfc3339_nano(T0 + 3 * HOUR)
    );
    m.tick_at(T0 + 2 * HOUR).await;
    assert_eq!(m.latest("k").await, 2, "counted from the manual rotation");
    assert_eq!(m.entries().await.len(), 1);
    m.tick_at(T0 + 3 * HOUR).await;
    assert_eq!(m.latest("k").await, 3);
}

/// A key distributed to the test provider, with a schedule of 1h.
async fn distributed(m: &Mount) {
    m.azure_with("k", "ecdsa-p256").await;
    m.ok("write", "kms/az/key/k", json!({"purpose": "sign"}))
        .await;
    m.ok("write", "key/k", json!({"auto_rotate_period": "1h"}))
        .await;
}

#[tokio::test]
async fn a_failed_push_is_retried_without_rotating_again() {
    let m = Mount::new(Settings::default()).await;
    distributed(&m).await;
    m.provider.state().fail_imports = 1;
    let first = T0 + HOUR;
    m.tick_at(first).await;
    assert_eq!(m.imported(), [1], "the import failed");
    let read = m.read("k").await;
    assert_eq!(read["latest_version"], 2, "rotated in Vault all the same");
    let pending = &read["pending_pushes"]["az"];
    assert_eq!(pending["missing_versions"], json!([2]));
    assert_eq!(pending["failed_attempts"], 1);
    assert_eq!(pending["last_attempt_time"], rfc3339_nano(first));
    assert_eq!(pending["first_failure_time"], rfc3339_nano(first));
    let error = pending["last_error"].as_str().unwrap();
    assert!(
        error.contains("injected import failure") && error.contains("version 2"),
        "{error}"
    );
    // The next call retries, fails again: still no new version.
    m.provider.state().fail_imports = 1;
    m.tick_at(first + MINUTE).await;
    let read = m.read("k").await;
    assert_eq!(read["latest_version"], 2);
    let pending = &read["pending_pushes"]["az"];
    assert_eq!(pending["failed_attempts"], 2);
    assert_eq!(pending["last_attempt_time"], rfc3339_nano(first + MINUTE));
    assert_eq!(pending["first_failure_time"], rfc3339_nano(first));
    // The one after succeeds: the version lands once, nothing is pending.
    m.tick_at(first + 2 * MINUTE).await;
    let read = m.read("k").await;
    assert_eq!(read["latest_version"], 2);
    assert!(read.get("pending_pushes").is_none(), "{read}");
    assert!(m.raw("push-pending/k").await.is_none());
    assert_eq!(m.imported(), [1, 2]);
    let calls = m.provider.state().import_calls;
    m.tick_at(first + 3 * MINUTE).await;
    assert_eq!(
        m.provider.state().import_calls,
        calls,
        "nothing left to retry"
    );

    // The schedule holds while a push keeps failing; every missing version
    // is retried, and both land at once when the provider is back.
    m.provider.state().fail_imports = 2;
    m.tick_at(first + HOUR).await;
    m.tick_at(first + HOUR + MINUTE).await;
    m.provider.state().fail_imports = 1;
    m.tick_at(first + 2 * HOUR).await;
    let read = m.read("k").await;
    assert_eq!(read["latest_version"], 4);
    assert_eq!(
        read["pending_pushes"]["az"]["missing_versions"],
        json!([3, 4])
    );
    assert_eq!(read["pending_pushes"]["az"]["failed_attempts"], 3);
    m.tick_at(first + 2 * HOUR + MINUTE).await;
    assert_eq!(m.imported(), [1, 2, 3, 4]);
    assert!(m.read("k").await.get("pending_pushes").is_none());
    let state = m.provider.state();
    assert_eq!(
        state.current.last().map(|c| c.1),
        Some(4),
        "the latest is current"
    );
}

#[tokio::test]
async fn a_manual_rotation_that_fails_is_retried_and_a_manual_write_clears_it() {
    let m = Mount::new(Settings::default()).await;
    distributed(&m).await;
    m.provider.state().fail_imports = 1;
    let (status, msg) = m.status("write", "key/k/rotate", Value::Null).await;
    assert_eq!(status, 502, "{msg}");
    assert!(
        msg.contains("rotated to version 2 in Vault")
            && msg.contains("retried about once a minute")
            && msg.contains("writing to kms/az/key/k again resumes"),
        "{msg}"
    );
    let read = m.read("k").await;
    assert_eq!(read["pending_pushes"]["az"]["missing_versions"], json!([2]));
    assert_eq!(
        read["pending_pushes"]["az"]["last_attempt_time"],
        rfc3339_nano(T0)
    );
    // The documented repeat completes it, and clears the pending push.
    m.ok("write", "kms/az/key/k", Value::Null).await;
    assert!(m.read("k").await.get("pending_pushes").is_none());
    assert!(m.raw("push-pending/k").await.is_none());
    assert_eq!(m.imported(), [1, 2]);

    // A removal clears it too.
    m.provider.state().fail_imports = 1;
    assert_eq!(m.status("write", "key/k/rotate", Value::Null).await.0, 502);
    assert!(m.read("k").await.get("pending_pushes").is_some());
    m.ok("delete", "kms/az/key/k", Value::Null).await;
    assert!(m.read("k").await.get("pending_pushes").is_none());
    let calls = m.provider.state().import_calls;
    m.tick_at(T0 + 10 * MINUTE).await;
    assert_eq!(m.provider.state().import_calls, calls);
}

#[tokio::test]
async fn a_push_interrupted_before_it_was_recorded_is_retried() {
    // A crash between the rotation's write and its push: the pending push
    // was written before the key record, so the next call retries it.
    let m = Mount::new(Settings::default()).await;
    distributed(&m).await;
    let intent = json!({"providers": {"az": {"missing_versions": [2]}}});
    m.storage
        .put(StorageEntry {
            key: "push-pending/k".into(),
            value: zeroize::Zeroizing::new(intent.to_string().into_bytes()),
        })
        .await
        .unwrap();
    let key = m.backend.state().keys.require("k").await.unwrap();
    let mut rotated = (*key).clone();
    rotated.rotate_at(T0).await.unwrap();
    m.backend.state().keys.put(rotated).await.unwrap();
    let m = m.restart().await;
    let read = m.read("k").await;
    assert_eq!(read["pending_pushes"]["az"]["failed_attempts"], 0);
    assert!(read["pending_pushes"]["az"].get("last_error").is_none());
    m.tick_at(T0 + MINUTE).await;
    assert_eq!(m.imported(), [1, 2]);
    assert!(m.read("k").await.get("pending_pushes").is_none());
}

#[tokio::test]
async fn a_deleted_key_leaves_no_schedule_and_stale_entries_are_dropped() {
    let m = Mount::new(Settings::default()).await;
    m.ok(
        "write",
        "key/k",
        json!({"type": "aes256-gcm96", "auto_rotate_period": "1h", "deletion_allowed": true}),
    )
    .await;
    assert_eq!(m.entries().await.len(), 1);
    m.ok("delete", "key/k", Value::Null).await;
    assert!(m.entries().await.is_empty());
    assert!(m.storage.list("").await.unwrap().is_empty(), "nothing left");

    // Entries left by writes cut short: one for a key that is gone, one
    // due earlier than its key says. Neither rotates anything.
    m.ok(
        "write",
        "key/j",
        json!({"type": "aes256-gcm96", "auto_rotate_period": "2h"}),
    )
    .await;
    let index = ScheduleIndex::new(Arc::new(m.storage.clone()));
    let due = T0.unix_timestamp();
    for key in ["ghost", "j"] {
        index
            .put(&Entry {
                due,
                key: key.into(),
            })
            .await
            .unwrap();
    }
    m.tick_at(T0 + MINUTE).await;
    assert_eq!(m.latest("j").await, 1);
    assert_eq!(
        m.entries().await,
        [Entry {
            due: unix(T0 + HOUR * 2) + 1,
            key: "j".into()
        }]
    );
    assert!(matches!(
        m.call("read", "key/ghost", Value::Null).await,
        Outcome::NoContent
    ));
}

#[tokio::test]
async fn a_restart_rotates_at_most_once_per_period() {
    let m = Mount::new(Settings::default()).await;
    m.ok(
        "write",
        "key/k",
        json!({"type": "aes256-gcm96", "auto_rotate_period": "1h"}),
    )
    .await;
    m.tick_at(T0 + HOUR).await;
    assert_eq!(m.latest("k").await, 2);
    // A new process (restart, reload or failover) on the same storage.
    let m = m.restart().await;
    m.tick_at(T0 + HOUR + MINUTE).await;
    m.tick_at(T0 + 2 * HOUR - MINUTE).await;
    assert_eq!(m.latest("k").await, 2);
    let m = m.restart().await;
    m.tick_at(T0 + 2 * HOUR).await;
    assert_eq!(m.latest("k").await, 3);
}

#[tokio::test]
async fn a_standby_does_no_periodic_work() {
    let m = Mount::new(Settings::default()).await;
    distributed(&m).await;
    m.provider.state().fail_imports = 1;
    m.tick_at(T0 + HOUR).await;
    assert!(m.read("k").await.get("pending_pushes").is_some());
    let calls = m.provider.state().import_calls;
    let before = m.raw("key/k").await;
    m.node.0.store(STANDBY, Ordering::SeqCst);
    m.tick_at(T0 + 5 * HOUR).await;
    assert_eq!(m.raw("key/k").await, before, "no rotation on a standby");
    assert_eq!(m.provider.state().import_calls, calls, "no retry either");
    // Promoted: the work happens.
    m.node.0.store(ACTIVE, Ordering::SeqCst);
    m.tick_at(T0 + 5 * HOUR).await;
    assert_eq!(m.latest("k").await, 3);
    assert_eq!(m.imported(), [1, 2, 3]);
}

/// Latest versions of the scheduled keys of the test below.
async fn scheduled_versions(m: &Mount) -> Vec<u64> {
    let mut versions = Vec::new();
    for i in (7..2_000).step_by(400) {
        versions.push(m.latest(&format!("k{i:04}")).await);
    }
    versions
}

#[tokio::test]
async fn periodic_reads_only_due_keys_and_bounds_its_work() {
    let settings = Settings {
        periodic_max_keys: 3,
        ..Settings::default()
    };
    let m = Mount::new(settings).await;
    for i in 0..2_000 {
        let period = if i % 400 == 7 { "1h" } else { "0" };
        m.ok(
            "write",
            &format!("key/k{i:04}"),
            json!({"type": "aes256-gcm96", "auto_rotate_period": period}),
        )
        .await;
    }
    // Another 2,000 scheduled keys that are not due yet.
    m.clock.set(T0 + 30 * MINUTE);
    for i in 0..2_000 {
        m.ok(
            "write",
            &format!("key/later{i:04}"),
            json!({"type": "aes256-gcm96", "auto_rotate_period": "1h"}),
        )
        .await;
    }
    // A fresh process: nothing cached, so every key read is counted.
    let m = m.restart().await;
    let before = m.counting.gets("key");
    m.tick_at(T0 + HOUR).await;
    assert_eq!(
        m.counting.gets("key") - before,
        3,
        "only the keys worked on are read"
    );
    assert_eq!(
        scheduled_versions(&m).await,
        [2, 2, 2, 1, 1],
        "at most 3 per call"
    );
    m.tick_at(T0 + HOUR + MINUTE).await;
    assert_eq!(
        scheduled_versions(&m).await,
        [2, 2, 2, 2, 2],
        "the rest next call"
    );
    assert_eq!(m.latest("later0000").await, 1);
    m.tick_at(T0 + 90 * MINUTE).await;
    let later: Vec<u64> = {
        let mut v = Vec::new();
        for i in 0..5 {
            v.push(m.latest(&format!("later{i:04}")).await);
        }
        v
    };
    assert_eq!(later, [2, 2, 2, 1, 1]);
}

/// Failed attempts of the pending pushes of keys a, b and c to `az`.
async fn failed_attempts(m: &Mount) -> Vec<Option<u64>> {
    let mut attempts = Vec::new();
    for key in ["a", "b", "c"] {
        let read = m.read(key).await;
        attempts.push(read["pending_pushes"]["az"]["failed_attempts"].as_u64());
    }
    attempts
}

#[tokio::test]
async fn more_failing_keys_than_one_call_takes_are_all_retried() {
    let settings = Settings {
        periodic_max_keys: 2,
        ..Settings::default()
    };
    let m = Mount::new(settings).await;
    m.ok(
        "write",
        "kms/az",
        json!({"provider": "azurekeyvault", "key_collection": "vault1"}),
    )
    .await;
    for key in ["a", "b", "c"] {
        m.ok(
            "write",
            &format!("key/{key}"),
            json!({"type": "ecdsa-p256"}),
        )
        .await;
        m.ok(
            "write",
            &format!("kms/az/key/{key}"),
            json!({"purpose": "sign"}),
        )
        .await;
        m.provider.state().fail_imports = 1;
        assert_eq!(
            m.status("write", &format!("key/{key}/rotate"), Value::Null)
                .await
                .0,
            502
        );
    }
    assert_eq!(failed_attempts(&m).await, [Some(1); 3]);
    m.provider.state().fail_imports = 100;
    m.tick_at(T0 + MINUTE).await;
    assert_eq!(failed_attempts(&m).await, [Some(2), Some(2), Some(1)]);
    m.tick_at(T0 + 2 * MINUTE).await;
    assert_eq!(
        failed_attempts(&m).await,
        [Some(3), Some(2), Some(2)],
        "round robin"
    );
    m.provider.state().fail_imports = 0;
    m.tick_at(T0 + 3 * MINUTE).await;
    m.tick_at(T0 + 4 * MINUTE).await;
    assert_eq!(failed_attempts(&m).await, [None; 3]);
    let state = m.provider.state();
    assert!(state.keys.values().all(|v| v.len() == 2), "one copy each");
}

#[tokio::test]
async fn a_busy_key_waits_for_the_next_call() {
    let m = Mount::new(Settings::default()).await;
    for key in ["busy", "free"] {
        m.ok(
            "write",
            &format!("key/{key}"),
            json!({"type": "aes256-gcm96", "auto_rotate_period": "1h"}),
        )
        .await;
    }
    let held = m
        .backend
        .state()
        .locks
        .lock(super::super::locks::LockKey::key("busy"))
        .await;
    m.tick_at(T0 + HOUR).await;
    assert_eq!(
        (m.latest("busy").await, m.latest("free").await),
        (1, 2),
        "the call did not wait for the busy key"
    );
    drop(held);
    m.tick_at(T0 + HOUR + MINUTE).await;
    assert_eq!(m.latest("busy").await, 2);
}
