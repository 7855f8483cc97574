//! ONNX `ModelProto` encoding for exactly the shape of model this crate generates:
//! one graph, one `ai.onnx.ml` node, one FP32 input `[N, F]` and one FP32 output `[N, 1]`.
//!
//! Field numbers are those of `onnx.proto` (checked against onnx 1.23's copy):
//!
//! | message              | fields used                                                       |
//! |----------------------|-------------------------------------------------------------------|
//! | `ModelProto`         | ir_version 1, producer_name 2, graph 7, opset_import 8            |
//! | `OperatorSetIdProto` | domain 1, version 2                                               |
//! | `GraphProto`         | node 1, name 2, input 11, output 12                               |
//! | `NodeProto`          | input 1, output 2, name 3, op_type 4, attribute 5, domain 7       |
//! | `AttributeProto`     | name 1, f 2, i 3, s 4, floats 7, ints 8, strings 9, type 20       |
//! | `ValueInfoProto`     | name 1, type 2                                                    |
//! | `TypeProto`          | tensor_type 1; `Tensor`: elem_type 1, shape 2                     |
//! | `TensorShapeProto`   | dim 1; `Dimension`: dim_value 1, dim_param 2                      |
//!
//! Fields are written in field-number order, as protobuf's own serialisers do.
//! `floats`/`ints` use the packed encoding: they are not declared `[packed = true]` in the
//! proto2 schema, but every conforming parser accepts packed data for repeated scalars,
//! and it is much smaller and faster to write.

use crate::pb::{self, int64_bits};

/// `ModelProto.ir_version` we declare (IR_VERSION_2021_7_30; ONNX Runtime 1.10+ reads it).
pub(crate) const IR_VERSION: u64 = 8;
/// `ModelProto.producer_name`.
pub(crate) const PRODUCER_NAME: &str = "manymodels-gen";
/// Default-domain opset we import (no default-domain operator is used, but tools expect one).
pub(crate) const ONNX_OPSET: u64 = 15;
/// The `ai.onnx.ml` domain and the opset version we import from it.
pub(crate) const ML_DOMAIN: &str = "ai.onnx.ml";
pub(crate) const ML_OPSET: u64 = 3;
/// `TensorProto.DataType.FLOAT`.
const ELEM_FLOAT: u64 = 1;

// AttributeProto.AttributeType values.
const ATTR_FLOAT: u64 = 1;
const ATTR_INT: u64 = 2;
const ATTR_STRING: u64 = 3;
const ATTR_FLOATS: u64 = 6;
const ATTR_INTS: u64 = 7;
const ATTR_STRINGS: u64 = 8;

/// The value of one node attribute, borrowing the (possibly large) arrays.
#[derive(Debug, Clone, Copy)]
pub(crate) enum AttrValue<'a> {
    Int(i64),
    #[allow(
        dead_code,
        reason = "no generated model has a scalar float attribute yet"
    )]
    Float(f32),
    Str(&'a str),
    Ints(&'a [i64]),
    Floats(&'a [f32]),
    Strings(&'a [&'a str]),
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Attr<'a> {
    pub name: &'a str,
    pub value: AttrValue<'a>,
}

impl<'a> Attr<'a> {
    pub(crate) fn new(name: &'a str, value: AttrValue<'a>) -> Self {
        Attr { name, value }
    }
}

/// The node at the centre of a generated model.
#[derive(Debug)]
pub(crate) struct NodeDef<'a> {
    pub name: &'a str,
    pub op_type: &'a str,
    pub domain: &'a str,
    pub input: &'a str,
    pub output: &'a str,
    pub attrs: &'a [Attr<'a>],
}

/// Everything `encode_model` needs.
#[derive(Debug)]
pub(crate) struct ModelDef<'a> {
    pub graph_name: &'a str,
    pub node: NodeDef<'a>,
    /// Graph input: FP32 `[N, input_width]`.
    pub input_name: &'a str,
    pub input_width: u64,
    /// Graph output: FP32 `[N, output_width]`.
    pub output_name: &'a str,
    pub output_width: u64,
}

/// An attribute with its sizes computed once.
struct SizedAttr<'a> {
    attr: &'a Attr<'a>,
    /// Payload length of a packed `ints` list (0 otherwise).
    packed_len: usize,
    /// Length of the whole `AttributeProto` body.
    body_len: usize,
}

impl<'a> SizedAttr<'a> {
    fn new(attr: &'a Attr<'a>) -> Self {
        let mut packed_len = 0;
        let (value_len, ty) = match attr.value {
            AttrValue::Int(v) => (pb::varint_field_len(3, int64_bits(v)), ATTR_INT),
            AttrValue::Float(_) => (pb::fixed32_field_len(2), ATTR_FLOAT),
            AttrValue::Str(s) => (pb::len_field_len(4, s.len()), ATTR_STRING),
            AttrValue::Floats(v) => {
                let len = if v.is_empty() {
                    0
                } else {
                    pb::len_field_len(7, v.len() * 4)
                };
                (len, ATTR_FLOATS)
            }
            AttrValue::Ints(v) => {
                packed_len = pb::packed_varint_payload_len(v.iter().map(|&x| int64_bits(x)));
                let len = if v.is_empty() {
                    0
                } else {
                    pb::len_field_len(8, packed_len)
                };
                (len, ATTR_INTS)
            }
            AttrValue::Strings(v) => (
                v.iter().map(|s| pb::len_field_len(9, s.len())).sum(),
                ATTR_STRINGS,
            ),
        };
        let body_len =
            pb::len_field_len(1, attr.name.len()) + value_len + pb::varint_field_len(20, ty);
        SizedAttr {
            attr,
            packed_len,
            body_len,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        pb::put_len_header(out, 5, self.body_len);
        let start = out.len();
        pb::put_bytes_field(out, 1, self.attr.name.as_bytes());
        let ty = match self.attr.value {
            AttrValue::Float(v) => {
                pb::put_f32_field(out, 2, v);
                ATTR_FLOAT
            }
            AttrValue::Int(v) => {
                pb::put_varint_field(out, 3, int64_bits(v));
                ATTR_INT
            }
            AttrValue::Str(s) => {
                pb::put_bytes_field(out, 4, s.as_bytes());
                ATTR_STRING
            }
            AttrValue::Floats(v) => {
                pb::put_packed_f32(out, 7, v);
                ATTR_FLOATS
            }
            AttrValue::Ints(v) => {
                pb::put_packed_i64(out, 8, v, self.packed_len);
                ATTR_INTS
            }
            AttrValue::Strings(v) => {
                for s in v {
                    pb::put_bytes_field(out, 9, s.as_bytes());
                }
                ATTR_STRINGS
            }
        };
        pb::put_varint_field(out, 20, ty);
        debug_assert_eq!(
            out.len() - start,
            self.body_len,
            "attribute {}",
            self.attr.name
        );
    }
}

/// A small length-delimited sub-message, encoded into its own buffer.
fn small_message(field: u32, out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    let mut tmp = Vec::with_capacity(64);
    body(&mut tmp);
    pb::put_bytes_field(out, field, &tmp);
}

/// `ValueInfoProto{name, type: TypeProto{tensor_type: {elem_type: FLOAT, shape: [N, width]}}}`,
/// written as graph field `field` (11 = input, 12 = output).
fn value_info(out: &mut Vec<u8>, field: u32, name: &str, width: u64) {
    small_message(field, out, |vi| {
        pb::put_bytes_field(vi, 1, name.as_bytes());
        small_message(2, vi, |ty| {
            small_message(1, ty, |tensor| {
                pb::put_varint_field(tensor, 1, ELEM_FLOAT);
                small_message(2, tensor, |shape| {
                    small_message(1, shape, |dim| pb::put_bytes_field(dim, 2, b"N"));
                    small_message(1, shape, |dim| pb::put_varint_field(dim, 1, width));
                });
            });
        });
    });
}

/// Encodes a complete `ModelProto`. Sizes are computed first, so the output buffer is
/// allocated once with its exact final size and each attribute array is written once.
pub(crate) fn encode_model(def: &ModelDef<'_>) -> Vec<u8> {
    let node = &def.node;
    let sized: Vec<SizedAttr<'_>> = node.attrs.iter().map(SizedAttr::new).collect();

    // NodeProto body: input 1, output 2, name 3, op_type 4, attribute 5*, domain 7.
    let node_len = pb::len_field_len(1, node.input.len())
        + pb::len_field_len(2, node.output.len())
        + pb::len_field_len(3, node.name.len())
        + pb::len_field_len(4, node.op_type.len())
        + sized
            .iter()
            .map(|a| pb::len_field_len(5, a.body_len))
            .sum::<usize>()
        + pb::len_field_len(7, node.domain.len());

    // GraphProto tail (name 2, input 11, output 12): small, so encode it now.
    let mut graph_tail = Vec::with_capacity(128);
    pb::put_bytes_field(&mut graph_tail, 2, def.graph_name.as_bytes());
    value_info(&mut graph_tail, 11, def.input_name, def.input_width);
    value_info(&mut graph_tail, 12, def.output_name, def.output_width);
    let graph_len = pb::len_field_len(1, node_len) + graph_tail.len();

    // ModelProto tail: opset_import 8 (twice).
    let mut opsets = Vec::with_capacity(32);
    small_message(8, &mut opsets, |o| {
        pb::put_bytes_field(o, 1, b"");
        pb::put_varint_field(o, 2, ONNX_OPSET);
    });
    small_message(8, &mut opsets, |o| {
        pb::put_bytes_field(o, 1, ML_DOMAIN.as_bytes());
        pb::put_varint_field(o, 2, ML_OPSET);
    });

    let total = pb::varint_field_len(1, IR_VERSION)
        + pb::len_field_len(2, PRODUCER_NAME.len())
        + pb::len_field_len(7, graph_len)
        + opsets.len();

    let mut out = Vec::with_capacity(total);
    pb::put_varint_field(&mut out, 1, IR_VERSION);
    pb::put_bytes_field(&mut out, 2, PRODUCER_NAME.as_bytes());
    pb::put_len_header(&mut out, 7, graph_len);
    pb::put_len_header(&mut out, 1, node_len);
    pb::put_bytes_field(&mut out, 1, node.input.as_bytes());
    pb::put_bytes_field(&mut out, 2, node.output.as_bytes());
    pb::put_bytes_field(&mut out, 3, node.name.as_bytes());
    pb::put_bytes_field(&mut out, 4, node.op_type.as_bytes());
    for attr in &sized {
        attr.write(&mut out);
    }
    pb::put_bytes_field(&mut out, 7, node.domain.as_bytes());
    out.extend_from_slice(&graph_tail);
    out.extend_from_slice(&opsets);
    debug_assert_eq!(out.len(), total);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_info_bytes() {
        let mut out = Vec::new();
        value_info(&mut out, 11, "x", 3);
        #[rustfmt::skip]
        let expected = [
            0x5A, 20,               // GraphProto.input (11), 20 bytes
            0x0A, 1, b'x',          //   name
            0x12, 15,               //   type
            0x0A, 13,               //     tensor_type
            0x08, 1,                //       elem_type FLOAT
            0x12, 9,                //       shape
            0x0A, 3, 0x12, 1, b'N', //         dim { dim_param "N" }
            0x0A, 2, 0x08, 3,       //         dim { dim_value 3 }
        ];
        assert_eq!(out, expected);
    }

    #[test]
    fn attribute_sizes_match_writes() {
        let ints = [0i64, 1, 300, -1, 1 << 40];
        let floats = [0.5f32, -3.0];
        let strs = ["BRANCH_LEQ", "LEAF"];
        let attrs = [
            Attr::new("i", AttrValue::Int(-5)),
            Attr::new("f", AttrValue::Float(1.5)),
            Attr::new("s", AttrValue::Str("SUM")),
            Attr::new("ints", AttrValue::Ints(&ints)),
            Attr::new("empty", AttrValue::Ints(&[])),
            Attr::new("floats", AttrValue::Floats(&floats)),
            Attr::new("strings", AttrValue::Strings(&strs)),
        ];
        for a in &attrs {
            let sized = SizedAttr::new(a);
            let mut out = Vec::new();
            sized.write(&mut out);
            assert_eq!(
                out.len(),
                pb::len_field_len(5, sized.body_len),
                "{}",
                a.name
            );
        }
        // A fully known one: AttributeProto{name: "n", i: 1, type: INT}.
        let a = Attr::new("n", AttrValue::Int(1));
        let mut out = Vec::new();
        SizedAttr::new(&a).write(&mut out);
        assert_eq!(out, [0x2A, 8, 0x0A, 1, b'n', 0x18, 1, 0xA0, 0x01, 2]);
    }
}
