//! Drift: how a provider's copy of a key differs from what Vault recorded,
//! and the repair of what can be repaired.
//!
//! Providers report what they hold ([`LiveKey`]); this module alone decides
//! what counts as drift, how serious it is and what reconciling does about
//! it, so that every provider is judged by the same rules. Vault's record
//! is the truth: a version the provider holds that Vault did not create is
//! reported, and disabled only when the operator asks, never deleted.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::distribution::Distribution;
use super::keys::Key;
use super::material::{check_value_fingerprint, spki_fingerprint};
use super::propagate::version_states;
use super::provider::{LiveKey, LiveMaterial, LiveVersion};
use super::state::KeyManagement;
use crate::framework::Error;
use crate::framework::error::quote;

/// A kind of difference, in order of seriousness: the first is the worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftKind {
    /// The provider key no longer exists: it was deleted outside Vault.
    KeyMissing,
    /// Applications naming the key get a version Vault did not create.
    ForeignCurrent,
    /// A recorded version holds other material than Vault's.
    MaterialDiffers,
    /// A version below `min_enabled_version` is usable in the provider.
    EnabledWhenDisabled,
    /// Applications naming the key get an older version than the latest.
    NotCurrent,
    /// A recorded version is gone, or scheduled for deletion.
    VersionMissing,
    /// A version Vault did not create is usable in the provider.
    ForeignVersion,
    /// A version that should be usable is disabled in the provider.
    DisabledWhenEnabled,
    /// A Vault version never reached the provider (a push that failed).
    NotDistributed,
    /// An import started by Vault whose answer never arrived: repeating
    /// the distribution adopts it.
    UnrecordedImport,
    /// A version Vault did not create, disabled in the provider.
    ForeignDisabled,
}

impl DriftKind {
    pub fn severity(self) -> Severity {
        match self {
            Self::KeyMissing
            | Self::ForeignCurrent
            | Self::MaterialDiffers
            | Self::EnabledWhenDisabled => Severity::Critical,
            Self::NotCurrent
            | Self::VersionMissing
            | Self::ForeignVersion
            | Self::DisabledWhenEnabled
            | Self::NotDistributed => Severity::Warning,
            Self::UnrecordedImport | Self::ForeignDisabled => Severity::Info,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Applications may be using key material Vault does not control.
    Critical,
    /// The provider's copy is incomplete or out of date.
    Warning,
    /// Nothing applications can use differs.
    Info,
}

/// What reconciling does about a drift.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Repair {
    /// Import the Vault version (again).
    Import,
    /// Set the enabled flag Vault's `min_enabled_version` asks for.
    SetEnabled,
    /// Make the latest Vault version current.
    MakeCurrent,
    /// Disable the foreign version, with `disable_foreign=true` only.
    DisableForeign,
    /// Nothing Vault can do; the detail says what the operator can.
    None,
}

/// One difference between Vault's record and the provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drift {
    pub kind: DriftKind,
    pub severity: Severity,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_id: Option<String>,
    pub repair: Repair,
    pub detail: String,
}

impl Drift {
    fn new(kind: DriftKind, repair: Repair, detail: String) -> Self {
        Self {
            kind,
            severity: kind.severity(),
            version: None,
            provider_id: None,
            repair,
            detail,
        }
    }

    fn version(mut self, version: u32) -> Self {
        self.version = Some(version);
        self
    }

    fn provider_id(mut self, id: &str) -> Self {
        self.provider_id = Some(id.to_owned());
        self
    }
}

/// How a recorded version's material compares with Vault's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MaterialCheck {
    Matches,
    Differs,
    /// The provider holds no material for it (AWS keeps disabled
    /// versions unimported).
    Absent,
    /// The provider shows nothing to compare with.
    Unverifiable,
    /// The provider does not hold the version.
    Missing,
}

/// The comparison of one distribution with the provider's live state.
#[derive(Debug, Clone)]
pub struct Assessment {
    /// Sorted, most serious first.
    pub drift: Vec<Drift>,
    /// The response's `versions` and `foreign_versions`.
    versions: Map<String, Value>,
    foreign: Vec<Value>,
    current: Option<String>,
    key_exists: bool,
}

impl Assessment {
    pub fn in_sync(&self) -> bool {
        self.drift.iter().all(|d| d.severity == Severity::Info)
    }

    pub fn key_exists(&self) -> bool {
        self.key_exists
    }

    /// Recorded versions the provider lost, to import again.
    pub fn missing_versions(&self) -> Vec<u32> {
        self.of_kind(DriftKind::VersionMissing)
            .filter_map(|d| d.version)
            .collect()
    }

    /// Enabled provider-side versions Vault did not create.
    pub fn usable_foreign(&self) -> Vec<String> {
        self.drift
            .iter()
            .filter(|d| {
                matches!(
                    d.kind,
                    DriftKind::ForeignVersion | DriftKind::ForeignCurrent
                )
            })
            .filter(|d| d.repair == Repair::DisableForeign)
            .filter_map(|d| d.provider_id.clone())
            .collect()
    }

    pub fn needs(&self, repair: Repair) -> bool {
        self.drift.iter().any(|d| d.repair == repair)
    }

    fn of_kind(&self, kind: DriftKind) -> impl Iterator<Item = &Drift> {
        self.drift.iter().filter(move |d| d.kind == kind)
    }

    /// The `status` response's fields.
    pub fn to_json(&self, record: &Distribution) -> Map<String, Value> {
        let mut data = Map::new();
        data.insert("name".into(), record.name.clone().into());
        data.insert("in_sync".into(), self.in_sync().into());
        data.insert("key_exists".into(), self.key_exists.into());
        data.insert(
            "current_provider_id".into(),
            self.current.clone().map_or(Value::Null, Value::String),
        );
        data.insert("versions".into(), Value::Object(self.versions.clone()));
        data.insert(
            "foreign_versions".into(),
            Value::Array(self.foreign.clone()),
        );
        data.insert(
            "drift".into(),
            serde_json::to_value(&self.drift).unwrap_or(Value::Null),
        );
        data
    }
}

/// The fingerprint of what the provider shows, in the format of the key
/// read's `fingerprint`, so that the two compare as strings.
fn live_fingerprint(material: &LiveMaterial) -> Option<String> {
    match material {
        LiveMaterial::PublicKey(spki) => Some(spki_fingerprint(spki)),
        LiveMaterial::CheckValue(kcv) => Some(check_value_fingerprint(kcv)),
        LiveMaterial::Absent | LiveMaterial::Unverifiable(_) => None,
    }
}

fn compare_material(key: &Key, version: u32, live: &LiveMaterial) -> MaterialCheck {
    let Some(ours) = key.versions.get(&version) else {
        return MaterialCheck::Unverifiable;
    };
    match live {
        LiveMaterial::Absent => MaterialCheck::Absent,
        LiveMaterial::Unverifiable(_) => MaterialCheck::Unverifiable,
        shown => match live_fingerprint(shown) {
            Some(theirs) if theirs == ours.material.fingerprint() => MaterialCheck::Matches,
            _ => MaterialCheck::Differs,
        },
    }
}

/// Compares a distribution with what the provider holds: `None` is a
/// provider key that no longer exists.
pub fn assess(key: &Key, record: &Distribution, live: Option<&LiveKey>) -> Assessment {
    let Some(live) = live else {
        return Assessment {
            drift: vec![Drift::new(
                DriftKind::KeyMissing,
                Repair::None,
                format!(
                    "the provider no longer has key {}: it was deleted outside Vault; remove the \
                     distribution (delete kms/:name/key/{}) and distribute the key again",
                    record.name, key.name
                ),
            )],
            versions: Map::new(),
            foreign: Vec::new(),
            current: None,
            key_exists: false,
        };
    };
    let mut drift = Vec::new();
    let mut versions = Map::new();
    let by_id: BTreeMap<&str, &LiveVersion> = live
        .versions
        .iter()
        .map(|v| (v.provider_id.as_str(), v))
        .collect();
    let latest_id = record.versions.get(&key.latest_version);

    for (&number, id) in &record.versions {
        let expected = key.is_enabled(number);
        let fingerprint = key.versions.get(&number).map(|v| v.material.fingerprint());
        let mut entry = Map::new();
        entry.insert("provider_id".into(), id.clone().into());
        entry.insert("expected_enabled".into(), expected.into());
        entry.insert(
            "fingerprint".into(),
            fingerprint.map_or(Value::Null, Value::String),
        );
        match by_id.get(id.as_str()) {
            Some(found) if !found.doomed => {
                let check = compare_material(key, number, &found.material);
                entry.insert("enabled".into(), found.enabled.into());
                entry.insert("state".into(), found.state.clone().into());
                entry.insert(
                    "provider_fingerprint".into(),
                    live_fingerprint(&found.material).map_or(Value::Null, Value::String),
                );
                entry.insert("material".into(), json!(check));
                if let LiveMaterial::Unverifiable(why) = &found.material {
                    entry.insert("material_detail".into(), why.clone().into());
                }
                if check == MaterialCheck::Differs {
                    drift.push(
                        Drift::new(
                            DriftKind::MaterialDiffers,
                            Repair::None,
                            format!(
                                "version {number} ({id}) holds other key material than Vault's; a provider \
                                 version cannot be replaced in place: remove the distribution and distribute \
                                 the key again"
                            ),
                        )
                        .version(number)
                        .provider_id(id),
                    );
                }
                match (expected, found.enabled) {
                    (false, true) => drift.push(
                        Drift::new(
                            DriftKind::EnabledWhenDisabled,
                            Repair::SetEnabled,
                            format!(
                                "version {number} ({id}) is usable in the provider, but below \
                                 min_enabled_version {}",
                                key.min_enabled_version
                            ),
                        )
                        .version(number)
                        .provider_id(id),
                    ),
                    (true, false) => drift.push(
                        Drift::new(
                            DriftKind::DisabledWhenEnabled,
                            Repair::SetEnabled,
                            format!(
                                "version {number} ({id}) is disabled in the provider (state {})",
                                found.state
                            ),
                        )
                        .version(number)
                        .provider_id(id),
                    ),
                    _ => {}
                }
            }
            gone => {
                let state = gone.map_or_else(|| "absent".to_owned(), |v| v.state.clone());
                entry.insert("enabled".into(), false.into());
                entry.insert("state".into(), state.clone().into());
                entry.insert("provider_fingerprint".into(), Value::Null);
                entry.insert("material".into(), json!(MaterialCheck::Missing));
                drift.push(
                    Drift::new(
                        DriftKind::VersionMissing,
                        Repair::Import,
                        format!(
                            "version {number} ({id}) is no longer in the provider (state {state}); \
                             reconcile imports it again"
                        ),
                    )
                    .version(number)
                    .provider_id(id),
                );
            }
        }
        versions.insert(number.to_string(), Value::Object(entry));
    }

    for number in key.versions.keys() {
        if !record.versions.contains_key(number) {
            drift.push(
                Drift::new(
                    DriftKind::NotDistributed,
                    Repair::Import,
                    format!("version {number} has not reached the provider; reconcile imports it"),
                )
                .version(*number),
            );
        }
    }

    let recorded: Vec<&str> = record.versions.values().map(String::as_str).collect();
    let mut foreign = Vec::new();
    for found in &live.versions {
        if recorded.contains(&found.provider_id.as_str()) || found.doomed {
            continue;
        }
        let is_current = live.current.as_deref() == Some(found.provider_id.as_str());
        let ours_unrecorded = found
            .vault_version
            .is_some_and(|v| record.started.contains(&v) && !record.versions.contains_key(&v));
        foreign.push(json!({
            "provider_id": found.provider_id,
            "vault_version": found.vault_version,
            "enabled": found.enabled,
            "state": found.state,
            "current": is_current,
            "provider_fingerprint": live_fingerprint(&found.material),
        }));
        let id = found.provider_id.as_str();
        let item = if ours_unrecorded {
            Drift::new(
                DriftKind::UnrecordedImport,
                Repair::Import,
                format!(
                    "{id} comes from an interrupted import of version {}; reconcile adopts it",
                    found.vault_version.unwrap_or_default()
                ),
            )
        } else if is_current {
            Drift::new(
                DriftKind::ForeignCurrent,
                if found.enabled {
                    Repair::DisableForeign
                } else {
                    Repair::None
                },
                format!(
                    "{id}, a version Vault did not create, is the current version: applications \
                     naming the key use material Vault does not control{}",
                    if found.enabled {
                        ""
                    } else {
                        " (it is disabled)"
                    }
                ),
            )
        } else if found.enabled {
            Drift::new(
                DriftKind::ForeignVersion,
                Repair::DisableForeign,
                format!(
                    "{id} is a version Vault did not create, usable in the provider; reconcile with \
                     disable_foreign=true disables it"
                ),
            )
        } else {
            Drift::new(
                DriftKind::ForeignDisabled,
                Repair::None,
                format!("{id} is a version Vault did not create, disabled in the provider"),
            )
        };
        drift.push(item.provider_id(id));
    }

    // A current version being deleted serves nobody: it counts as unset.
    let current_doomed = live
        .current
        .as_deref()
        .and_then(|c| by_id.get(c))
        .is_some_and(|v| v.doomed);
    let (make_current, cannot) = if live.can_make_current {
        (Repair::MakeCurrent, "")
    } else {
        (
            Repair::None,
            "; the provider makes its newest version current and Vault cannot change that: \
             applications must name the version id, or the key must be distributed again",
        )
    };
    if live.has_current
        && let Some(latest) = latest_id
        && live.current.as_deref() != Some(latest.as_str())
        && (current_doomed
            || live
                .current
                .as_deref()
                .is_none_or(|c| recorded.contains(&c)))
    {
        drift.push(
            Drift::new(
                DriftKind::NotCurrent,
                make_current,
                format!(
                    "the current version is {}, not the latest version {} ({latest}){cannot}",
                    live.current.as_deref().unwrap_or("unset"),
                    key.latest_version
                ),
            )
            .version(key.latest_version),
        );
    }

    // A foreign current version is also repaired by making ours current
    // where the provider can (an alias, a primary version).
    if drift.iter().any(|d| d.kind == DriftKind::ForeignCurrent) && latest_id.is_some() {
        drift.push(
            Drift::new(
                DriftKind::NotCurrent,
                make_current,
                format!(
                    "the latest version {} is not the current version{cannot}",
                    key.latest_version
                ),
            )
            .version(key.latest_version),
        );
    }

    drift.sort_by(|a, b| a.kind.cmp(&b.kind).then(a.version.cmp(&b.version)));
    Assessment {
        drift,
        versions,
        foreign,
        current: live.current.clone(),
        key_exists: true,
    }
}

/// What `reconcile` did, or would do with `dry_run`.
pub struct Reconciled {
    pub actions: Vec<String>,
    /// The provider's state after the repair (before it, for a dry run).
    pub status: Map<String, Value>,
}

/// The action a drift's repair takes, in words; `None` when reconciling
/// leaves it alone.
fn action(drift: &Drift, disable_foreign: bool) -> Option<String> {
    let version = drift.version.unwrap_or_default();
    let id = drift.provider_id.as_deref().unwrap_or_default();
    Some(match (drift.repair, drift.kind) {
        (Repair::Import, DriftKind::UnrecordedImport) => format!("adopt {id}"),
        (Repair::Import, _) => format!("import version {version}"),
        (Repair::SetEnabled, DriftKind::EnabledWhenDisabled) => {
            format!("disable version {version}")
        }
        (Repair::SetEnabled, _) => format!("enable version {version}"),
        (Repair::MakeCurrent, _) => format!("make version {version} current"),
        (Repair::DisableForeign, _) if disable_foreign => format!("disable foreign version {id}"),
        (Repair::DisableForeign, _) | (Repair::None, _) => return None,
    })
}

impl KeyManagement {
    /// Reads the provider's state of a distribution and compares it with
    /// Vault's record. The caller holds the provider and key locks.
    pub async fn assess_distribution(
        &self,
        provider: &str,
        key: &Key,
        record: &Distribution,
    ) -> Result<Assessment, Error> {
        let context = format!(
            "reading the state of key {} in KMS provider {}",
            quote(&key.name),
            quote(provider)
        );
        let client = self.client_for(provider, &context).await?;
        let live = client
            .inspect(&record.target(key), &version_states(key, record))
            .await
            .map_err(|e| Error::from(e).context(&context))?;
        Ok(assess(key, record, live.as_ref()))
    }

    /// Repairs what differs between the provider and Vault's record:
    /// disables foreign versions (when asked), imports lost and missing
    /// versions, makes the latest current and re-applies enabled flags.
    /// The caller holds the provider and key locks.
    pub async fn reconcile(
        &self,
        provider: &str,
        key: &Key,
        mut record: Distribution,
        disable_foreign: bool,
        dry_run: bool,
    ) -> Result<Reconciled, Error> {
        let before = self.assess_distribution(provider, key, &record).await?;
        let mut actions: Vec<String> = before
            .drift
            .iter()
            .filter_map(|d| action(d, disable_foreign))
            .collect();
        actions.dedup();
        if dry_run {
            return Ok(Reconciled {
                actions,
                status: before.to_json(&record),
            });
        }
        if !before.key_exists() {
            return Err(Error::bad_request(format!(
                "cannot reconcile key {} in KMS provider {}: {}",
                quote(&key.name),
                quote(provider),
                before.drift[0].detail
            )));
        }
        let context = format!(
            "reconciling key {} in KMS provider {}",
            quote(&key.name),
            quote(provider)
        );
        let client = self.client_for(provider, &context).await?;
        let target = record.target(key);
        let foreign = before.usable_foreign();
        if disable_foreign && !foreign.is_empty() {
            client
                .disable_foreign(&target, &foreign)
                .await
                .map_err(|e| Error::from(e).context(&context))?;
        }
        let missing = before.missing_versions();
        if !missing.is_empty() {
            // Gone from the provider: imported again as new provider
            // versions. Recorded first, so that a failure leaves the
            // versions reported as not distributed.
            for version in &missing {
                record.versions.remove(version);
            }
            self.distributions.put(provider, &key.name, &record).await?;
        }
        if before.needs(Repair::Import) || before.needs(Repair::MakeCurrent) {
            record = self
                .distribute(provider, key, record.purposes.clone(), record.protection)
                .await?;
            self.pending.clear_provider(&key.name, provider).await?;
        }
        if before.needs(Repair::SetEnabled) {
            let new_ids = client
                .set_enabled(&record.target(key), &version_states(key, &record))
                .await
                .map_err(|e| Error::from(e).context(&context))?;
            if !new_ids.is_empty() {
                for id in new_ids {
                    record.versions.insert(id.version, id.provider_id);
                }
                self.distributions.put(provider, &key.name, &record).await?;
            }
        }
        let after = self.assess_distribution(provider, key, &record).await?;
        Ok(Reconciled {
            actions,
            status: after.to_json(&record),
        })
    }
}
