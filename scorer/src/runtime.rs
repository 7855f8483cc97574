//! ONNX Runtime: the one environment of the process, session creation tuned for many small
//! models on few cores, and running a loaded model.
//!
//! Everything here blocks; callers run it on blocking threads, never on tokio workers.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use ort::environment::{Environment, GlobalThreadPoolOptions};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{DynValue, Tensor, ValueType};

use crate::error::ScorerError;
use crate::model_id::ModelId;
use crate::tensor::{DataType, NamedTensor, TensorData, TensorSpec};

static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();

/// Opens ONNX Runtime from `library` (once per process; later calls return the same
/// environment). The environment has one global thread pool with one intra-op and one
/// inter-op thread and spinning off, so a thousand loaded sessions add no threads and burn
/// no CPU while idle; each `run` executes on the calling (blocking) thread.
pub fn environment(library: Option<&Path>) -> Result<&'static Environment, String> {
    ENVIRONMENT
        .get_or_init(|| {
            let library = library
                .map(Path::to_path_buf)
                .or_else(find_library)
                .ok_or_else(|| {
                    "ONNX Runtime library not found: set onnxruntime.library or ORT_DYLIB_PATH \
                 (cargo xtask fetches it into .cache/onnxruntime/lib)"
                        .to_string()
                })?;
            let library = library.as_path();
            // Load the library first: every other ort call (even building thread-pool
            // options) goes through it.
            let builder = ort::init_from(library)
                .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", library.display()))?;
            let pool = GlobalThreadPoolOptions::default()
                .with_intra_threads(1)
                .and_then(|o| o.with_inter_threads(1))
                .and_then(|o| o.with_spin_control(false))
                .map_err(|e| format!("ONNX Runtime thread pool options: {e}"))?;
            builder
                .with_name("manymodels")
                .with_telemetry(false)
                .with_global_thread_pool(pool)
                .build()
                .map_err(|e| format!("cannot create the ONNX Runtime environment: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Creates and drops one session of a tiny generated model. ONNX Runtime sets up kernel
/// registries and other process-wide state on the first session (about 1.4 MB); doing it
/// here keeps that one-off cost out of the first real model's measured weight, and proves
/// at start-up that the library works.
pub fn self_test(environment: &Environment) -> Result<(), String> {
    let model = manymodels_models::build(&manymodels_models::Spec::Linear {
        features: 4,
        seed: 1,
    });
    let mut session = create_session(environment, &model.bytes)?;
    let row = [0.5f32, -1.0, 2.0, 0.25];
    let input = Tensor::from_array(([1usize, 4], row.to_vec())).map_err(|e| e.to_string())?;
    let outputs = session
        .run(vec![("input", input)])
        .map_err(|e| e.to_string())?;
    let (_, got) = outputs["variable"]
        .try_extract_tensor::<f32>()
        .map_err(|e| e.to_string())?;
    let want = model.predict(&row);
    if (got[0] - want).abs() > 1e-5 * want.abs().max(1.0) {
        return Err(format!(
            "ONNX Runtime self-test computed {} instead of {want}",
            got[0]
        ));
    }
    Ok(())
}

/// Where the library is looked for when nothing is configured: beside the executable (the
/// container image's layout), then the project's own `.cache/onnxruntime/lib`.
fn find_library() -> Option<PathBuf> {
    const NAME: &str = "libonnxruntime.so.1";
    let beside_exe = std::env::current_exe().ok()?.parent()?.join(NAME);
    [
        beside_exe,
        PathBuf::from(".cache/onnxruntime/lib").join(NAME),
    ]
    .into_iter()
    .find(|path| path.exists())
}

/// A model loaded into an ONNX Runtime session, with what it declares.
pub struct LoadedModel {
    pub id: ModelId,
    pub version: u64,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// Size of the ONNX file.
    pub file_bytes: u64,
    /// Memory charged to the cache for this model.
    pub weight: u64,
    /// Whether `weight` was measured on this load (true) or estimated from the file size
    /// because another load ran at the same time (false).
    pub weight_measured: bool,
    /// `Session::run` takes `&mut self`. One hot model is served by one session; the
    /// critical section is the ONNX Runtime call itself (microseconds for these models).
    session: Mutex<Session>,
    /// Moving average of ONNX Runtime's time per batch row for this model, in
    /// nanoseconds; 0 until the first run. Decides whether a call may run inline.
    nanos_per_row: AtomicU64,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("id", &self.id)
            .field("version", &self.version)
            .field("weight", &self.weight)
            .finish_non_exhaustive()
    }
}

/// Sessions being created right now, and a counter of creations ever started: a heap
/// measurement is valid only if no other creation overlapped it.
static CREATING: AtomicUsize = AtomicUsize::new(0);
static CREATIONS: AtomicU64 = AtomicU64::new(0);

/// Bytes glibc's allocator has handed out and not had back (arenas plus mmapped chunks).
#[cfg(target_env = "gnu")]
pub fn heap_in_use() -> Option<u64> {
    // SAFETY: mallinfo2 only reads glibc's own allocator statistics.
    let info = unsafe { libc::mallinfo2() };
    Some((info.uordblks + info.hblkhd) as u64)
}

#[cfg(not(target_env = "gnu"))]
pub fn heap_in_use() -> Option<u64> {
    None
}

/// Runs `create` and returns the heap it kept, when no other creation overlapped.
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

/// Creates a session from model bytes and reads its signature. Errors are messages for a
/// 422: the model file itself is at fault.
///
/// The model is charged what its session really keeps on the heap, measured around the
/// creation with the allocator's own counters; when another load overlapped (so the
/// counters mix two models) it is charged `estimate` instead.
pub fn load(
    environment: &Environment,
    id: ModelId,
    version: u64,
    bytes: &[u8],
    estimate: u64,
) -> Result<LoadedModel, String> {
    let (session, measured_bytes) = measured(|| create_session(environment, bytes));
    let session = session?;
    let (weight, weight_measured) = match measured_bytes {
        Some(bytes) => (bytes, true),
        None => (estimate, false),
    };
    describe(
        session,
        id,
        version,
        bytes.len() as u64,
        weight,
        weight_measured,
    )
}

/// ONNX Runtime session creation with the scorer's options, and nothing else.
pub fn create_session(environment: &Environment, bytes: &[u8]) -> Result<Session, String> {
    Session::builder(environment)
        .and_then(|b| {
            b.with_optimization_level(GraphOptimizationLevel::Level3)
                .map_err(Into::into)
        })
        .and_then(|b| b.with_intra_threads(1).map_err(Into::into))
        .and_then(|b| b.with_inter_threads(1).map_err(Into::into))
        .and_then(|b| b.with_intra_op_spinning(false).map_err(Into::into))
        .and_then(|b| b.with_inter_op_spinning(false).map_err(Into::into))
        .map_err(|e| format!("session options: {e}"))?
        .commit_from_memory(bytes)
        .map_err(|e| format!("ONNX Runtime cannot load the model: {e}"))
}

fn describe(
    session: Session,
    id: ModelId,
    version: u64,
    file_bytes: u64,
    weight: u64,
    weight_measured: bool,
) -> Result<LoadedModel, String> {
    let spec = |outlet: &ort::value::Outlet, role: &str| -> Result<TensorSpec, String> {
        match outlet.dtype() {
            ValueType::Tensor { ty, shape, .. } => {
                let datatype = DataType::from_ort(*ty).ok_or_else(|| {
                    format!(
                        "{role} '{}' has element type {ty:?}, which the scorer does not serve",
                        outlet.name()
                    )
                })?;
                Ok(TensorSpec {
                    name: outlet.name().to_string(),
                    datatype,
                    shape: shape.to_vec(),
                })
            }
            other => Err(format!(
                "{role} '{}' is {other:?}, not a tensor (export classifiers with zipmap disabled)",
                outlet.name()
            )),
        }
    };
    let inputs = session
        .inputs()
        .iter()
        .map(|o| spec(o, "input"))
        .collect::<Result<Vec<_>, _>>()?;
    let outputs = session
        .outputs()
        .iter()
        .map(|o| spec(o, "output"))
        .collect::<Result<Vec<_>, _>>()?;
    if inputs.is_empty() || outputs.is_empty() {
        return Err("the model declares no inputs or no outputs".into());
    }
    Ok(LoadedModel {
        id,
        version,
        inputs,
        outputs,
        file_bytes,
        weight,
        weight_measured,
        session: Mutex::new(session),
        nanos_per_row: AtomicU64::new(0),
    })
}

/// A held session, ready to run.
pub struct SessionGuard<'a> {
    model: &'a LoadedModel,
    session: MutexGuard<'a, Session>,
}

impl LoadedModel {
    /// Runs the model on validated inputs (in the model's input order) and returns the
    /// outputs at `selected` indices. Blocks until the session is free and for the run.
    pub fn infer(
        &self,
        inputs: Vec<NamedTensor>,
        selected: &[usize],
    ) -> Result<Vec<NamedTensor>, ScorerError> {
        let session = self
            .session
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        SessionGuard {
            model: self,
            session,
        }
        .run(inputs, selected)
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

    /// The session, if `rows` rows are predicted (from this model's measured time per
    /// row) to run in under `limit` and nobody else holds it. Such a call is short enough
    /// to run on an async worker: handing it to a blocking thread costs more than the call.
    pub fn try_quick(&self, rows: usize, limit: Duration) -> Option<SessionGuard<'_>> {
        let per_row = self.nanos_per_row.load(Ordering::Relaxed);
        if per_row == 0 || per_row.saturating_mul(rows as u64) > limit.as_nanos() as u64 {
            return None;
        }
        let session = self.session.try_lock().ok()?;
        Some(SessionGuard {
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
}

impl SessionGuard<'_> {
    /// Runs the model once on the held session.
    pub fn run(
        mut self,
        inputs: Vec<NamedTensor>,
        selected: &[usize],
    ) -> Result<Vec<NamedTensor>, ScorerError> {
        let model = self.model;
        let failed = |message: String| ScorerError::Inference {
            id: model.id.to_string(),
            message,
        };
        let rows = batch_rows(&inputs);
        let mut values: Vec<(String, ort::session::SessionInputValue<'static>)> =
            Vec::with_capacity(inputs.len());
        for input in inputs {
            let value = to_value(input.shape, input.data)
                .map_err(|e| failed(format!("input '{}': {e}", input.name)))?;
            values.push((input.name, value.into()));
        }
        let started = Instant::now();
        let outputs = self
            .session
            .run(values)
            .map_err(|e| failed(e.to_string()))?;
        model.record_run(started.elapsed(), rows);
        selected
            .iter()
            .map(|&index| {
                let spec = &model.outputs[index];
                let value = outputs.get(&spec.name).ok_or_else(|| {
                    failed(format!("output '{}' missing from the run", spec.name))
                })?;
                from_value(value, spec.datatype)
                    .map(|(shape, data)| NamedTensor {
                        name: spec.name.clone(),
                        datatype: spec.datatype,
                        shape,
                        data,
                    })
                    .map_err(|e| failed(format!("output '{}': {e}", spec.name)))
            })
            .collect()
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

impl LoadedModel {
    /// ONNX Runtime's own time per call: `iterations` runs of `Session::run` on inputs
    /// built once, without the scorer's conversions around it. For the benchmarks' floor.
    pub fn time_runs(
        &self,
        inputs: &[NamedTensor],
        iterations: usize,
    ) -> Result<Vec<std::time::Duration>, String> {
        let values = inputs
            .iter()
            .map(|input| {
                to_value(input.shape.clone(), input.data.clone()).map(|v| (input.name.clone(), v))
            })
            .collect::<ort::Result<Vec<_>>>()
            .map_err(|e| e.to_string())?;
        let mut session = self
            .session
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut times = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            let started = std::time::Instant::now();
            let views: Vec<(&str, ort::session::SessionInputValue<'_>)> = values
                .iter()
                .map(|(name, value)| (name.as_str(), value.into()))
                .collect();
            let outputs = session.run(views).map_err(|e| e.to_string())?;
            drop(outputs);
            times.push(started.elapsed());
        }
        Ok(times)
    }
}

fn to_value(shape: Vec<i64>, data: TensorData) -> ort::Result<DynValue> {
    Ok(match data {
        TensorData::Fp32(v) => Tensor::from_array((shape, v))?.into_dyn(),
        TensorData::Fp64(v) => Tensor::from_array((shape, v))?.into_dyn(),
        TensorData::Int32(v) => Tensor::from_array((shape, v))?.into_dyn(),
        TensorData::Int64(v) => Tensor::from_array((shape, v))?.into_dyn(),
        TensorData::Bool(v) => Tensor::from_array((shape, v))?.into_dyn(),
    })
}

fn from_value(value: &DynValue, datatype: DataType) -> ort::Result<(Vec<i64>, TensorData)> {
    fn extract<T: ort::value::PrimitiveTensorElementType + Clone>(
        value: &DynValue,
    ) -> ort::Result<(Vec<i64>, Vec<T>)> {
        let (shape, data) = value.try_extract_tensor::<T>()?;
        Ok((shape.to_vec(), data.to_vec()))
    }
    Ok(match datatype {
        DataType::Fp32 => extract::<f32>(value).map(|(s, d)| (s, TensorData::Fp32(d)))?,
        DataType::Fp64 => extract::<f64>(value).map(|(s, d)| (s, TensorData::Fp64(d)))?,
        DataType::Int32 => extract::<i32>(value).map(|(s, d)| (s, TensorData::Int32(d)))?,
        DataType::Int64 => extract::<i64>(value).map(|(s, d)| (s, TensorData::Int64(d)))?,
        DataType::Bool => extract::<bool>(value).map(|(s, d)| (s, TensorData::Bool(d)))?,
    })
}
