//! `mm-proxy`: the front door of manymodels.
//!
//! Run it with `mm-proxy --scorers 127.0.0.1:8001,127.0.0.1:8002` or a config file
//! (`--config proxy.toml`), `MM_PROXY_*` environment variables and `--set key=value`
//! flags. `cargo xtask up` starts it on 127.0.0.1:8080 in front of three scorers. Exit
//! code 2 for a bad configuration; 0 after SIGTERM once in-flight requests finished.

use std::process::ExitCode;

use manymodels_boot::Binary;
use manymodels_config::proxy::ProxyConfig;

fn main() -> ExitCode {
    // Before any thread: a many-model request's big buffers go back to the OS when freed.
    manymodels_boot::tune_allocator();
    let binary = Binary::new("mm-proxy", "Route each model to the scorer holding it hot");
    let scorers = &["pool.scorers={}"];
    let binary = binary.shorthand("scorers", "LIST", scorers, "comma-separated host:port");
    match binary.start::<ProxyConfig>() {
        Ok(config) => manymodels_proxy::run(config),
        Err(code) => code,
    }
}
