//! The Azure Blob Storage store, through `object_store`.

use std::collections::BTreeSet;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use manymodels_config::scorer::{AzureCredential, AzureStoreConfig};
use object_store::azure::{MicrosoftAzure, MicrosoftAzureBuilder};
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
};

use super::{
    ALIAS_FILE, Alias, CANARY_FILE, Canary, Digest, MODEL_FILE, ModelState, ModelStore,
    SHADOW_FILE, ShadowSpec, StoreError, check_object_path, is_sha256_hex, parse_shadow,
    parse_version, shadow_body,
};
use manymodels_contract::{ModelId, valid_model_id};

/// The small files beside a model's versions, read in its look-up.
const SMALL_FILES: [&str; 3] = [ALIAS_FILE, CANARY_FILE, SHADOW_FILE];

/// The blob user metadata (`x-ms-meta-mm_sha256`) in which `write_version` keeps a
/// version's SHA-256, so its digest is one `HEAD` rather than a download.
pub const SHA256_METADATA: &str = "mm_sha256";

/// A small blob read before (`alias.json`, `canary.json`, `shadow.json` of a model): its ETag and bytes.
type Known = (String, Bytes);

/// Models as blobs `<prefix><model_id>/<version>/model.onnx` in one container. A blob put
/// is atomic, so a version is complete as soon as its `model.onnx` blob exists. Looking a
/// model up is one listing of its prefix (versions, `alias.json`, `canary.json` and
/// `shadow.json` together); the small blobs are read again only when their ETag changed.
#[derive(Debug)]
pub struct AzureStore {
    client: MicrosoftAzure,
    /// By model and file name.
    known: std::sync::Mutex<std::collections::HashMap<(ModelId, &'static str), Known>>,
    /// Empty, or ending in `/`.
    prefix: String,
    description: String,
}

/// A short retry budget: a few quick retries of a transient failure (a refused or reset
/// connection, a throttling 503), then the error. object_store's default (10 retries over
/// up to 3 minutes) made a stopped store look hung; every call is bounded by
/// `store.timeout` anyway (`store::open`), and the next request tries again.
fn retry_policy() -> object_store::RetryConfig {
    object_store::RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: std::time::Duration::from_millis(50),
            max_backoff: std::time::Duration::from_millis(500),
            base: 2.0,
        },
        max_retries: 2,
        retry_timeout: std::time::Duration::from_secs(10),
    }
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
            .with_retry(retry_policy())
            .build()
            .map_err(|e| StoreError::Unavailable(format!("azure store: {e}")))?;
        Ok(AzureStore {
            client,
            known: Default::default(),
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

    /// The object_store client, for tests that put blobs as another tool would.
    #[cfg(test)]
    pub(super) fn client(&self) -> &MicrosoftAzure {
        &self.client
    }

    fn path(&self, rest: &str) -> Path {
        Path::from(format!("{}{rest}", self.prefix))
    }

    /// The bytes of `<id>/<name>`, listed with `tag`: from memory when the ETag is the
    /// one read before, else read (and remembered when it has an ETag). `None` when the
    /// blob went between the listing and the read.
    async fn small(
        &self,
        id: &ModelId,
        name: &'static str,
        tag: Option<String>,
    ) -> Result<Option<Bytes>, StoreError> {
        let key = (id.clone(), name);
        let known = self
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .filter(|(t, _)| tag.as_deref() == Some(t.as_str()))
            .map(|(_, bytes)| bytes.clone());
        if let Some(bytes) = known {
            return Ok(Some(bytes));
        }
        let path = self.path(&format!("{id}/{name}"));
        let bytes = match self.client.get(&path).await {
            Ok(result) => result.bytes().await.map_err(unavailable)?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(unavailable(e)),
        };
        if let Some(tag) = tag {
            self.known
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, (tag, bytes.clone()));
        }
        Ok(Some(bytes))
    }
}

impl AzureStore {
    /// Puts `<id>/<name>` (one blob put: atomic), or deletes it (`None`; an absent blob
    /// is fine).
    async fn write_small(
        &self,
        id: &ModelId,
        name: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let path = self.path(&format!("{id}/{name}"));
        match body {
            None => match self.client.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(unavailable(e)),
            },
            Some(body) => {
                self.client
                    .put(&path, PutPayload::from(body))
                    .await
                    .map_err(unavailable)?;
                Ok(())
            }
        }
    }
}

/// The digest of `bytes`, computed on a blocking thread (a large model takes a while).
async fn hash_off_the_runtime(bytes: Bytes) -> Result<Digest, StoreError> {
    tokio::task::spawn_blocking(move || Digest::of(&bytes))
        .await
        .map_err(|e| StoreError::Unavailable(format!("hashing the version: {e}")))
}

fn unavailable(error: object_store::Error) -> StoreError {
    match error {
        object_store::Error::NotFound { .. } => StoreError::NotFound,
        object_store::Error::AlreadyExists { .. } => {
            StoreError::Conflict("that version already exists".into())
        }
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
            .filter(|name| valid_model_id(name))
            .map(|name| ModelId::parse(name).expect("validated above"))
            .collect();
        ids.sort();
        Ok(ids)
    }

    async fn list_versions(&self, id: &ModelId) -> Result<Vec<u64>, StoreError> {
        Ok(self.model_state(id).await?.versions)
    }

    async fn read(&self, id: &ModelId, version: u64) -> Result<Bytes, StoreError> {
        let path = self.path(&format!("{id}/{version}/{MODEL_FILE}"));
        let result = self.client.get(&path).await.map_err(unavailable)?;
        result.bytes().await.map_err(unavailable)
    }

    async fn model_state(&self, id: &ModelId) -> Result<ModelState, StoreError> {
        let prefix = self.path(id.as_str());
        let objects: Vec<_> = self
            .client
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(unavailable)?;
        let mut versions = BTreeSet::new();
        // For each small file listed: `Some(etag)`, or `None` when listed without one
        // (then always read, never taken from memory).
        let mut tags: [Option<Option<String>>; SMALL_FILES.len()] = Default::default();
        for meta in &objects {
            let Some(mut parts) = meta.location.prefix_match(&prefix) else {
                continue;
            };
            let Some(first) = parts.next() else { continue };
            if let Some(i) = SMALL_FILES.iter().position(|f| *f == first.as_ref())
                && parts.next().is_none()
            {
                tags[i] = Some(meta.e_tag.clone());
                continue;
            }
            if let (Some(version), Some(file), None) =
                (parse_version(first.as_ref()), parts.next(), parts.next())
                && file.as_ref() == MODEL_FILE
            {
                versions.insert(version);
            }
        }
        let [alias_tag, canary_tag, shadow_tag] = tags;
        let pinned = match alias_tag {
            Some(tag) => match self.small(id, ALIAS_FILE, tag).await? {
                Some(bytes) => Alias::parse(&bytes)?.pinned,
                None => None,
            },
            None => None,
        };
        let canary = match canary_tag {
            Some(tag) => match self.small(id, CANARY_FILE, tag).await? {
                Some(bytes) => Some(Canary::parse(&bytes)?),
                None => None,
            },
            None => None,
        };
        let shadow = match shadow_tag {
            Some(tag) => match self.small(id, SHADOW_FILE, tag).await? {
                Some(bytes) => Some(parse_shadow(&bytes)?),
                None => None,
            },
            None => None,
        };
        Ok(ModelState {
            versions: versions.into_iter().collect(),
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
        let path = self.path(&format!("{id}/{version}/{MODEL_FILE}"));
        let sha256 = hash_off_the_runtime(bytes.clone()).await?.sha256;
        let options = PutOptions {
            mode: PutMode::Create,
            attributes: Attributes::from_iter([(
                Attribute::Metadata(SHA256_METADATA.into()),
                sha256,
            )]),
            ..PutOptions::default()
        };
        self.client
            .put_opts(&path, PutPayload::from(bytes), options)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn source_tag(&self, id: &ModelId, version: u64) -> Result<String, StoreError> {
        let path = self.path(&format!("{id}/{version}/{MODEL_FILE}"));
        let meta = self.client.head(&path).await.map_err(unavailable)?;
        Ok(format!(
            "azure:{}:{}",
            meta.size,
            meta.e_tag.as_deref().unwrap_or("")
        ))
    }

    async fn digest(&self, id: &ModelId, version: u64) -> Result<Digest, StoreError> {
        let path = self.path(&format!("{id}/{version}/{MODEL_FILE}"));
        // object_store returns Azure's `x-ms-meta-*` headers as `Attribute::Metadata` (its
        // Azure client's `user_defined_metadata_prefix`), on a `HEAD` as on a `GET`.
        let head = self
            .client
            .get_opts(
                &path,
                GetOptions {
                    head: true,
                    ..GetOptions::default()
                },
            )
            .await
            .map_err(unavailable)?;
        let stored = head
            .attributes
            .get(&Attribute::Metadata(SHA256_METADATA.into()))
            .map(|value| value.as_ref().to_string())
            .filter(|sha256| is_sha256_hex(sha256));
        if let Some(sha256) = stored {
            return Ok(Digest {
                bytes: head.meta.size,
                sha256,
            });
        }
        // Uploaded by another tool, without the metadata: read it and hash it.
        let bytes = self.read(id, version).await?;
        hash_off_the_runtime(bytes).await
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
        match self.client.get(&self.path(path)).await {
            Ok(result) => Ok(Some(result.bytes().await.map_err(unavailable)?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn put_object(&self, path: &str, bytes: Bytes) -> Result<(), StoreError> {
        check_object_path(path)?;
        // One blob put: atomic.
        self.client
            .put(&self.path(path), PutPayload::from(bytes))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    fn describe(&self) -> String {
        self.description.clone()
    }
}
