//! Pushing key changes to providers: distribute, import new versions,
//! enable and disable versions, replicate, remove.
//!
//! Vault's own state is written first, and the distribution record around
//! every provider step: before a version's import starts (so that a retry
//! after a crash or a lost answer looks for what the attempt may have
//! created), and after it lands. A provider failure therefore leaves Vault
//! consistent, and the same request, repeated, finishes the job without
//! duplicating anything. A distribution that fails before anything reached
//! the provider leaves no record at all.

use std::collections::BTreeSet;

use futures_util::FutureExt as _;
use futures_util::future::join_all;
use futures_util::stream::{FuturesUnordered, StreamExt};
use time::OffsetDateTime;

use super::distribution::Distribution;
use super::keys::Key;
use super::provider::{
    ImportRequest, ImportSession, KmsProvider, Protection, ProviderError, Purpose, VersionState,
};
use super::state::KeyManagement;
use crate::framework::Error;
use crate::framework::error::quote;

/// What every import of one run shares.
#[derive(Clone, Copy)]
struct Batch<'a> {
    session: &'a dyn ImportSession,
    provider: &'a str,
    key: &'a Key,
    /// Versions an earlier attempt started.
    resumed: &'a BTreeSet<u32>,
    context: &'a str,
}

/// Gives a record that holds no version yet a provider-side name no
/// deleted key holds, trying later seconds: `<key>-<unix seconds>` is
/// reused when a key is distributed again within the second it was
/// removed. Returns whether the name changed.
async fn free_name(
    client: &dyn KmsProvider,
    key: &Key,
    record: &mut Distribution,
) -> Result<bool, ProviderError> {
    const ATTEMPTS: i64 = 5;
    let original = record.name.clone();
    let mut second = original
        .rsplit_once('-')
        .and_then(|(_, s)| s.parse::<i64>().ok())
        .unwrap_or_default();
    for _ in 0..ATTEMPTS {
        if client.name_available(&record.target(key)).await? {
            if record.name != original {
                log::info!(
                    "a deleted key holds {original}; distributing key {} as {}",
                    key.name,
                    record.name
                );
                // Nothing under the old name is ours to look for.
                record.started.clear();
            }
            return Ok(record.name != original);
        }
        second = (second + 1).max(OffsetDateTime::now_utc().unix_timestamp());
        record.name = format!("{}-{second}", key.name);
    }
    Err(ProviderError::Rejected(format!(
        "deleted keys hold {original} and the {ATTEMPTS} names after it; purge them or try again later"
    )))
}

/// The versions `record` lacks, oldest first: those imported together, and
/// the latest, imported after them alone so that it is the newest.
fn missing_versions(key: &Key, record: &Distribution) -> (Vec<u32>, Option<u32>) {
    let mut missing: Vec<u32> = key
        .versions
        .keys()
        .copied()
        .filter(|n| !record.versions.contains_key(n))
        .collect();
    let latest = missing.last().copied().filter(|n| *n == key.latest_version);
    if latest.is_some() {
        missing.pop();
    }
    (missing, latest)
}

/// The desired state of every recorded version.
pub(super) fn version_states<'a>(key: &'a Key, record: &'a Distribution) -> Vec<VersionState<'a>> {
    record
        .versions
        .iter()
        .filter_map(|(version, id)| {
            let material = &key.versions.get(version)?.material;
            Some(VersionState {
                version: *version,
                provider_id: id,
                enabled: key.is_enabled(*version),
                material,
            })
        })
        .collect()
}

impl KeyManagement {
    /// Distributes (or resumes distributing) `key` to `provider`. The
    /// caller holds both locks and has checked the support matrix.
    pub async fn distribute(
        &self,
        provider: &str,
        key: &Key,
        purposes: Vec<Purpose>,
        protection: Protection,
    ) -> Result<Distribution, Error> {
        let context = format!(
            "distributing key {} to KMS provider {}",
            quote(&key.name),
            quote(provider)
        );
        let existing = self.distributions.get(provider, &key.name).await?;
        let created = existing.is_none();
        let mut record = existing.unwrap_or_else(|| {
            Distribution::new(&key.name, purposes, protection, OffsetDateTime::now_utc())
        });
        // Connecting checks the configuration; a refusal leaves nothing.
        let client = self.client_for(provider, &context).await?;
        let first_target = record.target(key);
        let renamed_target;
        let mut session = client.begin_import(&first_target);
        // A new distribution checks its name and asks how many imports may
        // run at once together: both only read, and each is a round trip.
        let (renamed, mut concurrency) = match record.versions.is_empty() {
            true => {
                let batch = missing_versions(key, &record).0.len();
                let (named, concurrency) = tokio::join!(
                    free_name(client.as_ref(), key, &mut record),
                    self.batch_concurrency(session.as_ref(), batch)
                );
                match named {
                    Ok(renamed) => (renamed, Some(concurrency)),
                    Err(e) => {
                        session.finish().await;
                        return Err(Error::from(e).context(&context));
                    }
                }
            }
            false => (false, None),
        };
        if renamed {
            // The answer was about the old name.
            concurrency = None;
            session.finish().await;
            renamed_target = record.target(key);
            session = client.begin_import(&renamed_target);
        }
        if (created || renamed)
            && let Err(err) = self.distributions.put(provider, &key.name, &record).await
        {
            session.finish().await;
            return Err(err);
        }
        let imported = self
            .import_missing(
                session.as_ref(),
                concurrency,
                provider,
                key,
                &mut record,
                &context,
            )
            .await;
        let touched = session.touched();
        session.finish().await;
        if let Err(err) = imported {
            if created && record.versions.is_empty() && !touched {
                self.distributions.delete(provider, &key.name).await?;
            }
            return Err(err);
        }
        let target = record.target(key);
        let states = version_states(key, &record);
        if let Some(latest) = states.iter().find(|s| s.version == key.latest_version) {
            client.make_current(&target, latest).await.map_err(|e| {
                Error::from(e).context(&format!(
                    "{context} (making version {} current)",
                    latest.version
                ))
            })?;
        }
        if record.replicated {
            client
                .replicate(&target, &states)
                .await
                .map_err(|e| Error::from(e).context(&format!("{context} (replicating)")))?;
        }
        Ok(record)
    }

    /// How many imports of a batch of `batch` may run at once; the session
    /// is asked only where more than one could.
    async fn batch_concurrency(
        &self,
        session: &dyn ImportSession,
        batch: usize,
    ) -> Result<usize, ProviderError> {
        if batch > 1 && self.settings.import_concurrency > 1 {
            Ok(session
                .concurrency(batch)
                .await?
                .clamp(1, self.settings.import_concurrency))
        } else {
            Ok(1)
        }
    }

    /// Imports every version the record does not hold yet, recording each
    /// as soon as the provider has it. Up to `concurrency` imports run at
    /// once (`probed`: the session's answer, if already asked); the latest
    /// version goes last and alone, so that it is the newest in the
    /// provider. They are all marked started first, in one write, so that a
    /// retry looks for whatever any of them left.
    async fn import_missing(
        &self,
        session: &dyn ImportSession,
        probed: Option<Result<usize, ProviderError>>,
        provider: &str,
        key: &Key,
        record: &mut Distribution,
        context: &str,
    ) -> Result<(), Error> {
        let (missing, latest) = missing_versions(key, record);
        let all = || missing.iter().chain(&latest).copied();
        if all().next().is_none() {
            return Ok(());
        }
        let resumed: BTreeSet<u32> = all().filter(|n| record.started.contains(n)).collect();
        if resumed.len() < all().count() {
            record.started.extend(all());
            self.distributions.put(provider, &key.name, record).await?;
        }
        let concurrency = match probed {
            Some(probed) => probed,
            None => self.batch_concurrency(session, missing.len()).await,
        }
        .map_err(|e| Error::from(e).context(context))?;
        let batch = Batch {
            session,
            provider,
            key,
            resumed: &resumed,
            context,
        };
        self.import_batch(&batch, record, &missing, concurrency)
            .await?;
        if let Some(latest) = latest {
            self.import_batch(&batch, record, &[latest], 1).await?;
        }
        Ok(())
    }

    /// Imports `versions` with at most `concurrency` in flight. After the
    /// first failure no further import starts; those in flight are awaited
    /// and recorded, and the first failure is returned.
    async fn import_batch(
        &self,
        batch: &Batch<'_>,
        record: &mut Distribution,
        versions: &[u32],
        concurrency: usize,
    ) -> Result<(), Error> {
        let Batch {
            session,
            provider,
            key,
            resumed,
            context,
        } = *batch;
        let mut queue = versions
            .iter()
            .filter_map(|n| key.versions.get(n).map(|v| (*n, &v.material)));
        let mut running = FuturesUnordered::new();
        let mut failure: Option<Error> = None;
        loop {
            while failure.is_none() && running.len() < concurrency.max(1) {
                let Some((number, material)) = queue.next() else {
                    break;
                };
                // Fresh for every import: what was recorded meanwhile.
                let recorded: Vec<String> = record.versions.values().cloned().collect();
                let enabled = key.is_enabled(number);
                let resume = resumed.contains(&number);
                running.push(async move {
                    let request = ImportRequest {
                        version: number,
                        material,
                        enabled,
                        resume,
                        recorded: &recorded,
                    };
                    (number, session.import(request).await)
                });
            }
            let Some(first) = running.next().await else {
                break;
            };
            // Imports in flight tend to land together: every one that has
            // landed is recorded in one write.
            let mut landed = vec![first];
            while let Some(Some(more)) = running.next().now_or_never() {
                landed.push(more);
            }
            let mut recorded_any = false;
            for (number, imported) in landed {
                match imported {
                    Ok(id) => {
                        record.started.remove(&number);
                        record.versions.insert(number, id);
                        recorded_any = true;
                    }
                    Err(err) => {
                        failure.get_or_insert(Error::from(err).context(&format!(
                            "{context} (version {number} was not imported; writing to kms/{provider}/key/{} again resumes)",
                            key.name
                        )));
                    }
                }
            }
            if recorded_any
                && let Err(err) = self.distributions.put(provider, &key.name, record).await
            {
                failure.get_or_insert(err);
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// After `min_enabled_version` changed: sets every distributed
    /// version's enabled state in every provider at once, recording the
    /// ids of versions a provider imported only now.
    pub async fn push_enabled_versions(&self, key: &Key) -> Result<(), Error> {
        let records = self.distributions.of_key(&key.name).await?;
        let pushes = records
            .into_iter()
            .map(|(provider, mut record)| async move {
                let result = async {
                    let client = self.client(&provider).await?;
                    let new_ids = client
                        .set_enabled(&record.target(key), &version_states(key, &record))
                        .await
                        .map_err(Error::from)?;
                    if !new_ids.is_empty() {
                        for id in new_ids {
                            record.versions.insert(id.version, id.provider_id);
                        }
                        self.distributions
                            .put(&provider, &key.name, &record)
                            .await?;
                    }
                    Ok::<(), Error>(())
                }
                .await;
                result.map_err(|err| err.context(&format!("KMS provider {}", quote(&provider))))
            });
        let failures: Vec<Error> = join_all(pushes)
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect();
        summarize(
            failures,
            &format!(
                "min_enabled_version of key {} is {} in Vault",
                quote(&key.name),
                key.min_enabled_version
            ),
            "; repeat the request to retry",
        )
    }

    /// Copies every version of a distributed key into its replica
    /// regions. From then on, rotations keep the replicas complete.
    pub async fn replicate(&self, provider: &str, key: &Key) -> Result<(), Error> {
        let context = format!(
            "replicating key {} in KMS provider {}",
            quote(&key.name),
            quote(provider)
        );
        let mut record = self
            .distributions
            .get(provider, &key.name)
            .await?
            .ok_or_else(|| {
                Error::bad_request(format!(
                    "key {} is not distributed to KMS provider {}; distribute it first",
                    quote(&key.name),
                    quote(provider)
                ))
            })?;
        if let Some(missing) = key
            .versions
            .keys()
            .find(|v| !record.versions.contains_key(v))
        {
            return Err(Error::bad_request(format!(
                "{context}: version {missing} has not reached the provider yet; write to kms/{provider}/key/{} again to finish the distribution first",
                key.name
            )));
        }
        let client = self.client_for(provider, &context).await?;
        // Recorded first: removal must look for replicas even if this
        // call fails half-way.
        if !record.replicated {
            record.replicated = true;
            self.distributions.put(provider, &key.name, &record).await?;
        }
        let target = record.target(key);
        client
            .replicate(&target, &version_states(key, &record))
            .await
            .map_err(|e| {
                Error::from(e).context(&format!("{context} (repeat the request to retry)"))
            })
    }

    /// Deletes the key from the provider, then forgets the distribution.
    pub async fn remove_distribution(&self, provider: &str, key: &Key) -> Result<(), Error> {
        let Some(record) = self.distributions.get(provider, &key.name).await? else {
            return Ok(());
        };
        let states = version_states(key, &record);
        let unrecorded: Vec<u32> = record.started.iter().copied().collect();
        if !states.is_empty() || !unrecorded.is_empty() {
            let context = format!(
                "removing key {} from KMS provider {}",
                quote(&key.name),
                quote(provider)
            );
            let client = self.client_for(provider, &context).await?;
            client
                .remove(&record.target(key), &states, &unrecorded)
                .await
                .map_err(|e| Error::from(e).context(&context))?;
        }
        self.distributions.delete(provider, &key.name).await
    }
}

/// One error for several providers' failures, saying what did happen. It
/// is a 400 when every failure is one the operator must fix (permissions,
/// configuration, refused input), and a 502 when any provider was
/// unavailable or failed.
pub(super) fn summarize(failures: Vec<Error>, done: &str, retry_hint: &str) -> Result<(), Error> {
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
        Error::BadGateway(message)
    })
}
