//! `mm-scorer`: the model server of manymodels.
//!
//! Run it with `mm-scorer --config scorer.toml`, or with no file at all (defaults, then
//! `MM_SCORER_*` environment variables, then `--set key=value` flags). `cargo xtask up`
//! starts a local pool of them. Exit code 0 after a clean shutdown, 2 for a bad
//! configuration, 1 when the server cannot start or fails.

use std::process::ExitCode;

use manymodels_boot::Binary;
use manymodels_config::scorer::ScorerConfig;

fn main() -> ExitCode {
    manymodels_scorer::tune_allocator();
    let binary = Binary::new(
        "mm-scorer",
        "Serve many ONNX models over the Open Inference Protocol",
    );
    let store = &["store.kind=local", "store.path={}"];
    let binary = binary.shorthand("store", "DIR", store, "a local store");
    let config = match binary.start::<ScorerConfig>() {
        Ok(config) => config,
        Err(code) => return code,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("mm-scorer")
        // Blocking threads run inference, local store reads and the heap trim; loads have
        // their own low-priority threads (`cache::loader`).
        .max_blocking_threads(config.inference_threads.get() + 4)
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("mm-scorer: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let served = runtime.block_on(manymodels_scorer::run(config));
    // The spans of the last requests leave before the process does.
    manymodels_boot::telemetry::shutdown();
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "mm-scorer failed");
            eprintln!("mm-scorer: {error}");
            ExitCode::FAILURE
        }
    }
}
