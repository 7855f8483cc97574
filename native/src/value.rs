//! Tensors as the engine passes them between nodes: a shape and flat, typed data.

/// Element types the engine computes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    F32,
    F64,
    I32,
    I64,
    Bool,
    Str,
}

impl Elem {
    pub fn from_onnx(code: i32) -> Option<Elem> {
        use crate::onnx::elem;
        Some(match code {
            elem::FLOAT => Elem::F32,
            elem::DOUBLE => Elem::F64,
            elem::INT32 => Elem::I32,
            elem::INT64 => Elem::I64,
            elem::BOOL => Elem::Bool,
            elem::STRING => Elem::Str,
            _ => return None,
        })
    }
}

/// Flat tensor data.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    Bool(Vec<bool>),
    Str(Vec<String>),
}

impl Data {
    pub fn elem(&self) -> Elem {
        match self {
            Data::F32(_) => Elem::F32,
            Data::F64(_) => Elem::F64,
            Data::I32(_) => Elem::I32,
            Data::I64(_) => Elem::I64,
            Data::Bool(_) => Elem::Bool,
            Data::Str(_) => Elem::Str,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Data::F32(v) => v.len(),
            Data::F64(v) => v.len(),
            Data::I32(v) => v.len(),
            Data::I64(v) => v.len(),
            Data::Bool(v) => v.len(),
            Data::Str(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A tensor: `shape` multiplies out to the data's length.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Data,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Data) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor { shape, data }
    }

    /// Rows and row width of a feature matrix as the ai.onnx.ml operators read it:
    /// `[N, C]`, or a 1-D `[C]` as one row.
    pub fn rows_and_width(&self) -> (usize, usize) {
        match self.shape.as_slice() {
            [] => (1, 1),
            [c] => (1, *c),
            [n, rest @ ..] => (*n, rest.iter().product()),
        }
    }
}
