//! What the seams' unit tests share: caches with the native engine alone (no ONNX Runtime
//! in the process) over an in-memory store or a local store in a temporary directory, and
//! the demo models to put in them.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use manymodels_config::scorer::{NativeEngine, ScorerConfig};

use super::ModelCache;
use crate::engine::Engines;
use crate::metrics::Metrics;
use crate::model_id::ModelId;
use crate::store::{
    Canary, Digest, LocalStore, ModelState, ModelStore, ShadowSpec, StoreError, sha256_hex,
};

/// The bytes of demo model `id`.
pub fn demo(id: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/demo")
        .join(id)
        .join("1/model.onnx");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A model store in memory, with the local store's rules: versions never overwritten,
/// the live version the pin if it exists else the highest, a canary kept as written.
#[derive(Default)]
pub struct MemoryStore {
    models: Mutex<HashMap<ModelId, Stored>>,
    /// While set, every call fails as an unreachable store does.
    unavailable: AtomicBool,
    /// Look-ups of a model's state (`model_state`) and reads of a version, counted.
    pub lookups: AtomicU64,
    pub reads: AtomicU64,
    /// Objects outside the models (`read_object`, `put_object`), by path.
    pub objects: Mutex<BTreeMap<String, Bytes>>,
}

#[derive(Default)]
struct Stored {
    versions: BTreeMap<u64, Bytes>,
    pinned: Option<u64>,
    canary: Option<Canary>,
    shadow: Option<ShadowSpec>,
}

impl MemoryStore {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn models(&self) -> MutexGuard<'_, HashMap<ModelId, Stored>> {
        self.models.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts `bytes` as `id`/`version` (a file copied into the store by hand).
    pub fn put(&self, id: &str, version: u64, bytes: &[u8]) {
        self.models()
            .entry(id_of(id))
            .or_default()
            .versions
            .insert(version, Bytes::copy_from_slice(bytes));
    }

    /// Makes every call fail as an unreachable store does (`true`), or answer again.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.unavailable.store(unavailable, Ordering::SeqCst);
    }

    fn reachable(&self) -> Result<(), StoreError> {
        if self.unavailable.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("the memory store is down".into()));
        }
        Ok(())
    }

    fn bytes(&self, id: &ModelId, version: u64) -> Result<Bytes, StoreError> {
        self.reachable()?;
        self.models()
            .get(id)
            .and_then(|m| m.versions.get(&version).cloned())
            .ok_or(StoreError::NotFound)
    }
}

#[async_trait]
impl ModelStore for MemoryStore {
    async fn list_models(&self) -> Result<Vec<ModelId>, StoreError> {
        self.reachable()?;
        let mut ids: Vec<ModelId> = self.models().keys().cloned().collect();
        ids.sort();
        Ok(ids)
    }

    async fn list_versions(&self, id: &ModelId) -> Result<Vec<u64>, StoreError> {
        self.reachable()?;
        Ok(self
            .models()
            .get(id)
            .map(|m| m.versions.keys().copied().collect())
            .unwrap_or_default())
    }

    async fn read(&self, id: &ModelId, version: u64) -> Result<Bytes, StoreError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.bytes(id, version)
    }

    async fn source_tag(&self, id: &ModelId, version: u64) -> Result<String, StoreError> {
        let bytes = self.bytes(id, version)?;
        Ok(format!("memory:{}", sha256_hex(&bytes)))
    }

    async fn digest(&self, id: &ModelId, version: u64) -> Result<Digest, StoreError> {
        let bytes = self.bytes(id, version)?;
        Ok(Digest {
            bytes: bytes.len() as u64,
            sha256: sha256_hex(&bytes),
        })
    }

    async fn model_state(&self, id: &ModelId) -> Result<ModelState, StoreError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        self.reachable()?;
        Ok(self
            .models()
            .get(id)
            .map(|m| ModelState {
                versions: m.versions.keys().copied().collect(),
                pinned: m.pinned,
                canary: m.canary,
                shadow: m.shadow.clone(),
            })
            .unwrap_or_default())
    }

    async fn write_version(
        &self,
        id: &ModelId,
        version: u64,
        bytes: Bytes,
    ) -> Result<(), StoreError> {
        self.reachable()?;
        let mut models = self.models();
        let model = models.entry(id.clone()).or_default();
        if model.versions.contains_key(&version) {
            return Err(StoreError::Conflict(format!(
                "version {version} of {id} exists"
            )));
        }
        model.versions.insert(version, bytes);
        Ok(())
    }

    async fn write_alias(&self, id: &ModelId, pinned: Option<u64>) -> Result<(), StoreError> {
        self.reachable()?;
        self.models().entry(id.clone()).or_default().pinned = pinned;
        Ok(())
    }

    async fn write_canary(&self, id: &ModelId, canary: Option<Canary>) -> Result<(), StoreError> {
        self.reachable()?;
        self.models().entry(id.clone()).or_default().canary = canary;
        Ok(())
    }

    async fn write_shadow(
        &self,
        id: &ModelId,
        shadow: Option<ShadowSpec>,
    ) -> Result<(), StoreError> {
        self.reachable()?;
        if let Some(shadow) = &shadow {
            manymodels_store::check_shadow(shadow).map_err(StoreError::Conflict)?;
        }
        self.models().entry(id.clone()).or_default().shadow = shadow;
        Ok(())
    }

    async fn read_object(&self, path: &str) -> Result<Option<Bytes>, StoreError> {
        self.reachable()?;
        manymodels_store::check_object_path(path)?;
        let objects = self.objects.lock().unwrap_or_else(|p| p.into_inner());
        Ok(objects.get(path).cloned())
    }

    async fn put_object(&self, path: &str, bytes: Bytes) -> Result<(), StoreError> {
        self.reachable()?;
        manymodels_store::check_object_path(path)?;
        let mut objects = self.objects.lock().unwrap_or_else(|p| p.into_inner());
        objects.insert(path.to_string(), bytes);
        Ok(())
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}

/// A cache over `store` with the native engine alone (a model it does not cover is
/// refused: ONNX Runtime is not in the process) and the default configuration, adjusted.
pub fn native_cache(
    store: Arc<dyn ModelStore>,
    adjust: impl FnOnce(&mut ScorerConfig),
) -> Arc<ModelCache> {
    let mut config = ScorerConfig::for_local_store(Path::new("."));
    adjust(&mut config);
    let engines = Engines {
        environment: None,
        native: NativeEngine::Auto,
    };
    let metrics = Arc::new(Metrics::new(config.cache.budget.bytes()));
    Arc::new(
        ModelCache::new(
            config.cache,
            config.policy,
            config.warmup,
            config.versions,
            store,
            engines,
            metrics,
        )
        .with_shadows(config.shadow),
    )
}

/// `native_cache` over the local store in `store`'s directory (for the tests of what the
/// store's files say).
pub fn local_cache(store: &Store, adjust: impl FnOnce(&mut ScorerConfig)) -> Arc<ModelCache> {
    native_cache(Arc::new(LocalStore::new(store.0.clone())), adjust)
}

/// A fresh store directory, removed on drop.
pub struct Store(pub PathBuf);

impl Store {
    pub fn new() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "mm-cache-unit-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Store(dir)
    }

    pub fn put(&self, id: &str, version: u64, bytes: &[u8]) {
        let dir = self.0.join(id).join(version.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("model.onnx"), bytes).unwrap();
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn id(name: &str) -> ModelId {
    id_of(name)
}

fn id_of(name: &str) -> ModelId {
    ModelId::parse(name).unwrap()
}
