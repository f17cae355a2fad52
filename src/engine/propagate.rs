//! Pushing key changes to providers: distribute, import new versions,
//! enable/disable versions, remove.
//!
//! Vault's own state is written first and the distribution record after
//! every provider step, so a provider failure leaves Vault consistent and
//! the same request, repeated, finishes the job.

use std::collections::BTreeMap;

use time::OffsetDateTime;

use super::backend::KeyManagement;
use super::distribution::Distribution;
use super::keys::{Key, rfc3339_nano};
use super::provider::{KmsProvider, Protection, ProviderError, Purpose, VersionState};
use crate::framework::Error;

/// Maps a provider failure to the status the user sees.
pub fn provider_error(err: ProviderError) -> Error {
    match err {
        ProviderError::Permission(m) | ProviderError::Rejected(m) | ProviderError::Config(m) => {
            Error::BadRequest(m)
        }
        ProviderError::Unavailable(m) => Error::Coded {
            status: 502,
            message: m,
        },
    }
}

fn with_context(err: Error, context: &str) -> Error {
    match err {
        Error::BadRequest(m) => Error::BadRequest(format!("{context}: {m}")),
        Error::Coded { status, message } => Error::Coded {
            status,
            message: format!("{context}: {message}"),
        },
        Error::Internal(m) => Error::Internal(format!("{context}: {m}")),
        other => other,
    }
}

/// The desired enabled state of every distributed version.
fn version_states(key: &Key, record: &Distribution) -> Vec<VersionState> {
    record
        .versions
        .iter()
        .map(|(version, id)| VersionState {
            version: *version,
            provider_id: id.clone(),
            enabled: key.is_enabled(*version),
        })
        .collect()
}

impl KeyManagement {
    /// Distributes (or resumes distributing) `key` to `provider`. The
    /// caller holds both locks.
    pub async fn distribute(
        &self,
        provider: &str,
        key: &Key,
        purposes: Vec<Purpose>,
        protection: Protection,
    ) -> Result<Distribution, Error> {
        let now = OffsetDateTime::now_utc();
        let mut record = match self.distributions.get(provider, &key.name).await? {
            Some(existing) => existing,
            None => {
                let mut sorted: Vec<String> =
                    purposes.iter().map(|p| p.as_str().to_owned()).collect();
                sorted.sort();
                sorted.dedup();
                let record = Distribution {
                    name: format!("{}-{}", key.name, now.unix_timestamp()),
                    purposes: sorted,
                    protection,
                    distribution_time: rfc3339_nano(now),
                    versions: BTreeMap::new(),
                };
                self.distributions.put(provider, &key.name, &record).await?;
                record
            }
        };
        let context = format!(
            "distributing key {:?} to KMS provider {provider:?}",
            key.name
        );
        let client = self
            .client(provider)
            .await
            .map_err(|e| with_context(e, &context))?;
        let target = record.target(key.key_type);
        let imported = self
            .import_missing(client.as_ref(), provider, key, &mut record, &context)
            .await;
        client.finish_imports(&target).await;
        imported?;
        let disabled: Vec<VersionState> = version_states(key, &record)
            .into_iter()
            .filter(|v| !v.enabled)
            .collect();
        if !disabled.is_empty() {
            client.set_enabled(&target, &disabled).await.map_err(|e| {
                with_context(
                    provider_error(e),
                    &format!("{context} (disabling versions below min_enabled_version)"),
                )
            })?;
        }
        Ok(record)
    }

    /// Imports, in order, every version the record does not hold yet,
    /// recording each as soon as the provider has it.
    async fn import_missing(
        &self,
        client: &dyn KmsProvider,
        provider: &str,
        key: &Key,
        record: &mut Distribution,
        context: &str,
    ) -> Result<(), Error> {
        let target = record.target(key.key_type);
        for (number, version) in &key.versions {
            if record.versions.contains_key(number) {
                continue;
            }
            let id = client
                .import_version(&target, *number, &version.material)
                .await
                .map_err(|e| {
                    with_context(
                        provider_error(e),
                        &format!(
                            "{context} (version {number} was not imported; writing to kms/{provider}/key/{} again resumes)",
                            key.name
                        ),
                    )
                })?;
            record.versions.insert(*number, id);
            self.distributions.put(provider, &key.name, record).await?;
        }
        Ok(())
    }

    /// After a rotation: imports the versions each provider lacks. Every
    /// provider is attempted; failures are reported together.
    pub async fn push_new_versions(&self, key: &Key) -> Result<(), Error> {
        let mut failures = Vec::new();
        for (provider, record) in self.distributions.of_key(&key.name).await? {
            if let Err(err) = self
                .distribute(&provider, key, record.purposes(), record.protection)
                .await
            {
                failures.push(err);
            }
        }
        // Not "repeat the request": another rotation would add a version.
        summarize(
            failures,
            &format!(
                "key {:?} was rotated to version {} in Vault",
                key.name, key.latest_version
            ),
            "",
        )
    }

    /// After `min_enabled_version` changed: sets every distributed
    /// version's enabled state in every provider.
    pub async fn push_enabled_versions(&self, key: &Key) -> Result<(), Error> {
        let mut failures = Vec::new();
        for (provider, record) in self.distributions.of_key(&key.name).await? {
            let result = async {
                let client = self.client(&provider).await?;
                client
                    .set_enabled(&record.target(key.key_type), &version_states(key, &record))
                    .await
                    .map_err(provider_error)
            }
            .await;
            if let Err(err) = result {
                failures.push(with_context(err, &format!("KMS provider {provider:?}")));
            }
        }
        summarize(
            failures,
            &format!(
                "min_enabled_version of key {:?} is {} in Vault",
                key.name, key.min_enabled_version
            ),
            "; repeat the request to retry",
        )
    }

    /// Deletes the key from the provider, then forgets the distribution.
    pub async fn remove_distribution(&self, provider: &str, key: &Key) -> Result<(), Error> {
        let Some(record) = self.distributions.get(provider, &key.name).await? else {
            return Ok(());
        };
        let states = version_states(key, &record);
        if !states.is_empty() {
            let context = format!("removing key {:?} from KMS provider {provider:?}", key.name);
            let client = self
                .client(provider)
                .await
                .map_err(|e| with_context(e, &context))?;
            client
                .remove(&record.target(key.key_type), &states)
                .await
                .map_err(|e| with_context(provider_error(e), &context))?;
        }
        self.distributions.delete(provider, &key.name).await
    }
}

/// One error for several providers' failures, saying what did happen. It
/// is a 400 when every failure is one the operator must fix (permissions,
/// configuration, refused input), and a 502 when any provider was
/// unavailable or failed.
fn summarize(failures: Vec<Error>, done: &str, retry_hint: &str) -> Result<(), Error> {
    if failures.is_empty() {
        return Ok(());
    }
    let all_user_errors = failures.iter().all(|e| matches!(e, Error::BadRequest(_)));
    let details: Vec<String> = failures.iter().map(ToString::to_string).collect();
    let message = format!(
        "{done}, but updating KMS providers failed{retry_hint}: {}",
        details.join("; ")
    );
    Err(if all_user_errors {
        Error::BadRequest(message)
    } else {
        Error::Coded {
            status: 502,
            message,
        }
    })
}
