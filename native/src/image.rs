//! Model images: a compiled [`Model`] written out as it lies in memory, so a later load
//! reads it back with no protobuf parse, no compile and no intermediate copy.
//!
//! The format (all numbers little-endian):
//!
//! ```text
//! header   magic "MMNIMAGE" | format u32 | engine revision u32
//!          | source key (u32 length + bytes) | annex (u32 length + bytes)
//!          | zeros to a multiple of 8 | payload length u64 | XXH3-64 of everything before, u64
//! payload  the model, section by section (ports, steps, each operator's arrays); each
//!          array is its u64 count, zeros to a multiple of 8 (from the file's start), then
//!          its values as they lie in memory
//! trailer  XXH3-64 of the payload, u64
//! ```
//!
//! Every array starts 8-aligned in the file, so a model's large arrays (tree nodes, roots,
//! leaf weights) are served in place from the image's bytes (`memory::Array::Shared`): a
//! mapping of the file for images of [`MAP_FROM`] bytes and more (no copy at all: the pages
//! are the page cache's), an aligned buffer the file is read into below that (one copy).
//!
//! - **Stale** ([`ImageError::Stale`]): another format, another engine revision (bumped
//!   whenever the compiled form or the arithmetic changes), or another source key (the
//!   caller's name for the exact ONNX file the image was compiled from). The caller
//!   compiles the ONNX file again.
//! - **Corrupt** ([`ImageError::Corrupt`]): a wrong magic or checksum, a length past the
//!   bytes that remain, a truncated file, or a structure the engine could not run (a tree
//!   node pointing outside its tree or back up it, a slot used before it is written). The
//!   caller compiles the ONNX file again; an image never gives a wrong answer it would not
//!   give compiled.
//!
//! Reading checks both checksums over the whole image first, then walks it; every declared
//! length is checked against the bytes that remain before anything is allocated or shared,
//! and a load holds the image's bytes and the few small arrays copied out of them.
//!
//! The annex is the caller's (the scorer keeps a ZipMap's class labels there); the engine
//! stores and returns it untouched.

use std::io::Read;
use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64;

use crate::glue::{Arith, Constant, Glue};
use crate::graph::{Model, Op, Port, Step};
use crate::linear::{self, Linear};
use crate::memory::{Array, Backing, Plain, as_bytes, copy_plain};
use crate::transform::{Norm, PostTransform};
use crate::tree::{
    self, Aggregate, Classes, Core, Ensemble, MAX_TARGETS, Mode, Node, Num, Trees, Weight,
};
use crate::value::Elem;

/// The first bytes of every image.
pub const MAGIC: &[u8; 8] = b"MMNIMAGE";
/// The layout of the file itself (2: arrays 8-aligned, to be served in place).
pub const FORMAT: u32 = 2;
/// The compiled form and the arithmetic behind it: bump with any change to what `compile`
/// produces or how `run` reads it, so every image written before reads as stale.
pub const ENGINE_REVISION: u32 = 1;

/// Images this large and larger are mapped, not read: below it a mapping per model would
/// spend the process's map count (`vm.max_map_count`, 65,530 by default) on models of a
/// few kilobytes, whose read costs microseconds.
pub const MAP_FROM: u64 = 1 << 20;

/// The longest source key and annex an image may carry.
const MAX_KEY: usize = 4096;
const MAX_ANNEX: usize = 16 << 20;

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

fn corrupt(why: impl Into<String>) -> ImageError {
    ImageError::Corrupt(why.into())
}

impl Model {
    /// The image of this model, tagged with `source` (the caller's key for the ONNX file
    /// it was compiled from) and carrying `annex`. `None` when the model's layout cannot be
    /// imaged (a tree whose true branch joins a node laid out before it: such models
    /// always compile from their file), or the key or annex is too long.
    pub fn to_image(&self, source: &[u8], annex: &[u8]) -> Option<Vec<u8>> {
        if source.len() > MAX_KEY || annex.len() > MAX_ANNEX || !cfg!(target_endian = "little") {
            return None;
        }
        check_model(self).ok()?;
        Some(seal(self, source, annex))
    }

    /// Reads an image of `len` bytes from `reader` into one aligned buffer its arrays are
    /// then served from. `source` must equal the key it was written with. Returns the
    /// model and the annex.
    pub fn from_image(
        reader: &mut impl Read,
        len: u64,
        source: &[u8],
    ) -> Result<(Model, Vec<u8>), ImageError> {
        let len = usize::try_from(len).map_err(|_| corrupt("larger than memory"))?;
        let backing = Backing::read(reader, len).map_err(|e| corrupt(format!("truncated: {e}")))?;
        parse(Arc::new(backing), source)
    }

    /// The image in `file` (`len` bytes, as its metadata says): mapped when it is at least
    /// [`MAP_FROM`] bytes, its large arrays then served from the page cache in place; read
    /// as [`Model::from_image`] below that. Nothing may write the file in place while the
    /// model lives (replacing it by a rename, or unlinking it, is safe).
    pub fn from_image_file(
        file: &std::fs::File,
        len: u64,
        source: &[u8],
    ) -> Result<(Model, Vec<u8>), ImageError> {
        open_image(file, len, source, len >= MAP_FROM)
    }
}

fn open_image(
    file: &std::fs::File,
    len: u64,
    source: &[u8],
    map: bool,
) -> Result<(Model, Vec<u8>), ImageError> {
    if !map {
        return Model::from_image(&mut &*file, len, source);
    }
    let len = usize::try_from(len).map_err(|_| corrupt("larger than memory"))?;
    let backing = Backing::map(file, len).map_err(|e| corrupt(format!("not mapped: {e}")))?;
    parse(Arc::new(backing), source)
}

/// The model in `backing`'s bytes, its large arrays shared with them.
fn parse(backing: Arc<Backing>, source: &[u8]) -> Result<(Model, Vec<u8>), ImageError> {
    if !cfg!(target_endian = "little") {
        return Err(ImageError::Stale("images are little-endian".into()));
    }
    let bytes = backing.bytes();
    let mut r = Reader {
        backing: &backing,
        bytes,
        at: 0,
        end: bytes.len(),
    };
    let magic: [u8; 8] = r.array()?;
    if &magic != MAGIC {
        return Err(corrupt("not an image"));
    }
    let format = r.u32()?;
    let revision = r.u32()?;
    let key = r.blob(MAX_KEY)?;
    let annex = r.blob(MAX_ANNEX)?;
    r.pad()?;
    let payload_len = r.u64()?;
    if xxh3_64(&bytes[..r.at]) != r.u64()? {
        return Err(corrupt("header checksum"));
    }
    // An image of format 1 (no padding) reads as corrupt or stale here: compiled again
    // either way.
    if format != FORMAT || revision != ENGINE_REVISION {
        return Err(ImageError::Stale(format!(
            "format {format} revision {revision}, this engine reads format {FORMAT} \
             revision {ENGINE_REVISION}"
        )));
    }
    if key != source {
        return Err(ImageError::Stale(
            "compiled from another source file".into(),
        ));
    }
    if payload_len.checked_add(8) != Some(r.left()) {
        return Err(corrupt(format!(
            "payload of {payload_len} bytes in {} remaining",
            r.left()
        )));
    }
    let payload_end = r.at + payload_len as usize;
    let (payload, trailer) = bytes[r.at..].split_at(payload_len as usize);
    if xxh3_64(payload) != u64::from_le_bytes(trailer.try_into().expect("8 bytes remain")) {
        return Err(corrupt("payload checksum"));
    }
    r.end = payload_end;
    let mut model = read_model(&mut r)?;
    if r.at != r.end {
        return Err(corrupt(format!("{} bytes after the model", r.left())));
    }
    check_model(&model).map_err(corrupt)?;
    // Kept (and counted) only when an array shares it; otherwise everything was copied.
    if Arc::strong_count(&backing) > 1 {
        model.backing = Some(backing);
    }
    Ok((model, annex))
}

// ---------------------------------------------------------------------------------------
// Writing.

/// The image of `model`, whatever its structure (`to_image` checks it first).
fn seal(model: &Model, source: &[u8], annex: &[u8]) -> Vec<u8> {
    let mut payload = Writer::default();
    write_model(&mut payload, model);
    let mut out = Writer::default();
    out.bytes(MAGIC);
    out.u32(FORMAT);
    out.u32(ENGINE_REVISION);
    out.blob(source);
    out.blob(annex);
    out.pad();
    out.u64(payload.0.len() as u64);
    let header_hash = xxh3_64(&out.0);
    out.u64(header_hash);
    let payload_hash = xxh3_64(&payload.0);
    out.0.extend_from_slice(&payload.0);
    out.u64(payload_hash);
    out.0
}

#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    fn len(&mut self, n: usize) {
        self.u64(n as u64);
    }
    fn blob(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.bytes(b);
    }
    fn str(&mut self, s: &str) {
        self.len(s.len());
        self.bytes(s.as_bytes());
    }
    /// Zeros up to the next multiple of 8 (the payload starts at one, after the header's
    /// own padding, so this aligns from the file's start).
    fn pad(&mut self) {
        let n = self.0.len().next_multiple_of(8) - self.0.len();
        self.0.resize(self.0.len() + n, 0);
    }
    fn plain<T: Plain>(&mut self, values: &[T]) {
        self.len(values.len());
        self.pad();
        self.bytes(as_bytes(values));
    }
    fn usizes(&mut self, values: &[usize]) {
        let v: Vec<u64> = values.iter().map(|&v| v as u64).collect();
        self.plain(&v);
    }
    fn strings(&mut self, values: &[String]) {
        self.len(values.len());
        for s in values {
            self.str(s);
        }
    }
}

/// Each enum's code in an image is its index in one table, read and written alike.
const ELEMS: [Elem; 6] = [
    Elem::F32,
    Elem::F64,
    Elem::I32,
    Elem::I64,
    Elem::Bool,
    Elem::Str,
];
const POSTS: [PostTransform; 5] = [
    PostTransform::None,
    PostTransform::Logistic,
    PostTransform::Softmax,
    PostTransform::SoftmaxZero,
    PostTransform::Probit,
];
const AGGREGATES: [Aggregate; 4] = [
    Aggregate::Sum,
    Aggregate::Average,
    Aggregate::Min,
    Aggregate::Max,
];
const NORMS: [Norm; 3] = [Norm::Max, Norm::L1, Norm::L2];
const ARITHS: [Arith; 4] = [Arith::Add, Arith::Sub, Arith::Mul, Arith::Div];

/// `value`'s code: its index in `table` (every variant is listed).
fn code<T: PartialEq>(table: &[T], value: &T) -> u8 {
    table
        .iter()
        .position(|t| t == value)
        .expect("every variant is in its table") as u8
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

fn write_model(w: &mut Writer, m: &Model) {
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

/// The number types of tree ensembles, and how their leaf weights are imaged: `f32`
/// weights are plain 8-byte records served in place; `f64` ones have padding, so they go as
/// two columns.
trait Imaged: Num + Plain {
    fn write_weights(w: &mut Writer, weights: &[Weight<Self>]);
    fn read_weights(r: &mut Reader<'_>) -> Result<Array<Weight<Self>>, ImageError>;
}

impl Imaged for f32 {
    fn write_weights(w: &mut Writer, weights: &[Weight<f32>]) {
        w.plain(weights);
    }
    fn read_weights(r: &mut Reader<'_>) -> Result<Array<Weight<f32>>, ImageError> {
        r.shared()
    }
}

impl Imaged for f64 {
    fn write_weights(w: &mut Writer, weights: &[Weight<f64>]) {
        let targets: Vec<u32> = weights.iter().map(|x| x.target).collect();
        let values: Vec<f64> = weights.iter().map(|x| x.value).collect();
        w.plain(&targets);
        w.plain(&values);
    }
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

fn write_core<T: Imaged>(w: &mut Writer, c: &Core<T>)
where
    Node<T>: Plain,
{
    let t = &c.trees;
    w.plain(&t.nodes);
    w.plain(&t.roots);
    T::write_weights(w, &t.weights);
    w.plain(&t.base_values);
    w.u32(t.max_feature);
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

// ---------------------------------------------------------------------------------------
// Reading.

struct Reader<'a> {
    /// What shared arrays keep alive.
    backing: &'a Arc<Backing>,
    /// The whole image (`backing`'s bytes).
    bytes: &'a [u8],
    at: usize,
    /// The end of the current part (header and payload, then the payload alone).
    end: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> u64 {
        (self.end - self.at) as u64
    }

    /// The next `n` bytes, or says the part ends first.
    fn take(&mut self, n: u64) -> Result<&'a [u8], ImageError> {
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

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ImageError> {
        Ok(self.take(N as u64)?.try_into().expect("N bytes"))
    }
    fn u8(&mut self) -> Result<u8, ImageError> {
        Ok(self.array::<1>()?[0])
    }
    fn bool(&mut self) -> Result<bool, ImageError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(corrupt(format!("flag {b}"))),
        }
    }
    fn u32(&mut self) -> Result<u32, ImageError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, ImageError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn usize(&mut self) -> Result<usize, ImageError> {
        usize::try_from(self.u64()?).map_err(|_| corrupt("a count past usize"))
    }
    /// Zeros up to the next multiple of 8 from the image's start.
    fn pad(&mut self) -> Result<(), ImageError> {
        let n = self.at.next_multiple_of(8) - self.at;
        if self.take(n as u64)?.iter().any(|&b| b != 0) {
            return Err(corrupt("padding that is not zeros"));
        }
        Ok(())
    }
    /// A count of `size`-byte elements that the remaining bytes can hold.
    fn count(&mut self, size: usize) -> Result<usize, ImageError> {
        let n = self.u64()?;
        match n.checked_mul(size as u64) {
            Some(bytes) if bytes <= self.left() => Ok(n as usize),
            _ => Err(corrupt(format!(
                "{n} elements of {size} bytes, {} bytes remain",
                self.left()
            ))),
        }
    }
    fn blob(&mut self, max: usize) -> Result<Vec<u8>, ImageError> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(corrupt(format!("a field of {n} bytes")));
        }
        Ok(self.take(n as u64)?.to_vec())
    }
    fn str(&mut self) -> Result<String, ImageError> {
        let n = self.count(1)?;
        String::from_utf8(self.take(n as u64)?.to_vec())
            .map_err(|_| corrupt("a name that is not UTF-8"))
    }
    fn strings(&mut self) -> Result<Vec<String>, ImageError> {
        // Each string costs at least its 8-byte length.
        let n = self.count(8)?;
        (0..n).map(|_| self.str()).collect()
    }
    /// An array's count, padding and bytes; returns the count and where the values start.
    fn values<T: Plain>(&mut self) -> Result<(usize, usize), ImageError> {
        let n = self.count(size_of::<T>())?;
        self.pad()?;
        let at = self.at;
        self.take((n * size_of::<T>()) as u64)?;
        Ok((n, at))
    }
    /// A small array, copied out.
    fn plain<T: Plain>(&mut self) -> Result<Vec<T>, ImageError> {
        let (n, at) = self.values::<T>()?;
        Ok(copy_plain(&self.bytes[at..self.at], n))
    }
    /// A large array, served in place from the image's bytes.
    fn shared<T: Plain>(&mut self) -> Result<Array<T>, ImageError> {
        let (n, at) = self.values::<T>()?;
        Array::shared(self.backing, at, n).ok_or_else(|| corrupt("an array out of place"))
    }
    fn usizes(&mut self) -> Result<Vec<usize>, ImageError> {
        self.plain::<u64>()?
            .into_iter()
            .map(|v| usize::try_from(v).map_err(|_| corrupt("an index past usize")))
            .collect()
    }
    /// The `table` entry whose code comes next (`what` names it in the error).
    fn coded<T: Copy>(&mut self, table: &[T], what: &str) -> Result<T, ImageError> {
        let b = self.u8()?;
        table
            .get(usize::from(b))
            .copied()
            .ok_or_else(|| corrupt(format!("{what} {b}")))
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

fn read_model(r: &mut Reader<'_>) -> Result<Model, ImageError> {
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

fn read_core<T: Imaged>(r: &mut Reader<'_>) -> Result<Core<T>, ImageError>
where
    Node<T>: Plain,
{
    let nodes = r.shared::<Node<T>>()?;
    let roots = r.shared::<u32>()?;
    let weights = T::read_weights(r)?;
    let base_values = r.plain::<T>()?;
    let max_feature = r.u32()?;
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

// ---------------------------------------------------------------------------------------
// Structure: what `run` relies on and `compile` guarantees, checked again on every image
// (and before one is written, so a model that fails it is never imaged).

fn check_model(m: &Model) -> Result<(), String> {
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

#[cfg(test)]
mod tests;
