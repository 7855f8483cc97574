//! Reading a model's payload back (`Reader` and a reader per section), and why an image is
//! not used (`ImageError`). Every declared length is checked against the bytes that remain
//! before anything is allocated or shared; a tree's nodes, roots and `f32` leaf weights are
//! served in place from the image's bytes, small arrays are copied out.

use std::sync::Arc;

use super::codes::{AGGREGATES, ARITHS, ELEMS, NO_COVERS, NORMS, POSTS};
use crate::glue::{Constant, Glue};
use crate::graph::{Model, Op, Port, Step};
use crate::linear::{self, Linear};
use crate::memory::{Array, Backing, Plain, copy_plain};
use crate::tree::{self, Classes, Core, Ensemble, Node, Num, Trees, Weight};

/// Why an image was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// Written by another engine, or from another source file: compile again.
    #[error("stale image: {0}")]
    Stale(String),
    /// Damaged or not an image at all: compile again.
    #[error("corrupt image: {0}")]
    Corrupt(String),
}

pub(super) fn corrupt(why: impl Into<String>) -> ImageError {
    ImageError::Corrupt(why.into())
}

pub(super) struct Reader<'a> {
    /// What shared arrays keep alive.
    backing: &'a Arc<Backing>,
    /// The whole image (`backing`'s bytes).
    bytes: &'a [u8],
    pub(super) at: usize,
    /// The end of the current part (header and payload, then the payload alone).
    pub(super) end: usize,
}

impl<'a> Reader<'a> {
    /// A reader of the whole image in `backing`.
    pub(super) fn new(backing: &'a Arc<Backing>) -> Reader<'a> {
        let bytes = backing.bytes();
        Reader {
            backing,
            bytes,
            at: 0,
            end: bytes.len(),
        }
    }

    pub(super) fn left(&self) -> u64 {
        (self.end - self.at) as u64
    }

    /// The next `n` bytes, or says the part ends first.
    pub(super) fn take(&mut self, n: u64) -> Result<&'a [u8], ImageError> {
        if n > self.left() {
            return Err(corrupt(format!(
                "{n} bytes declared, {} remain",
                self.left()
            )));
        }
        let start = self.at;
        self.at += n as usize;
        Ok(&self.bytes[start..self.at])
    }

    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], ImageError> {
        Ok(self.take(N as u64)?.try_into().expect("N bytes"))
    }
    pub(super) fn u8(&mut self) -> Result<u8, ImageError> {
        Ok(self.array::<1>()?[0])
    }
    pub(super) fn bool(&mut self) -> Result<bool, ImageError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(corrupt(format!("flag {b}"))),
        }
    }
    pub(super) fn u32(&mut self) -> Result<u32, ImageError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub(super) fn u64(&mut self) -> Result<u64, ImageError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub(super) fn usize(&mut self) -> Result<usize, ImageError> {
        usize::try_from(self.u64()?).map_err(|_| corrupt("a count past usize"))
    }
    /// Zeros up to the next multiple of 8 from the image's start.
    pub(super) fn pad(&mut self) -> Result<(), ImageError> {
        let n = self.at.next_multiple_of(8) - self.at;
        if self.take(n as u64)?.iter().any(|&b| b != 0) {
            return Err(corrupt("padding that is not zeros"));
        }
        Ok(())
    }
    /// A count of `size`-byte elements that the remaining bytes can hold.
    pub(super) fn count(&mut self, size: usize) -> Result<usize, ImageError> {
        let n = self.u64()?;
        match n.checked_mul(size as u64) {
            Some(bytes) if bytes <= self.left() => Ok(n as usize),
            _ => Err(corrupt(format!(
                "{n} elements of {size} bytes, {} bytes remain",
                self.left()
            ))),
        }
    }
    pub(super) fn blob(&mut self, max: usize) -> Result<Vec<u8>, ImageError> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(corrupt(format!("a field of {n} bytes")));
        }
        Ok(self.take(n as u64)?.to_vec())
    }
    pub(super) fn str(&mut self) -> Result<String, ImageError> {
        let n = self.count(1)?;
        String::from_utf8(self.take(n as u64)?.to_vec())
            .map_err(|_| corrupt("a name that is not UTF-8"))
    }
    pub(super) fn strings(&mut self) -> Result<Vec<String>, ImageError> {
        // Each string costs at least its 8-byte length.
        let n = self.count(8)?;
        (0..n).map(|_| self.str()).collect()
    }
    /// An array's count, padding and bytes; returns the count and where the values start.
    pub(super) fn values<T: Plain>(&mut self) -> Result<(usize, usize), ImageError> {
        let n = self.count(size_of::<T>())?;
        self.pad()?;
        let at = self.at;
        self.take((n * size_of::<T>()) as u64)?;
        Ok((n, at))
    }
    /// A small array, copied out.
    pub(super) fn plain<T: Plain>(&mut self) -> Result<Vec<T>, ImageError> {
        let (n, at) = self.values::<T>()?;
        Ok(copy_plain(&self.bytes[at..self.at], n))
    }
    /// A large array, served in place from the image's bytes.
    pub(super) fn shared<T: Plain>(&mut self) -> Result<Array<T>, ImageError> {
        let (n, at) = self.values::<T>()?;
        Array::shared(self.backing, at, n).ok_or_else(|| corrupt("an array out of place"))
    }
    pub(super) fn usizes(&mut self) -> Result<Vec<usize>, ImageError> {
        self.plain::<u64>()?
            .into_iter()
            .map(|v| usize::try_from(v).map_err(|_| corrupt("an index past usize")))
            .collect()
    }
    /// The `table` entry whose code comes next (`what` names it in the error).
    pub(super) fn coded<T: Copy>(&mut self, table: &[T], what: &str) -> Result<T, ImageError> {
        let b = self.u8()?;
        table
            .get(usize::from(b))
            .copied()
            .ok_or_else(|| corrupt(format!("{what} {b}")))
    }
}

/// The number types of tree ensembles, and how their leaf weights are read: `f32` weights
/// are plain 8-byte records, served in place; `f64` ones have padding, so they were written
/// as two columns and are zipped back together.
trait ReadWeights: Num + Plain {
    fn read_weights(r: &mut Reader<'_>) -> Result<Array<Weight<Self>>, ImageError>;
}

impl ReadWeights for f32 {
    fn read_weights(r: &mut Reader<'_>) -> Result<Array<Weight<f32>>, ImageError> {
        r.shared()
    }
}

impl ReadWeights for f64 {
    fn read_weights(r: &mut Reader<'_>) -> Result<Array<Weight<f64>>, ImageError> {
        let targets = r.plain::<u32>()?;
        let values = r.plain::<f64>()?;
        if targets.len() != values.len() {
            return Err(corrupt("weight columns of different lengths"));
        }
        Ok(targets
            .into_iter()
            .zip(values)
            .map(|(target, value)| Weight { target, value })
            .collect::<Vec<_>>()
            .into())
    }
}

fn read_ports(r: &mut Reader<'_>) -> Result<Vec<Port>, ImageError> {
    // A port costs at least its name's length, its shape's length and two bytes.
    let n = r.count(18)?;
    (0..n)
        .map(|_| {
            Ok(Port {
                name: r.str()?,
                elem: r.coded(&ELEMS, "element type")?,
                shape: r.plain()?,
                zipmap: r.bool()?,
            })
        })
        .collect()
}

pub(super) fn read_model(r: &mut Reader<'_>) -> Result<Model, ImageError> {
    let inputs = read_ports(r)?;
    let outputs = read_ports(r)?;
    let slots = r.usize()?;
    let input_slots = r.usizes()?;
    let output_slots = r.usizes()?;
    let shared_outputs = r
        .plain::<u8>()?
        .into_iter()
        .map(|b| match b {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(corrupt(format!("flag {b}"))),
        })
        .collect::<Result<Vec<bool>, _>>()?;
    // A step costs at least its two lengths and its tag.
    let n_steps = r.count(17)?;
    let mut steps = Vec::with_capacity(n_steps);
    for _ in 0..n_steps {
        let inputs = r.usizes()?;
        let outputs = r
            .plain::<u64>()?
            .into_iter()
            .map(|o| {
                if o == u64::MAX {
                    Ok(None)
                } else {
                    usize::try_from(o)
                        .map(Some)
                        .map_err(|_| corrupt("a slot past usize"))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let op = match r.u8()? {
            0 => Op::Tree(Ensemble::F32(Box::new(read_core::<f32>(r)?))),
            1 => Op::Tree(Ensemble::F64(Box::new(read_core::<f64>(r)?))),
            2 => Op::Linear(read_linear(r)?),
            3 => Op::Glue(read_glue(r)?),
            b => return Err(corrupt(format!("operator {b}"))),
        };
        steps.push(Step {
            op,
            inputs,
            outputs,
        });
    }
    Ok(Model {
        inputs,
        outputs,
        steps,
        slots,
        input_slots,
        output_slots,
        shared_outputs,
        backing: None,
    })
}

fn read_core<T: ReadWeights>(r: &mut Reader<'_>) -> Result<Core<T>, ImageError>
where
    Node<T>: Plain,
{
    let nodes = r.shared::<Node<T>>()?;
    let roots = r.shared::<u32>()?;
    let weights = T::read_weights(r)?;
    let base_values = r.plain::<T>()?;
    let max_feature = r.u32()?;
    let covers = match r.u8()? {
        0 => tree::Covers::Missing(r.coded(&NO_COVERS, "covers")?),
        1 => tree::Covers::Present(r.shared::<f32>()?),
        b => return Err(corrupt(format!("covers {b}"))),
    };
    let aggregate = r.coded(&AGGREGATES, "aggregate")?;
    let post = r.coded(&POSTS, "post transform")?;
    let n_targets = r.usize()?;
    let classes = if r.bool()? {
        let labels = match r.u8()? {
            0 => tree::Labels::Int(r.plain()?),
            1 => tree::Labels::Str(r.strings()?),
            b => return Err(corrupt(format!("labels {b}"))),
        };
        Some(Classes {
            labels,
            binary: r.bool()?,
            weights_all_positive: r.bool()?,
        })
    } else {
        None
    };
    Ok(Core {
        trees: Trees {
            nodes,
            roots,
            weights,
            base_values,
            max_feature,
            covers,
        },
        aggregate,
        post,
        n_targets,
        classes,
    })
}

fn read_linear(r: &mut Reader<'_>) -> Result<Linear, ImageError> {
    Ok(Linear {
        coefficients: r.plain()?,
        intercepts: r.plain()?,
        outputs: r.usize()?,
        features: r.usize()?,
        post: r.coded(&POSTS, "post transform")?,
        labels: match r.u8()? {
            0 => None,
            1 => Some(linear::Labels::Int(r.plain()?)),
            2 => Some(linear::Labels::Str(r.strings()?)),
            b => return Err(corrupt(format!("labels {b}"))),
        },
        input: r.coded(&ELEMS, "element type")?,
    })
}

fn read_glue(r: &mut Reader<'_>) -> Result<Glue, ImageError> {
    Ok(match r.u8()? {
        0 => Glue::Identity,
        1 => Glue::Cast(r.coded(&ELEMS, "element type")?),
        2 => Glue::ZipMap {
            columns: r.usizes()?,
        },
        3 => Glue::Normalizer(r.coded(&NORMS, "norm")?),
        4 => Glue::Extract {
            indices: r.usizes()?,
        },
        5 => Glue::Reshape { shape: r.plain()? },
        6 => {
            let kind = r.coded(&ARITHS, "arith")?;
            let constant = match r.u8()? {
                0 => Constant::F32(r.plain()?),
                1 => Constant::F64(r.plain()?),
                2 => Constant::I64(r.plain()?),
                b => return Err(corrupt(format!("constant {b}"))),
            };
            Glue::Arith {
                kind,
                constant,
                constant_first: r.bool()?,
            }
        }
        b => return Err(corrupt(format!("glue {b}"))),
    })
}
