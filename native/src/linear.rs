//! `LinearRegressor` and `LinearClassifier`.

use crate::attrs::{Attrs, unsupported};
use crate::graph::NodeInput;
use crate::onnx::NodeView;
use crate::value::{Elem, Tensor};
use crate::{CompileError, RunError};

#[derive(Debug)]
pub(crate) struct Linear {}

pub(crate) fn compile(
    node: &NodeView<'_>,
    _attrs: &Attrs<'_, '_>,
    _inputs: &[NodeInput<'_>],
    _classifier: bool,
) -> Result<(Linear, Vec<Elem>), CompileError> {
    Err(unsupported(node, "not yet"))
}

impl Linear {
    pub(crate) fn name(&self) -> &'static str {
        "Linear"
    }
    pub(crate) fn heap_bytes(&self) -> usize {
        0
    }
    pub(crate) fn run(&self, _inputs: &[&Tensor]) -> Result<Vec<Tensor>, RunError> {
        Err(RunError("not yet".into()))
    }
}
