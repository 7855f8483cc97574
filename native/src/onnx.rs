//! A borrowed view of an ONNX `ModelProto`: just the fields the native engine reads, each
//! a slice of the file's own bytes (no second copy of the model). Field numbers are
//! those of `onnx.proto` (onnx 1.23):
//!
//! | message          | fields read                                                         |
//! |------------------|---------------------------------------------------------------------|
//! | `ModelProto`     | ir_version 1, graph 7, opset_import 8, metadata_props 14, functions 25 |
//! | `OperatorSetId`  | domain 1, version 2                                                 |
//! | `StringStringEntryProto` | key 1, value 2                                              |
//! | `GraphProto`     | node 1, initializer 5, input 11, output 12, sparse_initializer 15   |
//! | `NodeProto`      | input 1, output 2, name 3, op_type 4, attribute 5, domain 7        |
//! | `AttributeProto` | name 1, f 2, i 3, s 4, t 5, g 6, floats 7, ints 8, strings 9, graphs 11, sparse 22 |
//! | `TensorProto`    | dims 1, data_type 2, segment 3, float_data 4, int32_data 5, string_data 6, int64_data 7, name 8, raw_data 9, double_data 10, data_location 14 |
//! | `ValueInfoProto` | name 1, type 2; `TypeProto` tensor_type 1 (elem_type 1, shape 2), sequence 4, map 5 |
//!
//! Unknown fields are skipped, as protobuf requires; a field of the wrong wire type is an
//! error (the file is malformed, not merely new).

use crate::error::Invalid;
use crate::pb::{self, Field, Repeated};

/// `TensorProto.DataType` values the engine knows.
pub mod elem {
    pub const FLOAT: i32 = 1;
    pub const INT32: i32 = 6;
    pub const INT64: i32 = 7;
    pub const STRING: i32 = 8;
    pub const BOOL: i32 = 9;
    pub const DOUBLE: i32 = 11;
}

#[derive(Debug, Default)]
pub struct ModelView<'a> {
    pub ir_version: i64,
    pub opsets: Vec<(&'a str, i64)>,
    pub graph: GraphView<'a>,
    /// The model defines local functions (a node may call one).
    pub has_functions: bool,
}

#[derive(Debug, Default)]
pub struct GraphView<'a> {
    pub nodes: Vec<NodeView<'a>>,
    pub inputs: Vec<ValueInfo<'a>>,
    pub outputs: Vec<ValueInfo<'a>>,
    pub initializers: Vec<TensorView<'a>>,
    pub has_sparse_initializers: bool,
}

#[derive(Debug, Default)]
pub struct NodeView<'a> {
    pub inputs: Vec<&'a str>,
    pub outputs: Vec<&'a str>,
    pub name: &'a str,
    pub op_type: &'a str,
    pub domain: &'a str,
    pub attributes: Vec<AttrView<'a>>,
}

#[derive(Debug, Default, Clone)]
pub struct AttrView<'a> {
    pub name: &'a str,
    pub f: Option<f32>,
    pub i: Option<i64>,
    pub s: Option<&'a [u8]>,
    pub t: Option<&'a [u8]>,
    pub floats: Repeated<'a>,
    pub ints: Repeated<'a>,
    pub strings: Repeated<'a>,
    /// A graph, graphs or sparse tensor value: nothing the engine covers takes one.
    pub has_graph: bool,
    /// The attribute's bytes from its first repeated value on (not scanned at parse time).
    pub rest: Option<&'a [u8]>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ValueType {
    /// A tensor of `elem`; `shape` is `None` when the file gives no shape. Dimensions
    /// without a value (symbolic or missing) are -1.
    Tensor { elem: i32, shape: Option<Vec<i64>> },
    /// A sequence, map, optional or sparse type.
    Other,
    /// No type at all.
    Missing,
}

#[derive(Debug, Clone)]
pub struct ValueInfo<'a> {
    pub name: &'a str,
    pub ty: ValueType,
}

#[derive(Debug, Default, Clone)]
pub struct TensorView<'a> {
    pub name: &'a str,
    pub dims: Vec<i64>,
    pub data_type: i32,
    pub float_data: Repeated<'a>,
    pub int32_data: Repeated<'a>,
    pub int64_data: Repeated<'a>,
    pub double_data: Repeated<'a>,
    pub string_data: Repeated<'a>,
    pub raw_data: Option<&'a [u8]>,
    /// Segmented or externally stored data: not something the engine reads.
    pub unsupported_storage: bool,
}

fn len<'a>(field: Field<'a>, what: &str) -> Result<&'a [u8], Invalid> {
    match field {
        Field::Len(bytes) => Ok(bytes),
        _ => Err(Invalid::new(format!("{what}: wrong wire type"))),
    }
}

fn varint(field: Field<'_>, what: &str) -> Result<u64, Invalid> {
    match field {
        Field::Varint(v) => Ok(v),
        _ => Err(Invalid::new(format!("{what}: wrong wire type"))),
    }
}

fn text<'a>(field: Field<'a>, what: &str) -> Result<&'a str, Invalid> {
    pb::text(len(field, what)?)
}

/// Parses the model. Only the structure is read here; attribute arrays stay borrowed
/// until an operator decodes them.
pub fn parse(bytes: &[u8]) -> Result<ModelView<'_>, Invalid> {
    let mut model = ModelView::default();
    let mut graph = None;
    pb::for_each(bytes, |number, field| {
        match number {
            1 => model.ir_version = varint(field, "ModelProto.ir_version")? as i64,
            7 => graph = Some(len(field, "ModelProto.graph")?),
            8 => {
                let (mut domain, mut version) = ("", 0i64);
                pb::for_each(len(field, "ModelProto.opset_import")?, |n, f| {
                    match n {
                        1 => domain = text(f, "OperatorSetIdProto.domain")?,
                        2 => version = varint(f, "OperatorSetIdProto.version")? as i64,
                        _ => {}
                    }
                    Ok(())
                })?;
                model.opsets.push((domain, version));
            }
            25 => model.has_functions = true,
            _ => {}
        }
        Ok(())
    })?;
    let graph = graph.ok_or_else(|| Invalid::new("the model has no graph"))?;
    model.graph = parse_graph(graph)?;
    Ok(model)
}

/// The model's `metadata_props` alone, key and value in file order: a scan of the
/// `ModelProto`'s own fields that skips the graph.
pub fn metadata_props(bytes: &[u8]) -> Result<Vec<(&str, &str)>, Invalid> {
    let mut props = Vec::new();
    pb::for_each(bytes, |number, field| {
        if number == 14 {
            props.push(parse_entry(len(field, "ModelProto.metadata_props")?)?);
        }
        Ok(())
    })?;
    Ok(props)
}

fn parse_entry(bytes: &[u8]) -> Result<(&str, &str), Invalid> {
    let (mut key, mut value) = ("", "");
    pb::for_each(bytes, |number, field| {
        match number {
            1 => key = text(field, "StringStringEntryProto.key")?,
            2 => value = text(field, "StringStringEntryProto.value")?,
            _ => {}
        }
        Ok(())
    })?;
    Ok((key, value))
}

fn parse_graph(bytes: &[u8]) -> Result<GraphView<'_>, Invalid> {
    let mut graph = GraphView::default();
    pb::for_each(bytes, |number, field| {
        match number {
            1 => graph
                .nodes
                .push(parse_node(len(field, "GraphProto.node")?)?),
            5 => graph
                .initializers
                .push(parse_tensor_message(len(field, "GraphProto.initializer")?)?),
            11 => graph
                .inputs
                .push(parse_value_info(len(field, "GraphProto.input")?)?),
            12 => graph
                .outputs
                .push(parse_value_info(len(field, "GraphProto.output")?)?),
            15 => graph.has_sparse_initializers = true,
            _ => {}
        }
        Ok(())
    })?;
    Ok(graph)
}

fn parse_node(bytes: &[u8]) -> Result<NodeView<'_>, Invalid> {
    let mut node = NodeView::default();
    pb::for_each(bytes, |number, field| {
        match number {
            1 => node.inputs.push(text(field, "NodeProto.input")?),
            2 => node.outputs.push(text(field, "NodeProto.output")?),
            3 => node.name = text(field, "NodeProto.name")?,
            4 => node.op_type = text(field, "NodeProto.op_type")?,
            5 => node
                .attributes
                .push(parse_attribute(len(field, "NodeProto.attribute")?)?),
            7 => node.domain = text(field, "NodeProto.domain")?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(node)
}

fn parse_attribute(bytes: &[u8]) -> Result<AttrView<'_>, Invalid> {
    use crate::pb::Reader;
    let mut attr = AttrView::default();
    // Serialisers write fields in number order: the name, a single value, then the
    // (possibly huge) repeated values. The scan stops at the first repeated value; the
    // rest is decoded (and checked) in one pass by the operator that reads it, or only
    // checked if nobody does (`AttrView::validate`).
    let mut reader = Reader::new(bytes);
    loop {
        let at = bytes.len() - reader.remaining();
        let Some((number, wire)) = reader.key()? else {
            break;
        };
        match number {
            7..=9 => {
                let rest = Repeated::new(&bytes[at..], number);
                match number {
                    7 => attr.floats = rest,
                    8 => attr.ints = rest,
                    _ => attr.strings = rest,
                }
                attr.rest = Some(&bytes[at..]);
                break;
            }
            6 | 10 | 11 | 22 | 23 => {
                attr.has_graph = true;
                reader.skip(wire)?;
            }
            1..=5 => {
                let field = reader.field_value(wire)?;
                match number {
                    1 => attr.name = text(field, "AttributeProto.name")?,
                    2 => match field {
                        Field::Fixed32(bits) => attr.f = Some(f32::from_bits(bits)),
                        _ => return Err(Invalid::new("AttributeProto.f: wrong wire type")),
                    },
                    3 => attr.i = Some(varint(field, "AttributeProto.i")? as i64),
                    4 => attr.s = Some(len(field, "AttributeProto.s")?),
                    _ => attr.t = Some(len(field, "AttributeProto.t")?),
                }
            }
            _ => reader.skip(wire)?,
        }
    }
    Ok(attr)
}

impl AttrView<'_> {
    /// Checks the part of the attribute that was not scanned at parse time (its repeated
    /// values), for attributes no operator decoded.
    pub fn validate(&self) -> Result<(), Invalid> {
        match self.rest {
            Some(rest) => Repeated::new(rest, 0).validate(),
            None => Ok(()),
        }
    }
}

fn parse_value_info(bytes: &[u8]) -> Result<ValueInfo<'_>, Invalid> {
    let mut info = ValueInfo {
        name: "",
        ty: ValueType::Missing,
    };
    pb::for_each(bytes, |number, field| {
        match number {
            1 => info.name = text(field, "ValueInfoProto.name")?,
            2 => info.ty = parse_type(len(field, "ValueInfoProto.type")?)?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(info)
}

fn parse_type(bytes: &[u8]) -> Result<ValueType, Invalid> {
    let mut ty = ValueType::Missing;
    pb::for_each(bytes, |number, field| {
        match number {
            1 => {
                let (mut elem, mut shape) = (0i32, None);
                pb::for_each(len(field, "TypeProto.tensor_type")?, |n, f| {
                    match n {
                        1 => elem = varint(f, "Tensor.elem_type")? as i32,
                        2 => shape = Some(parse_shape(len(f, "Tensor.shape")?)?),
                        _ => {}
                    }
                    Ok(())
                })?;
                ty = ValueType::Tensor { elem, shape };
            }
            4 | 5 | 8 | 9 => ty = ValueType::Other,
            _ => {}
        }
        Ok(())
    })?;
    Ok(ty)
}

fn parse_shape(bytes: &[u8]) -> Result<Vec<i64>, Invalid> {
    let mut dims = Vec::new();
    pb::for_each(bytes, |number, field| {
        if number == 1 {
            let mut value = -1i64;
            pb::for_each(len(field, "TensorShapeProto.dim")?, |n, f| {
                if n == 1 {
                    let v = varint(f, "Dimension.dim_value")? as i64;
                    value = if v < 0 { -1 } else { v };
                }
                Ok(())
            })?;
            dims.push(value);
        }
        Ok(())
    })?;
    Ok(dims)
}

pub(crate) fn parse_tensor_message(bytes: &[u8]) -> Result<TensorView<'_>, Invalid> {
    let mut tensor = TensorView::default();
    let mut dims = Repeated::default();
    pb::for_each(bytes, |number, field| {
        match number {
            1 => dims = Repeated::new(bytes, 1),
            2 => tensor.data_type = varint(field, "TensorProto.data_type")? as i32,
            3 => tensor.unsupported_storage = true,
            4 => tensor.float_data = Repeated::new(bytes, 4),
            5 => tensor.int32_data = Repeated::new(bytes, 5),
            6 => {
                len(field, "TensorProto.string_data")?;
                tensor.string_data = Repeated::new(bytes, 6);
            }
            7 => tensor.int64_data = Repeated::new(bytes, 7),
            8 => tensor.name = text(field, "TensorProto.name")?,
            9 => tensor.raw_data = Some(len(field, "TensorProto.raw_data")?),
            10 => tensor.double_data = Repeated::new(bytes, 10),
            14 if varint(field, "TensorProto.data_location")? != 0 => {
                tensor.unsupported_storage = true;
            }
            _ => {}
        }
        Ok(())
    })?;
    tensor.dims = dims.varints(|v| Ok(v as i64))?;
    Ok(tensor)
}

impl<'a> NodeView<'a> {
    pub fn attr(&self, name: &str) -> Option<&AttrView<'a>> {
        self.attributes.iter().find(|a| a.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_props_are_read_in_file_order_and_checked() {
        // ModelProto { ir_version: 8, metadata_props: [("a", "b"), ("key", "")] }.
        let bytes = [
            0x08, 8, 0x72, 6, 0x0a, 1, b'a', 0x12, 1, b'b', 0x72, 5, 0x0a, 3, b'k', b'e', b'y',
        ];
        assert_eq!(metadata_props(&bytes).unwrap(), [("a", "b"), ("key", "")]);
        // metadata_props as a varint: malformed.
        assert!(metadata_props(&[0x70, 1]).is_err());
        // A value that is not UTF-8.
        assert!(metadata_props(&[0x72, 3, 0x12, 1, 0xff]).is_err());
    }
}
