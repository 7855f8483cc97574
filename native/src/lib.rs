//! A native engine for the models many-models teams train most: tree ensembles and linear
//! models exported to ONNX (`ai.onnx.ml` `TreeEnsembleRegressor`, `TreeEnsembleClassifier`,
//! `LinearRegressor`, `LinearClassifier`) and the glue exporters put around them (`Cast`,
//! `Identity`, `Normalizer`, `ZipMap`, ...).
//!
//! [`Model::compile`] reads an ONNX file and either compiles the whole graph into a compact
//! in-memory form, or says why it cannot ([`CompileError::Unsupported`]: the caller serves
//! the model with ONNX Runtime instead; [`CompileError::Invalid`]: the file is malformed).
//! [`Model::run`] evaluates it with the same arithmetic as ONNX Runtime 1.31's CPU kernels
//! (see ARCHITECTURE.md, "The native engine", for where results are bit-identical and the
//! bound where they are not).
//!
//! What it deliberately does not do: partial graphs (one uncovered node sends the whole
//! model to ONNX Runtime), graph optimisation, threads (a call runs on the caller's thread),
//! or any I/O. The file is read through borrowed slices (`pb`, `onnx`), never copied, and
//! every length in it is checked before anything is allocated, so a hostile file costs at
//! most a bounded multiple of its own size and never panics or hangs.

pub mod image;
pub mod onnx;
pub mod pb;

mod attrs;
mod error;
mod explain;
mod glue;
mod graph;
mod linear;
mod memory;
mod transform;
mod tree;
mod value;

pub use error::{CompileError, Invalid, RunError};
pub use explain::{Bounds, Contributions, ExplainError};
pub use graph::{Model, Port};
pub use image::ImageError;
pub use value::{Data, Elem, Tensor};
