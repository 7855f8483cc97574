//! Tensors as the scorer handles them: an OIP datatype, a shape and flat, typed data.

use serde::Serialize;
use serde::ser::Serializer;

/// The Open Inference Protocol datatypes the scorer serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataType {
    Fp32,
    Fp64,
    Int32,
    Int64,
    Bool,
    /// Strings: string inputs (UTF-8 text without NUL, see `oip::string_element`) and
    /// string outputs such as class labels. Only ONNX Runtime takes string inputs.
    Bytes,
}

impl DataType {
    /// The OIP name (`FP32`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Bool => "BOOL",
            DataType::Bytes => "BYTES",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "FP32" => DataType::Fp32,
            "FP64" => DataType::Fp64,
            "INT32" => DataType::Int32,
            "INT64" => DataType::Int64,
            "BOOL" => DataType::Bool,
            "BYTES" => DataType::Bytes,
            _ => return None,
        })
    }

    pub fn from_ort(ty: ort::value::TensorElementType) -> Option<Self> {
        use ort::value::TensorElementType as T;
        Some(match ty {
            T::Float32 => DataType::Fp32,
            T::Float64 => DataType::Fp64,
            T::Int32 => DataType::Int32,
            T::Int64 => DataType::Int64,
            T::Bool => DataType::Bool,
            T::String => DataType::Bytes,
            _ => return None,
        })
    }
}

impl Serialize for DataType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Flat tensor data of one datatype.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    Fp32(Vec<f32>),
    Fp64(Vec<f64>),
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Bool(Vec<bool>),
    Bytes(Vec<String>),
}

impl TensorData {
    pub fn len(&self) -> usize {
        match self {
            TensorData::Fp32(v) => v.len(),
            TensorData::Fp64(v) => v.len(),
            TensorData::Int32(v) => v.len(),
            TensorData::Int64(v) => v.len(),
            TensorData::Bool(v) => v.len(),
            TensorData::Bytes(v) => v.len(),
        }
    }

    /// `n` zeros (or `false`s) of `datatype`.
    pub fn zeros(datatype: DataType, n: usize) -> Self {
        match datatype {
            DataType::Fp32 => TensorData::Fp32(vec![0.0; n]),
            DataType::Fp64 => TensorData::Fp64(vec![0.0; n]),
            DataType::Int32 => TensorData::Int32(vec![0; n]),
            DataType::Int64 => TensorData::Int64(vec![0; n]),
            DataType::Bool => TensorData::Bool(vec![false; n]),
            DataType::Bytes => TensorData::Bytes(vec![String::new(); n]),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn datatype(&self) -> DataType {
        match self {
            TensorData::Fp32(_) => DataType::Fp32,
            TensorData::Fp64(_) => DataType::Fp64,
            TensorData::Int32(_) => DataType::Int32,
            TensorData::Int64(_) => DataType::Int64,
            TensorData::Bool(_) => DataType::Bool,
            TensorData::Bytes(_) => DataType::Bytes,
        }
    }
}

impl Serialize for TensorData {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            TensorData::Fp32(v) => v.serialize(serializer),
            TensorData::Fp64(v) => v.serialize(serializer),
            TensorData::Int32(v) => v.serialize(serializer),
            TensorData::Int64(v) => v.serialize(serializer),
            TensorData::Bool(v) => v.serialize(serializer),
            TensorData::Bytes(v) => v.serialize(serializer),
        }
    }
}

/// A named tensor: a validated request input or a model output.
#[derive(Clone, Debug, Serialize)]
pub struct NamedTensor {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
    pub data: TensorData,
}

/// What a model declares for one input or output. Dynamic dimensions are `-1`.
#[derive(Clone, Debug, Serialize)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
}
