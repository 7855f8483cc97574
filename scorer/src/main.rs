//! `mm-scorer`: the model server of manymodels.
//!
//! Run it with `mm-scorer --config scorer.toml`, or with no file at all (defaults, then
//! `MM_SCORER_*` environment variables, then `--set key=value` flags). `cargo xtask up`
//! starts a local pool of them. Exit code 0 after a clean shutdown, 2 for a bad
//! configuration, 1 when the server cannot start or fails.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use manymodels_config::Sources;
use manymodels_config::scorer::{LogFormat, ScorerConfig};

#[derive(Parser)]
#[command(
    name = "mm-scorer",
    version,
    about = "Serve many ONNX models over the Open Inference Protocol"
)]
struct Args {
    /// TOML configuration file.
    #[arg(long, env = "MM_SCORER_CONFIG")]
    config: Option<PathBuf>,
    /// Override any key, e.g. `--set cache.budget=1GiB` (repeatable; wins over file and env).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Shorthand for `--set listen=ADDR`.
    #[arg(long)]
    listen: Option<String>,
    /// Shorthand for `--set store.path=DIR` (a local store).
    #[arg(long)]
    store: Option<PathBuf>,
}

fn main() -> ExitCode {
    manymodels_scorer::tune_allocator();
    let args = Args::parse();
    let mut sources = Sources::from_env(args.config.as_deref());
    if let Some(listen) = args.listen {
        sources.sets.push(format!("listen={listen}"));
    }
    if let Some(store) = args.store {
        sources.sets.push("store.kind=local".into());
        sources.sets.push(format!("store.path={}", store.display()));
    }
    sources.sets.extend(args.sets);
    let config = match ScorerConfig::load(&sources) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("mm-scorer: invalid configuration: {error}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&config);
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
    match runtime.block_on(manymodels_scorer::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "mm-scorer failed");
            eprintln!("mm-scorer: {error}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(config: &ScorerConfig) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
