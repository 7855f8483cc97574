//! `mm-proxy`: the front door of manymodels.
//!
//! Run it with `mm-proxy --scorers 127.0.0.1:8001,127.0.0.1:8002` or a config file
//! (`--config proxy.toml`), `MM_PROXY_*` environment variables and `--set key=value`
//! flags. `cargo xtask up` starts it on 127.0.0.1:8080 in front of three scorers. Exit
//! code 2 for a bad configuration; 0 after SIGTERM once in-flight requests finished.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use manymodels_config::Sources;
use manymodels_config::proxy::ProxyConfig;

#[derive(Parser)]
#[command(
    name = "mm-proxy",
    version,
    about = "Route each model to the scorer holding it hot"
)]
struct Args {
    /// TOML configuration file.
    #[arg(long, env = "MM_PROXY_CONFIG")]
    config: Option<PathBuf>,
    /// Override any key, e.g. `--set routing.top_k=3` (repeatable; wins over file and env).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Shorthand for `--set listen=ADDR`.
    #[arg(long)]
    listen: Option<String>,
    /// Shorthand for `--set pool.scorers=LIST` (comma-separated host:port).
    #[arg(long)]
    scorers: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut sources = Sources::from_env(args.config.as_deref());
    if let Some(listen) = args.listen {
        sources.sets.push(format!("listen={listen}"));
    }
    if let Some(scorers) = args.scorers {
        sources.sets.push(format!("pool.scorers={scorers}"));
    }
    sources.sets.extend(args.sets);
    let config = match ProxyConfig::load(&sources) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("mm-proxy: invalid configuration: {error}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    manymodels_proxy::run(config)
}
