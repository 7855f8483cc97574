//! A miss: from the store read to a loaded model, with its memory reserved first. With
//! `images.dir` on, the store's tag of the file says whether a native image compiled from
//! exactly this file stands in for it (`load_from_image`); otherwise the file is read and
//! compiled natively, or given to ONNX Runtime when the native engine refuses it, and a
//! native compile writes its image on the same load thread.

use std::sync::Arc;
use std::time::{Duration, Instant};

use manymodels_config::scorer::NativeEngine;

use super::ledger::Reservation;
use super::loader::{self, Phase};
use super::{ModelCache, ModelKey, scopeguard};
use crate::engine::{LoadedModel, Native};
use crate::error::{LoadError, ScorerError};
use crate::images::Images;
use crate::model_id::ModelId;

/// How long "this model does not exist" is remembered, so a storm of requests for an
/// unknown id does not turn into a storm of store listings, while a newly published model
/// is found within a second.
pub(super) const NOT_FOUND_TTL: Duration = Duration::from_secs(1);

/// How long a version that can never fit the budget is remembered: the budget does not
/// change while the process runs, and a new version is a new key.
const TOO_LARGE_TTL: Duration = Duration::from_secs(3600);

impl ModelCache {
    /// The single-flight body: runs once per key however many requests wait on it.
    /// Returns the model, what its load cost (thread CPU seconds of the compile or session
    /// creation plus the store read's seconds) and its memory reservation, to be dropped
    /// once the model is charged. Time queued for a load slot, a reservation or a core is
    /// not the model's cost: counting it would rank the models of a burst of cold loads (a
    /// scan) above the hot set. The slot is taken by `priority` (`slots`): a batch
    /// request's load within the batch share, behind waiting interactive ones.
    pub(super) async fn load(
        &self,
        key: ModelKey,
        priority: manymodels_contract::Priority,
    ) -> Result<(Arc<LoadedModel>, f64, Reservation), ScorerError> {
        let _slot = self.load_slots.acquire(priority).await;
        self.metrics.loads_started[match priority {
            manymodels_contract::Priority::Interactive => 0,
            manymodels_contract::Priority::Batch => 1,
        }]
        .inc();
        self.metrics.loads_in_progress.inc();
        let _in_progress = scopeguard(|| self.metrics.loads_in_progress.dec());
        let started = Instant::now();
        let result = self.read_and_create(&key).await;
        let seconds = started.elapsed().as_secs_f64();
        match &result {
            Ok((model, cost, _)) => {
                self.metrics.loads.inc();
                self.metrics
                    .engine_loads
                    .with_label_values(&[model.engine.as_str()])
                    .inc();
                self.metrics.loaded_bytes.inc_by(model.weight);
                self.metrics.load_duration.observe(seconds);
                tracing::info!(
                    model = %key.id, version = model.version, file_bytes = model.file_bytes,
                    engine = model.engine.as_str(), native_refusal = model.native_refusal.as_deref(),
                    weight = model.weight, weight_measured = model.weight_measured,
                    ms = seconds * 1e3, cost_ms = cost * 1e3,
                    "model loaded"
                );
            }
            Err(error) => {
                let ttl = match error {
                    ScorerError::VersionNotFound { .. } => Some(NOT_FOUND_TTL),
                    ScorerError::TooLarge { .. } => {
                        self.metrics.too_large.inc();
                        tracing::warn!(model = %key.id, %error, "model can never fit");
                        Some(TOO_LARGE_TTL)
                    }
                    ScorerError::Load(_) => {
                        self.metrics.load_failures.inc();
                        tracing::warn!(model = %key.id, %error, "model failed to load");
                        Some(self.config.failure_ttl)
                    }
                    // A store outage is not remembered: the next request tries again.
                    _ => None,
                };
                if let Some(ttl) = ttl {
                    self.failures
                        .remember((key.id.clone(), Some(key.version)), error.clone(), ttl)
                        .await;
                }
            }
        }
        result.map(|(model, cost, reservation)| (Arc::new(model), cost, reservation))
    }

    async fn read_and_create(
        &self,
        key: &ModelKey,
    ) -> Result<(LoadedModel, f64, Reservation), ScorerError> {
        let (id, version) = (&key.id, key.version);
        let not_found = |e| ScorerError::from_store(e, id, Some(version));
        let read_started = Instant::now();
        // With images on, the store's tag of the file (one `stat` or `HEAD`) says whether
        // an image compiled from exactly this file can stand in for it.
        let tag = match &self.images {
            Some(_) if self.engines.native == NativeEngine::Auto => Some(
                self.store
                    .source_tag(id, version)
                    .await
                    .map_err(not_found)?,
            ),
            _ => None,
        };
        let tagged = read_started.elapsed().as_secs_f64();
        if let Some(tag) = &tag
            && let Some((model, cpu, reservation)) = self.load_from_image(key, tag).await?
        {
            return Ok((model, tagged + cpu, reservation));
        }
        // A shadow version's load takes only free room: the file's room is reserved before
        // it is read (its size from the store's tag: one `stat` or `HEAD`), so a candidate
        // that does not fit is skipped unread, and its file never counts in live loads'
        // books (`cache::shadow`).
        let file_room = if super::shadow::loading_shadow() {
            Some(self.reserve_shadow_file(key, tag.as_deref()).await?)
        } else {
            None
        };
        let bytes = self.store.read(id, version).await.map_err(not_found)?;
        let read = read_started.elapsed().as_secs_f64();
        let (model, cost, reservation) = self.create_with(key, bytes, tag, read, file_room).await?;
        tracing::debug!(
            model = %id, version,
            read_ms = read * 1e3,
            cost_ms = cost * 1e3,
            "load phases"
        );
        Ok((model, cost, reservation))
    }

    /// The model from its image in `images.dir`, when there is one compiled from the file
    /// `tag` names; `None` (and the image deleted) when it is missing, stale or corrupt,
    /// and the caller compiles the file. Reserves the image's size only: the model's arrays
    /// are the image's bytes (mapped, or read into one buffer when small).
    async fn load_from_image(
        &self,
        key: &ModelKey,
        tag: &str,
    ) -> Result<Option<(LoadedModel, f64, Reservation)>, ScorerError> {
        let Some(images) = self.images.clone() else {
            return Ok(None);
        };
        // Two system calls (open, fstat): not worth a trip to a blocking thread.
        let Some((file, len)) = images.open_image(&key.id, key.version) else {
            return Ok(None);
        };
        if !self.ledger.fits(len) {
            // No model that fits the budget has an image this large: a damaged file. The
            // compile decides whether the model itself fits (a 507 is the file's to give).
            images.remove(&key.id, key.version);
            self.metrics.images.with_label_values(&["corrupt"]).inc();
            return Ok(None);
        }
        let reservation = self.reserve(key, Phase::Image, len).await?;
        let engines = self.engines;
        let (id, version, tag) = (key.id.clone(), key.version, tag.to_string());
        let (loaded, cpu, reservation) = self
            .image_loads
            .run_holding(false, reservation, move || {
                let loaded = engines.load_image(id.clone(), version, &file, len, &tag);
                if loaded.is_err() {
                    images.remove(&id, version);
                }
                loaded
            })
            .await
            .map_err(ScorerError::Store)?;
        match loaded {
            Ok(model) => {
                self.metrics.images.with_label_values(&["loaded"]).inc();
                self.fitting(key, model, cpu, reservation).map(Some)
            }
            Err(error) => {
                let event = match error {
                    manymodels_native::ImageError::Stale(_) => "stale",
                    manymodels_native::ImageError::Corrupt(_) => "corrupt",
                };
                self.metrics.images.with_label_values(&[event]).inc();
                tracing::warn!(model = %key.id, version = key.version, %error, "image not used; compiling the model file");
                Ok(None)
            }
        }
    }

    /// Compiles or creates a model from its file on a load thread, with its memory
    /// reserved first: natively when the engine covers it, else with ONNX Runtime (whose
    /// larger reservation is taken only then). Returns the model, what loading it again
    /// costs (the `read` seconds of the file plus the CPU seconds it took; for a model
    /// whose image was just written, the image's load) and its reservation. A model that
    /// could never fit the budget is refused before anything is evicted for it.
    pub(super) async fn create(
        &self,
        key: &ModelKey,
        bytes: bytes::Bytes,
        tag: Option<String>,
        read: f64,
    ) -> Result<(LoadedModel, f64, Reservation), ScorerError> {
        self.create_with(key, bytes, tag, read, None).await
    }

    /// `create`, with the file's room reserved already (`file_room`: a shadow version's,
    /// taken before the file was read).
    async fn create_with(
        &self,
        key: &ModelKey,
        bytes: bytes::Bytes,
        tag: Option<String>,
        read: f64,
        file_room: Option<Reservation>,
    ) -> Result<(LoadedModel, f64, Reservation), ScorerError> {
        let (id, version) = (&key.id, key.version);
        let file = bytes.len() as u64;
        // The file is in memory already: accounted at once, whatever waits next (a shadow
        // version's room was reserved before the read; a file larger than that room takes
        // free room again, or the load ends).
        // The file and the reservations travel with the work on the load thread
        // (`run_holding`): a load abandoned at `cache.load_timeout` keeps its memory
        // accounted until its thread is done with it.
        let mut file_hold = match file_room {
            Some(room) if room.bytes() >= file => room,
            Some(room) => {
                drop(room);
                self.ledger
                    .reserve_shadow(file)
                    .ok_or_else(|| super::shadow::no_room(key))?
            }
            None => self.ledger.hold(file),
        };
        let engines = self.engines;
        let mut cpu = read;
        let mut refusal = None;
        if self.engines.native == NativeEngine::Auto {
            let reservation = self.reserve(key, Phase::Native, file).await?;
            let (model_id, file_bytes) = (id.clone(), bytes.clone());
            let trims = reservation.trims();
            let images = self.images.clone().zip(tag);
            let ((native, written), seconds, (reservation, held)) = self
                .loads
                .run_holding(trims, (reservation, file_hold), move || {
                    let native = engines.load_native(model_id.clone(), version, &file_bytes);
                    // The image is written while the load still holds its reservation
                    // (the image's buffer is smaller than the file it was compiled from).
                    let written = match (&native, images) {
                        (Ok(Native::Loaded(model)), Some((images, tag))) => {
                            Some(write_image(&images, &model_id, version, model, &tag))
                        }
                        _ => None,
                    };
                    (native, written)
                })
                .await
                .map_err(ScorerError::Store)?;
            file_hold = held;
            cpu += seconds;
            match written {
                Some(Ok(written)) => {
                    self.metrics.images.with_label_values(&["written"]).inc();
                    self.metrics
                        .images
                        .with_label_values(&["evicted"])
                        .inc_by(written.evicted as u64);
                    // What the next load of this model costs is reading its image, not
                    // the read and compile (and image write) just done.
                    cpu = image_load_seconds(written.bytes);
                }
                Some(Err(error)) => {
                    tracing::warn!(model = %id, version, %error, "could not write the image");
                }
                None => {}
            }
            match native.map_err(|message| invalid_model(id, version, message))? {
                Native::Loaded(model) => return self.fitting(key, *model, cpu, reservation),
                Native::Refused(why) => refusal = why,
            }
        }
        let reservation = self.reserve(key, Phase::OnnxRuntime, file).await?;
        let estimate = self.config.weigh(file);
        let model_id = id.clone();
        let trims = reservation.trims();
        let (created, seconds, (reservation, _file)) = self
            .loads
            .run_holding(trims, (reservation, file_hold), move || {
                engines.load_onnx(model_id, version, &bytes, estimate, refusal)
            })
            .await
            .map_err(ScorerError::Store)?;
        cpu += seconds;
        let model = created.map_err(|message| invalid_model(id, version, message))?;
        self.fitting(key, model, cpu, reservation)
    }

    /// A loaded model, unless it is larger than the whole budget.
    pub(super) fn fitting(
        &self,
        key: &ModelKey,
        model: LoadedModel,
        cpu: f64,
        reservation: Reservation,
    ) -> Result<(LoadedModel, f64, Reservation), ScorerError> {
        if self.ledger.fits(model.weight) {
            Ok((model, cpu, reservation))
        } else {
            Err(self.too_large(key, model.weight))
        }
    }

    pub(super) fn too_large(&self, key: &ModelKey, needed: u64) -> ScorerError {
        ScorerError::TooLarge {
            id: key.id.to_string(),
            version: key.version,
            needed,
            budget: self.config.budget.bytes(),
        }
    }

    /// Reserves the memory a load by `phase` of a `file`-byte model may hold, waiting for
    /// other loads to give theirs back when needed. Refuses at once, evicting nothing, a
    /// model whose expected size could never fit the budget.
    pub(super) async fn reserve(
        &self,
        key: &ModelKey,
        phase: Phase,
        file: u64,
    ) -> Result<Reservation, ScorerError> {
        // The ONNX file itself is held by the caller; an image is never held whole (its
        // arrays are the model's), so its reservation is the whole model.
        let bytes = match phase {
            Phase::Image => loader::reservation(phase, file),
            Phase::Native | Phase::OnnxRuntime => {
                loader::reservation(phase, file).saturating_sub(file)
            }
        };
        let expected = match phase {
            Phase::Native => file / 2,
            Phase::OnnxRuntime => self.config.weigh(file),
            Phase::Image => file,
        };
        if !self.ledger.fits(expected) {
            return Err(self.too_large(key, expected));
        }
        // A shadow version's load takes only free room (`cache::shadow`).
        if super::shadow::loading_shadow() {
            return self
                .ledger
                .reserve_shadow(bytes)
                .ok_or_else(|| super::shadow::no_room(key));
        }
        Ok(self.ledger.reserve(&key.id, bytes).await)
    }
}

/// Writes `model`'s image (on the load thread that compiled it).
fn write_image(
    images: &Images,
    id: &ModelId,
    version: u64,
    model: &LoadedModel,
    tag: &str,
) -> Result<crate::images::Written, String> {
    let image = model
        .image(tag)
        .ok_or_else(|| "the model's layout cannot be imaged".to_string())?;
    images
        .write(id, version, &image)
        .map_err(|e| format!("{}: {e}", images.dir().display()))
}

/// Seconds a load from an image of `bytes` costs: the policy's reload cost of a model
/// that has an image (measured by `cargo xtask bench images`: about 0.15 ns per byte
/// mapped, hashed and checked, plus the fixed cost of a load).
fn image_load_seconds(bytes: u64) -> f64 {
    const FIXED: f64 = 100e-6;
    const PER_BYTE: f64 = 0.15e-9;
    FIXED + bytes as f64 * PER_BYTE
}

/// The model file itself is at fault (422): ONNX Runtime refused it, or it failed the
/// checks a new version must pass.
pub(super) fn invalid_model(id: &ModelId, version: u64, message: String) -> ScorerError {
    ScorerError::Load(LoadError {
        id: id.to_string(),
        version,
        message: message.into(),
        invalid_model: true,
    })
}
