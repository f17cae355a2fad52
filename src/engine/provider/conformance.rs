//! The contract every provider must meet, run against each provider's
//! test double (an in-memory cloud behind the provider's real code):
//!
//! - repeating the import that was started last is safe, and a lost
//!   answer at any call of an import never leaves two versions for one
//!   Vault version;
//! - a version imported disabled is never usable, and enabling and
//!   disabling work both ways;
//! - the latest version can be made current;
//! - removal succeeds twice, and when the key is already gone;
//! - a provider that allows parallel imports keeps one version per Vault
//!   version when answers are lost while several imports are in flight;
//! - failures map to the right class: a denial is a 400 that created
//!   nothing, an outage that outlives the retries a 502.
//!
//! A provider joins by implementing [`Double`] for its test double and
//! calling [`run`] from a test. Drift detection has its own contract,
//! [`run_drift`], over [`Tamper`]: `inspect` reports every version with
//! its state and material, a version disabled, added or deleted outside
//! Vault shows as such, and a deleted key reads as `None`.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{ImportRequest, KmsProvider, LiveMaterial, ProviderError, Target, VersionState};
use crate::engine::material::KeyMaterial;
use crate::framework::Error;

/// A fault the suite asks a double to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The service fails before doing anything (5xx or throttling).
    Unavailable,
    /// The call takes effect, and its answer is lost.
    Lost,
    /// The principal lacks the permission.
    Denied,
}

/// What the double shows of one provider-side version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub provider_id: String,
    /// The Vault version it was created for, from its tags.
    pub vault_version: Option<u32>,
    /// Whether applications could use it now.
    pub usable: bool,
    /// Whether it holds the material of that Vault version (always true
    /// for a version that has no material yet).
    pub material_matches: bool,
}

/// A provider over its in-memory test double.
pub trait Double {
    fn provider(&self) -> Arc<dyn KmsProvider>;
    /// A target of a type the provider imports, named `name`.
    fn target(&self, name: &str) -> Target;
    /// The calls an import makes that create or change something: each
    /// is tested with a lost answer.
    fn import_sites(&self) -> &'static [&'static str];
    /// The first call of an import that creates something.
    fn create_site(&self) -> &'static str;
    fn inject(&self, site: &str, fault: Fault, times: u32);
    fn clear_faults(&self);
    /// Every provider-side version the target has, live or not.
    fn observe(&self, target: &Target, materials: &BTreeMap<u32, KeyMaterial>) -> Vec<Observed>;
    /// The provider id applications get when they name the target.
    fn current(&self, target: &Target) -> Option<String>;
    /// Deletes the target in the provider, outside Vault.
    fn delete_outside(&self, target: &Target);
}

fn materials(target: &Target, count: u32) -> BTreeMap<u32, KeyMaterial> {
    (1..=count)
        .map(|v| (v, KeyMaterial::generate(target.key_type).expect("material")))
        .collect()
}

/// Imports one version in a session of its own, as the engine does after
/// a repeat; `recorded` are the ids Vault holds for the other versions.
async fn import(
    provider: &dyn KmsProvider,
    target: &Target,
    version: u32,
    material: &KeyMaterial,
    enabled: bool,
    resume: bool,
    recorded: &[String],
) -> Result<String, ProviderError> {
    let session = provider.begin_import(target);
    let result = session
        .import(ImportRequest {
            version,
            material,
            enabled,
            resume,
            recorded,
        })
        .await;
    session.finish().await;
    result
}

/// Imports every version, in order, enabled as `enabled` says, recording
/// each before the next as the engine does.
async fn import_all(
    provider: &dyn KmsProvider,
    target: &Target,
    materials: &BTreeMap<u32, KeyMaterial>,
    enabled: impl Fn(u32) -> bool,
) -> BTreeMap<u32, String> {
    let mut ids = BTreeMap::new();
    for (v, material) in materials {
        let recorded: Vec<String> = ids.values().cloned().collect();
        let id = import(
            provider,
            target,
            *v,
            material,
            enabled(*v),
            false,
            &recorded,
        )
        .await
        .unwrap_or_else(|e| panic!("importing version {v}: {e}"));
        ids.insert(*v, id);
    }
    ids
}

fn states<'a>(
    ids: &'a BTreeMap<u32, String>,
    materials: &'a BTreeMap<u32, KeyMaterial>,
    enabled: impl Fn(u32) -> bool,
) -> Vec<VersionState<'a>> {
    ids.iter()
        .map(|(v, id)| VersionState {
            version: *v,
            provider_id: id,
            enabled: enabled(*v),
            material: &materials[v],
        })
        .collect()
}

fn live(observed: &[Observed]) -> Vec<&Observed> {
    observed.iter().filter(|o| o.usable).collect()
}

/// Runs the whole contract; panics with the provider's name on a breach.
pub async fn run(double: &dyn Double, name: &str) {
    imports_are_safe_to_repeat(double, name).await;
    lost_answers_never_duplicate(double, name).await;
    outages_are_retried_then_reported(double, name).await;
    denials_create_nothing(double, name).await;
    enabling_and_disabling(double, name).await;
    disabled_versions_are_never_usable(double, name).await;
    latest_version_is_current(double, name).await;
    removal_tolerates_repeats_and_gone_keys(double, name).await;
    parallel_lost_answers_never_duplicate(double, name).await;
}

async fn parallel_lost_answers_never_duplicate(double: &dyn Double, name: &str) {
    let provider = double.provider();
    let target = double.target("parallel-1700000009");
    let m = materials(&target, 6);
    let session = provider.begin_import(&target);
    let allowed = session.concurrency(m.len()).await.expect("concurrency");
    assert!(allowed >= 1, "{name}: concurrency {allowed}");
    if allowed == 1 {
        session.finish().await;
        return;
    }
    // Answers are lost while every import is in flight, the way the
    // engine runs them; then the failed ones are repeated, in parallel.
    double.inject(double.create_site(), Fault::Lost, 3);
    let run = |resume: bool, versions: Vec<u32>| {
        let (session, m) = (&session, &m);
        futures_util::future::join_all(versions.into_iter().map(move |v| async move {
            let result = session
                .import(ImportRequest {
                    version: v,
                    material: &m[&v],
                    enabled: true,
                    resume,
                    recorded: &[],
                })
                .await;
            (v, result)
        }))
    };
    let mut ids = BTreeMap::new();
    let mut failed = Vec::new();
    for (v, result) in run(false, m.keys().copied().collect()).await {
        match result {
            Ok(id) => {
                ids.insert(v, id);
            }
            Err(_) => failed.push(v),
        }
    }
    double.clear_faults();
    for (v, result) in run(true, failed).await {
        ids.insert(
            v,
            result.unwrap_or_else(|e| panic!("{name}: resuming {v}: {e}")),
        );
    }
    session.finish().await;
    let observed = double.observe(&target, &m);
    let usable = live(&observed);
    assert_eq!(usable.len(), m.len(), "{name}: {observed:?}");
    for (v, id) in &ids {
        let found: Vec<_> = usable
            .iter()
            .filter(|o| o.vault_version == Some(*v))
            .collect();
        assert_eq!(found.len(), 1, "{name}: version {v}: {observed:?}");
        assert_eq!(&found[0].provider_id, id, "{name}: version {v}");
        assert!(found[0].material_matches, "{name}: version {v}");
    }
}

async fn imports_are_safe_to_repeat(double: &dyn Double, name: &str) {
    let provider = double.provider();
    let target = double.target("repeat-1700000001");
    let m = materials(&target, 2);
    let ids = import_all(provider.as_ref(), &target, &m, |_| true).await;
    assert_ne!(ids[&1], ids[&2], "{name}: versions have their own ids");
    // The engine repeats only the import it started last (each version is
    // recorded before the next starts).
    let recorded = [ids[&1].clone()];
    let again = import(provider.as_ref(), &target, 2, &m[&2], true, true, &recorded)
        .await
        .unwrap();
    assert_eq!(
        again, ids[&2],
        "{name}: a repeated import returns the first id"
    );
    let observed = double.observe(&target, &m);
    assert_eq!(observed.len(), 2, "{name}: {observed:?}");
    assert!(
        observed.iter().all(|o| o.usable && o.material_matches),
        "{name}: {observed:?}"
    );
}

async fn lost_answers_never_duplicate(double: &dyn Double, name: &str) {
    let provider = double.provider();
    for (i, site) in double.import_sites().iter().enumerate() {
        let target = double.target(&format!("lost{i}-1700000002"));
        let m = materials(&target, 1);
        double.inject(site, Fault::Lost, 1);
        let first = import(provider.as_ref(), &target, 1, &m[&1], true, false, &[]).await;
        // Within its retries the provider may already find what the lost
        // call did; otherwise the engine repeats with `resume`.
        let id = match first {
            Ok(id) => id,
            Err(_) => import(provider.as_ref(), &target, 1, &m[&1], true, true, &[])
                .await
                .unwrap(),
        };
        double.clear_faults();
        let observed = double.observe(&target, &m);
        let usable = live(&observed);
        assert_eq!(
            usable.len(),
            1,
            "{name}: lost answer at {site}: {observed:?}"
        );
        assert_eq!(usable[0].provider_id, id, "{name}: {site}");
        assert_eq!(usable[0].vault_version, Some(1), "{name}: {site}");
        assert!(usable[0].material_matches, "{name}: {site}");
    }
}

async fn outages_are_retried_then_reported(double: &dyn Double, name: &str) {
    let provider = double.provider();
    let site = double.create_site();
    let target = double.target("outage-1700000003");
    let m = materials(&target, 1);
    double.inject(site, Fault::Unavailable, 2);
    import(provider.as_ref(), &target, 1, &m[&1], true, false, &[])
        .await
        .unwrap_or_else(|e| panic!("{name}: two failures are retried: {e}"));
    double.clear_faults();

    let target = double.target("outage-1700000004");
    double.inject(site, Fault::Unavailable, 1000);
    let err = import(provider.as_ref(), &target, 1, &m[&1], true, false, &[])
        .await
        .unwrap_err();
    assert!(
        matches!(err, ProviderError::Unavailable(_)),
        "{name}: {err:?}"
    );
    assert_eq!(Error::from(err).status(), 502, "{name}");
    double.clear_faults();
    import(provider.as_ref(), &target, 1, &m[&1], true, true, &[])
        .await
        .unwrap();
    let observed = double.observe(&target, &m);
    assert_eq!(live(&observed).len(), 1, "{name}: {observed:?}");
}

async fn denials_create_nothing(double: &dyn Double, name: &str) {
    let provider = double.provider();
    let target = double.target("denied-1700000005");
    let m = materials(&target, 1);
    double.inject(double.create_site(), Fault::Denied, 1);
    let session = provider.begin_import(&target);
    let err = session
        .import(ImportRequest {
            version: 1,
            material: &m[&1],
            enabled: true,
            resume: false,
            recorded: &[],
        })
        .await
        .unwrap_err();
    assert!(
        !session.touched(),
        "{name}: a refused creation touched nothing"
    );
    session.finish().await;
    double.clear_faults();
    assert!(
        matches!(err, ProviderError::Permission(_)),
        "{name}: {err:?}"
    );
    assert_eq!(Error::from(err).status(), 400, "{name}");
    assert!(double.observe(&target, &m).is_empty(), "{name}");
}

async fn enabling_and_disabling(double: &dyn Double, name: &str) {
    let provider = double.provider();
    let target = double.target("toggle-1700000006");
    let m = materials(&target, 2);
    let ids = import_all(provider.as_ref(), &target, &m, |_| true).await;
    provider
        .set_enabled(&target, &states(&ids, &m, |v| v >= 2))
        .await
        .unwrap();
    let usable: Vec<String> = live(&double.observe(&target, &m))
        .iter()
        .map(|o| o.provider_id.clone())
        .collect();
    assert_eq!(usable, [ids[&2].clone()], "{name}: version 1 disabled");
    // Repeating is harmless.
    provider
        .set_enabled(&target, &states(&ids, &m, |v| v >= 2))
        .await
        .unwrap();
    provider
        .set_enabled(&target, &states(&ids, &m, |_| true))
        .await
        .unwrap();
    assert_eq!(
        live(&double.observe(&target, &m)).len(),
        2,
        "{name}: both enabled again"
    );
}

async fn disabled_versions_are_never_usable(double: &dyn Double, name: &str) {
    let provider = double.provider();
    let target = double.target("never-1700000007");
    let m = materials(&target, 2);
    let mut ids = import_all(provider.as_ref(), &target, &m, |v| v >= 2).await;
    let observed = double.observe(&target, &m);
    assert_eq!(live(&observed).len(), 1, "{name}: {observed:?}");
    assert_eq!(live(&observed)[0].provider_id, ids[&2], "{name}");
    // A provider may bring a disabled version in only once it is enabled;
    // it then reports the id to record.
    let new_ids = provider
        .set_enabled(&target, &states(&ids, &m, |_| true))
        .await
        .unwrap();
    for new in new_ids {
        ids.insert(new.version, new.provider_id);
    }
    let observed = double.observe(&target, &m);
    assert_eq!(live(&observed).len(), 2, "{name}: {observed:?}");
    assert!(
        observed.iter().all(|o| o.material_matches),
        "{name}: {observed:?}"
    );
    let usable: Vec<&str> = live(&observed)
        .iter()
        .map(|o| o.provider_id.as_str())
        .collect();
    assert!(
        usable.contains(&ids[&1].as_str()),
        "{name}: the recorded id is version 1's"
    );
}

async fn latest_version_is_current(double: &dyn Double, name: &str) {
    let provider = double.provider();
    let target = double.target("current-1700000008");
    let m = materials(&target, 2);
    let mut ids = BTreeMap::new();
    for v in [1, 2] {
        let recorded: Vec<String> = ids.values().cloned().collect();
        let id = import(
            provider.as_ref(),
            &target,
            v,
            &m[&v],
            true,
            false,
            &recorded,
        )
        .await
        .unwrap();
        ids.insert(v, id);
        let states = states(&ids, &m, |_| true);
        let latest = states.last().unwrap();
        provider.make_current(&target, latest).await.unwrap();
        provider.make_current(&target, latest).await.unwrap();
        assert_eq!(
            double.current(&target).as_ref(),
            Some(&ids[&v]),
            "{name}: version {v}"
        );
    }
}

async fn removal_tolerates_repeats_and_gone_keys(double: &dyn Double, name: &str) {
    let provider = double.provider();
    let target = double.target("remove-1700000009");
    let m = materials(&target, 2);
    let ids = import_all(provider.as_ref(), &target, &m, |_| true).await;
    let all = states(&ids, &m, |_| true);
    provider.remove(&target, &all, &[]).await.unwrap();
    assert!(
        live(&double.observe(&target, &m)).is_empty(),
        "{name}: removed"
    );
    provider.remove(&target, &all, &[]).await.unwrap();

    let target = double.target("gone-1700000010");
    let ids = import_all(provider.as_ref(), &target, &m, |v| v == 1).await;
    double.delete_outside(&target);
    provider
        .remove(&target, &states(&ids, &m, |_| true), &[])
        .await
        .unwrap_or_else(|e| panic!("{name}: removing a key deleted outside Vault: {e}"));
}

/// A double whose provider-side state a drift test can change behind
/// Vault's back, as an operator with the cloud's console would.
pub trait Tamper: Double {
    /// Sets a version's enabled flag directly in the provider.
    fn set_enabled_outside(&self, target: &Target, provider_id: &str, enabled: bool);
    /// Creates a version Vault did not create, enabled, with `material`,
    /// and makes it current where the provider has a current version.
    /// Returns its provider id.
    fn add_foreign(&self, target: &Target, material: &KeyMaterial) -> String;
    /// Schedules one version for deletion or destruction; false where the
    /// provider cannot delete a single version (Azure).
    fn doom_outside(&self, target: &Target, provider_id: &str) -> bool;
}

/// The drift contract: `inspect` reports exactly what the provider holds,
/// and `disable_foreign` disables only what it is given.
pub async fn run_drift(double: &dyn Tamper, name: &str) {
    let provider = double.provider();
    let target = double.target("drift-1700000011");
    let m = materials(&target, 3);
    let ids = import_all(provider.as_ref(), &target, &m, |_| true).await;
    let all = states(&ids, &m, |_| true);
    provider
        .make_current(&target, all.last().unwrap())
        .await
        .unwrap();
    let live = provider
        .inspect(&target, &all)
        .await
        .unwrap_or_else(|e| panic!("{name}: inspect: {e}"))
        .unwrap_or_else(|| panic!("{name}: the key exists"));
    assert_eq!(live.versions.len(), 3, "{name}: {live:?}");
    for (v, id) in &ids {
        let found = live
            .versions
            .iter()
            .find(|l| &l.provider_id == id)
            .unwrap_or_else(|| panic!("{name}: version {v} ({id}) in {live:?}"));
        assert!(found.enabled && !found.doomed, "{name}: {found:?}");
        if let Some(tagged) = found.vault_version {
            assert_eq!(tagged, *v, "{name}: {found:?}");
        }
        match (&found.material, m[v].public_key_der()) {
            (LiveMaterial::PublicKey(der), Some(ours)) => {
                assert_eq!(der, &ours, "{name}: version {v}'s public key");
            }
            (LiveMaterial::CheckValue(kcv), None) => {
                let ours = m[v].fingerprint();
                assert_eq!(
                    crate::engine::material::check_value_fingerprint(kcv),
                    ours,
                    "{name}: version {v}'s check value"
                );
            }
            (LiveMaterial::Unverifiable(_), None) => {}
            (other, _) => panic!("{name}: version {v} shows {other:?}"),
        }
    }
    if live.has_current {
        assert_eq!(live.current.as_ref(), Some(&ids[&3]), "{name}: current");
        assert_eq!(double.current(&target), live.current, "{name}: current");
    }

    // Disabled behind Vault's back, then put right by set_enabled.
    double.set_enabled_outside(&target, &ids[&1], false);
    let live = provider.inspect(&target, &all).await.unwrap().unwrap();
    let v1 = live.versions.iter().find(|l| l.provider_id == ids[&1]);
    assert!(!v1.unwrap().enabled, "{name}: {live:?}");
    provider.set_enabled(&target, &all).await.unwrap();
    let live = provider.inspect(&target, &all).await.unwrap().unwrap();
    assert!(live.versions.iter().all(|l| l.enabled), "{name}: {live:?}");

    // A foreign version: reported, current where the provider has a
    // current version, and disabled only when asked.
    let other = KeyMaterial::generate(target.key_type).expect("material");
    let foreign = double.add_foreign(&target, &other);
    assert!(!ids.values().any(|id| id == &foreign), "{name}");
    let live = provider.inspect(&target, &all).await.unwrap().unwrap();
    let found = live
        .versions
        .iter()
        .find(|l| l.provider_id == foreign)
        .unwrap_or_else(|| panic!("{name}: foreign {foreign} in {live:?}"));
    assert!(found.enabled, "{name}: {found:?}");
    if live.has_current {
        assert_eq!(live.current.as_ref(), Some(&foreign), "{name}: {live:?}");
    }
    provider
        .disable_foreign(&target, std::slice::from_ref(&foreign))
        .await
        .unwrap_or_else(|e| panic!("{name}: disable_foreign: {e}"));
    let live = provider.inspect(&target, &all).await.unwrap().unwrap();
    for l in &live.versions {
        assert_eq!(l.enabled, l.provider_id != foreign, "{name}: {live:?}");
    }
    // Ours is current again once made so, where the provider can.
    provider
        .make_current(&target, all.last().unwrap())
        .await
        .unwrap();
    if live.has_current && double.current(&target) == Some(ids[&3].clone()) {
        let live = provider.inspect(&target, &all).await.unwrap().unwrap();
        assert_eq!(live.current.as_ref(), Some(&ids[&3]), "{name}: {live:?}");
    }

    // One version deleted outside Vault counts as missing.
    if double.doom_outside(&target, &ids[&2]) {
        let live = provider.inspect(&target, &all).await.unwrap().unwrap();
        let v2 = live.versions.iter().find(|l| l.provider_id == ids[&2]);
        assert!(
            v2.is_none_or(|l| l.doomed && !l.enabled),
            "{name}: {live:?}"
        );
    }

    // The whole key deleted outside Vault, and a key never created.
    double.delete_outside(&target);
    assert_eq!(
        provider.inspect(&target, &all).await.unwrap(),
        None,
        "{name}: a deleted key"
    );
    let never = double.target("never-1700000012");
    assert_eq!(
        provider.inspect(&never, &[]).await.unwrap(),
        None,
        "{name}: a key never created"
    );
}
