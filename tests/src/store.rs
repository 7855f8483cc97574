//! Files on disk: the workspace root, the committed demo store, temporary directories and
//! model stores written by tests and benches.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// The committed demo store (`models/demo`): eight models, each with version 1, and
/// their reference outputs in `reference.json`.
pub fn demo_store() -> PathBuf {
    root().join("models/demo")
}

/// A fresh, empty directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("mm-test-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("creating a temp dir");
        TempDir(path)
    }

    /// A temporary copy of the demo store (to add models to it).
    pub fn copy_of_demo(label: &str) -> Self {
        let dir = TempDir::new(label);
        copy_tree(&demo_store(), dir.path());
        dir
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies a directory tree (a model store).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Writes `bytes` as version `version` of model `id` in the local store `store`
/// (`<store>/<id>/<version>/model.onnx`), atomically: a temp file renamed into place, the
/// way a training job publishes, so a scorer checking the store never reads half a file.
pub fn write_model(store: &Path, id: &str, version: u64, bytes: &[u8]) -> std::io::Result<()> {
    let dir = store.join(id).join(version.to_string());
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(".model.onnx.tmp"), bytes)?;
    std::fs::rename(dir.join(".model.onnx.tmp"), dir.join("model.onnx"))
}
