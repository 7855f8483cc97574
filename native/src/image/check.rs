//! The structure `run` relies on and `compile` guarantees, checked again on every image
//! read (and before one is written, so a model that fails it is never imaged): slots written
//! before they are read, every split's children after it and inside its tree, leaf weights
//! and their targets in range, labels and arrays that agree.

use crate::glue::Glue;
use crate::graph::{Model, Op};
use crate::linear::{self, Linear};
use crate::tree::{self, Core, Ensemble, MAX_TARGETS, Mode, Num};

pub(super) fn check_model(m: &Model) -> Result<(), String> {
    if m.input_slots.len() != m.inputs.len()
        || m.output_slots.len() != m.outputs.len()
        || m.shared_outputs.len() != m.outputs.len()
        || m.inputs.is_empty()
        || m.outputs.is_empty()
    {
        return Err("ports and slots disagree".into());
    }
    let mut written = vec![false; m.slots];
    for &slot in &m.input_slots {
        match written.get_mut(slot) {
            Some(w) if !*w => *w = true,
            _ => return Err(format!("input slot {slot}")),
        }
    }
    for (i, step) in m.steps.iter().enumerate() {
        if step.inputs.is_empty() || step.outputs.is_empty() {
            return Err(format!("step {i} has no inputs or outputs"));
        }
        for &slot in &step.inputs {
            if !written.get(slot).copied().unwrap_or(false) {
                return Err(format!("step {i} reads slot {slot} before it is written"));
            }
        }
        for &slot in step.outputs.iter().flatten() {
            match written.get_mut(slot) {
                Some(w) if !*w => *w = true,
                _ => return Err(format!("step {i} writes slot {slot}")),
            }
        }
        match &step.op {
            Op::Tree(Ensemble::F32(core)) => check_core(core)?,
            Op::Tree(Ensemble::F64(core)) => check_core(core)?,
            Op::Linear(l) => check_linear(l)?,
            Op::Glue(g) => check_glue(g)?,
        }
    }
    for &slot in &m.output_slots {
        if !written.get(slot).copied().unwrap_or(false) {
            return Err(format!("output slot {slot} is never written"));
        }
    }
    Ok(())
}

/// Every walk ends: each split's children lie after it and inside the node array, so a
/// walk moves forward until it reaches a leaf. Leaves' weights lie inside the weights,
/// whose targets lie inside the outputs.
fn check_core<T: Num>(c: &Core<T>) -> Result<(), String> {
    let t = &c.trees;
    let n = t.nodes.len();
    if !(1..=MAX_TARGETS).contains(&c.n_targets) || t.base_values.len() > c.n_targets.max(2) {
        return Err(format!("{} targets", c.n_targets));
    }
    if let Some(classes) = &c.classes {
        let labels = match &classes.labels {
            tree::Labels::Int(v) => v.len(),
            tree::Labels::Str(v) => v.len(),
        };
        if labels != c.n_targets {
            return Err(format!("{labels} labels for {} classes", c.n_targets));
        }
    }
    if n > u32::MAX as usize - 1 || t.roots.iter().any(|&r| r as usize >= n) {
        return Err("a root outside the nodes".into());
    }
    if let tree::Covers::Present(covers) = &t.covers {
        // Only an explanation reads them, but an image holds nothing its compile would not.
        tree::check_covers(&t.nodes, &t.roots, covers).map_err(|why| why.reason().to_string())?;
    }
    let leaf = Mode::Leaf as u8;
    let weights = t.weights.len() as u64;
    let multi = c.n_targets > 1;
    // One pass without early exits (the compiler keeps it branch-free); only a model that
    // fails it is walked again to say where.
    // Bitwise `|` and `&`, not `||` and `&&`, and one unsigned comparison for "the other
    // child lies after this node and inside the array": no branch per node.
    let mut bad = false;
    let (n32, max_feature) = (n as u32, t.max_feature);
    for (i, node) in (0u32..).zip(t.nodes.iter()) {
        let mode = node.mode();
        let is_leaf = mode == leaf;
        let child_ok = node.index.wrapping_sub(i + 1) < n32 - i - 1;
        let split_ok = child_ok & (node.low() <= max_feature) & (mode < leaf);
        let leaf_ok = !multi | (u64::from(node.index) + u64::from(node.low()) <= weights);
        bad |= !((is_leaf & leaf_ok) | (!is_leaf & split_ok));
    }
    if !bad {
        return check_targets(c);
    }
    for (i, node) in t.nodes.iter().enumerate() {
        let mode = node.mode();
        if mode == leaf {
            if multi && u64::from(node.index) + u64::from(node.low()) > weights {
                return Err(format!("leaf {i}'s weights outside the weights"));
            }
        } else if mode > leaf {
            return Err(format!("node {i} has mode {mode}"));
        } else {
            let other = node.index as usize;
            if i + 1 >= n || other <= i || other >= n || node.low() > t.max_feature {
                return Err(format!("split {i} points to {other} of {n}"));
            }
        }
    }
    check_targets(c)
}

fn check_targets<T: Num>(c: &Core<T>) -> Result<(), String> {
    if c.trees
        .weights
        .iter()
        .any(|w| w.target as usize >= c.n_targets)
    {
        return Err("a weight for a target past the outputs".into());
    }
    Ok(())
}

fn check_linear(l: &Linear) -> Result<(), String> {
    let labels = match &l.labels {
        None => None,
        Some(linear::Labels::Int(v)) => Some(v.len()),
        Some(linear::Labels::Str(v)) => Some(v.len()),
    };
    let ok = l.outputs >= 1
        && l.features >= 2
        && l.outputs.checked_mul(l.features) == Some(l.coefficients.len())
        && (l.intercepts.is_empty() || l.intercepts.len() == l.outputs)
        && match labels {
            None => true,
            Some(n) => (l.outputs == 1 && n == 2) || (l.outputs > 1 && n >= l.outputs),
        };
    if ok {
        Ok(())
    } else {
        Err("a linear model's arrays disagree".into())
    }
}

fn check_glue(g: &Glue) -> Result<(), String> {
    if let Glue::ZipMap { columns } = g
        && columns.iter().any(|&c| c >= columns.len())
    {
        return Err("a ZipMap column outside its labels".into());
    }
    Ok(())
}
