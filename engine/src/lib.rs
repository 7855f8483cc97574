//! The engine seam: a loaded model is served by ONNX Runtime (`onnx`) or by the native
//! engine for tree ensembles and linear models (`native`, the `manymodels-native` crate).
//! Everything above this crate (the scorer's cache, the policy, OIP, versions, canaries,
//! metrics, the explain view; `mmctl import`'s checks) sees only [`LoadedModel`]: its
//! signature, its weight, which engine serves it, and `infer`. [`tensor`] is the tensors
//! it takes and answers.
//!
//! A crate of its own so that `mmctl` and `xtask` load and check models exactly as a
//! scorer does without linking the scorer's servers.
//!
//! At load time a model goes native when `engine.native = auto` and its whole graph is
//! covered (`manymodels_native::Model::compile`); a model the native engine does not cover
//! goes to ONNX Runtime unchanged. A file the native reader finds malformed is refused
//! with a 422 without reaching ONNX Runtime. A model with a string (BYTES) input always
//! goes to ONNX Runtime: the native engine compiles numeric inputs only and answers
//! `Unsupported` for any other.
//!
//! Everything here blocks; callers run it on blocking threads, or inline on an async
//! worker only when [`LoadedModel::try_quick`] says the call is measured to be short.

pub mod classes;
pub mod declaration;
pub mod native;
pub mod onnx;
pub mod tensor;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use manymodels_config::scorer::NativeEngine;
use ort::environment::Environment;
use ort::session::Session;

use manymodels_contract::ModelId;
use manymodels_contract::forecast::Declaration;

use crate::tensor::{NamedTensor, TensorData, TensorSpec};

pub use classes::Classes;
pub use onnx::{environment, self_test};

/// A run that failed inside the engine: which model, and the engine's message (the
/// scorer answers it with a 500).
#[derive(Clone, Debug, thiserror::Error)]
#[error("inference failed for model '{id}': {message}")]
pub struct InferenceError {
    pub id: String,
    pub message: String,
}

/// The names of the outputs an explanation adds (`LoadedModel::contributions`).
pub const CONTRIBUTIONS: &str = "contributions";
pub const EXPECTED_VALUE: &str = "expected_value";
pub const RAW_OUTPUT: &str = "raw_output";

/// Why an explanation was not given.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Unexplained {
    /// The model cannot be explained: why (the scorer answers 422).
    #[error("{0}")]
    Unexplainable(String),
    /// The computation failed on these inputs.
    #[error(transparent)]
    Failed(InferenceError),
    /// The answer would hold more values than allowed (the scorer answers 400).
    #[error("{0}")]
    TooLarge(String),
    /// The deadline passed before the computation ended.
    #[error("the explanation's deadline passed")]
    Expired,
}

/// Which engine serves a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    OnnxRuntime,
    Native,
}

impl Engine {
    pub const ALL: [Engine; 2] = [Engine::OnnxRuntime, Engine::Native];

    pub fn as_str(self) -> &'static str {
        match self {
            Engine::OnnxRuntime => "onnxruntime",
            Engine::Native => "native",
        }
    }
}

/// The engines of a process: ONNX Runtime's environment and whether the native engine is
/// used. Cheap to copy.
#[derive(Clone, Copy, Debug)]
pub struct Engines {
    /// `None` in a process that never loads ONNX Runtime (the cache's unit tests, over
    /// native models only): a model only ONNX Runtime could serve is then refused. A
    /// scorer always has it (`Scorer::new` fails without it).
    pub environment: Option<&'static Environment>,
    pub native: NativeEngine,
}

/// A loaded model, with what it declares.
pub struct LoadedModel {
    pub id: ModelId,
    pub version: u64,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// For each output, the class labels naming its columns when it is a ZipMap (served
    /// as `[rows, classes]`, see `classes`); `None` for every other output.
    pub classes: Vec<Option<Classes>>,
    /// What the file declares in its `metadata_props` (its columns' names, how it
    /// forecasts), checked against the input at load (`declaration`).
    pub declaration: Declaration,
    /// Size of the ONNX file.
    pub file_bytes: u64,
    /// Memory charged to the cache for this model.
    pub weight: u64,
    /// Whether `weight` was measured on this load (true) or estimated from the file size
    /// because another load ran at the same time (false). Native models are always
    /// measured: their weight is their own heap size.
    pub weight_measured: bool,
    /// The engine that serves it.
    pub engine: Engine,
    /// Why the native engine did not take it (`None` when it did, or was off).
    pub native_refusal: Option<String>,
    backend: Backend,
    /// Moving average of the engine's time per batch row for this model, in nanoseconds;
    /// 0 until the first run. Decides whether a call may run inline.
    nanos_per_row: AtomicU64,
    /// Whatever must live exactly as long as the model's memory: the cache puts here the
    /// reservation that keeps a model it no longer holds accounted for until the last
    /// request using it lets go.
    held: Mutex<Vec<Box<dyn std::any::Any + Send + Sync>>>,
}

/// What a native image carries beside the compiled model: the scorer's own facts about
/// the ONNX file it came from. Every field is required: an image written before a field
/// existed fails to read its annex, is taken as corrupt and the file is compiled again
/// (and its image rewritten), so no image answers without what its file declares.
#[derive(serde::Serialize, serde::Deserialize)]
struct ImageAnnex {
    file_bytes: u64,
    classes: Vec<Option<Classes>>,
    /// The file's `metadata_props` declaration (added with the many-model route).
    declaration: Declaration,
}

impl LoadedModel {
    /// This model's native image, tagged with `source` (the store's tag of its ONNX
    /// file); `None` for a model ONNX Runtime serves, or one whose layout cannot be
    /// imaged.
    pub fn image(&self, source: &str) -> Option<Vec<u8>> {
        let Backend::Native(model) = &self.backend else {
            return None;
        };
        let annex = serde_json::to_vec(&ImageAnnex {
            file_bytes: self.file_bytes,
            classes: self.classes.clone(),
            declaration: self.declaration.clone(),
        })
        .ok()?;
        model.to_image(source.as_bytes(), &annex)
    }
}

enum Backend {
    /// `Session::run` takes `&mut self`: one session behind a mutex, whose critical section
    /// is the ONNX Runtime call itself. `zipmap[i]` says output `i` is a ZipMap.
    Onnx {
        session: Mutex<Session>,
        zipmap: Vec<bool>,
    },
    /// Immutable and shared: any number of calls run at once.
    Native(manymodels_native::Model),
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("id", &self.id)
            .field("version", &self.version)
            .field("engine", &self.engine)
            .field("weight", &self.weight)
            .finish_non_exhaustive()
    }
}

/// Loads (or compiles) running right now, and a counter of loads ever started: a heap
/// measurement is valid only if no other load overlapped it.
static CREATING: AtomicUsize = AtomicUsize::new(0);
static CREATIONS: AtomicU64 = AtomicU64::new(0);

/// Bytes glibc's allocator has handed out and not had back (arenas plus mmapped chunks).
#[cfg(target_env = "gnu")]
fn heap_in_use() -> Option<u64> {
    // SAFETY: mallinfo2 only reads glibc's own allocator statistics.
    let info = unsafe { libc::mallinfo2() };
    Some((info.uordblks + info.hblkhd) as u64)
}

#[cfg(not(target_env = "gnu"))]
fn heap_in_use() -> Option<u64> {
    None
}

/// Runs `create` counted as a load in flight, so an ONNX Runtime load beside it knows its
/// heap measurement is mixed; measures nothing itself (`mallinfo2` walks every arena).
fn counted<T>(create: impl FnOnce() -> T) -> T {
    CREATIONS.fetch_add(1, Ordering::SeqCst);
    CREATING.fetch_add(1, Ordering::SeqCst);
    let value = create();
    CREATING.fetch_sub(1, Ordering::SeqCst);
    value
}

/// Runs `create` and returns the heap it kept, when no other load overlapped.
fn measured<T>(create: impl FnOnce() -> T) -> (T, Option<u64>) {
    let ticket = CREATIONS.fetch_add(1, Ordering::SeqCst) + 1;
    let alone_at_start = CREATING.fetch_add(1, Ordering::SeqCst) == 0;
    let before = heap_in_use();
    let value = create();
    let after = heap_in_use();
    let alone_at_end =
        CREATING.fetch_sub(1, Ordering::SeqCst) == 1 && CREATIONS.load(Ordering::SeqCst) == ticket;
    let delta = match (before, after) {
        (Some(before), Some(after)) if alone_at_start && alone_at_end => {
            Some(after.saturating_sub(before))
        }
        _ => None,
    };
    (value, delta)
}

impl Engines {
    /// Loads a model from its file. Errors are messages for a 422: the file is at fault.
    ///
    /// A native model is charged its own heap size (exact: the engine counts its arrays'
    /// capacities). An ONNX Runtime model is charged what its session kept on the heap,
    /// measured around the creation with the allocator's counters, or `estimate` when
    /// another load overlapped it.
    pub fn load(
        &self,
        id: ModelId,
        version: u64,
        bytes: &[u8],
        estimate: u64,
    ) -> Result<LoadedModel, String> {
        let refusal = match self.load_native(id.clone(), version, bytes)? {
            Native::Loaded(model) => return Ok(*model),
            Native::Refused(why) => why,
        };
        self.load_onnx(id, version, bytes, estimate, refusal)
    }

    /// The native half of `load`: the model, or why it goes to ONNX Runtime (`None` when
    /// the native engine is off). An error is a malformed file (422).
    pub fn load_native(&self, id: ModelId, version: u64, bytes: &[u8]) -> Result<Native, String> {
        if self.native != NativeEngine::Auto {
            return Ok(Native::Refused(None));
        }
        // Counted as a load so an ONNX Runtime load beside it is not mis-measured.
        match counted(|| manymodels_native::Model::compile(bytes)) {
            Ok(model) => {
                let mut m = native::loaded(id, version, bytes.len() as u64, model)?;
                m.declaration = declaration::of_file(bytes, &m.inputs)?;
                m.classes = classes::of_zipmaps(bytes, &m.outputs);
                Ok(Native::Loaded(Box::new(m)))
            }
            Err(manymodels_native::CompileError::Invalid(message)) => {
                Err(format!("invalid model: {message}"))
            }
            Err(manymodels_native::CompileError::Unsupported(why)) => {
                Ok(Native::Refused(Some(why)))
            }
        }
    }

    /// A natively compiled model read back from its image file (`manymodels_native::image`):
    /// no protobuf parse, no compile; a large image is mapped and its arrays served from
    /// the page cache in place. `len` is the file's length; `source` is the store's tag of
    /// the ONNX file the image must have been compiled from. Stale or corrupt images are
    /// errors the caller answers by compiling the file.
    pub fn load_image(
        &self,
        id: ModelId,
        version: u64,
        file: &std::fs::File,
        len: u64,
        source: &str,
    ) -> Result<LoadedModel, manymodels_native::ImageError> {
        use manymodels_native::ImageError;
        if self.native != NativeEngine::Auto {
            return Err(ImageError::Stale("the native engine is off".into()));
        }
        let (model, annex) =
            manymodels_native::Model::from_image_file(file, len, source.as_bytes())?;
        let annex: ImageAnnex = serde_json::from_slice(&annex)
            .map_err(|e| ImageError::Corrupt(format!("annex: {e}")))?;
        let mut loaded =
            native::loaded(id, version, annex.file_bytes, model).map_err(ImageError::Corrupt)?;
        if annex.classes.len() != loaded.outputs.len() {
            return Err(ImageError::Corrupt(
                "annex: classes for other outputs".into(),
            ));
        }
        loaded.classes = annex.classes;
        loaded.declaration = annex.declaration;
        Ok(loaded)
    }

    /// The ONNX Runtime half of `load`; `native_refusal` is why the native engine did not
    /// take the model.
    pub fn load_onnx(
        &self,
        id: ModelId,
        version: u64,
        bytes: &[u8],
        estimate: u64,
        native_refusal: Option<String>,
    ) -> Result<LoadedModel, String> {
        let Some(environment) = self.environment else {
            return Err(format!(
                "ONNX Runtime is not loaded in this process{}",
                native_refusal.map_or(String::new(), |why| format!(" (native engine: {why})"))
            ));
        };
        let (session, measured_bytes) = measured(|| onnx::create_session(environment, bytes));
        let session = session?;
        // A frees elsewhere in the process during the creation (an evicted session let go
        // by its last request) shrink the measured delta: a session smaller than half its
        // file is such a measurement, not a session (it keeps every initializer).
        let (weight, weight_measured) = match measured_bytes {
            Some(measured) if measured >= bytes.len() as u64 / 2 => (measured, true),
            _ => (estimate, false),
        };
        let (inputs, outputs, zipmap) = onnx::signature(&session)?;
        // The same reader as the native engine's: both engines declare a file alike.
        let declaration = declaration::of_file(bytes, &inputs)?;
        LoadedModel::new(
            id,
            version,
            inputs,
            outputs,
            bytes.len() as u64,
            (weight, weight_measured),
            Engine::OnnxRuntime,
            Backend::Onnx {
                session: Mutex::new(session),
                zipmap,
            },
        )
        .map(|mut model| {
            model.native_refusal = native_refusal;
            model.classes = classes::of_zipmaps(bytes, &model.outputs);
            model.declaration = declaration;
            model
        })
    }
}

/// One output in model metadata: `name`, `datatype`, `shape`, and `parameters` when
/// there is something to say (a ZipMap output's `classes`, in column order).
#[derive(Debug, serde::Serialize)]
pub struct OutputMetadata<'a> {
    #[serde(flatten)]
    pub spec: &'a TensorSpec,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<OutputParameters<'a>>,
}

/// An output's metadata parameters.
#[derive(Debug, serde::Serialize)]
pub struct OutputParameters<'a> {
    pub classes: &'a Classes,
}

/// What the native engine made of a file.
pub enum Native {
    Loaded(Box<LoadedModel>),
    /// ONNX Runtime serves it; why (`None`: the native engine is off).
    Refused(Option<String>),
}

impl LoadedModel {
    /// Keeps `value` alive until this model is dropped.
    pub fn hold(&self, value: Box<dyn std::any::Any + Send + Sync>) {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(value);
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "one field each; built in two places only"
    )]
    fn new(
        id: ModelId,
        version: u64,
        inputs: Vec<TensorSpec>,
        outputs: Vec<TensorSpec>,
        file_bytes: u64,
        (weight, weight_measured): (u64, bool),
        engine: Engine,
        backend: Backend,
    ) -> Result<LoadedModel, String> {
        if inputs.is_empty() || outputs.is_empty() {
            return Err("the model declares no inputs or no outputs".into());
        }
        Ok(LoadedModel {
            id,
            version,
            classes: vec![None; outputs.len()],
            declaration: Declaration::default(),
            inputs,
            outputs,
            file_bytes,
            weight,
            weight_measured,
            engine,
            native_refusal: None,
            backend,
            nanos_per_row: AtomicU64::new(0),
            held: Mutex::new(Vec::new()),
        })
    }

    /// What model metadata says of each output: its spec, and for a ZipMap output the
    /// classes naming its columns (`parameters.classes`).
    pub fn output_metadata(&self) -> Vec<OutputMetadata<'_>> {
        self.outputs
            .iter()
            .zip(&self.classes)
            .map(|(spec, classes)| OutputMetadata {
                spec,
                parameters: classes.as_ref().map(|classes| OutputParameters { classes }),
            })
            .collect()
    }

    /// Runs the model on validated inputs (in the model's input order) and returns the
    /// outputs at `selected` indices. Blocks until the session is free and for the run.
    pub fn infer(
        &self,
        inputs: Vec<NamedTensor>,
        selected: &[usize],
    ) -> Result<Vec<NamedTensor>, InferenceError> {
        let session = match &self.backend {
            Backend::Onnx { session, .. } => Some(
                session
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()),
            ),
            Backend::Native(_) => None,
        };
        Runner {
            model: self,
            session,
        }
        .run(inputs, selected)
    }

    /// Whether this model's answers can be explained (`contributions`), else why not: a
    /// model ONNX Runtime serves cannot be; a native one needs its one tree ensemble or
    /// linear operator fed by feature-wise steps, and a forest its covers (checked when
    /// asked).
    pub fn explainable(&self) -> Result<(), String> {
        match &self.backend {
            Backend::Native(model) => model.explainable().map(|_| ()),
            Backend::Onnx { .. } => Err(format!(
                "it is served by ONNX Runtime, and explanations are computed by the native \
                 engine{}",
                self.native_refusal
                    .as_deref()
                    .map(|why| format!(" (which does not take it: {why})"))
                    .unwrap_or_default()
            )),
        }
    }

    /// Each input feature's contribution to each raw score, for every row of validated
    /// inputs: the outputs [`CONTRIBUTIONS`] (`[rows, targets, features]`),
    /// [`EXPECTED_VALUE`] (`[targets]`) and [`RAW_OUTPUT`] (`[rows, targets]`), all FP64,
    /// with `expected + Σ contributions = raw` per row and target. Blocks for the whole
    /// computation (TreeSHAP costs far more than a prediction: run it on a blocking thread),
    /// at most `max_values` contributions and until `until` (checked between trees).
    pub fn contributions(
        &self,
        inputs: Vec<NamedTensor>,
        max_values: usize,
        until: Option<Instant>,
    ) -> Result<Vec<NamedTensor>, Unexplained> {
        self.explainable().map_err(Unexplained::Unexplainable)?;
        let Backend::Native(model) = &self.backend else {
            unreachable!("explainable() refuses every other backend")
        };
        let bounds = manymodels_native::Bounds { max_values, until };
        native::contributions(model, inputs, &bounds).map_err(|e| match e {
            manymodels_native::ExplainError::Unexplainable(why) => Unexplained::Unexplainable(why),
            manymodels_native::ExplainError::TooLarge(why) => Unexplained::TooLarge(why),
            manymodels_native::ExplainError::Expired => Unexplained::Expired,
            manymodels_native::ExplainError::Run(e) => Unexplained::Failed(InferenceError {
                id: self.id.to_string(),
                message: e.to_string(),
            }),
        })
    }

    /// The checks a version passes before it goes live: it can take over `old`'s requests
    /// (when there is one) and answers a smoke inference.
    pub fn vet(&self, old: Option<&LoadedModel>) -> Result<(), String> {
        if let Some(old) = old {
            self.compatible_with(old)?;
        }
        self.smoke()
    }

    /// Runs one row of zeros through every input and checks every declared output comes
    /// back: the check a new version passes before it replaces a live one.
    pub fn smoke(&self) -> Result<(), String> {
        let inputs = self
            .inputs
            .iter()
            .map(|spec| {
                let shape: Vec<i64> = spec
                    .shape
                    .iter()
                    .map(|&d| if d < 1 { 1 } else { d })
                    .collect();
                let n = shape.iter().product::<i64>().max(0) as usize;
                NamedTensor {
                    name: spec.name.clone(),
                    datatype: spec.datatype,
                    shape,
                    data: TensorData::zeros(spec.datatype, n),
                }
            })
            .collect();
        let all: Vec<usize> = (0..self.outputs.len()).collect();
        let outputs = self
            .infer(inputs, &all)
            .map_err(|e| format!("smoke inference failed: {e}"))?;
        if outputs.len() != self.outputs.len() {
            return Err(format!(
                "smoke inference returned {} outputs, the model declares {}",
                outputs.len(),
                self.outputs.len()
            ));
        }
        Ok(())
    }

    /// Whether this model can take over `old`'s requests: the same input names,
    /// datatypes and shapes, and every output `old` had.
    pub fn compatible_with(&self, old: &LoadedModel) -> Result<(), String> {
        let signature = |specs: &[TensorSpec]| -> Vec<(String, &'static str, Vec<i64>)> {
            let mut s: Vec<_> = specs
                .iter()
                .map(|t| (t.name.clone(), t.datatype.as_str(), t.shape.clone()))
                .collect();
            s.sort();
            s
        };
        if signature(&self.inputs) != signature(&old.inputs) {
            return Err(format!(
                "inputs {:?} differ from version {}'s {:?}",
                signature(&self.inputs),
                old.version,
                signature(&old.inputs)
            ));
        }
        let outputs = signature(&self.outputs);
        if let Some(missing) = signature(&old.outputs)
            .into_iter()
            .find(|o| !outputs.contains(o))
        {
            return Err(format!(
                "output {missing:?} of version {} is missing",
                old.version
            ));
        }
        Ok(())
    }

    /// Runs the call here if its rows are predicted to finish within `limit` and the engine
    /// is free (`try_quick`): handing a few-microsecond call to a blocking thread costs ten
    /// times more than the call (ARCHITECTURE.md, "Where ONNX Runtime runs"). Otherwise
    /// gives the inputs back. Synchronous, so a session lock never crosses an `.await`.
    pub fn run_quick(
        &self,
        limit: Duration,
        inputs: Vec<NamedTensor>,
        selected: &[usize],
    ) -> Quick {
        match self.try_quick(batch_rows(&inputs), limit) {
            Some(runner) => Quick::Ran(runner.run(inputs, selected)),
            None => Quick::Later(inputs),
        }
    }

    /// A runner, if `rows` rows are predicted (from this model's measured time per row) to
    /// run in under `limit` and the engine is free (an ONNX Runtime session nobody holds;
    /// a native model always is). Such a call is short enough to run on an async worker:
    /// handing it to a blocking thread costs more than the call.
    pub fn try_quick(&self, rows: usize, limit: Duration) -> Option<Runner<'_>> {
        let per_row = self.nanos_per_row.load(Ordering::Relaxed);
        if per_row == 0 || per_row.saturating_mul(rows as u64) > limit.as_nanos() as u64 {
            return None;
        }
        let session = match &self.backend {
            Backend::Onnx { session, .. } => Some(session.try_lock().ok()?),
            Backend::Native(_) => None,
        };
        Some(Runner {
            model: self,
            session,
        })
    }

    fn record_run(&self, elapsed: Duration, rows: usize) {
        let sample = (elapsed.as_nanos() as u64 / rows.max(1) as u64).max(1);
        let old = self.nanos_per_row.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            (old * 7 + sample) / 8
        };
        self.nanos_per_row.store(new, Ordering::Relaxed);
    }

    /// The engine's time per call through `infer` (input conversion, the lock of an ONNX
    /// Runtime session, the call, output conversion): `iterations` runs on inputs built
    /// once, copied outside the timed part. For the benchmarks' floor.
    pub fn time_runs(
        &self,
        inputs: &[NamedTensor],
        iterations: usize,
    ) -> Result<Vec<Duration>, String> {
        let all: Vec<usize> = (0..self.outputs.len()).collect();
        let mut times = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            let inputs = inputs.to_vec();
            let started = Instant::now();
            let outputs = self.infer(inputs, &all).map_err(|e| e.to_string())?;
            times.push(started.elapsed());
            drop(outputs);
        }
        Ok(times)
    }
}

/// A call run on the caller's thread (`LoadedModel::run_quick`), or its inputs given back
/// to run on a blocking thread.
pub enum Quick {
    Ran(Result<Vec<NamedTensor>, InferenceError>),
    Later(Vec<NamedTensor>),
}

/// A model ready to run: for ONNX Runtime, its session held.
pub struct Runner<'a> {
    model: &'a LoadedModel,
    session: Option<MutexGuard<'a, Session>>,
}

impl Runner<'_> {
    /// Runs the model once.
    pub fn run(
        self,
        inputs: Vec<NamedTensor>,
        selected: &[usize],
    ) -> Result<Vec<NamedTensor>, InferenceError> {
        let model = self.model;
        let rows = batch_rows(&inputs);
        let started = Instant::now();
        let result = match (&model.backend, self.session) {
            (Backend::Onnx { zipmap, .. }, Some(mut session)) => {
                onnx::run(&mut session, &model.outputs, zipmap, inputs, selected)
            }
            (Backend::Native(native), _) => native::run(native, &model.outputs, inputs, selected),
            (Backend::Onnx { .. }, None) => {
                unreachable!("an ONNX Runtime runner holds its session")
            }
        };
        let outputs = result.map_err(|message| InferenceError {
            id: model.id.to_string(),
            message,
        })?;
        model.record_run(started.elapsed(), rows);
        Ok(outputs)
    }
}

/// The batch size of a request: the first dimension of its first input (1 for scalars).
pub fn batch_rows(inputs: &[NamedTensor]) -> usize {
    inputs
        .first()
        .and_then(|t| t.shape.first())
        .map(|&d| d.max(1) as usize)
        .unwrap_or(1)
}
