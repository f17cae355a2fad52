//! Drift detection and repair through the framework, with the in-process
//! provider's state changed behind Vault's back.

use serde_json::{Value, json};

use super::super::key_type::KeyType;
use super::super::material::KeyMaterial;
use super::super::provider::testing::ImportedVersion;
use super::Harness;

const STATUS: &str = "kms/az/key/k/status";
const RECONCILE: &str = "kms/az/key/k/reconcile";

/// A key with three versions distributed to the test provider; returns
/// its provider-side name.
async fn distributed(key_type: &str) -> (Harness, String) {
    let h = Harness::new().await;
    h.azure_with("k", key_type).await;
    h.ok("write", "key/k/rotate", Value::Null).await;
    h.ok("write", "key/k/rotate", Value::Null).await;
    h.ok("write", "kms/az/key/k", json!({"purpose": "sign,verify"}))
        .await;
    let name = h.ok("read", "kms/az/key/k", Value::Null).await["name"]
        .as_str()
        .unwrap()
        .to_owned();
    (h, name)
}

fn kinds(status: &Value) -> Vec<String> {
    status["drift"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["kind"].as_str().unwrap().to_owned())
        .collect()
}

fn with_version<R>(
    h: &Harness,
    name: &str,
    version: u32,
    f: impl FnOnce(&mut ImportedVersion) -> R,
) -> R {
    let mut state = h.provider.state();
    let v = state
        .keys
        .get_mut(name)
        .unwrap()
        .iter_mut()
        .find(|v| v.version == version && !v.foreign)
        .unwrap();
    f(v)
}

/// Adds a version Vault did not create and makes it current.
fn add_foreign_current(h: &Harness, name: &str) -> String {
    let material = KeyMaterial::generate(KeyType::EcdsaP256).unwrap();
    let mut state = h.provider.state();
    let versions = state.keys.get_mut(name).unwrap();
    let id = format!("{name}-foreign");
    versions.push(ImportedVersion {
        version: 99,
        id: id.clone(),
        public_key: material.public_key_pem(),
        public_der: material.public_key_der(),
        secret: Vec::new(),
        enabled: true,
        foreign: true,
        doomed: false,
    });
    state.current_outside.insert(name.to_owned(), id.clone());
    id
}

#[tokio::test]
async fn a_fresh_distribution_is_in_sync_with_matching_fingerprints() {
    let (h, name) = distributed("ecdsa-p256").await;
    let status = h.ok("read", STATUS, Value::Null).await;
    assert_eq!(status["in_sync"], true, "{status}");
    assert_eq!(status["key_exists"], true);
    assert_eq!(status["name"], name.as_str());
    assert!(kinds(&status).is_empty(), "{status}");
    let key = h.ok("read", "key/k", Value::Null).await;
    for v in ["1", "2", "3"] {
        let version = &status["versions"][v];
        assert_eq!(version["material"], "matches", "{status}");
        assert_eq!(version["enabled"], true);
        assert_eq!(version["fingerprint"], key["versions"][v]["fingerprint"]);
        assert_eq!(version["provider_fingerprint"], version["fingerprint"]);
    }
    assert_eq!(
        status["current_provider_id"],
        status["versions"]["3"]["provider_id"]
    );
    // Distribution reads show the fingerprints a copy must have.
    let read = h.ok("read", "kms/az/key/k", Value::Null).await;
    assert_eq!(
        read["fingerprints"]["2"],
        key["versions"]["2"]["fingerprint"]
    );
}

#[tokio::test]
async fn aes_material_is_unverifiable_but_not_drift() {
    let h = Harness::new().await;
    h.ok("write", "key/k", json!({"type": "aes256-gcm96"}))
        .await;
    h.ok(
        "write",
        "kms/aws",
        json!({"provider": "awskms", "key_collection": "us-east-1"}),
    )
    .await;
    h.ok(
        "write",
        "kms/aws/key/k",
        json!({"purpose": "encrypt,decrypt"}),
    )
    .await;
    let status = h.ok("read", "kms/aws/key/k/status", Value::Null).await;
    assert_eq!(status["in_sync"], true, "{status}");
    assert_eq!(status["versions"]["1"]["material"], "unverifiable");
    assert!(
        status["versions"]["1"]["fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("kcv:")
    );
    assert_eq!(status["versions"]["1"]["provider_fingerprint"], Value::Null);
}

#[tokio::test]
async fn every_kind_of_drift_is_reported_worst_first_and_dry_run_changes_nothing() {
    let (h, name) = distributed("ecdsa-p256").await;
    h.ok("write", "key/k", json!({"min_enabled_version": 2}))
        .await;
    // Behind Vault's back: version 1 enabled again, version 2 scheduled
    // for deletion, version 3's material replaced, a foreign version made
    // current.
    with_version(&h, &name, 1, |v| v.enabled = true);
    with_version(&h, &name, 2, |v| v.doomed = true);
    let other = KeyMaterial::generate(KeyType::EcdsaP256).unwrap();
    with_version(&h, &name, 3, |v| v.public_der = other.public_key_der());
    let foreign = add_foreign_current(&h, &name);

    let status = h.ok("read", STATUS, Value::Null).await;
    assert_eq!(status["in_sync"], false);
    assert_eq!(
        kinds(&status),
        [
            "foreign_current",
            "material_differs",
            "enabled_when_disabled",
            "not_current",
            "version_missing"
        ],
        "{status:#}"
    );
    assert_eq!(status["drift"][0]["severity"], "critical");
    assert_eq!(status["drift"][0]["provider_id"], foreign.as_str());
    assert_eq!(status["versions"]["3"]["material"], "differs");
    assert_eq!(status["versions"]["2"]["material"], "missing");
    assert_eq!(status["foreign_versions"][0]["current"], true);

    let before = h.provider.state().keys.clone();
    let record = h.ok("read", "kms/az/key/k", Value::Null).await;
    let plan = h.ok("write", RECONCILE, json!({"dry_run": true})).await;
    assert_eq!(plan["dry_run"], true);
    assert_eq!(
        plan["actions"],
        json!([
            "disable version 1",
            "make version 3 current",
            "import version 2"
        ]),
        "{plan:#}"
    );
    assert_eq!(kinds(&plan), kinds(&status));
    assert_eq!(h.provider.state().keys, before, "a dry run changes nothing");
    assert_eq!(h.ok("read", "kms/az/key/k", Value::Null).await, record);
}

#[tokio::test]
async fn reconcile_repairs_what_it_can_and_disables_foreign_only_when_asked() {
    let (h, name) = distributed("ecdsa-p256").await;
    h.ok("write", "key/k", json!({"min_enabled_version": 2}))
        .await;
    with_version(&h, &name, 1, |v| v.enabled = true);
    with_version(&h, &name, 3, |v| v.enabled = false);
    with_version(&h, &name, 2, |v| v.doomed = true);
    let old_v2 = with_version(&h, &name, 2, |v| v.id.clone());
    let foreign = add_foreign_current(&h, &name);

    let done = h.ok("write", RECONCILE, Value::Null).await;
    assert_eq!(done["dry_run"], false);
    // Only the foreign version is left, still usable, and no longer current.
    assert_eq!(kinds(&done), ["foreign_version"], "{done:#}");
    assert_eq!(done["in_sync"], false);
    assert!(!with_version(&h, &name, 1, |v| v.enabled));
    assert!(with_version(&h, &name, 3, |v| v.enabled));
    let new_v2 = done["versions"]["2"]["provider_id"].as_str().unwrap();
    assert_ne!(new_v2, old_v2, "version 2 was imported again");
    assert_eq!(done["versions"]["2"]["material"], "matches");
    assert_eq!(
        done["current_provider_id"],
        done["versions"]["3"]["provider_id"]
    );
    assert_eq!(
        h.ok("read", "kms/az/key/k", Value::Null).await["versions"]["2"],
        new_v2
    );

    let done = h
        .ok("write", RECONCILE, json!({"disable_foreign": true}))
        .await;
    assert_eq!(
        done["actions"],
        json!([format!("disable foreign version {foreign}")])
    );
    assert_eq!(kinds(&done), ["foreign_disabled"], "{done:#}");
    assert_eq!(
        done["in_sync"], true,
        "a disabled foreign version is not drift"
    );
    let state = h.provider.state();
    let kept = state.keys[&name].iter().find(|v| v.id == foreign).unwrap();
    assert!(!kept.enabled, "disabled, never deleted");
}

#[tokio::test]
async fn a_current_version_being_deleted_is_not_current() {
    let (h, name) = distributed("ecdsa-p256").await;
    let foreign = add_foreign_current(&h, &name);
    {
        let mut state = h.provider.state();
        let v = state.keys.get_mut(&name).unwrap();
        v.iter_mut().find(|v| v.id == foreign).unwrap().doomed = true;
    }
    let status = h.ok("read", STATUS, Value::Null).await;
    assert_eq!(kinds(&status), ["not_current"], "{status:#}");
    let done = h.ok("write", RECONCILE, Value::Null).await;
    assert_eq!(done["in_sync"], true, "{done:#}");
}

#[tokio::test]
async fn versions_that_never_reached_the_provider_are_imported() {
    let (h, _) = distributed("ecdsa-p256").await;
    h.provider.state().fail_imports = 5;
    let _ = h.call("write", "key/k/rotate", Value::Null).await;
    h.provider.state().fail_imports = 0;
    let status = h.ok("read", STATUS, Value::Null).await;
    assert!(
        kinds(&status).contains(&"not_distributed".to_owned()),
        "{status:#}"
    );
    let done = h.ok("write", RECONCILE, Value::Null).await;
    assert!(
        done["actions"]
            .as_array()
            .unwrap()
            .contains(&json!("import version 4"))
    );
    assert_eq!(done["in_sync"], true, "{done:#}");
    assert_eq!(
        done["current_provider_id"],
        done["versions"]["4"]["provider_id"]
    );
}

#[tokio::test]
async fn a_key_deleted_outside_vault_is_a_clear_error() {
    let (h, name) = distributed("ecdsa-p256").await;
    h.provider.state().keys.remove(&name);
    let status = h.ok("read", STATUS, Value::Null).await;
    assert_eq!(status["key_exists"], false);
    assert_eq!(kinds(&status), ["key_missing"]);
    assert_eq!(status["drift"][0]["severity"], "critical");
    let plan = h.ok("write", RECONCILE, json!({"dry_run": "true"})).await;
    assert_eq!(plan["actions"], json!([]));
    let (code, message) = h.status("write", RECONCILE, Value::Null).await;
    assert_eq!(code, 400);
    assert!(message.contains("deleted outside Vault"), "{message}");
    assert!(message.contains(&name), "{message}");
}

#[tokio::test]
async fn status_of_what_is_not_distributed_is_a_404_and_bad_flags_a_400() {
    let h = Harness::new().await;
    h.azure_with("k", "ecdsa-p256").await;
    let (code, message) = h.status("read", STATUS, Value::Null).await;
    assert_eq!(code, 404);
    assert!(message.contains("not distributed"), "{message}");
    let (code, message) = h.status("write", RECONCILE, Value::Null).await;
    assert_eq!(code, 404, "{message}");
    let (code, message) = h.status("read", "kms/nope/key/k/status", Value::Null).await;
    assert!(code == 400 || code == 404, "{code} {message}");
    h.ok("write", "kms/az/key/k", json!({"purpose": "sign"}))
        .await;
    let (code, message) = h
        .status("write", RECONCILE, json!({"dry_run": "maybe"}))
        .await;
    assert_eq!(code, 400);
    assert!(message.contains("dry_run"), "{message}");
    assert_eq!(
        h.provider.state().connects,
        1,
        "checked before any provider call"
    );
}
