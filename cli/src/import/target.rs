//! Where `mmctl import` publishes: the admin API (through the proxy) or a store directly,
//! one face for both, each call tried again on a transient failure. Through the API the
//! answers are read as the contract's types (`VersionStatus`, `Digest`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use manymodels_contract::ModelId;
use manymodels_contract::versions::{Digest, VersionStatus};
use manymodels_store::{ModelStore, StoreError};

use crate::client::{CallError, Client};

/// Where versions go.
pub(super) enum Target {
    Api(Client),
    Store(Arc<dyn ModelStore>, String),
}

/// A model's versions at the destination (ascending) and its live one.
pub(super) type Existing = (Vec<u64>, Option<u64>);

#[derive(Debug)]
pub(super) enum PublishError {
    /// That version exists already.
    Conflict,
    Refused(String),
    Failed(String),
}

impl Target {
    pub(super) fn describe(&self) -> String {
        match self {
            Target::Api(client) => format!("the admin API at {}", client.base()),
            Target::Store(_, described) => described.clone(),
        }
    }

    /// The model's versions (ascending) and its live one.
    pub(super) async fn existing(&self, id: &str) -> Result<Existing, String> {
        match self {
            Target::Api(client) => {
                let path = format!("/v2/admin/models/{id}");
                match retried(|| client.get_as::<VersionStatus>(&path)).await {
                    Ok(status) => Ok((status.versions, status.live)),
                    Err(e) if e.status() == Some(reqwest::StatusCode::NOT_FOUND) => {
                        Ok((Vec::new(), None))
                    }
                    Err(e) => Err(format!("cannot list its versions: {e}")),
                }
            }
            Target::Store(store, _) => {
                let id = model_id(id)?;
                retried(|| store.model_state(&id))
                    .await
                    .map(|state| {
                        let live = state.live();
                        (state.versions, live)
                    })
                    .map_err(|e| format!("cannot list its versions: {e}"))
            }
        }
    }

    pub(super) async fn digest(&self, id: &str, version: u64) -> Result<String, String> {
        match self {
            Target::Api(client) => {
                let path = format!("/v2/admin/models/{id}/versions/{version}");
                retried(|| client.get_as::<Digest>(&path))
                    .await
                    .map(|digest| digest.sha256)
                    .map_err(|e| format!("cannot read version {version}'s digest: {e}"))
            }
            Target::Store(store, _) => {
                let id = model_id(id)?;
                retried(|| store.digest(&id, version))
                    .await
                    .map(|d| d.sha256)
                    .map_err(|e| format!("cannot read version {version}'s digest: {e}"))
            }
        }
    }

    /// The bytes of a version, for the compatibility check (stores only: through the API
    /// the scorer checks compatibility itself).
    pub(super) async fn read(&self, id: &str, version: u64) -> Result<Option<Bytes>, String> {
        match self {
            Target::Api(_) => Ok(None),
            Target::Store(store, _) => {
                let id = model_id(id)?;
                retried(|| store.read(&id, version))
                    .await
                    .map(Some)
                    .map_err(|e| format!("cannot read live version {version}: {e}"))
            }
        }
    }

    pub(super) async fn publish(
        &self,
        id: &str,
        version: u64,
        bytes: Bytes,
    ) -> Result<(), PublishError> {
        match self {
            Target::Api(client) => {
                let path = format!("/v2/admin/models/{id}/versions/{version}");
                match retried(|| client.put_bytes(&path, bytes.clone())).await {
                    Ok(_) => Ok(()),
                    Err(e) => Err(match e.status().map(|s| s.as_u16()) {
                        Some(409) => PublishError::Conflict,
                        Some(400 | 404 | 413 | 422 | 507) => {
                            PublishError::Refused(format!("the pool refused it: {e}"))
                        }
                        _ => PublishError::Failed(e.to_string()),
                    }),
                }
            }
            Target::Store(store, _) => {
                let id = model_id(id).map_err(PublishError::Refused)?;
                match retried(|| store.write_version(&id, version, bytes.clone())).await {
                    Ok(()) => Ok(()),
                    Err(StoreError::Conflict(_)) => Err(PublishError::Conflict),
                    Err(e) => Err(PublishError::Failed(e.to_string())),
                }
            }
        }
    }
}

const RETRIES: u32 = 3;

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250 << attempt.min(4))
}

/// An error worth another try.
trait Transient {
    fn transient(&self) -> bool;
}

impl Transient for CallError {
    /// No answer, 429, 502-504.
    fn transient(&self) -> bool {
        CallError::transient(self)
    }
}

impl Transient for StoreError {
    /// The store did not answer or failed (not: absent, or already there).
    fn transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// A call of the API or the store tried again on a transient failure, up to [`RETRIES`]
/// more times.
async fn retried<F, Fut, T, E>(mut call: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Transient,
{
    let mut attempt = 0;
    loop {
        match call().await {
            Err(e) if e.transient() && attempt < RETRIES => {
                attempt += 1;
                tokio::time::sleep(backoff(attempt)).await;
            }
            other => return other,
        }
    }
}

pub(super) fn model_id(id: &str) -> Result<ModelId, String> {
    ModelId::parse(id).map_err(|e| e.to_string())
}
