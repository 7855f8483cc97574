//! The graph: operators in the file's (topological) order over numbered value slots.

use std::collections::HashMap;

use crate::attrs::{Attrs, NodeInput, unsupported};
use crate::error::{CompileError, RunError};
use crate::onnx::{self, NodeView, ValueType};
use crate::value::{Elem, Tensor};
use crate::{glue, linear, tree};

/// Largest `ai.onnx.ml` and default-domain opsets whose operator versions the engine
/// knows; a model importing a newer opset may mean a different operator version.
const MAX_ML_OPSET: i64 = 5;
const MAX_ONNX_OPSET: i64 = 23;

/// One declared input or output.
#[derive(Debug, Clone, PartialEq)]
pub struct Port {
    pub name: String,
    pub elem: Elem,
    /// Declared dimensions, -1 where dynamic; `[-1, -1]` for a ZipMap output.
    pub shape: Vec<i64>,
    /// The output is a ZipMap (a sequence of maps in ONNX); it is served as the `[N, C]`
    /// tensor of its probabilities, columns in ascending key order (as ONNX Runtime's
    /// maps iterate).
    pub zipmap: bool,
}

/// A compiled operator.
#[derive(Debug)]
pub(crate) enum Op {
    Tree(tree::Ensemble),
    Linear(linear::Linear),
    Glue(glue::Glue),
}

impl Op {
    fn run(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, RunError> {
        match self {
            Op::Tree(op) => op.run(inputs),
            Op::Linear(op) => op.run(inputs),
            Op::Glue(op) => op.run(inputs),
        }
    }

    fn heap_bytes(&self) -> usize {
        match self {
            Op::Tree(op) => op.heap_bytes(),
            Op::Linear(op) => op.heap_bytes(),
            Op::Glue(op) => op.heap_bytes(),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Step {
    pub(crate) op: Op,
    pub(crate) inputs: Vec<usize>,
    /// Slot of each output; `None` for an output nobody names.
    pub(crate) outputs: Vec<Option<usize>>,
}

/// A compiled model.
#[derive(Debug)]
pub struct Model {
    pub(crate) inputs: Vec<Port>,
    pub(crate) outputs: Vec<Port>,
    pub(crate) steps: Vec<Step>,
    pub(crate) slots: usize,
    pub(crate) input_slots: Vec<usize>,
    pub(crate) output_slots: Vec<usize>,
    /// Output slots named more than once (or also inputs): cloned, not moved, at the end.
    pub(crate) shared_outputs: Vec<bool>,
    /// The image bytes this model's large arrays are served from, when it was loaded from
    /// an image (`image`): counted once, in `heap_bytes`, whatever shares them.
    pub(crate) backing: Option<std::sync::Arc<crate::memory::Backing>>,
}

impl Model {
    /// Compiles `bytes` (an ONNX `ModelProto`) if every node is covered.
    pub fn compile(bytes: &[u8]) -> Result<Model, CompileError> {
        let view = onnx::parse(bytes)?;
        if view.has_functions {
            return Err(CompileError::Unsupported(
                "the model defines local functions".into(),
            ));
        }
        for &(domain, version) in &view.opsets {
            let known = match domain {
                "" | "ai.onnx" => version <= MAX_ONNX_OPSET,
                "ai.onnx.ml" => version <= MAX_ML_OPSET,
                _ => false,
            };
            if !known {
                return Err(CompileError::Unsupported(format!(
                    "opset {domain:?} version {version}"
                )));
            }
        }
        let graph = &view.graph;
        if graph.has_sparse_initializers {
            return Err(CompileError::Unsupported("sparse initializers".into()));
        }
        let constants: HashMap<&str, &onnx::TensorView<'_>> =
            graph.initializers.iter().map(|t| (t.name, t)).collect();

        let mut slot_of: HashMap<&str, usize> = HashMap::new();
        let mut elems: Vec<Elem> = Vec::new();
        let mut inputs = Vec::new();
        let mut input_slots = Vec::new();
        for info in graph
            .inputs
            .iter()
            .filter(|i| !constants.contains_key(i.name))
        {
            let (elem, shape) = match &info.ty {
                ValueType::Tensor { elem, shape } => (
                    Elem::from_onnx(*elem)
                        .filter(|e| *e != Elem::Str)
                        .ok_or_else(|| {
                            CompileError::Unsupported(format!(
                                "input '{}' has element type {elem}",
                                info.name
                            ))
                        })?,
                    shape.clone().unwrap_or_default(),
                ),
                _ => {
                    return Err(CompileError::Unsupported(format!(
                        "input '{}' is not a tensor",
                        info.name
                    )));
                }
            };
            if slot_of.insert(info.name, elems.len()).is_some() {
                return Err(CompileError::Invalid(format!(
                    "input '{}' is declared twice",
                    info.name
                )));
            }
            input_slots.push(elems.len());
            elems.push(elem);
            inputs.push(Port {
                name: info.name.to_string(),
                elem,
                shape,
                zipmap: false,
            });
        }
        if inputs.is_empty() {
            return Err(CompileError::Unsupported("the graph has no inputs".into()));
        }

        let mut steps = Vec::with_capacity(graph.nodes.len());
        let mut zipmapped: std::collections::HashSet<usize> = std::collections::HashSet::new();
        for node in &graph.nodes {
            let mut node_inputs = Vec::with_capacity(node.inputs.len());
            let mut input_ids = Vec::with_capacity(node.inputs.len());
            for &name in &node.inputs {
                if name.is_empty() {
                    return Err(unsupported(node, "an optional input is omitted"));
                }
                if let Some(&slot) = slot_of.get(name) {
                    node_inputs.push(NodeInput {
                        elem: elems[slot],
                        constant: None,
                    });
                    input_ids.push(slot);
                } else if let Some(&constant) = constants.get(name) {
                    node_inputs.push(NodeInput {
                        elem: Elem::from_onnx(constant.data_type)
                            .ok_or_else(|| unsupported(node, "a constant of an uncovered type"))?,
                        constant: Some(constant),
                    });
                    input_ids.push(usize::MAX);
                } else {
                    return Err(unsupported(
                        node,
                        &format!("input '{name}' is not defined before it"),
                    ));
                }
            }
            let (op, out_elems) = compile_node(node, &node_inputs)?;
            if out_elems.len() < node.outputs.len() {
                return Err(unsupported(node, "more outputs than the operator has"));
            }
            // Constant inputs were folded into the operator at compile time.
            let input_ids: Vec<usize> =
                input_ids.into_iter().filter(|&i| i != usize::MAX).collect();
            let mut outputs = Vec::with_capacity(node.outputs.len());
            for (i, &name) in node.outputs.iter().enumerate() {
                if name.is_empty() {
                    outputs.push(None);
                    continue;
                }
                if slot_of.contains_key(name) || constants.contains_key(name) {
                    return Err(CompileError::Invalid(format!(
                        "value '{name}' is defined twice"
                    )));
                }
                slot_of.insert(name, elems.len());
                if matches!(op, Op::Glue(glue::Glue::ZipMap { .. })) {
                    zipmapped.insert(elems.len());
                }
                outputs.push(Some(elems.len()));
                elems.push(out_elems[i]);
            }
            steps.push(Step {
                op,
                inputs: input_ids,
                outputs,
            });
        }

        let mut outputs = Vec::new();
        let mut output_slots = Vec::new();
        for info in &graph.outputs {
            let slot = *slot_of.get(info.name).ok_or_else(|| {
                CompileError::Unsupported(format!(
                    "output '{}' is not computed by a node",
                    info.name
                ))
            })?;
            let zipmap = zipmapped.contains(&slot);
            let shape = match (&info.ty, zipmap) {
                (ValueType::Other, true) => vec![-1, -1],
                (ValueType::Tensor { elem, shape }, false)
                    if Elem::from_onnx(*elem) == Some(elems[slot]) =>
                {
                    shape.clone().unwrap_or_default()
                }
                _ => {
                    return Err(CompileError::Unsupported(format!(
                        "output '{}' is declared with a type its node does not produce",
                        info.name
                    )));
                }
            };
            output_slots.push(slot);
            outputs.push(Port {
                name: info.name.to_string(),
                elem: elems[slot],
                shape,
                zipmap,
            });
        }
        if outputs.is_empty() {
            return Err(CompileError::Unsupported("the graph has no outputs".into()));
        }
        let mut uses: HashMap<usize, usize> = HashMap::new();
        for &slot in &output_slots {
            *uses.entry(slot).or_default() += 1;
        }
        let shared_outputs = output_slots.iter().map(|s| uses[s] > 1).collect();
        Ok(Model {
            shared_outputs,
            inputs,
            outputs,
            steps,
            slots: elems.len(),
            input_slots,
            output_slots,
            backing: None,
        })
    }

    pub fn inputs(&self) -> &[Port] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[Port] {
        &self.outputs
    }

    /// Bytes this model keeps: its arrays' capacities plus the structs around them, and the
    /// image bytes it is served from (a mapping's pages are the page cache's, but they are
    /// this model's to keep resident as long as it lives).
    pub fn heap_bytes(&self) -> usize {
        let ports = |ports: &[Port]| -> usize {
            ports
                .iter()
                .map(|p| size_of::<Port>() + p.name.capacity() + p.shape.capacity() * 8)
                .sum()
        };
        size_of::<Model>()
            + ports(&self.inputs)
            + ports(&self.outputs)
            + self
                .steps
                .iter()
                .map(|s| {
                    size_of::<Step>()
                        + s.inputs.capacity() * size_of::<usize>()
                        + s.outputs.capacity() * size_of::<Option<usize>>()
                        + s.op.heap_bytes()
                })
                .sum::<usize>()
            + (self.input_slots.capacity() + self.output_slots.capacity()) * size_of::<usize>()
            + self.backing.as_ref().map_or(0, |b| b.len())
    }

    /// Whether the model's arrays are served from a mapping of its image file.
    pub fn is_mapped(&self) -> bool {
        self.backing.as_ref().is_some_and(|b| b.is_mapped())
    }

    /// Runs the model on `inputs` (one per declared input, in order, of the declared
    /// element types) and returns every declared output, in order.
    pub fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, RunError> {
        if inputs.len() != self.inputs.len() {
            return Err(RunError(format!(
                "expected {} inputs, got {}",
                self.inputs.len(),
                inputs.len()
            )));
        }
        let mut values: Vec<Option<Tensor>> = (0..self.slots).map(|_| None).collect();
        for ((tensor, port), &slot) in inputs.into_iter().zip(&self.inputs).zip(&self.input_slots) {
            if tensor.data.elem() != port.elem {
                return Err(RunError(format!(
                    "input '{}' must be {:?}",
                    port.name, port.elem
                )));
            }
            values[slot] = Some(tensor);
        }
        for step in &self.steps {
            let args: Vec<&Tensor> = step
                .inputs
                .iter()
                .map(|&slot| values[slot].as_ref().expect("slots are filled in order"))
                .collect();
            let results = step.op.run(&args)?;
            for (result, slot) in results.into_iter().zip(&step.outputs) {
                if let Some(slot) = *slot {
                    values[slot] = Some(result);
                }
            }
        }
        Ok(self
            .output_slots
            .iter()
            .zip(&self.shared_outputs)
            .map(|(&slot, &shared)| {
                // An output named twice is cloned; others are moved.
                if shared {
                    values[slot].clone().expect("computed")
                } else {
                    values[slot].take().expect("computed")
                }
            })
            .collect())
    }
}

fn compile_node(
    node: &NodeView<'_>,
    inputs: &[NodeInput<'_>],
) -> Result<(Op, Vec<Elem>), CompileError> {
    let attrs = Attrs::new(node)?;
    let compiled = match (node.domain, node.op_type) {
        ("ai.onnx.ml", "TreeEnsembleRegressor") => {
            tree::compile(node, &attrs, inputs, false).map(|(e, o)| (Op::Tree(e), o))
        }
        ("ai.onnx.ml", "TreeEnsembleClassifier") => {
            tree::compile(node, &attrs, inputs, true).map(|(e, o)| (Op::Tree(e), o))
        }
        ("ai.onnx.ml", "LinearRegressor") => {
            linear::compile(node, &attrs, inputs, false).map(|(e, o)| (Op::Linear(e), o))
        }
        ("ai.onnx.ml", "LinearClassifier") => {
            linear::compile(node, &attrs, inputs, true).map(|(e, o)| (Op::Linear(e), o))
        }
        _ => glue::compile(node, &attrs, inputs).map(|(e, o)| (Op::Glue(e), o)),
    }?;
    attrs.finish()?;
    Ok(compiled)
}
