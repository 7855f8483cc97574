//! Writing a model's payload: each section in order (ports, slots, steps, each operator's
//! arrays), every array as its count, zeros to the next multiple of 8 and its bytes as they
//! lie in memory. `Writer` also writes the header (`image::seal`).

use super::codes::{AGGREGATES, ARITHS, ELEMS, NO_COVERS, NORMS, POSTS, code};
use crate::glue::{Constant, Glue};
use crate::graph::{Model, Op, Port};
use crate::linear::{self, Linear};
use crate::memory::{Plain, as_bytes};
use crate::tree::{self, Core, Ensemble, Node, Num, Weight};

#[derive(Default)]
pub(super) struct Writer(pub(super) Vec<u8>);

impl Writer {
    pub(super) fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    pub(super) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub(super) fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    pub(super) fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    pub(super) fn len(&mut self, n: usize) {
        self.u64(n as u64);
    }
    pub(super) fn blob(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.bytes(b);
    }
    pub(super) fn str(&mut self, s: &str) {
        self.len(s.len());
        self.bytes(s.as_bytes());
    }
    /// Zeros up to the next multiple of 8 (the payload starts at one, after the header's
    /// own padding, so this aligns from the file's start).
    pub(super) fn pad(&mut self) {
        let n = self.0.len().next_multiple_of(8) - self.0.len();
        self.0.resize(self.0.len() + n, 0);
    }
    pub(super) fn plain<T: Plain>(&mut self, values: &[T]) {
        self.len(values.len());
        self.pad();
        self.bytes(as_bytes(values));
    }
    pub(super) fn usizes(&mut self, values: &[usize]) {
        let v: Vec<u64> = values.iter().map(|&v| v as u64).collect();
        self.plain(&v);
    }
    pub(super) fn strings(&mut self, values: &[String]) {
        self.len(values.len());
        for s in values {
            self.str(s);
        }
    }
}

fn write_ports(w: &mut Writer, ports: &[Port]) {
    w.len(ports.len());
    for p in ports {
        w.str(&p.name);
        w.u8(code(&ELEMS, &p.elem));
        w.plain(&p.shape);
        w.u8(u8::from(p.zipmap));
    }
}

pub(super) fn write_model(w: &mut Writer, m: &Model) {
    write_ports(w, &m.inputs);
    write_ports(w, &m.outputs);
    w.len(m.slots);
    w.usizes(&m.input_slots);
    w.usizes(&m.output_slots);
    let shared: Vec<u8> = m.shared_outputs.iter().map(|&b| u8::from(b)).collect();
    w.plain(&shared);
    w.len(m.steps.len());
    for step in &m.steps {
        w.usizes(&step.inputs);
        let outs: Vec<u64> = step
            .outputs
            .iter()
            .map(|o| o.map_or(u64::MAX, |s| s as u64))
            .collect();
        w.plain(&outs);
        match &step.op {
            Op::Tree(Ensemble::F32(core)) => {
                w.u8(0);
                write_core(w, core);
            }
            Op::Tree(Ensemble::F64(core)) => {
                w.u8(1);
                write_core(w, core);
            }
            Op::Linear(l) => {
                w.u8(2);
                write_linear(w, l);
            }
            Op::Glue(g) => {
                w.u8(3);
                write_glue(w, g);
            }
        }
    }
}

/// The number types of tree ensembles, and how their leaf weights are written: `f32`
/// weights are plain 8-byte records (served in place when read); `f64` ones have padding,
/// so they go as two columns.
trait WriteWeights: Num + Plain {
    fn write_weights(w: &mut Writer, weights: &[Weight<Self>]);
}

impl WriteWeights for f32 {
    fn write_weights(w: &mut Writer, weights: &[Weight<f32>]) {
        w.plain(weights);
    }
}

impl WriteWeights for f64 {
    fn write_weights(w: &mut Writer, weights: &[Weight<f64>]) {
        let targets: Vec<u32> = weights.iter().map(|x| x.target).collect();
        let values: Vec<f64> = weights.iter().map(|x| x.value).collect();
        w.plain(&targets);
        w.plain(&values);
    }
}

fn write_core<T: WriteWeights>(w: &mut Writer, c: &Core<T>)
where
    Node<T>: Plain,
{
    let t = &c.trees;
    w.plain(&t.nodes);
    w.plain(&t.roots);
    T::write_weights(w, &t.weights);
    w.plain(&t.base_values);
    w.u32(t.max_feature);
    match &t.covers {
        tree::Covers::Missing(why) => {
            w.u8(0);
            w.u8(code(&NO_COVERS, why));
        }
        tree::Covers::Present(covers) => {
            w.u8(1);
            w.plain(covers);
        }
    }
    w.u8(code(&AGGREGATES, &c.aggregate));
    w.u8(code(&POSTS, &c.post));
    w.len(c.n_targets);
    match &c.classes {
        None => w.u8(0),
        Some(classes) => {
            w.u8(1);
            match &classes.labels {
                tree::Labels::Int(v) => {
                    w.u8(0);
                    w.plain(v);
                }
                tree::Labels::Str(v) => {
                    w.u8(1);
                    w.strings(v);
                }
            }
            w.u8(u8::from(classes.binary));
            w.u8(u8::from(classes.weights_all_positive));
        }
    }
}

fn write_linear(w: &mut Writer, l: &Linear) {
    w.plain(&l.coefficients);
    w.plain(&l.intercepts);
    w.len(l.outputs);
    w.len(l.features);
    w.u8(code(&POSTS, &l.post));
    match &l.labels {
        None => w.u8(0),
        Some(linear::Labels::Int(v)) => {
            w.u8(1);
            w.plain(v);
        }
        Some(linear::Labels::Str(v)) => {
            w.u8(2);
            w.strings(v);
        }
    }
    w.u8(code(&ELEMS, &l.input));
}

fn write_glue(w: &mut Writer, g: &Glue) {
    match g {
        Glue::Identity => w.u8(0),
        Glue::Cast(e) => {
            w.u8(1);
            w.u8(code(&ELEMS, e));
        }
        Glue::ZipMap { columns } => {
            w.u8(2);
            w.usizes(columns);
        }
        Glue::Normalizer(n) => {
            w.u8(3);
            w.u8(code(&NORMS, n));
        }
        Glue::Extract { indices } => {
            w.u8(4);
            w.usizes(indices);
        }
        Glue::Reshape { shape } => {
            w.u8(5);
            w.plain(shape);
        }
        Glue::Arith {
            kind,
            constant,
            constant_first,
        } => {
            w.u8(6);
            w.u8(code(&ARITHS, kind));
            match constant {
                Constant::F32(v) => {
                    w.u8(0);
                    w.plain(v);
                }
                Constant::F64(v) => {
                    w.u8(1);
                    w.plain(v);
                }
                Constant::I64(v) => {
                    w.u8(2);
                    w.plain(v);
                }
            }
            w.u8(u8::from(*constant_first));
        }
    }
}
