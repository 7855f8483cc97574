//! What an operator's compile reads of its node: typed access to its attributes (`Attrs`),
//! what the graph knows of its inputs (`NodeInput`), and the two ways to refuse it.
//! Anything the engine does not understand (a tensor-valued attribute with unusual storage,
//! a graph) is `Unsupported`, so the model falls back to ONNX Runtime; anything that is
//! malformed on the wire is `Invalid`.

use crate::error::{CompileError, Invalid};
use crate::onnx::{AttrView, NodeView, TensorView, elem};
use crate::pb;
use crate::value::Elem;

/// What compiling a node needs to know about one of its inputs (the graph fills these in).
pub(crate) struct NodeInput<'g> {
    pub elem: Elem,
    /// The constant value, when the input is an initializer.
    pub constant: Option<&'g TensorView<'g>>,
}

/// The element type of a node's one input, which must be computed (not a constant): the
/// signature of most operators.
pub(crate) fn one_computed_input(
    node: &NodeView<'_>,
    inputs: &[NodeInput<'_>],
) -> Result<Elem, CompileError> {
    match inputs {
        [x] if x.constant.is_none() => Ok(x.elem),
        _ => Err(unsupported(node, "expects one computed input")),
    }
}

pub struct Attrs<'n, 'a> {
    node: &'n NodeView<'a>,
    /// Names read so far: an attribute nobody read means the engine would ignore something
    /// the model says, so the node is refused rather than half-understood.
    read: std::cell::RefCell<Vec<&'n str>>,
    /// Names whose repeated values were decoded (and so checked).
    decoded: std::cell::RefCell<Vec<&'n str>>,
}

impl<'n, 'a> Attrs<'n, 'a> {
    pub fn new(node: &'n NodeView<'a>) -> Result<Self, CompileError> {
        if node.attributes.iter().any(|a| a.has_graph) {
            return Err(unsupported(node, "an attribute holds a graph"));
        }
        Ok(Attrs {
            node,
            read: std::cell::RefCell::new(Vec::new()),
            decoded: std::cell::RefCell::new(Vec::new()),
        })
    }

    fn get(&self, name: &'n str) -> Option<&'n AttrView<'a>> {
        self.read.borrow_mut().push(name);
        self.node.attr(name)
    }

    /// An attribute whose repeated values are about to be decoded.
    fn decode(&self, name: &'n str) -> Option<&'n AttrView<'a>> {
        self.decoded.borrow_mut().push(name);
        self.get(name)
    }

    pub fn has(&self, name: &'n str) -> bool {
        self.get(name).is_some()
    }

    pub fn int(&self, name: &'n str) -> Option<i64> {
        self.get(name).and_then(|a| a.i)
    }

    pub fn string(&self, name: &'n str) -> Result<Option<&'a str>, CompileError> {
        match self.get(name).and_then(|a| a.s) {
            Some(bytes) => Ok(Some(pb::text(bytes)?)),
            None => Ok(None),
        }
    }

    pub fn ints(&self, name: &'n str) -> Result<Vec<i64>, CompileError> {
        match self.decode(name) {
            Some(a) => Ok(a.ints.varints(|v| Ok(v as i64))?),
            None => Ok(Vec::new()),
        }
    }

    /// Integers that must fit `u32` (ids, indices); a larger or negative one is invalid.
    pub fn ids(&self, name: &'n str) -> Result<Vec<u32>, CompileError> {
        match self.decode(name) {
            Some(a) => Ok(a.ints.varints(|v| {
                u32::try_from(v as i64).map_err(|_| {
                    Invalid::new(format!(
                        "attribute {name} holds {} (out of range)",
                        v as i64
                    ))
                })
            })?),
            None => Ok(Vec::new()),
        }
    }

    pub fn floats(&self, name: &'n str) -> Result<Vec<f32>, CompileError> {
        match self.decode(name) {
            Some(a) => Ok(a.floats.floats(|f| f)?),
            None => Ok(Vec::new()),
        }
    }

    pub fn strings(&self, name: &'n str) -> Result<Vec<&'a str>, CompileError> {
        match self.decode(name) {
            Some(a) => Ok(a.strings.map_bytes(pb::text)?),
            None => Ok(Vec::new()),
        }
    }

    /// Visits an ints attribute value by value; `None` when absent, else the count.
    pub fn each_int(
        &self,
        name: &'n str,
        f: impl FnMut(usize, u64) -> Result<(), CompileError>,
    ) -> Result<Option<usize>, CompileError> {
        match self.decode(name) {
            Some(a) => a.ints.each_varint(f).map(Some),
            None => Ok(None),
        }
    }

    /// Visits a floats attribute value by value; `None` when absent, else the count.
    pub fn each_float(
        &self,
        name: &'n str,
        f: impl FnMut(usize, f32) -> Result<(), CompileError>,
    ) -> Result<Option<usize>, CompileError> {
        match self.decode(name) {
            Some(a) => a.floats.each_float(f).map(Some),
            None => Ok(None),
        }
    }

    /// Visits a strings attribute value by value; `None` when absent, else the count.
    pub fn each_bytes(
        &self,
        name: &'n str,
        f: impl FnMut(usize, &'a [u8]) -> Result<(), CompileError>,
    ) -> Result<Option<usize>, CompileError> {
        match self.decode(name) {
            Some(a) => a.strings.each_bytes(f).map(Some),
            None => Ok(None),
        }
    }

    /// An ints, floats or strings attribute as a lazy column (`None` when absent), for a
    /// caller that walks several columns side by side; counted as decoded.
    pub fn column(&self, name: &'n str, kind: Column) -> Option<pb::Repeated<'a>> {
        self.decode(name).map(|a| match kind {
            Column::Ints => a.ints,
            Column::Floats => a.floats,
            Column::Strings => a.strings,
        })
    }

    /// A tensor-valued attribute (`*_as_tensor`), which must hold DOUBLE data when
    /// `double` and FLOAT data otherwise, as doubles.
    pub fn tensor_f64(
        &self,
        name: &'n str,
        double: bool,
    ) -> Result<Option<Vec<f64>>, CompileError> {
        let Some(bytes) = self.get(name).and_then(|a| a.t) else {
            return Ok(None);
        };
        let tensor = crate::onnx::parse_tensor_message(bytes)?;
        let want = if double { elem::DOUBLE } else { elem::FLOAT };
        if tensor.data_type != want {
            return Err(CompileError::Invalid(format!(
                "attribute {name} holds element type {} where {want} is required",
                tensor.data_type
            )));
        }
        Ok(Some(tensor_values_f64(self.node, &tensor)?))
    }

    /// Refuses the node if it carries an attribute that was never read, and checks the
    /// bytes of the attributes read but not decoded.
    pub fn finish(&self) -> Result<(), CompileError> {
        let decoded = self.decoded.borrow();
        for a in &self.node.attributes {
            if !decoded.contains(&a.name) {
                a.validate()?;
            }
        }
        let read = self.read.borrow();
        match self
            .node
            .attributes
            .iter()
            .find(|a| !read.contains(&a.name))
        {
            Some(a) => Err(unsupported(
                self.node,
                &format!("attribute '{}' is not covered", a.name),
            )),
            None => Ok(()),
        }
    }
}

/// Which repeated list of an attribute `Attrs::column` hands out.
#[derive(Debug, Clone, Copy)]
pub enum Column {
    Ints,
    Floats,
    Strings,
}

pub fn unsupported(node: &NodeView<'_>, why: &str) -> CompileError {
    CompileError::Unsupported(format!(
        "{}{}{} '{}': {why}",
        node.domain,
        if node.domain.is_empty() { "" } else { "." },
        node.op_type,
        node.name
    ))
}

/// The node is malformed: `Invalid`, naming the operator and the node.
pub(crate) fn invalid(node: &NodeView<'_>, why: impl std::fmt::Display) -> CompileError {
    CompileError::Invalid(format!("{} '{}': {why}", node.op_type, node.name))
}

/// The values of a FLOAT or DOUBLE tensor, widened to `f64`.
pub fn tensor_values_f64(
    node: &NodeView<'_>,
    t: &TensorView<'_>,
) -> Result<Vec<f64>, CompileError> {
    if t.unsupported_storage {
        return Err(unsupported(
            node,
            "a tensor is stored externally or in segments",
        ));
    }
    match (t.data_type, t.raw_data) {
        (elem::FLOAT, Some(raw)) => {
            Ok(raw_chunks::<4>(raw).map(|c| f64::from(f32::from_le_bytes(c)))?)
        }
        (elem::DOUBLE, Some(raw)) => Ok(raw_chunks::<8>(raw).map(f64::from_le_bytes)?),
        (elem::FLOAT, None) => Ok(t.float_data.floats(f64::from)?),
        (elem::DOUBLE, None) => Ok(t.double_data.doubles()?),
        _ => Err(unsupported(
            node,
            "a tensor attribute is neither FLOAT nor DOUBLE",
        )),
    }
}

fn raw_chunks<const N: usize>(raw: &[u8]) -> Chunks<'_, N> {
    Chunks(raw)
}

struct Chunks<'a, const N: usize>(&'a [u8]);

impl<const N: usize> Chunks<'_, N> {
    fn map<T>(self, mut f: impl FnMut([u8; N]) -> T) -> Result<Vec<T>, Invalid> {
        if !self.0.len().is_multiple_of(N) {
            return Err(Invalid::new(
                "raw tensor data is not a whole number of elements",
            ));
        }
        Ok(self
            .0
            .chunks_exact(N)
            .map(|c| f(c.try_into().expect("chunk of N")))
            .collect())
    }
}
