//! Compiling a `TreeEnsembleRegressor` or `TreeEnsembleClassifier` node: the small
//! attributes (outputs, labels, base values, post transform, aggregate) are read here; the
//! node and weight columns are decoded by the one-pass path (`fast`) or, where it declines,
//! the general one (`general`).

use super::covers;
use super::ensemble::{Aggregate, Classes, Core, Ensemble, Labels, MAX_TARGETS, Num, Trees};
use super::fast;
use super::general;
use super::weights::values;
use crate::attrs::{Attrs, NodeInput, invalid, one_computed_input, unsupported};
use crate::error::CompileError;
use crate::onnx::NodeView;
use crate::transform::PostTransform;
use crate::value::Elem;

type Compiled = (Ensemble, Vec<Elem>);

pub(crate) fn compile(
    node: &NodeView<'_>,
    attrs: &Attrs<'_, '_>,
    inputs: &[NodeInput<'_>],
    classifier: bool,
) -> Result<Compiled, CompileError> {
    let input = one_computed_input(node, inputs)?;
    match (input, classifier) {
        (Elem::F32, _) | (Elem::I64 | Elem::I32, true) => {
            let core = build::<f32>(node, attrs, classifier)?;
            let outs = core.output_elems();
            Ok((Ensemble::F32(Box::new(core)), outs))
        }
        (Elem::F64, _) => {
            let core = build::<f64>(node, attrs, classifier)?;
            let outs = core.output_elems();
            Ok((Ensemble::F64(Box::new(core)), outs))
        }
        _ => Err(unsupported(node, "input type")),
    }
}

/// A classifier's class labels and their count: two or more, integers or strings, with
/// `n_base` base values that fit them.
fn class_labels(
    node: &NodeView<'_>,
    attrs: &Attrs<'_, '_>,
    post: PostTransform,
    n_base: usize,
) -> Result<(usize, Labels), CompileError> {
    let ints = attrs.ints("classlabels_int64s")?;
    let strings = attrs.strings("classlabels_strings")?;
    let (n_classes, labels) = match (ints.is_empty(), strings.is_empty()) {
        (false, true) => (ints.len(), Labels::Int(ints)),
        (true, false) => (
            strings.len(),
            Labels::Str(strings.into_iter().map(str::to_string).collect()),
        ),
        _ => {
            return Err(invalid(
                node,
                "needs exactly one of classlabels_int64s, classlabels_strings",
            ));
        }
    };
    if n_classes < 2 {
        return Err(unsupported(node, "fewer than two class labels"));
    }
    if n_classes == 2 && post == PostTransform::Probit {
        return Err(unsupported(
            node,
            "PROBIT on two classes (ONNX Runtime writes half a row)",
        ));
    }
    let base_ok = if n_classes <= 2 {
        n_base <= 2
    } else {
        n_base == 0 || n_base == n_classes
    };
    if !base_ok {
        return Err(invalid(
            node,
            format!("{n_base} base values for {n_classes} classes"),
        ));
    }
    Ok((n_classes, labels))
}

/// A regressor's aggregate function and target count, with `n_base` base values that fit
/// them.
fn regressor_targets(
    node: &NodeView<'_>,
    attrs: &Attrs<'_, '_>,
    n_base: usize,
) -> Result<(Aggregate, usize), CompileError> {
    let aggregate = match attrs.string("aggregate_function")?.unwrap_or("SUM") {
        "SUM" => Aggregate::Sum,
        "AVERAGE" => Aggregate::Average,
        "MIN" => Aggregate::Min,
        "MAX" => Aggregate::Max,
        other => return Err(invalid(node, format!("unknown aggregate_function {other}"))),
    };
    // ONNX Runtime refuses a missing or non-positive n_targets; a huge one would size
    // every output row, so it is refused too.
    let n_targets = attrs.int("n_targets").unwrap_or(0);
    let n_targets = usize::try_from(n_targets)
        .ok()
        .filter(|&t| (1..=MAX_TARGETS).contains(&t))
        .ok_or_else(|| invalid(node, format!("n_targets {n_targets}")))?;
    if n_base != 0 && n_base != n_targets {
        return Err(invalid(
            node,
            format!("{n_base} base values for {n_targets} targets"),
        ));
    }
    Ok((aggregate, n_targets))
}

/// The compiled ensemble with thresholds and sums in `T`: the small attributes first (the
/// outputs' count decides how leaves keep weights), then the node and weight columns by
/// the one-pass path or the general one.
fn build<T: Num>(
    node: &NodeView<'_>,
    attrs: &Attrs<'_, '_>,
    classifier: bool,
) -> Result<Core<T>, CompileError> {
    let base_values: Vec<T> = values(node, attrs, "base_values", "base_values_as_tensor")?;
    let name = attrs.string("post_transform")?.unwrap_or("NONE");
    let post = PostTransform::parse(name)
        .ok_or_else(|| invalid(node, format!("unknown post_transform {name}")))?;
    let (aggregate, n_outputs, labels) = if classifier {
        let (n_classes, labels) = class_labels(node, attrs, post, base_values.len())?;
        (Aggregate::Sum, n_classes, Some(labels))
    } else {
        let (aggregate, n_targets) = regressor_targets(node, attrs, base_values.len())?;
        (aggregate, n_targets, None)
    };
    // Hit rates: ONNX Runtime reads and ignores them; here they are the nodes' covers when
    // they hold covers (`covers::read`), for explanations only.
    let decoded = match fast::decode::<T>(attrs, classifier, n_outputs) {
        Some(decoded) => decoded,
        None => general::decode::<T>(node, attrs, classifier, n_outputs)?,
    };
    let classes = labels.map(|labels| Classes {
        labels,
        binary: n_outputs == 2 && decoded.distinct_ids == 1,
        weights_all_positive: !decoded.any_negative_weight,
    });
    let covers = covers::read(attrs, &decoded)?;
    Ok(Core {
        trees: Trees {
            nodes: decoded.nodes.into(),
            roots: decoded.roots.into(),
            weights: decoded.weights.into(),
            base_values,
            max_feature: decoded.max_feature,
            covers,
        },
        aggregate,
        post,
        n_targets: n_outputs,
        classes,
    })
}
