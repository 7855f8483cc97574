//! The Azure Blob Storage store, through `object_store`.

use std::collections::BTreeSet;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use manymodels_config::scorer::{AzureCredential, AzureStoreConfig};
use object_store::azure::{MicrosoftAzure, MicrosoftAzureBuilder};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use super::{MODEL_FILE, ModelStore, StoreError, parse_version};
use crate::model_id::{self, ModelId};

/// Models as blobs `<prefix><model_id>/<version>/model.onnx` in one container. A blob put
/// is atomic, so a version is complete as soon as its `model.onnx` blob exists.
#[derive(Debug)]
pub struct AzureStore {
    client: MicrosoftAzure,
    /// Empty, or ending in `/`.
    prefix: String,
    description: String,
}

impl AzureStore {
    pub fn new(config: &AzureStoreConfig) -> Result<Self, StoreError> {
        let mut builder = MicrosoftAzureBuilder::new()
            .with_container_name(&config.container)
            .with_use_emulator(config.use_emulator);
        if !config.account.is_empty() {
            builder = builder.with_account(&config.account);
        }
        if let Some(endpoint) = &config.endpoint {
            builder = builder
                .with_endpoint(endpoint.clone())
                .with_allow_http(endpoint.starts_with("http://"));
        }
        builder = match &config.credential {
            AzureCredential::AccessKey(key) => builder.with_access_key(key.expose()),
            AzureCredential::SasToken(token) => {
                let pairs = token
                    .expose()
                    .trim_start_matches('?')
                    .split('&')
                    .filter_map(|pair| pair.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<Vec<_>>();
                builder.with_sas_authorization(pairs)
            }
            // Workload identity, managed identity or env credentials, as object_store
            // resolves them.
            AzureCredential::Ambient => builder,
        };
        let client = builder
            .build()
            .map_err(|e| StoreError::Unavailable(format!("azure store: {e}")))?;
        Ok(AzureStore {
            client,
            prefix: config.prefix.clone(),
            description: format!(
                "azure blob {}/{}/{}",
                if config.account.is_empty() {
                    "devstoreaccount1"
                } else {
                    &config.account
                },
                config.container,
                config.prefix
            ),
        })
    }

    fn path(&self, rest: &str) -> Path {
        Path::from(format!("{}{rest}", self.prefix))
    }
}

fn unavailable(error: object_store::Error) -> StoreError {
    match error {
        object_store::Error::NotFound { .. } => StoreError::NotFound,
        other => StoreError::Unavailable(other.to_string()),
    }
}

#[async_trait]
impl ModelStore for AzureStore {
    async fn list_models(&self) -> Result<Vec<ModelId>, StoreError> {
        let prefix = (!self.prefix.is_empty()).then(|| self.path(""));
        let listing = self
            .client
            .list_with_delimiter(prefix.as_ref())
            .await
            .map_err(unavailable)?;
        let mut ids: Vec<ModelId> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename())
            .filter(|name| model_id::is_valid(name))
            .map(|name| ModelId::parse(name).expect("validated above"))
            .collect();
        ids.sort();
        Ok(ids)
    }

    async fn list_versions(&self, id: &ModelId) -> Result<Vec<u64>, StoreError> {
        let prefix = self.path(id.as_str());
        let objects: Vec<_> = self
            .client
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(unavailable)?;
        let versions: BTreeSet<u64> = objects
            .iter()
            .filter_map(|meta| {
                let mut parts = meta.location.prefix_match(&prefix)?;
                let version = parse_version(parts.next()?.as_ref())?;
                let file = parts.next()?;
                (file.as_ref() == MODEL_FILE && parts.next().is_none()).then_some(version)
            })
            .collect();
        Ok(versions.into_iter().collect())
    }

    async fn read(&self, id: &ModelId, version: u64) -> Result<Bytes, StoreError> {
        let path = self.path(&format!("{id}/{version}/{MODEL_FILE}"));
        let result = self.client.get(&path).await.map_err(unavailable)?;
        result.bytes().await.map_err(unavailable)
    }

    fn describe(&self) -> String {
        self.description.clone()
    }
}
