//! The integration tests: real `mm-scorer`, `mm-proxy` and `mmctl` processes (and Azurite,
//! a DNS server, tmux, a headless browser, Python clients) on 127.0.0.1, driven through the
//! shared harness in `tests/src` (`manymodels_tests`). One module per concern.
//!
//! They are one test binary on purpose: each file directly in `tests/tests/` would be a
//! binary of its own, linking the whole dependency tree again (sixteen of them took about
//! a quarter of a gigabyte and sixteen links after every change to the harness). Add a new
//! concern as a module here, not as a new file beside this folder.
//!
//! Run them with `cargo xtask test` (it builds the binaries and installs Azurite and the
//! Python packages first); one concern with `cargo test -p manymodels-tests --test it
//! policy::`, one test by its full name (`policy::a_restarted_scorer_warms_...`) with
//! `--exact`.

mod auth;
mod azureml;
mod batch;
mod capture;
mod cli;
mod contributions;
mod convert;
mod deploy;
mod forecast;
mod grpc;
mod hedge;
mod ledger;
mod limits;
mod membership;
mod policy;
mod proxy;
mod reliability;
mod replicas;
mod rollout;
mod rotation;
mod scale;
mod scorer;
mod shadow;
mod status;
mod tenants;
mod tracing;
mod versions;
