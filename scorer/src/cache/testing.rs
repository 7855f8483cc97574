//! What the seams' unit tests share: a real cache (ONNX Runtime, the native engine, a
//! local store) over a temporary directory of demo models.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use manymodels_config::scorer::ScorerConfig;

use crate::model_id::ModelId;

/// The bytes of demo model `id`.
pub fn demo(id: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/demo")
        .join(id)
        .join("1/model.onnx");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
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

/// A scorer over `store` with the default configuration, adjusted: its `cache` is
/// what the tests use.
pub fn scorer(store: &Store, adjust: impl FnOnce(&mut ScorerConfig)) -> Arc<crate::Scorer> {
    let mut config = ScorerConfig::for_local_store(&store.0);
    adjust(&mut config);
    crate::Scorer::new(config).expect("ONNX Runtime (ORT_DYLIB_PATH) and the store")
}

pub fn id(name: &str) -> ModelId {
    ModelId::parse(name).unwrap()
}
