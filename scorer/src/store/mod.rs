//! Where models live: `<root>/<model_id>/<version>/model.onnx`, and each model's alias
//! `<root>/<model_id>/alias.json` (`{"pinned": 3}`: the live version is 3 rather than the
//! highest).
//!
//! A store lists model ids, lists the versions of one model and reads one model file. It
//! never parses or loads a model: listing 10,000 models costs one directory read (or one
//! paged blob listing), whatever their size. Two backends: a local directory and Azure
//! Blob Storage.

mod azure;
mod local;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use manymodels_config::scorer::StoreConfig;

use crate::model_id::ModelId;

pub use azure::AzureStore;
pub use local::LocalStore;

/// The file name of a model inside its version folder.
pub const MODEL_FILE: &str = "model.onnx";

/// The file beside the version folders that pins a model's live version.
pub const ALIAS_FILE: &str = "alias.json";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
}

/// A model as the store has it: complete versions and the alias.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ModelState {
    /// Ascending.
    pub versions: Vec<u64>,
    pub pinned: Option<u64>,
}

impl ModelState {
    /// The version requests without a version get: the pinned one if it exists, else the
    /// highest.
    pub fn live(&self) -> Option<u64> {
        match self.pinned {
            Some(pinned) if self.versions.contains(&pinned) => Some(pinned),
            _ => self.versions.last().copied(),
        }
    }
}

/// The alias file's contents.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Alias {
    pub pinned: Option<u64>,
}

impl Alias {
    pub fn parse(bytes: &[u8]) -> Result<Self, StoreError> {
        serde_json::from_slice(bytes)
            .map_err(|e| StoreError::Unavailable(format!("{ALIAS_FILE} is not valid: {e}")))
    }
}

/// A model store backend.
#[async_trait]
pub trait ModelStore: Send + Sync + 'static {
    /// Every valid model id in the store, sorted. Entries whose names are not valid ids
    /// are skipped.
    async fn list_models(&self) -> Result<Vec<ModelId>, StoreError>;

    /// The complete versions of `id` (those whose `model.onnx` exists), ascending; empty
    /// when the model does not exist.
    async fn list_versions(&self, id: &ModelId) -> Result<Vec<u64>, StoreError>;

    /// The bytes of `<id>/<version>/model.onnx`.
    async fn read(&self, id: &ModelId, version: u64) -> Result<Bytes, StoreError>;

    /// Versions and alias of `id`, looked up together (one prefix listing on Azure).
    async fn model_state(&self, id: &ModelId) -> Result<ModelState, StoreError>;

    /// Publishes `<id>/<version>/model.onnx` atomically: readers see the whole file or no
    /// version. A version is never overwritten (`Conflict`).
    async fn write_version(
        &self,
        id: &ModelId,
        version: u64,
        bytes: Bytes,
    ) -> Result<(), StoreError>;

    /// Pins `id` to `pinned`, or unpins it (`None`: the highest version is live).
    async fn write_alias(&self, id: &ModelId, pinned: Option<u64>) -> Result<(), StoreError>;

    /// A short description for logs, without secrets.
    fn describe(&self) -> String;
}

/// Opens the store the configuration names.
pub fn open(config: &StoreConfig) -> Result<Arc<dyn ModelStore>, StoreError> {
    Ok(match config {
        StoreConfig::Local { path } => Arc::new(LocalStore::new(path.clone())),
        StoreConfig::Azure(azure) => Arc::new(AzureStore::new(azure)?),
    })
}

/// A version folder name follows the contract's one version rule.
pub use manymodels_contract::parse_version;
