//! The local-directory store.

use std::io::ErrorKind;
use std::path::PathBuf;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    ALIAS_FILE, Alias, CANARY_FILE, Canary, Digest, MODEL_FILE, ModelState, ModelStore,
    SHADOW_FILE, ShadowSpec, StoreError, check_object_path, digest_of_reader, parse_shadow,
    parse_version, shadow_body,
};
use manymodels_contract::{ModelId, valid_model_id};

/// Models in a directory tree. A version counts once its `model.onnx` exists, so
/// publishers must write the file under another name and rename it into place (rename is
/// atomic on one filesystem); a half-written `model.onnx.tmp` is never listed, and a
/// version folder without `model.onnx` does not exist. `write_version` does exactly that
/// (write, fsync, then a hard link that fails rather than overwrite).
#[derive(Debug)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: PathBuf) -> Self {
        LocalStore { root }
    }

    /// `<root>/<id>/<version>/model.onnx`.
    fn model_file(&self, id: &ModelId, version: u64) -> PathBuf {
        self.root
            .join(id.as_str())
            .join(version.to_string())
            .join(MODEL_FILE)
    }

    /// The bytes of `<id>/<name>` (the alias, the canary or the shadow), `None` when it is absent.
    async fn read_small(&self, id: &ModelId, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.root.join(id.as_str()).join(name);
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(unavailable(&path.display().to_string(), e)),
        }
    }

    /// Writes `<id>/<name>` atomically (a temporary file renamed over it), or removes it
    /// (`None`; an absent file is fine).
    async fn write_small(
        &self,
        id: &ModelId,
        name: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let dir = self.root.join(id.as_str());
        let path = dir.join(name);
        let Some(body) = body else {
            return match tokio::fs::remove_file(&path).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                Err(e) => Err(unavailable(&path.display().to_string(), e)),
            };
        };
        let temporary = temporary(&dir, name);
        tokio::fs::write(&temporary, body)
            .await
            .map_err(|e| unavailable(&temporary.display().to_string(), e))?;
        tokio::fs::rename(&temporary, &path)
            .await
            .map_err(|e| unavailable(&path.display().to_string(), e))
    }
}

/// A temporary file beside `name` in `dir`, unique per write: two writes racing in one
/// process (a retried upload while the first is still writing) never share one, so
/// neither can truncate what the other is about to link or rename into place.
fn temporary(dir: &std::path::Path, name: &str) -> PathBuf {
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()))
}

fn unavailable(what: &str, error: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("{what}: {error}"))
}

#[async_trait]
impl ModelStore for LocalStore {
    async fn list_models(&self) -> Result<Vec<ModelId>, StoreError> {
        let mut dir = tokio::fs::read_dir(&self.root)
            .await
            .map_err(|e| unavailable(&self.root.display().to_string(), e))?;
        let mut ids = Vec::new();
        while let Some(entry) = dir
            .next_entry()
            .await
            .map_err(|e| unavailable("listing models", e))?
        {
            if let Some(name) = entry.file_name().to_str()
                && valid_model_id(name)
                && entry.file_type().await.map(|t| t.is_dir()).unwrap_or(false)
            {
                ids.push(ModelId::parse(name).expect("validated above"));
            }
        }
        ids.sort();
        Ok(ids)
    }

    async fn list_versions(&self, id: &ModelId) -> Result<Vec<u64>, StoreError> {
        let model_dir = self.root.join(id.as_str());
        let mut dir = match tokio::fs::read_dir(&model_dir).await {
            Ok(dir) => dir,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(unavailable(&model_dir.display().to_string(), e)),
        };
        let mut versions = Vec::new();
        while let Some(entry) = dir
            .next_entry()
            .await
            .map_err(|e| unavailable("listing versions", e))?
        {
            if let Some(version) = entry.file_name().to_str().and_then(parse_version)
                && tokio::fs::try_exists(entry.path().join(MODEL_FILE))
                    .await
                    .unwrap_or(false)
            {
                versions.push(version);
            }
        }
        versions.sort_unstable();
        Ok(versions)
    }

    async fn read(&self, id: &ModelId, version: u64) -> Result<Bytes, StoreError> {
        let path = self.model_file(id, version);
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(Bytes::from(bytes)),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(StoreError::NotFound),
            Err(e) => Err(unavailable(&path.display().to_string(), e)),
        }
    }

    async fn source_tag(&self, id: &ModelId, version: u64) -> Result<String, StoreError> {
        use std::os::unix::fs::MetadataExt;
        let path = self.model_file(id, version);
        match tokio::fs::metadata(&path).await {
            Ok(meta) => Ok(format!(
                "local:{}:{}.{:09}:{}",
                meta.len(),
                meta.mtime(),
                meta.mtime_nsec(),
                meta.ino()
            )),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(StoreError::NotFound),
            Err(e) => Err(unavailable(&path.display().to_string(), e)),
        }
    }

    async fn digest(&self, id: &ModelId, version: u64) -> Result<Digest, StoreError> {
        let path = self.model_file(id, version);
        // Hashing a large file takes a while: on a blocking thread, never a tokio worker.
        tokio::task::spawn_blocking(move || match std::fs::File::open(&path) {
            Ok(file) => {
                digest_of_reader(file).map_err(|e| unavailable(&path.display().to_string(), e))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Err(StoreError::NotFound),
            Err(e) => Err(unavailable(&path.display().to_string(), e)),
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("hashing the version: {e}")))?
    }

    async fn model_state(&self, id: &ModelId) -> Result<ModelState, StoreError> {
        let versions = self.list_versions(id).await?;
        let pinned = match self.read_small(id, ALIAS_FILE).await? {
            Some(bytes) => Alias::parse(&bytes)?.pinned,
            None => None,
        };
        let canary = match self.read_small(id, CANARY_FILE).await? {
            Some(bytes) => Some(Canary::parse(&bytes)?),
            None => None,
        };
        let shadow = match self.read_small(id, SHADOW_FILE).await? {
            Some(bytes) => Some(parse_shadow(&bytes)?),
            None => None,
        };
        Ok(ModelState {
            versions,
            pinned,
            canary,
            shadow,
        })
    }

    async fn write_version(
        &self,
        id: &ModelId,
        version: u64,
        bytes: Bytes,
    ) -> Result<(), StoreError> {
        let dir = self.root.join(id.as_str()).join(version.to_string());
        let target = dir.join(MODEL_FILE);
        tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
            std::fs::create_dir_all(&dir)
                .map_err(|e| unavailable(&dir.display().to_string(), e))?;
            let temporary = temporary(&dir, MODEL_FILE);
            let write = || -> std::io::Result<()> {
                use std::io::Write;
                let mut file = std::fs::File::create(&temporary)?;
                file.write_all(&bytes)?;
                file.sync_all()
            };
            write().map_err(|e| unavailable(&temporary.display().to_string(), e))?;
            // A hard link is an atomic create-if-absent: a version is never overwritten.
            let linked = std::fs::hard_link(&temporary, &target);
            let _ = std::fs::remove_file(&temporary);
            match linked {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => Err(StoreError::Conflict(
                    format!("version {version} already exists"),
                )),
                Err(e) => Err(unavailable(&target.display().to_string(), e)),
            }
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("write task failed: {e}")))?
    }

    async fn write_alias(&self, id: &ModelId, pinned: Option<u64>) -> Result<(), StoreError> {
        let body = pinned.map(|_| serde_json::to_vec(&Alias { pinned }).expect("serialisable"));
        self.write_small(id, ALIAS_FILE, body).await
    }

    async fn write_canary(&self, id: &ModelId, canary: Option<Canary>) -> Result<(), StoreError> {
        let body = canary.map(|c| serde_json::to_vec(&c).expect("serialisable"));
        self.write_small(id, CANARY_FILE, body).await
    }

    async fn write_shadow(
        &self,
        id: &ModelId,
        shadow: Option<ShadowSpec>,
    ) -> Result<(), StoreError> {
        let body = shadow_body(shadow)?;
        self.write_small(id, SHADOW_FILE, body).await
    }

    async fn read_object(&self, path: &str) -> Result<Option<Bytes>, StoreError> {
        check_object_path(path)?;
        let file = self.root.join(path);
        match tokio::fs::read(&file).await {
            Ok(bytes) => Ok(Some(Bytes::from(bytes))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(unavailable(&file.display().to_string(), e)),
        }
    }

    async fn put_object(&self, path: &str, bytes: Bytes) -> Result<(), StoreError> {
        check_object_path(path)?;
        let file = self.root.join(path);
        let (Some(dir), Some(name)) = (file.parent(), file.file_name().and_then(|n| n.to_str()))
        else {
            return Err(StoreError::Conflict(format!(
                "object path '{path}' names no file"
            )));
        };
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| unavailable(&dir.display().to_string(), e))?;
        // Written beside it and renamed into place: a reader never sees half an object.
        let temporary = temporary(dir, name);
        tokio::fs::write(&temporary, bytes)
            .await
            .map_err(|e| unavailable(&temporary.display().to_string(), e))?;
        tokio::fs::rename(&temporary, &file).await.map_err(|e| {
            let _ = std::fs::remove_file(&temporary);
            unavailable(&file.display().to_string(), e)
        })
    }

    fn describe(&self) -> String {
        format!("local directory {}", self.root.display())
    }
}
