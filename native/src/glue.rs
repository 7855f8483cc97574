//! The small operators exporters put around the ensembles and linear models: `Identity`,
//! `Cast`, `ZipMap`, `Normalizer`, `ArrayFeatureExtractor`, `Reshape` with a constant
//! shape, and `Add`/`Sub`/`Mul`/`Div` with a constant operand. Each is plain IEEE
//! arithmetic on single elements, so each equals ONNX Runtime's result exactly.

use crate::attrs::{Attrs, NodeInput, invalid, one_computed_input, unsupported};
use crate::error::{CompileError, RunError};
use crate::onnx::{NodeView, TensorView, elem};
use crate::transform::{self, Norm};
use crate::value::{Data, Elem, Tensor};

#[derive(Debug)]
pub(crate) enum Glue {
    Identity,
    Cast(Elem),
    /// Keys in ascending order, and for each the column of the input it takes.
    ZipMap {
        columns: Vec<usize>,
    },
    Normalizer(Norm),
    /// Columns to pick from the last axis.
    Extract {
        indices: Vec<usize>,
    },
    /// Reshape to a constant shape (ONNX rules: 0 copies a dimension, -1 is inferred).
    Reshape {
        shape: Vec<i64>,
    },
    /// `x op c` (or `c op x` when `constant_first`), `c` a scalar or one value per column.
    Arith {
        kind: Arith,
        constant: Constant,
        constant_first: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arith {
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Debug)]
pub(crate) enum Constant {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
}

impl Constant {
    fn len(&self) -> usize {
        match self {
            Constant::F32(v) => v.len(),
            Constant::F64(v) => v.len(),
            Constant::I64(v) => v.len(),
        }
    }
}

type Compiled = (Glue, Vec<Elem>);

/// Compiles one of the glue operators, or says it is not one the engine covers.
pub(crate) fn compile(
    node: &NodeView<'_>,
    attrs: &Attrs<'_, '_>,
    inputs: &[NodeInput<'_>],
) -> Result<Compiled, CompileError> {
    match (node.domain, node.op_type) {
        ("" | "ai.onnx", "Identity") => {
            let e = one_computed_input(node, inputs)?;
            Ok((Glue::Identity, vec![e]))
        }
        ("" | "ai.onnx", "Cast") => compile_cast(node, attrs, inputs),
        ("ai.onnx.ml", "ZipMap") => compile_zipmap(node, attrs, inputs),
        ("ai.onnx.ml", "Normalizer") => compile_normalizer(node, attrs, inputs),
        ("ai.onnx.ml", "ArrayFeatureExtractor") => compile_extract(node, inputs),
        ("" | "ai.onnx", "Reshape") => compile_reshape(node, attrs, inputs),
        ("" | "ai.onnx", "Add") => compile_arith(node, inputs, Arith::Add),
        ("" | "ai.onnx", "Sub") => compile_arith(node, inputs, Arith::Sub),
        ("" | "ai.onnx", "Mul") => compile_arith(node, inputs, Arith::Mul),
        ("" | "ai.onnx", "Div") => compile_arith(node, inputs, Arith::Div),
        _ => Err(unsupported(node, "operator not covered")),
    }
}

/// `Cast` between numeric types (or to the input's own type); `saturate` is refused.
fn compile_cast(
    node: &NodeView<'_>,
    attrs: &Attrs<'_, '_>,
    inputs: &[NodeInput<'_>],
) -> Result<Compiled, CompileError> {
    let from = one_computed_input(node, inputs)?;
    let to = attrs
        .int("to")
        .and_then(|t| Elem::from_onnx(t as i32))
        .ok_or_else(|| unsupported(node, "cast to an uncovered type"))?;
    if attrs.has("saturate") {
        return Err(unsupported(node, "saturate"));
    }
    let covered = |e: Elem| matches!(e, Elem::F32 | Elem::F64 | Elem::I64 | Elem::I32);
    if !(from == to || (covered(from) && covered(to))) {
        return Err(unsupported(node, "cast between these types"));
    }
    Ok((Glue::Cast(to), vec![to]))
}

/// `ZipMap` of float probabilities: the columns in ascending key order (integer or string
/// keys, never both, never twice).
fn compile_zipmap(
    node: &NodeView<'_>,
    attrs: &Attrs<'_, '_>,
    inputs: &[NodeInput<'_>],
) -> Result<Compiled, CompileError> {
    if one_computed_input(node, inputs)? != Elem::F32 {
        return Err(unsupported(node, "input is not float"));
    }
    let ints = attrs.ints("classlabels_int64s")?;
    let strings = attrs.strings("classlabels_strings")?;
    let mut order: Vec<usize> = match (ints.is_empty(), strings.is_empty()) {
        (false, true) => {
            let mut idx: Vec<usize> = (0..ints.len()).collect();
            idx.sort_by_key(|&i| ints[i]);
            if idx.windows(2).any(|w| ints[w[0]] == ints[w[1]]) {
                return Err(unsupported(node, "duplicate keys"));
            }
            idx
        }
        (true, false) => {
            let mut idx: Vec<usize> = (0..strings.len()).collect();
            idx.sort_by(|&a, &b| strings[a].as_bytes().cmp(strings[b].as_bytes()));
            if idx.windows(2).any(|w| strings[w[0]] == strings[w[1]]) {
                return Err(unsupported(node, "duplicate keys"));
            }
            idx
        }
        _ => return Err(unsupported(node, "needs exactly one of the label lists")),
    };
    order.shrink_to_fit();
    Ok((Glue::ZipMap { columns: order }, vec![Elem::F32]))
}

/// `Normalizer` of a numeric input (`MAX`, `L1` or `L2`), always to float.
fn compile_normalizer(
    node: &NodeView<'_>,
    attrs: &Attrs<'_, '_>,
    inputs: &[NodeInput<'_>],
) -> Result<Compiled, CompileError> {
    let e = one_computed_input(node, inputs)?;
    if !matches!(e, Elem::F32 | Elem::F64 | Elem::I32 | Elem::I64) {
        return Err(unsupported(node, "input type"));
    }
    let norm = match attrs.string("norm")?.unwrap_or("MAX") {
        "MAX" => Norm::Max,
        "L1" => Norm::L1,
        "L2" => Norm::L2,
        other => return Err(unsupported(node, &format!("norm {other}"))),
    };
    Ok((Glue::Normalizer(norm), vec![Elem::F32]))
}

/// `ArrayFeatureExtractor` with constant, non-negative indices into a computed tensor.
fn compile_extract(
    node: &NodeView<'_>,
    inputs: &[NodeInput<'_>],
) -> Result<Compiled, CompileError> {
    match inputs {
        [x, y] if x.constant.is_none() && matches!(x.elem, Elem::F32 | Elem::F64 | Elem::I64) => {
            let Some(t) = y.constant else {
                return Err(unsupported(node, "indices are not constant"));
            };
            let indices = int_values(node, t)?
                .into_iter()
                .map(|i| usize::try_from(i).map_err(|_| unsupported(node, "a negative index")))
                .collect::<Result<Vec<_>, _>>()?;
            if indices.is_empty() {
                return Err(unsupported(node, "no indices"));
            }
            Ok((Glue::Extract { indices }, vec![x.elem]))
        }
        _ => Err(unsupported(
            node,
            "expects a computed tensor and constant indices",
        )),
    }
}

/// `Reshape` of a computed tensor to a constant shape (at most one -1; `allowzero` refused).
fn compile_reshape(
    node: &NodeView<'_>,
    attrs: &Attrs<'_, '_>,
    inputs: &[NodeInput<'_>],
) -> Result<Compiled, CompileError> {
    match inputs {
        [x, s] if x.constant.is_none() => {
            let Some(t) = s.constant else {
                return Err(unsupported(node, "shape is not constant"));
            };
            if attrs.int("allowzero").unwrap_or(0) != 0 {
                return Err(unsupported(node, "allowzero"));
            }
            let shape = int_values(node, t)?;
            if shape.iter().filter(|&&d| d == -1).count() > 1 || shape.iter().any(|&d| d < -1) {
                return Err(unsupported(node, "invalid target shape"));
            }
            Ok((Glue::Reshape { shape }, vec![x.elem]))
        }
        _ => Err(unsupported(
            node,
            "expects a computed tensor and a constant shape",
        )),
    }
}

/// `Add`, `Sub`, `Mul` or `Div` of a computed tensor and a constant of its type that keeps
/// its shape (a scalar, or one value per column); no integer division.
fn compile_arith(
    node: &NodeView<'_>,
    inputs: &[NodeInput<'_>],
    kind: Arith,
) -> Result<Compiled, CompileError> {
    let (x, c, constant_first) = match inputs {
        [a, b] if a.constant.is_none() && b.constant.is_some() => (a, b, false),
        [a, b] if a.constant.is_some() && b.constant.is_none() => (b, a, true),
        _ => return Err(unsupported(node, "needs one constant operand")),
    };
    let t = c.constant.expect("checked");
    if x.elem != c.elem {
        return Err(unsupported(node, "operands of different types"));
    }
    // A scalar, or one value per column of a 2-D input: the broadcast keeps the
    // input's shape, so the output shape is the input's.
    let fits = t.dims.iter().rev().skip(1).all(|&d| d == 1) && t.dims.len() <= 2;
    if !fits {
        return Err(unsupported(node, "a constant that would change the shape"));
    }
    let constant = match x.elem {
        Elem::F32 => Constant::F32(
            float_values(node, t)?
                .into_iter()
                .map(|v| v as f32)
                .collect(),
        ),
        Elem::F64 => Constant::F64(float_values(node, t)?),
        Elem::I64 if kind != Arith::Div => Constant::I64(int_values(node, t)?),
        _ => return Err(unsupported(node, "operand type")),
    };
    if constant.len() == 0 {
        return Err(unsupported(node, "an empty constant"));
    }
    Ok((
        Glue::Arith {
            kind,
            constant,
            constant_first,
        },
        vec![x.elem],
    ))
}

fn float_values(node: &NodeView<'_>, t: &TensorView<'_>) -> Result<Vec<f64>, CompileError> {
    let values = crate::attrs::tensor_values_f64(node, t)?;
    check_count(node, t, values.len())?;
    Ok(values)
}

fn int_values(node: &NodeView<'_>, t: &TensorView<'_>) -> Result<Vec<i64>, CompileError> {
    if t.unsupported_storage {
        return Err(unsupported(node, "a constant stored externally"));
    }
    let values: Vec<i64> = match (t.data_type, t.raw_data) {
        (elem::INT64, Some(raw)) => chunks::<8>(raw)?
            .into_iter()
            .map(i64::from_le_bytes)
            .collect(),
        (elem::INT32, Some(raw)) => chunks::<4>(raw)?
            .into_iter()
            .map(|c| i64::from(i32::from_le_bytes(c)))
            .collect(),
        (elem::INT64, None) => t.int64_data.varints(|v| Ok(v as i64))?,
        (elem::INT32, None) => t.int32_data.varints(|v| Ok(i64::from(v as i64 as i32)))?,
        _ => {
            return Err(unsupported(
                node,
                "a constant that is not an integer tensor",
            ));
        }
    };
    check_count(node, t, values.len())?;
    Ok(values)
}

fn check_count(node: &NodeView<'_>, t: &TensorView<'_>, n: usize) -> Result<(), CompileError> {
    let declared = t.dims.iter().try_fold(
        1i64,
        |acc, &d| if d < 0 { None } else { acc.checked_mul(d) },
    );
    if declared != Some(n as i64) {
        return Err(invalid(
            node,
            format!(
                "constant '{}' holds {n} values for dimensions {:?}",
                t.name, t.dims
            ),
        ));
    }
    Ok(())
}

fn chunks<const N: usize>(raw: &[u8]) -> Result<Vec<[u8; N]>, CompileError> {
    if !raw.len().is_multiple_of(N) {
        return Err(CompileError::Invalid(
            "raw tensor data is not a whole number of elements".into(),
        ));
    }
    Ok(raw
        .chunks_exact(N)
        .map(|c| c.try_into().expect("N bytes"))
        .collect())
}

/// `float`/`double` to `int64` as x86-64 converts (`cvttsd2si`): truncation, and the
/// "integer indefinite" `i64::MIN` for NaN and values out of range. ONNX Runtime's Cast is
/// a `static_cast`, which compiles to exactly that instruction.
pub(crate) fn f64_to_i64(x: f64) -> i64 {
    if x.is_nan() || !(-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&x) {
        i64::MIN
    } else {
        x as i64
    }
}

fn f64_to_i32(x: f64) -> i32 {
    if x.is_nan() || !(-2_147_483_648.0..2_147_483_648.0).contains(&x) {
        i32::MIN
    } else {
        x as i32
    }
}

fn cast(data: &Data, to: Elem) -> Data {
    macro_rules! map {
        ($v:expr, $f:expr) => {
            $v.iter().map($f).collect()
        };
    }
    match (data, to) {
        (d, to) if d.elem() == to => d.clone(),
        (Data::F32(v), Elem::F64) => Data::F64(map!(v, |&x| f64::from(x))),
        (Data::F32(v), Elem::I64) => Data::I64(map!(v, |&x| f64_to_i64(f64::from(x)))),
        (Data::F32(v), Elem::I32) => Data::I32(map!(v, |&x| f64_to_i32(f64::from(x)))),
        (Data::F64(v), Elem::F32) => Data::F32(map!(v, |&x| x as f32)),
        (Data::F64(v), Elem::I64) => Data::I64(map!(v, |&x| f64_to_i64(x))),
        (Data::F64(v), Elem::I32) => Data::I32(map!(v, |&x| f64_to_i32(x))),
        (Data::I64(v), Elem::F32) => Data::F32(map!(v, |&x| x as f32)),
        (Data::I64(v), Elem::F64) => Data::F64(map!(v, |&x| x as f64)),
        (Data::I64(v), Elem::I32) => Data::I32(map!(v, |&x| x as i32)),
        (Data::I32(v), Elem::F32) => Data::F32(map!(v, |&x| x as f32)),
        (Data::I32(v), Elem::F64) => Data::F64(map!(v, |&x| f64::from(x))),
        (Data::I32(v), Elem::I64) => Data::I64(map!(v, |&x| i64::from(x))),
        _ => unreachable!("compile admits only numeric casts"),
    }
}

impl Glue {
    /// Whether output column `i` depends on input column `i` alone (and the shape stays):
    /// contributions to the output's features are then the input's.
    pub(crate) fn is_feature_wise(&self) -> bool {
        match self {
            Glue::Identity | Glue::Arith { .. } => true,
            Glue::Cast(elem) => !matches!(elem, Elem::Str | Elem::Bool),
            Glue::ZipMap { .. }
            | Glue::Normalizer(_)
            | Glue::Extract { .. }
            | Glue::Reshape { .. } => false,
        }
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            Glue::ZipMap { columns } => columns.capacity() * size_of::<usize>(),
            Glue::Extract { indices } => indices.capacity() * size_of::<usize>(),
            Glue::Reshape { shape } => shape.capacity() * 8,
            Glue::Arith { constant, .. } => match constant {
                Constant::F32(v) => v.capacity() * 4,
                Constant::F64(v) => v.capacity() * 8,
                Constant::I64(v) => v.capacity() * 8,
            },
            _ => 0,
        }
    }

    pub(crate) fn run(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, RunError> {
        let x = inputs[0];
        Ok(vec![match self {
            Glue::Identity => x.clone(),
            Glue::Cast(to) => Tensor::new(x.shape.clone(), cast(&x.data, *to)),
            Glue::ZipMap { columns } => {
                let Data::F32(v) = &x.data else {
                    unreachable!("compile checked")
                };
                let (rows, width) = x.rows_and_width();
                if width != columns.len() || x.shape.len() > 2 {
                    return Err(RunError(format!(
                        "ZipMap: {} labels for {width} columns",
                        columns.len()
                    )));
                }
                let mut out = Vec::with_capacity(v.len());
                for r in 0..rows {
                    let row = &v[r * width..(r + 1) * width];
                    out.extend(columns.iter().map(|&c| row[c]));
                }
                Tensor::new(vec![rows, width], Data::F32(out))
            }
            Glue::Normalizer(norm) => normalize(*norm, x)?,
            Glue::Extract { indices } => extract(indices, x)?,
            Glue::Reshape { shape } => reshape(shape, x)?,
            Glue::Arith {
                kind,
                constant,
                constant_first,
            } => arith(*kind, constant, *constant_first, x)?,
        }])
    }
}

fn normalize(norm: Norm, x: &Tensor) -> Result<Tensor, RunError> {
    let values: Vec<f32> = match &x.data {
        Data::F32(v) => v.clone(),
        Data::F64(v) => v.iter().map(|&a| a as f32).collect(),
        Data::I64(v) => v.iter().map(|&a| a as f32).collect(),
        Data::I32(v) => v.iter().map(|&a| a as f32).collect(),
        _ => unreachable!("compile checked"),
    };
    // L2 squares each value in the input's own type, then rounds to float.
    let squares: Vec<f32> = match (norm, &x.data) {
        (Norm::L2, Data::F32(v)) => v.iter().map(|&a| a * a).collect(),
        (Norm::L2, Data::F64(v)) => v.iter().map(|&a| (a * a) as f32).collect(),
        (Norm::L2, Data::I64(v)) => v.iter().map(|&a| a.wrapping_mul(a) as f32).collect(),
        (Norm::L2, Data::I32(v)) => v.iter().map(|&a| a.wrapping_mul(a) as f32).collect(),
        _ => Vec::new(),
    };
    let (rows, width) = x.rows_and_width();
    let mut out = values;
    for r in 0..rows {
        let row = &mut out[r * width..(r + 1) * width];
        let squares = squares.get(r * width..(r + 1) * width).unwrap_or(&[]);
        transform::normalize_row(norm, row, squares);
    }
    Ok(Tensor::new(x.shape.clone(), Data::F32(out)))
}

fn extract(indices: &[usize], x: &Tensor) -> Result<Tensor, RunError> {
    let width = *x.shape.last().unwrap_or(&1);
    if let Some(&bad) = indices.iter().find(|&&i| i >= width) {
        return Err(RunError(format!(
            "ArrayFeatureExtractor: index {bad} is out of range for a last dimension of {width}"
        )));
    }
    let rows = x.data.len().checked_div(width).unwrap_or(0);
    let mut shape = if x.shape.len() <= 1 {
        vec![1]
    } else {
        x.shape[..x.shape.len() - 1].to_vec()
    };
    shape.push(indices.len());
    macro_rules! pick {
        ($v:expr, $variant:ident) => {{
            let mut out = Vec::with_capacity(rows * indices.len());
            for r in 0..rows {
                out.extend(indices.iter().map(|&i| $v[r * width + i].clone()));
            }
            Data::$variant(out)
        }};
    }
    let data = match &x.data {
        Data::F32(v) => pick!(v, F32),
        Data::F64(v) => pick!(v, F64),
        Data::I64(v) => pick!(v, I64),
        _ => unreachable!("compile checked"),
    };
    Ok(Tensor::new(shape, data))
}

fn reshape(target: &[i64], x: &Tensor) -> Result<Tensor, RunError> {
    let total = x.data.len();
    let mut shape = Vec::with_capacity(target.len());
    let mut inferred = None;
    for (i, &d) in target.iter().enumerate() {
        match d {
            0 => {
                shape.push(*x.shape.get(i).ok_or_else(|| {
                    RunError("Reshape: a 0 dimension past the input's rank".into())
                })?)
            }
            -1 => {
                inferred = Some(i);
                shape.push(1);
            }
            d => shape.push(
                usize::try_from(d).map_err(|_| RunError("Reshape: dimension too large".into()))?,
            ),
        }
    }
    let known = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| RunError(format!("Reshape: {target:?} is too large")))?;
    if let Some(i) = inferred {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(RunError(format!(
                "Reshape: cannot reshape {total} values to {target:?}"
            )));
        }
        shape[i] = total / known;
    } else if known != total {
        return Err(RunError(format!(
            "Reshape: cannot reshape {total} values to {target:?}"
        )));
    }
    Ok(Tensor::new(shape, x.data.clone()))
}

fn arith(
    kind: Arith,
    constant: &Constant,
    constant_first: bool,
    x: &Tensor,
) -> Result<Tensor, RunError> {
    let width = *x.shape.last().unwrap_or(&1);
    let n = constant.len();
    if n != 1 && (n != width || x.shape.len() > 2) {
        return Err(RunError(format!(
            "{kind:?}: a constant of {n} values does not broadcast to {:?}",
            x.shape
        )));
    }
    macro_rules! apply {
        ($v:expr, $c:expr, $variant:ident) => {{
            let c = $c;
            Data::$variant(
                $v.iter()
                    .enumerate()
                    .map(|(i, &a)| {
                        let b = c[if n == 1 { 0 } else { i % n }];
                        let (a, b) = if constant_first { (b, a) } else { (a, b) };
                        match kind {
                            Arith::Add => a + b,
                            Arith::Sub => a - b,
                            Arith::Mul => a * b,
                            Arith::Div => a / b,
                        }
                    })
                    .collect(),
            )
        }};
    }
    let data = match (&x.data, constant) {
        (Data::F32(v), Constant::F32(c)) => apply!(v, c, F32),
        (Data::F64(v), Constant::F64(c)) => apply!(v, c, F64),
        (Data::I64(v), Constant::I64(c)) => {
            // Integer overflow wraps in ONNX Runtime (two's complement); never panic.
            Data::I64(
                v.iter()
                    .enumerate()
                    .map(|(i, &a)| {
                        let b = c[if n == 1 { 0 } else { i % n }];
                        let (a, b) = if constant_first { (b, a) } else { (a, b) };
                        match kind {
                            Arith::Add => a.wrapping_add(b),
                            Arith::Sub => a.wrapping_sub(b),
                            Arith::Mul => a.wrapping_mul(b),
                            Arith::Div => unreachable!("compile refuses integer division"),
                        }
                    })
                    .collect(),
            )
        }
        _ => unreachable!("compile matched the types"),
    };
    Ok(Tensor::new(x.shape.clone(), data))
}
