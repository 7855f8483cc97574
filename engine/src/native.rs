//! The native engine's side of the seam: a compiled `manymodels_native::Model` as a
//! [`LoadedModel`], and the conversions between the scorer's tensors and the engine's.

use manymodels_native::{Data, Elem, Model, Tensor};

use super::{Backend, Engine, LoadedModel};
use crate::tensor::{DataType, NamedTensor, TensorData, TensorSpec};
use manymodels_contract::ModelId;

fn datatype(elem: Elem) -> DataType {
    match elem {
        Elem::F32 => DataType::Fp32,
        Elem::F64 => DataType::Fp64,
        Elem::I32 => DataType::Int32,
        Elem::I64 => DataType::Int64,
        Elem::Bool => DataType::Bool,
        Elem::Str => DataType::Bytes,
    }
}

/// Wraps a compiled model. Its weight is its own heap size, exact and never estimated.
pub(super) fn loaded(
    id: ModelId,
    version: u64,
    file_bytes: u64,
    model: Model,
) -> Result<LoadedModel, String> {
    let specs = |ports: &[manymodels_native::Port]| -> Vec<TensorSpec> {
        ports
            .iter()
            .map(|p| TensorSpec {
                name: p.name.clone(),
                datatype: datatype(p.elem),
                shape: p.shape.clone(),
            })
            .collect()
    };
    let (inputs, outputs) = (specs(model.inputs()), specs(model.outputs()));
    let weight = model.heap_bytes() as u64;
    LoadedModel::new(
        id,
        version,
        inputs,
        outputs,
        file_bytes,
        (weight, true),
        Engine::Native,
        Backend::Native(model),
    )
}

/// Runs a compiled model on validated inputs; returns the outputs at `selected`.
pub(super) fn run(
    model: &Model,
    declared: &[TensorSpec],
    inputs: Vec<NamedTensor>,
    selected: &[usize],
) -> Result<Vec<NamedTensor>, String> {
    let tensors = tensors(inputs)?;
    let mut outputs = model.run(tensors).map_err(|e| e.to_string())?;
    selected
        .iter()
        .map(|&index| {
            let tensor = std::mem::replace(
                &mut outputs[index],
                Tensor {
                    shape: Vec::new(),
                    data: Data::F32(Vec::new()),
                },
            );
            let data = match tensor.data {
                Data::F32(v) => TensorData::Fp32(v),
                Data::F64(v) => TensorData::Fp64(v),
                Data::I32(v) => TensorData::Int32(v),
                Data::I64(v) => TensorData::Int64(v),
                Data::Bool(v) => TensorData::Bool(v),
                Data::Str(v) => TensorData::Bytes(v),
            };
            Ok(NamedTensor {
                name: declared[index].name.clone(),
                datatype: declared[index].datatype,
                shape: tensor.shape.iter().map(|&d| d as i64).collect(),
                data,
            })
        })
        .collect()
}

/// Each input feature's contributions to each raw score of a compiled model, as the three
/// outputs an explanation adds (`crate::CONTRIBUTIONS` and the others).
pub(super) fn contributions(
    model: &Model,
    inputs: Vec<NamedTensor>,
    bounds: &manymodels_native::Bounds,
) -> Result<Vec<NamedTensor>, manymodels_native::ExplainError> {
    let tensors = tensors(inputs).map_err(manymodels_native::RunError)?;
    let c = model.contributions(tensors, bounds)?;
    let fp64 = |name: &str, shape: Vec<usize>, data: Vec<f64>| NamedTensor {
        name: name.to_string(),
        datatype: DataType::Fp64,
        shape: shape.into_iter().map(|d| d as i64).collect(),
        data: TensorData::Fp64(data),
    };
    Ok(vec![
        fp64(
            crate::CONTRIBUTIONS,
            vec![c.rows, c.targets, c.features],
            c.values,
        ),
        fp64(crate::EXPECTED_VALUE, vec![c.targets], c.expected),
        fp64(crate::RAW_OUTPUT, vec![c.rows, c.targets], c.raw),
    ])
}

/// The scorer's validated inputs as the engine's tensors.
fn tensors(inputs: Vec<NamedTensor>) -> Result<Vec<Tensor>, String> {
    inputs
        .into_iter()
        .map(|input| {
            let shape = input
                .shape
                .iter()
                .map(|&d| {
                    usize::try_from(d)
                        .map_err(|_| format!("input '{}': negative dimension", input.name))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let data = match input.data {
                TensorData::Fp32(v) => Data::F32(v),
                TensorData::Fp64(v) => Data::F64(v),
                TensorData::Int32(v) => Data::I32(v),
                TensorData::Int64(v) => Data::I64(v),
                TensorData::Bool(v) => Data::Bool(v),
                TensorData::Bytes(v) => Data::Str(v),
            };
            Ok(Tensor { shape, data })
        })
        .collect()
}
