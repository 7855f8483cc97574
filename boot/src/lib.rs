//! What every manymodels binary does at start, written once: parse the command line (the
//! shared `--config`, `--set`, `--listen` flags plus the binary's own shorthands), load and
//! validate its configuration (exit code 2 when it is bad), set up tracing in the configured
//! format (and span export over OTLP when `trace.endpoint` is set: `telemetry`), and give its metrics a registry that renders the Prometheus text format.
//!
//! A binary's `main` describes itself and starts:
//! `Binary::new("mm-x", "about").shorthand("store", "DIR", &["store.path={}"], "note")`,
//! then `.start::<XConfig>()` gives the loaded configuration (or the exit code to return),
//! with tracing already set up. This crate deliberately knows nothing of what the binaries
//! serve: no runtime, no server, no metric names (those stay beside the code that counts
//! them).

mod allocator;
mod flags;
mod logging;
mod metrics;
pub mod telemetry;

pub use allocator::tune_allocator;
pub use flags::{Binary, Flags};
pub use logging::{init_tracing, init_tracing_with};
pub use metrics::{Registry, exponential_buckets};
