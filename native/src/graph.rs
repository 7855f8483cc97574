//! The graph: operators in the file's (topological) order over numbered value slots.

use std::collections::{HashMap, HashSet};

use crate::attrs::{Attrs, NodeInput, unsupported};
use crate::error::{CompileError, RunError};
use crate::explain::{Bounds, Contributions, ExplainError};
use crate::onnx::{self, GraphView, NodeView, TensorView, ValueType};
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
        check_covered(&view)?;
        let graph = &view.graph;
        let constants: Constants<'_> = graph.initializers.iter().map(|t| (t.name, t)).collect();
        let mut slots = Slots::default();
        let (inputs, input_slots) = declare_inputs(graph, &constants, &mut slots)?;
        let mut steps = Vec::with_capacity(graph.nodes.len());
        for node in &graph.nodes {
            steps.push(compile_step(node, &constants, &mut slots)?);
        }
        let (outputs, output_slots) = declare_outputs(graph, &slots)?;
        Ok(Model {
            shared_outputs: shared_outputs(&output_slots),
            inputs,
            outputs,
            steps,
            slots: slots.elems.len(),
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
        let mut values = self.fill(inputs)?;
        for step in &self.steps {
            Self::step(step, &mut values)?;
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

    /// The step that can be explained: the model's one tree ensemble or linear operator,
    /// reading the graph's one input through feature-wise steps only (`Identity`, `Cast`,
    /// arithmetic with a constant per column or for all: feature `i` of the operator's
    /// input is feature `i` of the model's), so that a contribution to the operator's
    /// features is one to the request's. Else why not.
    pub fn explainable(&self) -> Result<usize, String> {
        let explained: Vec<usize> = (0..self.steps.len())
            .filter(|&k| matches!(self.steps[k].op, Op::Tree(_) | Op::Linear(_)))
            .collect();
        let &[at] = explained.as_slice() else {
            return Err(format!(
                "it has {} tree-ensemble or linear operators, not one",
                explained.len()
            ));
        };
        let &[input] = self.input_slots.as_slice() else {
            return Err("it has more than one input".into());
        };
        let mut slot = self.steps[at].inputs[0];
        while slot != input {
            let Some(step) = self.steps[..at]
                .iter()
                .find(|s| s.outputs.contains(&Some(slot)))
            else {
                return Err("its operator does not read the model's input".into());
            };
            let feature_wise = match &step.op {
                Op::Glue(g) => g.is_feature_wise(),
                _ => false,
            };
            if !feature_wise || step.inputs.len() != 1 {
                return Err(
                    "its features are combined or rearranged before the model's operator".into(),
                );
            }
            slot = step.inputs[0];
        }
        if let Op::Tree(op) = &self.steps[at].op {
            op.explainable()?;
        }
        Ok(at)
    }

    /// Each input feature's contribution to each raw score of the model's tree ensemble
    /// or linear operator, for every row of `inputs` (see `explain`).
    pub fn contributions(
        &self,
        inputs: Vec<Tensor>,
        bounds: &Bounds,
    ) -> Result<Contributions, ExplainError> {
        let at = self.explainable().map_err(ExplainError::Unexplainable)?;
        let mut values = self.fill(inputs)?;
        for step in &self.steps[..at] {
            Self::step(step, &mut values)?;
        }
        let x = values[self.steps[at].inputs[0]]
            .as_ref()
            .expect("slots are filled in order");
        match &self.steps[at].op {
            Op::Tree(op) => op.contributions(x, bounds),
            Op::Linear(op) => op.contributions(x, bounds),
            Op::Glue(_) => unreachable!("explainable() chose a tree or linear operator"),
        }
    }

    /// The value slots with the inputs in theirs.
    fn fill(&self, inputs: Vec<Tensor>) -> Result<Vec<Option<Tensor>>, RunError> {
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
        Ok(values)
    }

    /// Runs `step` over the slots, filling its outputs'.
    fn step(step: &Step, values: &mut [Option<Tensor>]) -> Result<(), RunError> {
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
        Ok(())
    }
}

/// The graph's initializers by name: constant inputs, folded into the operators that read
/// them.
type Constants<'g> = HashMap<&'g str, &'g TensorView<'g>>;

/// The value slots numbered so far, in the order the graph defines them (its inputs, then
/// each node's outputs).
#[derive(Default)]
struct Slots<'g> {
    /// The slot each value name is known by.
    of: HashMap<&'g str, usize>,
    /// Each slot's element type.
    elems: Vec<Elem>,
    /// The slots that hold a ZipMap's output (served as its `[N, C]` probabilities).
    zipmapped: HashSet<usize>,
}

impl<'g> Slots<'g> {
    /// Numbers the value `name` of type `elem`; `false` (and nothing numbered) when the name
    /// is taken.
    fn define(&mut self, name: &'g str, elem: Elem) -> bool {
        let slot = self.elems.len();
        match self.of.entry(name) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(slot);
                self.elems.push(elem);
                true
            }
        }
    }
}

/// Refuses what the engine does not cover in the model as a whole: local functions, opsets
/// newer than it knows, sparse initializers.
fn check_covered(view: &onnx::ModelView<'_>) -> Result<(), CompileError> {
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
    if view.graph.has_sparse_initializers {
        return Err(CompileError::Unsupported("sparse initializers".into()));
    }
    Ok(())
}

/// The graph's inputs that are not initializers, each numbered a slot: the model's inputs
/// and their slots. Each must be a numeric tensor.
fn declare_inputs<'g>(
    graph: &'g GraphView<'g>,
    constants: &Constants<'g>,
    slots: &mut Slots<'g>,
) -> Result<(Vec<Port>, Vec<usize>), CompileError> {
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
        input_slots.push(slots.elems.len());
        if !slots.define(info.name, elem) {
            return Err(CompileError::Invalid(format!(
                "input '{}' is declared twice",
                info.name
            )));
        }
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
    Ok((inputs, input_slots))
}

/// One node as a step: its inputs found among the slots and constants, its operator
/// compiled (constant inputs folded in), its named outputs numbered new slots.
fn compile_step<'g>(
    node: &'g NodeView<'g>,
    constants: &Constants<'g>,
    slots: &mut Slots<'g>,
) -> Result<Step, CompileError> {
    let mut node_inputs = Vec::with_capacity(node.inputs.len());
    let mut input_slots = Vec::with_capacity(node.inputs.len());
    for &name in &node.inputs {
        if name.is_empty() {
            return Err(unsupported(node, "an optional input is omitted"));
        }
        if let Some(&slot) = slots.of.get(name) {
            node_inputs.push(NodeInput {
                elem: slots.elems[slot],
                constant: None,
            });
            input_slots.push(slot);
        } else if let Some(&constant) = constants.get(name) {
            // Folded into the operator at compile time: it takes no slot.
            node_inputs.push(NodeInput {
                elem: Elem::from_onnx(constant.data_type)
                    .ok_or_else(|| unsupported(node, "a constant of an uncovered type"))?,
                constant: Some(constant),
            });
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
    let zipmap = matches!(op, Op::Glue(glue::Glue::ZipMap { .. }));
    let mut outputs = Vec::with_capacity(node.outputs.len());
    for (&name, &elem) in node.outputs.iter().zip(&out_elems) {
        if name.is_empty() {
            outputs.push(None);
            continue;
        }
        let slot = slots.elems.len();
        if constants.contains_key(name) || !slots.define(name, elem) {
            return Err(CompileError::Invalid(format!(
                "value '{name}' is defined twice"
            )));
        }
        if zipmap {
            slots.zipmapped.insert(slot);
        }
        outputs.push(Some(slot));
    }
    Ok(Step {
        op,
        inputs: input_slots,
        outputs,
    })
}

/// The graph's outputs and their slots: each computed by a node, and declared with the
/// type its node produces (a ZipMap's as a sequence of maps).
fn declare_outputs(
    graph: &GraphView<'_>,
    slots: &Slots<'_>,
) -> Result<(Vec<Port>, Vec<usize>), CompileError> {
    let mut outputs = Vec::new();
    let mut output_slots = Vec::new();
    for info in &graph.outputs {
        let slot = *slots.of.get(info.name).ok_or_else(|| {
            CompileError::Unsupported(format!("output '{}' is not computed by a node", info.name))
        })?;
        let zipmap = slots.zipmapped.contains(&slot);
        let shape = match (&info.ty, zipmap) {
            (ValueType::Other, true) => vec![-1, -1],
            (ValueType::Tensor { elem, shape }, false)
                if Elem::from_onnx(*elem) == Some(slots.elems[slot]) =>
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
            elem: slots.elems[slot],
            shape,
            zipmap,
        });
    }
    if outputs.is_empty() {
        return Err(CompileError::Unsupported("the graph has no outputs".into()));
    }
    Ok((outputs, output_slots))
}

/// For each output slot, whether it is named more than once: such outputs are cloned at
/// the end of a run, the others moved.
fn shared_outputs(output_slots: &[usize]) -> Vec<bool> {
    let mut uses: HashMap<usize, usize> = HashMap::new();
    for &slot in output_slots {
        *uses.entry(slot).or_default() += 1;
    }
    output_slots.iter().map(|s| uses[s] > 1).collect()
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
