//! Where models live: `<root>/<model_id>/<version>/model.onnx`, each model's alias
//! `<root>/<model_id>/alias.json` (`{"pinned": 3}`: the live version is 3 rather than the
//! highest) and its canary `<root>/<model_id>/canary.json` (`{"version": 4, "percent": 10}`:
//! 10% of the requests that name no version go to version 4) and its shadow
//! `<root>/<model_id>/shadow.json` (`manymodels_contract::shadow::ShadowSpec`: a candidate
//! version also run, after the live answer, on a share of those requests and compared).
//!
//! A store lists model ids, lists the versions of one model, reads one model file and
//! answers a version's content digest (its size and SHA-256). It never parses or loads a
//! model: listing 10,000 models costs one directory read (or one
//! paged blob listing), whatever their size. Two backends: a local directory and Azure
//! Blob Storage.

mod azure;
mod local;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use manymodels_config::scorer::StoreConfig;

use manymodels_contract::ModelId;

pub use azure::AzureStore;
pub use local::LocalStore;

/// The file name of a model inside its version folder.
pub const MODEL_FILE: &str = "model.onnx";

/// The file beside the version folders that pins a model's live version.
pub const ALIAS_FILE: &str = "alias.json";

/// The file beside the version folders that sends a share of a model's unversioned
/// requests to one version.
pub const CANARY_FILE: &str = "canary.json";

/// The file beside the version folders that runs a candidate version on a share of a
/// model's unversioned requests, after the live answer, to compare the two.
pub const SHADOW_FILE: &str = "shadow.json";

pub use manymodels_contract::shadow::ShadowSpec;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    /// A small file of the model's (`alias.json`, `canary.json`, `shadow.json`) that does
    /// not parse or breaks its rules.
    #[error("{file} is not valid: {error}")]
    InvalidFile { file: &'static str, error: String },
}

/// A model as the store has it: complete versions, the alias, the canary and the shadow.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ModelState {
    /// Ascending.
    pub versions: Vec<u64>,
    pub pinned: Option<u64>,
    /// As written, even when its version has left the store (see [`ModelState::split`]).
    pub canary: Option<Canary>,
    /// As written, even when its version has left the store or became the live one (see
    /// [`ModelState::candidate`]).
    pub shadow: Option<ShadowSpec>,
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

    /// The canary requests without a version are split by: the stored one while its
    /// version exists (a canary whose version was removed splits nothing).
    pub fn split(&self) -> Option<Canary> {
        self.canary
            .filter(|canary| self.versions.contains(&canary.version))
    }

    /// The shadow that runs: the stored one while its version exists and is not the live
    /// one (a candidate that was removed, or pinned by hand, compares nothing).
    pub fn candidate(&self) -> Option<&ShadowSpec> {
        self.shadow.as_ref().filter(|shadow| {
            self.versions.contains(&shadow.version) && self.live() != Some(shadow.version)
        })
    }
}

/// The alias file's contents.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Alias {
    pub pinned: Option<u64>,
}

impl Alias {
    pub fn parse(bytes: &[u8]) -> Result<Self, StoreError> {
        serde_json::from_slice(bytes).map_err(|e| StoreError::InvalidFile {
            file: ALIAS_FILE,
            error: e.to_string(),
        })
    }
}

/// The canary file's contents: `percent`% of the model's requests that name no version
/// go to `version`, the others to the live version.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    pub version: u64,
    /// 0-100, fractions allowed.
    pub percent: f64,
}

impl Canary {
    /// A canary if `version` is a version number and `percent` a share (0-100), else
    /// why not.
    pub fn new(version: u64, percent: f64) -> Result<Self, String> {
        if version == 0 || !(0.0..=100.0).contains(&percent) {
            return Err("version must be positive and percent within 0-100".into());
        }
        Ok(Canary { version, percent })
    }

    /// Reads a canary file. A file that does not parse or breaks the rules makes the
    /// model's look-up fail (503), as a bad alias does: a split nobody meant is worse
    /// than an error that names the file. Dropping or setting the canary through the
    /// admin API replaces such a file.
    pub fn parse(bytes: &[u8]) -> Result<Self, StoreError> {
        let invalid = |error: String| StoreError::InvalidFile {
            file: CANARY_FILE,
            error,
        };
        let canary: Canary = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        Canary::new(canary.version, canary.percent).map_err(invalid)
    }
}

/// Checks a shadow against the rules `shadow.json` must keep: a version number, a share
/// 0 < percent <= 100, a finite tolerance >= 0, and a rule's `min_agreement` a fraction
/// (0-1). Why not, otherwise.
pub fn check_shadow(shadow: &ShadowSpec) -> Result<(), String> {
    if shadow.version == 0 {
        return Err("version must be positive".into());
    }
    if !(shadow.percent > 0.0 && shadow.percent <= 100.0) {
        return Err("percent must be above 0 and at most 100".into());
    }
    if !(shadow.tolerance.is_finite() && shadow.tolerance >= 0.0) {
        return Err("tolerance must be a finite number, 0 or more".into());
    }
    if let Some(rule) = &shadow.rule
        && !(0.0..=1.0).contains(&rule.min_agreement)
    {
        return Err("rule.min_agreement must be a fraction within 0-1".into());
    }
    Ok(())
}

/// Reads a shadow file. Like a canary file, one that does not parse or breaks the rules
/// makes the model's look-up fail (503) rather than compare what nobody meant; setting or
/// dropping the shadow through the admin API replaces it.
pub fn parse_shadow(bytes: &[u8]) -> Result<ShadowSpec, StoreError> {
    let invalid = |error: String| StoreError::InvalidFile {
        file: SHADOW_FILE,
        error,
    };
    let shadow: ShadowSpec = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
    check_shadow(&shadow).map_err(invalid)?;
    Ok(shadow)
}

/// A version's content: its size and the SHA-256 of its bytes, so a client can tell
/// whether the store already holds a file byte for byte without downloading it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Digest {
    pub bytes: u64,
    /// Lowercase hex, as [`sha256_hex`] writes it.
    pub sha256: String,
}

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Digest {
            bytes: bytes.len() as u64,
            sha256: sha256_hex(bytes),
        }
    }
}

/// The SHA-256 of `bytes` in lowercase hex: the one way a model file is hashed, by the
/// stores and by anything that compares a file with a stored version.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex(&sha2::Sha256::digest(bytes))
}

/// The digest of everything `reader` yields, read in 64 KiB pieces (a model file is
/// never held whole just to hash it). Blocking.
fn digest_of_reader(mut reader: impl std::io::Read) -> std::io::Result<Digest> {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0u8; 64 << 10];
    let mut bytes = 0u64;
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buffer[..n]);
        bytes += n as u64;
    }
    Ok(Digest {
        bytes,
        sha256: hex(&hasher.finalize()),
    })
}

/// The body `write_shadow` puts, after the rules are checked.
fn shadow_body(shadow: Option<ShadowSpec>) -> Result<Option<Vec<u8>>, StoreError> {
    shadow
        .map(|shadow| {
            check_shadow(&shadow).map_err(StoreError::Conflict)?;
            Ok(serde_json::to_vec(&shadow).expect("serialisable"))
        })
        .transpose()
}

/// Lowercase hex of a hash.
fn hex(hash: &[u8]) -> String {
    use std::fmt::Write;
    hash.iter().fold(String::with_capacity(64), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// Whether `text` is a SHA-256 as [`sha256_hex`] writes it (64 lowercase hex digits).
fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
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

    /// What names the exact bytes of `<id>/<version>/model.onnx` without reading them, so a
    /// native image compiled from it can be told current or stale (`NotFound` when that
    /// version does not exist). Local: size, modification time and inode, from one
    /// `stat`. Azure: size and ETag, from one `HEAD`.
    async fn source_tag(&self, id: &ModelId, version: u64) -> Result<String, StoreError>;

    /// The size and SHA-256 of `<id>/<version>/model.onnx` (`NotFound` when that version
    /// does not exist). Local: the file is hashed. Azure: the hash `write_version` stored
    /// in the blob's metadata, read with one `HEAD`; a blob without it (uploaded by
    /// another tool) is read and hashed.
    async fn digest(&self, id: &ModelId, version: u64) -> Result<Digest, StoreError>;

    /// Versions, alias, canary and shadow of `id`, looked up together (one prefix
    /// listing on Azure).
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

    /// Sets `id`'s canary, atomically (readers see the old file or the new one), or
    /// drops it (`None`; dropping an absent canary succeeds).
    async fn write_canary(&self, id: &ModelId, canary: Option<Canary>) -> Result<(), StoreError>;

    /// Sets `id`'s shadow, atomically (readers see the old file or the new one), or drops
    /// it (`None`; dropping an absent shadow succeeds). A shadow that breaks the rules
    /// ([`check_shadow`]) is refused (`Conflict`) and nothing is written.
    async fn write_shadow(
        &self,
        id: &ModelId,
        shadow: Option<ShadowSpec>,
    ) -> Result<(), StoreError>;

    /// The bytes of the object at `path` (outside every model's folder, see
    /// [`check_object_path`]), `None` when there is none: the documents the scorers share
    /// (the capture rules).
    async fn read_object(&self, path: &str) -> Result<Option<Bytes>, StoreError>;

    /// Writes `bytes` at `path` (outside every model's folder, see [`check_object_path`])
    /// atomically, replacing what is there: readers see the old object or the new one.
    /// Shared documents and captured payloads.
    async fn put_object(&self, path: &str, bytes: Bytes) -> Result<(), StoreError>;

    /// A short description for logs, without secrets.
    fn describe(&self) -> String;
}

/// Opens the store the configuration names, every call bounded by `timeout`
/// (`store.timeout`).
pub fn open(config: &StoreConfig, timeout: Duration) -> Result<Arc<dyn ModelStore>, StoreError> {
    let inner: Arc<dyn ModelStore> = match config {
        StoreConfig::Local { path } => Arc::new(LocalStore::new(path.clone())),
        StoreConfig::Azure(azure) => Arc::new(AzureStore::new(azure)?),
    };
    Ok(Arc::new(Deadline { inner, timeout }))
}

/// A store whose every call answers within `timeout`: a store that hangs (a frozen
/// endpoint accepts the connection and never answers, which no connect timeout sees) is
/// `Unavailable` for that call, the same as one that refuses. The call left behind is
/// dropped, which closes its connection.
struct Deadline {
    inner: Arc<dyn ModelStore>,
    timeout: Duration,
}

impl Deadline {
    async fn bounded<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(format!(
                    "{what} did not answer within {:?} (store.timeout)",
                    self.timeout
                )))
            })
    }
}

#[async_trait]
impl ModelStore for Deadline {
    async fn list_models(&self) -> Result<Vec<ModelId>, StoreError> {
        self.bounded("listing the store", self.inner.list_models())
            .await
    }

    async fn list_versions(&self, id: &ModelId) -> Result<Vec<u64>, StoreError> {
        self.bounded("listing the versions", self.inner.list_versions(id))
            .await
    }

    async fn read(&self, id: &ModelId, version: u64) -> Result<Bytes, StoreError> {
        self.bounded("reading the model file", self.inner.read(id, version))
            .await
    }

    async fn source_tag(&self, id: &ModelId, version: u64) -> Result<String, StoreError> {
        self.bounded("looking the file up", self.inner.source_tag(id, version))
            .await
    }

    async fn digest(&self, id: &ModelId, version: u64) -> Result<Digest, StoreError> {
        self.bounded("hashing the version", self.inner.digest(id, version))
            .await
    }

    async fn model_state(&self, id: &ModelId) -> Result<ModelState, StoreError> {
        self.bounded("looking the model up", self.inner.model_state(id))
            .await
    }

    async fn write_version(
        &self,
        id: &ModelId,
        version: u64,
        bytes: Bytes,
    ) -> Result<(), StoreError> {
        self.bounded(
            "writing the version",
            self.inner.write_version(id, version, bytes),
        )
        .await
    }

    async fn write_alias(&self, id: &ModelId, pinned: Option<u64>) -> Result<(), StoreError> {
        self.bounded("writing the alias", self.inner.write_alias(id, pinned))
            .await
    }

    async fn write_canary(&self, id: &ModelId, canary: Option<Canary>) -> Result<(), StoreError> {
        self.bounded("writing the canary", self.inner.write_canary(id, canary))
            .await
    }

    async fn write_shadow(
        &self,
        id: &ModelId,
        shadow: Option<ShadowSpec>,
    ) -> Result<(), StoreError> {
        self.bounded("writing the shadow", self.inner.write_shadow(id, shadow))
            .await
    }

    async fn read_object(&self, path: &str) -> Result<Option<Bytes>, StoreError> {
        self.bounded("reading an object", self.inner.read_object(path))
            .await
    }

    async fn put_object(&self, path: &str, bytes: Bytes) -> Result<(), StoreError> {
        self.bounded("writing an object", self.inner.put_object(path, bytes))
            .await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// Checks a path [`ModelStore::read_object`] and [`ModelStore::put_object`] may take:
/// relative, `/`-separated segments of `[A-Za-z0-9._-]` (none empty, `.` or `..`), the
/// first of which is no model id (it begins with `_`, as `_manymodels/` and
/// `_captures/` do), so an object can never land inside a model's folder or be listed as
/// a model. `Conflict` names the problem otherwise.
pub fn check_object_path(path: &str) -> Result<(), StoreError> {
    let bad = |why: &str| Err(StoreError::Conflict(format!("object path '{path}' {why}")));
    let mut segments = path.split('/');
    let first = segments.next().unwrap_or("");
    if manymodels_contract::valid_model_id(first) {
        return bad("begins with a model id");
    }
    for segment in path.split('/') {
        if segment.is_empty()
            || segment == "."
            || segment == ".."
            || !segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return bad("has an empty, relative or unusual segment");
        }
    }
    Ok(())
}

/// A version folder name follows the contract's one version rule.
pub use manymodels_contract::parse_version;

#[cfg(test)]
mod tests;
