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
//!
//! `mod.rs` holds the envelope (header and trailer: `seal`, `parse`) and the public API;
//! `write` and `read` the payload, section by section, with one table of enum codes
//! (`codes`); `check` the structure every image must have.

use std::io::Read;
use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64;

use crate::graph::Model;
use crate::memory::Backing;

mod check;
mod codes;
mod read;
#[cfg(test)]
mod tests;
mod write;

use check::check_model;
pub use read::ImageError;
use read::{Reader, corrupt, read_model};
use write::{Writer, write_model};

/// The first bytes of every image.
pub const MAGIC: &[u8; 8] = b"MMNIMAGE";
/// The layout of the file itself (2: arrays 8-aligned, to be served in place).
pub const FORMAT: u32 = 2;
/// The compiled form and the arithmetic behind it: bump with any change to what `compile`
/// produces or how `run` reads it, so every image written before reads as stale.
pub const ENGINE_REVISION: u32 = 2;

/// Images this large and larger are mapped, not read: below it a mapping per model would
/// spend the process's map count (`vm.max_map_count`, 65,530 by default) on models of a
/// few kilobytes, whose read costs microseconds.
pub const MAP_FROM: u64 = 1 << 20;

/// The longest source key and annex an image may carry.
const MAX_KEY: usize = 4096;
const MAX_ANNEX: usize = 16 << 20;

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

/// The image in `file`, mapped when `map`, else read into a buffer (`from_image_file` picks
/// by size; tests map small images too).
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
    let mut r = Reader::new(&backing);
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
