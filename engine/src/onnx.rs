//! The ONNX Runtime engine: the one environment of the process, session creation tuned for
//! many small models on few cores, a session's signature, and running it.
//!
//! Everything here blocks; callers run it on blocking threads (or inline when measured to
//! be short, see `engine::LoadedModel::try_quick`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::{Environment, GlobalThreadPoolOptions};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{DynValue, Tensor, ValueType};

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

/// The self-test's model and the answers ONNX Runtime gave for it when the demo models
/// were generated (`models/demo`, committed with their reference answers).
const SELF_TEST_MODEL: &[u8] = include_bytes!("../../models/demo/linear-small/1/model.onnx");
const SELF_TEST_REFERENCE: &str = include_str!("../../models/demo/reference.json");

/// Creates and drops one session of a tiny committed model and checks its first answer
/// against the reference. ONNX Runtime sets up kernel registries and other process-wide
/// state on the first session (about 1.4 MB); doing it here keeps that one-off cost out of
/// the first real model's measured weight, and proves at start-up that the library works.
pub fn self_test(environment: &Environment) -> Result<(), String> {
    let (row, want) = self_test_reference()?;
    let mut session = create_session(environment, SELF_TEST_MODEL)?;
    let width = row.len();
    let input = Tensor::from_array(([1usize, width], row)).map_err(|e| e.to_string())?;
    let outputs = session
        .run(vec![("input", input)])
        .map_err(|e| e.to_string())?;
    let (_, got) = outputs["variable"]
        .try_extract_tensor::<f32>()
        .map_err(|e| e.to_string())?;
    if (got[0] - want).abs() > 1e-5 * want.abs().max(1.0) {
        return Err(format!(
            "ONNX Runtime self-test computed {} instead of {want}",
            got[0]
        ));
    }
    Ok(())
}

/// The first row of `linear-small`'s reference input and its reference answer.
fn self_test_reference() -> Result<(Vec<f32>, f32), String> {
    let reference: serde_json::Value =
        serde_json::from_str(SELF_TEST_REFERENCE).map_err(|e| e.to_string())?;
    let model = reference["models"]
        .as_array()
        .and_then(|models| models.iter().find(|m| m["id"] == "linear-small"))
        .ok_or("the self-test's reference is missing")?;
    let numbers = |v: &serde_json::Value| -> Vec<f32> {
        v["data"]
            .as_array()
            .map(|data| {
                data.iter()
                    .filter_map(|x| x.as_f64())
                    .map(|x| x as f32)
                    .collect()
            })
            .unwrap_or_default()
    };
    let (input, output) = (&model["inputs"][0], &model["outputs"][0]);
    let width = input["shape"][1].as_u64().unwrap_or(0) as usize;
    let (data, answers) = (numbers(input), numbers(output));
    match (data.get(..width), answers.first()) {
        (Some(row), Some(&want)) if width > 0 => Ok((row.to_vec(), want)),
        _ => Err("the self-test's reference is malformed".into()),
    }
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

/// Inputs, outputs, and for each output whether it is a ZipMap.
pub type Signature = (Vec<TensorSpec>, Vec<TensorSpec>, Vec<bool>);

/// What a session declares: its inputs and outputs, and for each output whether it is a
/// ZipMap (a sequence of maps, served as the `[N, C]` tensor of its values). Errors are
/// messages for a 422.
pub fn signature(session: &Session) -> Result<Signature, String> {
    let spec = |outlet: &ort::value::Outlet, role: &str| -> Result<(TensorSpec, bool), String> {
        match outlet.dtype() {
            ValueType::Tensor { ty, shape, .. } => {
                // String tensors are served both ways: BYTES inputs (text, see
                // `oip::string_element`) and string outputs such as class labels.
                let datatype = DataType::from_ort(*ty).ok_or_else(|| {
                    format!(
                        "{role} '{}' has element type {ty:?}, which the scorer does not serve",
                        outlet.name()
                    )
                })?;
                Ok((
                    TensorSpec {
                        name: outlet.name().to_string(),
                        datatype,
                        shape: shape.to_vec(),
                    },
                    false,
                ))
            }
            ValueType::Sequence(inner) if role == "output" && is_zipmap(inner) => Ok((
                TensorSpec {
                    name: outlet.name().to_string(),
                    datatype: DataType::Fp32,
                    shape: vec![-1, -1],
                },
                true,
            )),
            other => Err(format!(
                "{role} '{}' is {other:?}, not a tensor or a ZipMap",
                outlet.name()
            )),
        }
    };
    let inputs = session
        .inputs()
        .iter()
        .map(|o| spec(o, "input").map(|(s, _)| s))
        .collect::<Result<Vec<_>, _>>()?;
    let (outputs, zipmap): (Vec<_>, Vec<_>) = session
        .outputs()
        .iter()
        .map(|o| spec(o, "output"))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .unzip();
    Ok((inputs, outputs, zipmap))
}

/// A sequence of maps from int64 or string keys to float values: ZipMap's output.
fn is_zipmap(inner: &ValueType) -> bool {
    use ort::value::TensorElementType as T;
    matches!(
        inner,
        ValueType::Map { key, value: T::Float32 } if matches!(key, T::Int64 | T::String)
    )
}

/// Runs a session on validated inputs and returns the outputs at `selected` indices.
pub fn run(
    session: &mut Session,
    outputs_declared: &[TensorSpec],
    zipmap: &[bool],
    inputs: Vec<NamedTensor>,
    selected: &[usize],
) -> Result<Vec<NamedTensor>, String> {
    let mut values: Vec<(String, ort::session::SessionInputValue<'static>)> =
        Vec::with_capacity(inputs.len());
    for input in inputs {
        let value = to_value(input.shape, input.data)
            .map_err(|e| format!("input '{}': {e}", input.name))?;
        values.push((input.name, value.into()));
    }
    let outputs = session.run(values).map_err(|e| e.to_string())?;
    selected
        .iter()
        .map(|&index| {
            let spec = &outputs_declared[index];
            let value = outputs
                .get(&spec.name)
                .ok_or_else(|| format!("output '{}' missing from the run", spec.name))?;
            let converted = if zipmap[index] {
                from_zipmap(value)
            } else {
                from_value(value, spec.datatype)
            };
            converted
                .map(|(shape, data)| NamedTensor {
                    name: spec.name.clone(),
                    datatype: spec.datatype,
                    shape,
                    data,
                })
                .map_err(|e| format!("output '{}': {e}", spec.name))
        })
        .collect()
}

/// ZipMap's sequence of maps as an `[N, C]` tensor, columns in ascending key order (the
/// order ONNX Runtime's maps iterate in, and the native engine's).
fn from_zipmap(value: &DynValue) -> ort::Result<(Vec<i64>, TensorData)> {
    use ort::value::{DynMapValueType, ValueType as V};
    let maps = value.try_extract_sequence::<DynMapValueType>()?;
    let mut data = Vec::new();
    let mut width = None;
    for map in &maps {
        let mut row: Vec<(Vec<u8>, i64, f32)> = match map.dtype() {
            V::Map {
                key: ort::value::TensorElementType::String,
                ..
            } => map
                .try_extract_key_values::<String, f32>()?
                .into_iter()
                .map(|(k, v)| (k.into_bytes(), 0, v))
                .collect(),
            _ => map
                .try_extract_key_values::<i64, f32>()?
                .into_iter()
                .map(|(k, v)| (Vec::new(), k, v))
                .collect(),
        };
        row.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        if *width.get_or_insert(row.len()) != row.len() {
            return Err(ort::Error::new("ZipMap rows of different widths"));
        }
        data.extend(row.into_iter().map(|(_, _, v)| v));
    }
    Ok((
        vec![maps.len() as i64, width.unwrap_or(0) as i64],
        TensorData::Fp32(data),
    ))
}

fn to_value(shape: Vec<i64>, data: TensorData) -> ort::Result<DynValue> {
    Ok(match data {
        TensorData::Fp32(v) => Tensor::from_array((shape, v))?.into_dyn(),
        TensorData::Fp64(v) => Tensor::from_array((shape, v))?.into_dyn(),
        TensorData::Int32(v) => Tensor::from_array((shape, v))?.into_dyn(),
        TensorData::Int64(v) => Tensor::from_array((shape, v))?.into_dyn(),
        TensorData::Bool(v) => Tensor::from_array((shape, v))?.into_dyn(),
        // ONNX Runtime copies each string into the tensor (as a C string: `oip` has
        // refused any with a NUL); the `Vec<String>` is dropped after.
        TensorData::Bytes(v) => Tensor::from_string_array((shape, v.as_slice()))?.into_dyn(),
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
        DataType::Bytes => {
            let (shape, strings) = value.try_extract_strings()?;
            (shape.to_vec(), TensorData::Bytes(strings))
        }
    })
}
