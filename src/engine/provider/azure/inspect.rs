//! Drift detection: what Key Vault holds of a distribution, read live.
//!
//! One Azure key per distribution, one Azure version per Vault version
//! (tagged `vault_version=<n>`), the newest created version current
//! (`GET /keys/{name}` returns it). Key Vault refuses to show a disabled
//! version (`403 KeyDisabled`, also to an identity with every permission),
//! so a disabled version's material is unverifiable, and without the
//! `list` permission its tags are not seen either.
//!
//! With `list`, every version is seen: the listing gives ids, enabled
//! flags, dates and tags, and each enabled version is read for its public
//! key. Without it only what can be named is seen: the recorded versions
//! and the current one, so a foreign version shows only while it is the
//! current one and enabled.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;

use azure_core::error::Error as AzureError;
use azure_security_keyvault_keys::models::{Key, KeyAttributes};

use super::client::{self, Op};
use super::{AzureKeyVault, Listing, byok, check_name, spki};
use crate::engine::provider::{
    LiveKey, LiveMaterial, LiveVersion, ProviderError, Target, VersionState,
};

const DISABLED: &str =
    "Azure Key Vault does not show the public key of a disabled version (403 KeyDisabled)";

/// A key version as `GET` shows it: `None` when Key Vault refuses to show
/// it because it is disabled.
async fn shown(
    get: impl Future<Output = Result<Key, AzureError>>,
) -> Result<Option<Key>, AzureError> {
    match get.await {
        Ok(key) => Ok(Some(key)),
        Err(e) if client::is_key_disabled(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether applications can use a version with these attributes now, and
/// the word for its state: Key Vault refuses operations with a disabled
/// version and outside its `nbf`/`exp` window.
fn usable(attributes: Option<&KeyAttributes>) -> (bool, &'static str) {
    let Some(attributes) = attributes else {
        return (true, "Enabled");
    };
    let now = time::OffsetDateTime::now_utc();
    if attributes.enabled == Some(false) {
        (false, "Disabled")
    } else if attributes.expires.is_some_and(|exp| exp <= now) {
        (false, "Expired")
    } else if attributes.not_before.is_some_and(|nbf| nbf > now) {
        (false, "NotYetValid")
    } else {
        (true, "Enabled")
    }
}

fn vault_version(tags: Option<&HashMap<String, String>>) -> Option<u32> {
    tags?.get(byok::VERSION_TAG)?.parse().ok()
}

fn material(key: &Key) -> LiveMaterial {
    match key.key.as_ref().and_then(spki::of_jwk) {
        Some(der) => LiveMaterial::PublicKey(der),
        None => LiveMaterial::Unverifiable(
            "Azure Key Vault shows no public key for this version".into(),
        ),
    }
}

fn from_key(id: &str, key: &Key) -> LiveVersion {
    let (enabled, state) = usable(key.attributes.as_ref());
    LiveVersion {
        provider_id: id.to_owned(),
        vault_version: vault_version(key.tags.as_ref()),
        enabled,
        doomed: false,
        state: state.into(),
        material: material(key),
    }
}

/// A version Key Vault refused to show: disabled, nothing else known.
fn hidden(id: &str, vault_version: Option<u32>) -> LiveVersion {
    LiveVersion {
        provider_id: id.to_owned(),
        vault_version,
        enabled: false,
        doomed: false,
        state: "Disabled".into(),
        material: LiveMaterial::Unverifiable(DISABLED.into()),
    }
}

fn kid_version(key: &Key) -> Option<String> {
    key.key
        .as_ref()?
        .kid
        .as_deref()
        .and_then(client::version_of)
        .map(str::to_owned)
}

impl AzureKeyVault {
    /// `GET` of one version; `Ok(None)` when it is not in the key.
    async fn read_version(
        &self,
        name: &str,
        id: &str,
    ) -> Result<Option<Option<Key>>, ProviderError> {
        let vault = &self.vault;
        vault
            .call(Op::Get, |_| shown(vault.api.version(name, id)))
            .await
    }

    pub(super) async fn inspect_key(
        &self,
        target: &Target,
        versions: &[VersionState<'_>],
    ) -> Result<Option<LiveKey>, ProviderError> {
        check_name(&target.name)?;
        let vault = &self.vault;
        let name = target.name.as_str();
        // The current version; 404: the key is gone.
        let Some(latest) = vault
            .call(Op::Get, |_| shown(vault.api.latest(name)))
            .await?
        else {
            return Ok(None);
        };
        let latest_id = latest.as_ref().and_then(kid_version);
        let mut live = Vec::new();
        let mut current = latest_id.clone();
        match self.listing(name).await? {
            Listing::Missing => return Ok(None),
            Listing::Listed(listed) => {
                let mut newest: Option<(time::OffsetDateTime, Vec<String>)> = None;
                for item in listed {
                    let Some(id) = item.kid.as_deref().and_then(client::version_of) else {
                        continue;
                    };
                    let id = id.to_owned();
                    if let Some(created) = item.attributes.as_ref().and_then(|a| a.created) {
                        match &mut newest {
                            Some((at, ids)) if *at == created => ids.push(id.clone()),
                            Some((at, _)) if *at > created => {}
                            _ => newest = Some((created, vec![id.clone()])),
                        }
                    }
                    let tagged = vault_version(item.tags.as_ref());
                    if item.attributes.as_ref().and_then(|a| a.enabled) == Some(false) {
                        live.push(hidden(&id, tagged));
                        continue;
                    }
                    let key = match (&latest, latest_id.as_deref()) {
                        (Some(key), Some(l)) if l == id => Some(Some(key.clone())),
                        _ => self.read_version(name, &id).await?,
                    };
                    match key {
                        Some(Some(key)) => live.push(from_key(&id, &key)),
                        // Disabled since it was listed.
                        Some(None) => live.push(hidden(&id, tagged)),
                        // Gone since it was listed (the key was deleted).
                        None => {}
                    }
                }
                // A disabled current version is not shown: the newest
                // created is current, where the listing tells it apart.
                if latest.is_none() {
                    current = newest.and_then(|(_, ids)| match ids.as_slice() {
                        [one] => Some(one.clone()),
                        _ => None,
                    });
                }
            }
            Listing::Denied => {
                let mut seen = BTreeSet::new();
                if let (Some(key), Some(id)) = (&latest, &latest_id) {
                    live.push(from_key(id, key));
                    seen.insert(id.clone());
                }
                for state in versions {
                    if !seen.insert(state.provider_id.to_owned()) {
                        continue;
                    }
                    match self.read_version(name, state.provider_id).await? {
                        Some(Some(key)) => live.push(from_key(state.provider_id, &key)),
                        Some(None) => live.push(hidden(state.provider_id, None)),
                        None => {}
                    }
                }
            }
        }
        Ok(Some(LiveKey {
            versions: live,
            // Without the listing, or with two versions created in the
            // same second, the current one cannot be told: no judgement.
            has_current: current.is_some(),
            current,
            can_make_current: false,
        }))
    }

    pub(super) async fn disable_versions(
        &self,
        target: &Target,
        provider_ids: &[String],
    ) -> Result<(), ProviderError> {
        check_name(&target.name)?;
        let vault = &self.vault;
        let name = target.name.as_str();
        for id in provider_ids {
            vault
                .call_found(Op::Update, &format!("version {id} of key {name:?}"), |_| {
                    vault.api.set_enabled(name, id, false)
                })
                .await?;
        }
        Ok(())
    }
}
