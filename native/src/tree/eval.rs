//! Evaluation, as ONNX Runtime's `TreeEnsembleCommon` and its aggregators compute it: each
//! row walks every tree to a leaf, the leaves' weights are aggregated per target or class,
//! and the sums are finalised (base values, post transform, a classifier's label).

use std::borrow::Cow;

use super::ensemble::{Aggregate, Classes, Core, Ensemble, Labels, Mode, Node, Num, Trees, Weight};
use crate::error::RunError;
use crate::transform::{self, PostTransform};
use crate::value::{Data, Elem, Tensor};

impl<T: Num> Trees<T> {
    /// Whether `row` goes to the true child of the split `node`.
    #[inline(always)]
    pub(super) fn goes_true(node: &Node<T>, row: &[T]) -> bool {
        let x = row[node.low() as usize];
        let t = node.value;
        let hit = match node.mode() {
            0 => x <= t,
            1 => x < t,
            2 => x >= t,
            3 => x > t,
            4 => x == t,
            _ => x != t,
        };
        hit || (node.missing_true() && x.is_nan())
    }

    /// The leaf `row` reaches in the tree at `root`.
    #[inline]
    pub(super) fn leaf(&self, root: u32, row: &[T]) -> &Node<T> {
        let mut at = root as usize;
        loop {
            let node = &self.nodes[at];
            if node.mode() == Mode::Leaf as u8 {
                return node;
            }
            let hit = Self::goes_true(node, row);
            at = if hit != node.true_next() {
                node.index as usize
            } else {
                at + 1
            };
        }
    }

    fn leaf_weights(&self, leaf: &Node<T>) -> &[Weight<T>] {
        let start = leaf.index as usize;
        &self.weights[start..start + leaf.low() as usize]
    }

    fn heap_bytes(&self) -> usize {
        self.nodes.heap_bytes()
            + self.roots.heap_bytes()
            + self.weights.heap_bytes()
            + self.base_values.capacity() * T::BYTES
            + match &self.covers {
                super::ensemble::Covers::Present(c) => c.heap_bytes(),
                super::ensemble::Covers::Missing(_) => 0,
            }
    }
}

/// ONNX Runtime's `ScoreValue`: a sum and whether any tree contributed.
#[derive(Debug, Clone, Copy, Default)]
struct Score<T> {
    score: T,
    has: bool,
}

impl<T: Num> Core<T> {
    pub(super) fn output_elems(&self) -> Vec<Elem> {
        match &self.classes {
            None => vec![Elem::F32],
            Some(c) => vec![
                match c.labels {
                    Labels::Int(_) => Elem::I64,
                    Labels::Str(_) => Elem::Str,
                },
                Elem::F32,
            ],
        }
    }

    fn add(&self, score: &mut Score<T>, w: T) {
        match self.aggregate {
            Aggregate::Sum | Aggregate::Average => score.score += w,
            Aggregate::Min => {
                if !score.has || w < score.score {
                    score.score = w;
                }
            }
            Aggregate::Max => {
                if !score.has || w > score.score {
                    score.score = w;
                }
            }
        }
        score.has = true;
    }

    /// Sums of one row: one per target/class, trees in order.
    fn accumulate(&self, row: &[T], scores: &mut [Score<T>]) {
        scores.fill(Score::default());
        let trees = &self.trees;
        if self.n_targets == 1 {
            // ONNX Runtime's single-output path adds each leaf's first weight only.
            for &root in trees.roots.iter() {
                let leaf = trees.leaf(root, row);
                self.add(&mut scores[0], leaf.value);
            }
        } else {
            for &root in trees.roots.iter() {
                let leaf = trees.leaf(root, row);
                for w in trees.leaf_weights(leaf) {
                    self.add(&mut scores[w.target as usize], w.value);
                }
            }
        }
    }

    fn run(&self, x: &Tensor) -> Result<Vec<Tensor>, RunError> {
        let (rows, width) = x.rows_and_width();
        if self.trees.max_feature as usize >= width {
            return Err(RunError(format!(
                "a tree reads feature {} but the input has {width} features",
                self.trees.max_feature
            )));
        }
        let data: Cow<'_, [T]> = features::<T>(&x.data);
        let mut scores = vec![Score::<T>::default(); self.n_targets];
        match &self.classes {
            None => {
                let mut out = Vec::with_capacity(rows * self.n_targets);
                for r in 0..rows {
                    self.accumulate(&data[r * width..(r + 1) * width], &mut scores);
                    self.finish_regressor(&mut scores, &mut out);
                }
                Ok(vec![Tensor::new(
                    vec![rows, self.n_targets],
                    Data::F32(out),
                )])
            }
            Some(classes) => {
                let n_out = self.n_targets;
                let mut probabilities = Vec::with_capacity(rows * n_out);
                let mut picked = Vec::with_capacity(rows);
                for r in 0..rows {
                    self.accumulate(&data[r * width..(r + 1) * width], &mut scores);
                    picked.push(self.finish_classifier(
                        classes,
                        &mut scores,
                        &mut probabilities,
                    )?);
                }
                let label = match &classes.labels {
                    Labels::Int(l) => Data::I64(
                        picked
                            .iter()
                            .map(|p| match *p {
                                Label::Index(k) => l[k],
                                Label::Literal(v) => v as i64,
                            })
                            .collect(),
                    ),
                    Labels::Str(l) => Data::Str(
                        picked
                            .iter()
                            .map(|p| match *p {
                                Label::Index(k) | Label::Literal(k) => l[k].clone(),
                            })
                            .collect(),
                    ),
                };
                Ok(vec![
                    Tensor::new(vec![rows], label),
                    Tensor::new(vec![rows, n_out], Data::F32(probabilities)),
                ])
            }
        }
    }

    /// `TreeAggregator*::FinalizeScores1` / `FinalizeScores` of a regressor.
    fn finish_regressor(&self, scores: &mut [Score<T>], out: &mut Vec<f32>) {
        let n_trees = T::from_count(self.trees.roots.len());
        let base = &self.trees.base_values;
        if self.n_targets == 1 {
            let origin = if base.len() == 1 {
                base[0]
            } else {
                T::default()
            };
            let s = scores[0];
            let val = match self.aggregate {
                Aggregate::Sum => s.score + origin,
                Aggregate::Average => s.score / n_trees + origin,
                Aggregate::Min | Aggregate::Max => {
                    if s.has {
                        s.score + origin
                    } else {
                        origin
                    }
                }
            };
            // ONNX Runtime applies only PROBIT to a single output.
            let v = val.to_f32();
            out.push(if self.post == PostTransform::Probit {
                transform::probit(v)
            } else {
                v
            });
            return;
        }
        let use_base = base.len() == self.n_targets;
        let start = out.len();
        for (k, s) in scores.iter().enumerate() {
            let b = if use_base { base[k] } else { T::default() };
            let val = match self.aggregate {
                Aggregate::Sum => s.score + b,
                Aggregate::Average => s.score / n_trees + b,
                Aggregate::Min | Aggregate::Max => b + if s.has { s.score } else { T::default() },
            };
            // `ScoreValue`'s conversion: a target no tree reached reads 0, base value or not.
            out.push(if s.has { val.to_f32() } else { 0.0 });
        }
        post_transform(self.post, &mut out[start..]);
    }

    /// `TreeAggregatorClassifier::FinalizeScores`: appends the probabilities and returns
    /// the label.
    fn finish_classifier(
        &self,
        classes: &Classes,
        scores: &mut [Score<T>],
        out: &mut Vec<f32>,
    ) -> Result<Label, RunError> {
        let base = &self.trees.base_values;
        let value = |s: &Score<T>| if s.has { s.score.to_f32() } else { 0.0 };
        if scores.len() > 2 {
            if base.len() == scores.len() {
                for (s, &b) in scores.iter_mut().zip(base) {
                    if s.has {
                        s.score += b;
                    } else {
                        s.score = b;
                        s.has = true;
                    }
                }
            }
            // Only classes some tree scored take part; the first maximum wins.
            let mut best: Option<(usize, T)> = None;
            for (k, s) in scores.iter().enumerate() {
                if s.has && best.is_none_or(|(_, w)| s.score > w) {
                    best = Some((k, s.score));
                }
            }
            let (k, _) = best.ok_or_else(|| {
                RunError("no tree scored any class for a row (ONNX Runtime fails here too)".into())
            })?;
            let start = out.len();
            out.extend(scores.iter().map(value));
            post_transform(self.post, &mut out[start..]);
            return Ok(Label::Index(k));
        }
        // Two classes.
        let (mut p0, mut p1) = (scores[0], scores[1]);
        let mut two = true;
        let mut add_class: i32 = -1;
        match base.len() {
            2 => {
                if p1.has {
                    // ONNX Runtime reads class 0's sum here, not class 1's.
                    p1.score = base[1] + p0.score;
                    p0.score = -p1.score;
                } else {
                    p1.score += base[1];
                    p0.score += base[0];
                }
            }
            1 => {
                p0.score += base[0];
                two = p1.has;
            }
            _ => {
                add_class = 3;
                two = p1.has;
            }
        }
        let positive = if two && p1.has {
            p1.score
        } else if p0.has {
            p0.score
        } else {
            T::default()
        };
        let half = T::from_f32(0.5);
        let label = if classes.binary {
            if classes.weights_all_positive {
                add_class = if positive > half { 0 } else { 1 };
                Label::Index(if positive > half { 1 } else { 0 })
            } else {
                add_class = if positive > T::default() { 2 } else { 3 };
                Label::Index(if positive > T::default() { 1 } else { 0 })
            }
        } else {
            Label::Literal(if positive > T::default() { 1 } else { 0 })
        };
        if two {
            let start = out.len();
            out.push(value(&p0));
            out.push(value(&p1));
            post_transform(self.post, &mut out[start..]);
            return Ok(label);
        }
        let s = value(&p0);
        match (add_class, self.post) {
            (0..=3, PostTransform::Logistic) => {
                out.extend([transform::logistic(-s), transform::logistic(s)])
            }
            (0 | 1, _) => out.extend([1.0 - s, s]),
            (2 | 3, _) => out.extend([-s, s]),
            _ => {
                return Err(RunError(
                    "ONNX Runtime leaves the second probability of this row unwritten".into(),
                ));
            }
        }
        Ok(label)
    }
}

/// The label of one row: a class's index, or ONNX Runtime's literal 0/1 for a two-class
/// model that scores both classes.
#[derive(Debug, Clone, Copy)]
enum Label {
    Index(usize),
    Literal(usize),
}

fn post_transform(post: PostTransform, values: &mut [f32]) {
    match post {
        PostTransform::None => {}
        PostTransform::Logistic => values.iter_mut().for_each(|v| *v = transform::logistic(*v)),
        PostTransform::Probit => values.iter_mut().for_each(|v| *v = transform::probit(*v)),
        PostTransform::Softmax => transform::softmax(values),
        PostTransform::SoftmaxZero => transform::softmax_zero(values),
    }
}

/// The input matrix in the ensemble's number type (borrowed when it already is).
pub(super) fn features<T: Num>(data: &Data) -> Cow<'_, [T]> {
    use std::any::Any;
    match data {
        Data::F32(v) => match (v as &dyn Any).downcast_ref::<Vec<T>>() {
            Some(same) => Cow::Borrowed(same.as_slice()),
            None => Cow::Owned(v.iter().map(|&a| T::from_f32(a)).collect()),
        },
        Data::F64(v) => match (v as &dyn Any).downcast_ref::<Vec<T>>() {
            Some(same) => Cow::Borrowed(same.as_slice()),
            None => Cow::Owned(v.iter().map(|&a| T::from_f64(a)).collect()),
        },
        // int64 and int32 features compare as `float` (C++'s usual conversions).
        Data::I64(v) => Cow::Owned(v.iter().map(|&a| T::from_f32(a as f32)).collect()),
        Data::I32(v) => Cow::Owned(v.iter().map(|&a| T::from_f32(a as f32)).collect()),
        _ => Cow::Owned(Vec::new()),
    }
}

impl Ensemble {
    pub(crate) fn heap_bytes(&self) -> usize {
        fn core<T: Num>(c: &Core<T>) -> usize {
            size_of::<Core<T>>()
                + c.trees.heap_bytes()
                + match &c.classes {
                    Some(Classes {
                        labels: Labels::Int(v),
                        ..
                    }) => v.capacity() * 8,
                    Some(Classes {
                        labels: Labels::Str(v),
                        ..
                    }) => v.iter().map(|s| s.capacity() + size_of::<String>()).sum(),
                    None => 0,
                }
        }
        match self {
            Ensemble::F32(c) => core(c),
            Ensemble::F64(c) => core(c),
        }
    }

    pub(crate) fn run(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, RunError> {
        match self {
            Ensemble::F32(c) => c.run(inputs[0]),
            Ensemble::F64(c) => c.run(inputs[0]),
        }
    }

    /// `Ok` when the ensemble can be explained (`shap`), else why not.
    pub(crate) fn explainable(&self) -> Result<(), String> {
        match self {
            Ensemble::F32(c) => c.explainable().map(|_| ()),
            Ensemble::F64(c) => c.explainable().map(|_| ()),
        }
    }

    /// Each feature's contribution to each raw score (`shap`).
    pub(crate) fn contributions(
        &self,
        x: &Tensor,
        bounds: &crate::explain::Bounds,
    ) -> Result<crate::explain::Contributions, crate::explain::ExplainError> {
        match self {
            Ensemble::F32(c) => c.contributions(x, bounds),
            Ensemble::F64(c) => c.contributions(x, bounds),
        }
    }
}
