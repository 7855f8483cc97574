//! The one harness of manymodels' tests and benches: it starts `mm-scorer`, `mm-proxy`
//! and Azurite on 127.0.0.1, speaks HTTP to them, reads their metrics and memory, and
//! compares outputs with reference data. Every process is killed when its handle drops.
//!
//! - [`store`]: the workspace root, the demo store, temp dirs, writing models.
//! - [`process`]: `ScorerProcess`, `ProxyProcess`, `/proc` figures.
//! - [`ports`]: ports no other process is given, and who listens on one.
//! - [`http`]: blocking clients (one-shot, keep-alive, `probe`) and async JSON helpers.
//! - [`metrics`]: Prometheus samples.
//! - [`reference`]: reference inputs and outputs, request bodies, tolerance comparison.
//! - [`azurite`]: Azurite with a minimal Shared Key client.
//! - [`classifiers`]: the ZipMap classifiers' store and reference, and their checks.
//! - [`grpc`]: a gRPC client, and requests and outputs between reference JSON and protobuf.
//! - [`dns`]: a real DNS server (hickory-server) whose SRV and A records a test changes.
//! - [`load`]: an open-loop load over generated models, with every answer recorded.
//! - [`otlp`]: a real OTLP/HTTP trace receiver collecting the spans the binaries export.
//!
//! The scorer's in-process handler tests (`scorer/tests/handlers/`) and xtask's benches
//! use it too. The binaries are the ones `cargo xtask test` builds first
//! (`target/debug/mm-scorer`; a release build of the harness runs `target/release`);
//! Azurite is the one it installs from npm (`MM_AZURITE_BLOB`, or `.cache/azurite`).
//! It depends on no crate of the service, so any of them can use it in its tests.

pub mod alloc;
pub mod azurite;
pub mod cgroup;
pub mod classifiers;
pub mod dns;
pub mod grpc;
pub mod http;
pub mod load;
pub mod metrics;
pub mod otlp;
pub mod ports;
pub mod process;
pub mod reference;
pub mod store;

pub use http::{get_json, post_json, post_via};
pub use metrics::{Metrics, scrape};
pub use ports::free_port;
pub use process::{ProxyProcess, ScorerProcess, binary};
pub use reference::{
    TOLERANCE, assert_outputs_match, assert_predictions, demo_reference, generated_rows,
    infer_body, rows_body,
};
pub use store::{TempDir, copy_tree, root, write_model};
