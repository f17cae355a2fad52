//! The storage entry decoders: key records (`engine::keys`), KMS provider
//! records (`engine::kms`) and distribution records
//! (`engine::distribution`), read through their stores exactly as the
//! engine reads them.
//!
//! Input: one byte choosing the record kind (key, provider, distribution),
//! then the stored bytes.
//!
//! Properties: no panic; an unreadable record is a 500 that shows none of
//! its key material or credentials; a record that decodes is written back
//! and read again to the same value, and writing that again gives the same
//! bytes.

#![no_main]

use std::sync::Arc;

use keymgmt_fuzz::runtime;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use vault_plugin_secrets_keymgmt::engine::distribution::DistributionStore;
use vault_plugin_secrets_keymgmt::engine::keys::{Key, KeyStore};
use vault_plugin_secrets_keymgmt::engine::kms::ProviderStore;
use vault_plugin_secrets_keymgmt::framework::Error;
use vault_plugin_secrets_keymgmt::runtime::storage::{InMemoryStorage, Storage, StorageEntry};
use zeroize::Zeroizing;

async fn storage_with(key: &str, value: &[u8]) -> Arc<InMemoryStorage> {
    let storage = Arc::new(InMemoryStorage::new());
    storage
        .put(StorageEntry {
            key: key.to_owned(),
            value: Zeroizing::new(value.to_vec()),
        })
        .await
        .unwrap();
    storage
}

async fn raw(storage: &InMemoryStorage, key: &str) -> Vec<u8> {
    storage
        .get(key)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("nothing written at {key}"))
        .value
        .to_vec()
}

/// Every secret in a JSON document, wherever it is: "material" strings and
/// every string (key or value) inside "credentials". Only long ones: a short
/// string may be part of the error's own wording, while real material and
/// credentials are long.
fn secrets(v: &Value, inside: bool, out: &mut Vec<String>) {
    const MIN: usize = 16;
    match v {
        Value::String(s) if inside && s.len() >= MIN => out.push(s.clone()),
        Value::Object(map) => {
            for (k, v) in map {
                if inside && k.len() >= MIN {
                    out.push(k.clone());
                }
                let secret = inside || k == "material" || k == "credentials";
                secrets(v, secret, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| secrets(i, inside, out)),
        _ => {}
    }
}

fn check_unreadable(err: &Error, input: &[u8]) {
    let Error::Internal(message) = err else {
        panic!("an unreadable record must be a 500, got {err:?}");
    };
    if let Ok(doc) = serde_json::from_slice::<Value>(input) {
        let mut found = Vec::new();
        secrets(&doc, false, &mut found);
        for m in found {
            assert!(
                !message.contains(&m),
                "a secret of the record in the error: {message}"
            );
        }
    }
}

fn same_key(a: &Key, b: &Key) {
    assert_eq!(a.name, b.name);
    assert_eq!(a.key_type, b.key_type);
    assert_eq!(a.deletion_allowed, b.deletion_allowed);
    assert_eq!(a.min_enabled_version, b.min_enabled_version);
    assert_eq!(a.latest_version, b.latest_version);
    assert_eq!(a.replica_regions, b.replica_regions);
    assert_eq!(a.auto_rotate_period, b.auto_rotate_period);
    assert_eq!(
        a.versions.keys().collect::<Vec<_>>(),
        b.versions.keys().collect::<Vec<_>>()
    );
    for (n, v) in &a.versions {
        let w = &b.versions[n];
        assert_eq!(v.creation_time, w.creation_time, "version {n}");
        assert_eq!(v.public_key, w.public_key, "version {n}");
        assert_eq!(v.material.as_bytes(), w.material.as_bytes(), "version {n}");
        assert_eq!(v.material.key_type(), a.key_type, "version {n}");
    }
}

async fn key_record(input: &[u8]) {
    let storage = storage_with("key/k", input).await;
    let key = match KeyStore::new(storage).get("k").await {
        Ok(Some(key)) => key,
        Ok(None) => panic!("a stored key was not found"),
        Err(err) => return check_unreadable(&err, input),
    };
    assert!(
        key.min_enabled_version >= 1,
        "min_enabled_version 0 survived the load"
    );
    for (n, v) in &key.versions {
        assert_eq!(
            v.material.key_type(),
            key.key_type,
            "version {n} has material of another type"
        );
    }
    let path = format!("key/{}", key.name);
    let first = Arc::new(InMemoryStorage::new());
    KeyStore::new(first.clone())
        .put((*key).clone())
        .await
        .unwrap();
    let written = raw(&first, &path).await;
    let reread = KeyStore::new(first.clone())
        .require(&key.name)
        .await
        .unwrap_or_else(|e| panic!("a record we wrote does not load: {e}"));
    same_key(&key, &reread);
    let second = Arc::new(InMemoryStorage::new());
    KeyStore::new(second.clone())
        .put((*reread).clone())
        .await
        .unwrap();
    assert_eq!(
        written,
        raw(&second, &path).await,
        "re-encoding is not stable"
    );
}

async fn provider_record(input: &[u8]) {
    let storage = storage_with("kms/p", input).await;
    let config = match ProviderStore::new(storage).get("p").await {
        Ok(Some(config)) => config,
        Ok(None) => panic!("a stored provider was not found"),
        Err(err) => return check_unreadable(&err, input),
    };
    let first = Arc::new(InMemoryStorage::new());
    let store = ProviderStore::new(first.clone());
    store.put("p", &config).await.unwrap();
    let written = raw(&first, "kms/p").await;
    let reread = store.require("p").await.unwrap();
    assert_eq!(reread.kind, config.kind);
    assert_eq!(reread.key_collection, config.key_collection);
    assert_eq!(reread.credentials, config.credentials);
    store.put("p", &reread).await.unwrap();
    assert_eq!(
        written,
        raw(&first, "kms/p").await,
        "re-encoding is not stable"
    );
}

async fn distribution_record(input: &[u8]) {
    let storage = storage_with("distribution/p/k", input).await;
    let record = match DistributionStore::new(storage).get("p", "k").await {
        Ok(Some(record)) => record,
        Ok(None) => panic!("a stored distribution was not found"),
        Err(err) => return check_unreadable(&err, input),
    };
    let first = Arc::new(InMemoryStorage::new());
    let store = DistributionStore::new(first.clone());
    store.put("p", "k", &record).await.unwrap();
    let written = raw(&first, "distribution/p/k").await;
    let reread = store.get("p", "k").await.unwrap().unwrap();
    assert_eq!(reread, record, "a record does not read back as written");
    store.put("p", "k", &reread).await.unwrap();
    assert_eq!(
        written,
        raw(&first, "distribution/p/k").await,
        "re-encoding is not stable"
    );
    assert_eq!(store.keys_of("p").await.unwrap(), ["k"]);
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, input)) = data.split_first() else {
        return;
    };
    runtime().block_on(async {
        match selector % 3 {
            0 => key_record(input).await,
            1 => provider_record(input).await,
            _ => distribution_record(input).await,
        }
    });
});
