//! What the engine's test binaries share.

use std::path::PathBuf;

use manymodels_config::scorer::NativeEngine;
use manymodels_engine::{self as engine, Engines};

/// The engines with ONNX Runtime from `ORT_DYLIB_PATH` (the library `cargo xtask` fetched)
/// and the native engine set to `native`.
pub fn engines(native: NativeEngine) -> Engines {
    let library = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from);
    let environment = engine::environment(library.as_deref()).expect("ONNX Runtime opens");
    Engines {
        environment: Some(environment),
        native,
    }
}
