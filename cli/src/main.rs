//! `mmctl`: onboard models into a manymodels store and operate the pool from a terminal.
//!
//! Every command but `import --to store` and `completions` talks to the proxy's HTTP API
//! (`--proxy`, `MMCTL_PROXY` or the config file), with a bearer key when one is set.
//! Tables go to stdout for people; `--json` prints the API's JSON for scripts. Exit codes:
//! 0 done, 1 the command failed or (import) a model did not go in, 2 bad usage or config.

mod batch;
mod capture;
mod client;
mod config;
mod import;
mod ledger;
mod operate;
mod score;
mod shadow;
mod table;
mod top;

use std::io::Write as _;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::client::Client;
use crate::config::{Global, Settings};
use crate::operate::{CanaryCommand, Output};
use crate::score::ScoreInput;

#[derive(Debug, Parser)]
#[command(name = "mmctl", version, about)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish a folder of models (checked locally as a scorer would, in parallel,
    /// resumable)
    Import(import::Args),
    /// List the models in the store
    Models {
        /// Only ids starting with this
        #[arg(long)]
        prefix: Option<String>,
    },
    /// A model's versions: live, pinned, canary, in memory
    Versions { id: String },
    /// Pin ID to VERSION (rollback): requests naming no version get it
    Pin { id: String, version: u64 },
    /// Unpin ID: the highest version is live again
    Unpin { id: String },
    /// A model's canary: set, show, drop or promote it
    #[command(subcommand)]
    Canary(CanaryCommand),
    /// A model's shadow: run a candidate version on a share of live requests and compare;
    /// set, show, promote or drop it
    #[command(subcommand)]
    Shadow(shadow::ShadowCommand),
    /// Payload capture: set, show or drop a prefix's sampling rate
    #[command(subcommand)]
    Capture(capture::CaptureCommand),
    /// The pool: scorers, memory against budget, hit ratio, hottest models, evictions
    Status,
    /// Where ID lives, why it is in memory or not, and what it served (its ledger)
    Explain { id: String },
    /// Each model's requests, errors, latency quantiles and canary share, pool-wide
    Ledger {
        /// Models listed (the busiest, pool-wide)
        #[arg(long, default_value_t = 50)]
        top: usize,
        /// Order of the table
        #[arg(long, value_enum, default_value_t = ledger::Sort::Requests)]
        sort: ledger::Sort,
    },
    /// Score rows with a model, or records for many models (--batch)
    Score {
        /// The model (not with --batch: each record names its own)
        #[arg(required_unless_present = "batch", conflicts_with = "batch")]
        id: Option<String>,
        /// A version (default: the live one, or the canary's share)
        #[arg(long, conflicts_with = "batch")]
        version: Option<u64>,
        #[command(flatten)]
        input: ScoreInput,
        #[command(flatten)]
        batch: batch::BatchOptions,
    },
    /// A live view of the pool (q or Ctrl-C quits)
    Top {
        /// Seconds between refreshes
        #[arg(long, default_value_t = 2.0)]
        interval: f64,
    },
    /// The settings in effect and where each came from
    Config,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions { shell: clap_complete::Shell },
}

fn main() -> ExitCode {
    // Model files and checks allocate blocks of megabytes: the scorer's allocator set-up
    // returns them to the OS when freed instead of keeping them in glibc's heap (an import
    // of 10,000 real models peaked at 694 MB of RSS without it).
    manymodels_boot::tune_allocator();
    let cli = Cli::parse();
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "mmctl", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    let settings = match Settings::resolve(&cli.global) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("mmctl: {e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("mmctl: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, &settings)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("mmctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a command; `Ok(false)` is a command that ran but did not fully succeed.
async fn run(command: Command, settings: &Settings) -> anyhow::Result<bool> {
    let client = Client::new(settings)?;
    let output = match command {
        Command::Import(args) => return import::run(settings, args).await,
        Command::Top { interval } => return top::run(&client, interval).await.map(|()| true),
        Command::Models { prefix } => operate::models(&client, prefix.as_deref()).await?,
        Command::Versions { id } => operate::versions(&client, &id).await?,
        Command::Pin { id, version } => operate::pin(&client, &id, Some(version)).await?,
        Command::Unpin { id } => operate::pin(&client, &id, None).await?,
        Command::Canary(command) => operate::canary(&client, &command).await?,
        Command::Shadow(command) => shadow::shadow(&client, &command).await?,
        Command::Capture(command) => capture::capture(&client, &command).await?,
        Command::Status => operate::status(&client).await?,
        Command::Explain { id } => operate::explain(&client, &id).await?,
        Command::Ledger { top, sort } => ledger::ledger(&client, top, sort).await?,
        Command::Score {
            input: ScoreInput {
                batch: Some(path), ..
            },
            batch,
            ..
        } => return batch::run(&client, &path, &batch).await,
        Command::Score {
            id,
            version,
            input,
            batch,
        } => {
            if batch.any() {
                anyhow::bail!("--chunk, --table and --format go with --batch");
            }
            let id = id.expect("clap requires an id without --batch");
            score::score(&client, &id, version, &input).await?
        }
        Command::Config => config_output(settings),
        Command::Completions { .. } => unreachable!("handled before the runtime starts"),
    };
    let mut stdout = std::io::stdout().lock();
    if settings.json {
        writeln!(stdout, "{}", serde_json::to_string_pretty(&output.json)?)?;
    } else {
        write!(stdout, "{}", output.text)?;
    }
    Ok(true)
}

fn config_output(settings: &Settings) -> Output {
    let store = settings.store.as_ref().map(|s| format!("{s:?}"));
    let json = serde_json::json!({
        "proxy": settings.proxy,
        "key": settings.key.as_ref().map(|_| "(set)"),
        "store": store,
        "timeout_seconds": settings.timeout.as_secs_f64(),
        "file": settings.file.as_ref().map(|p| p.display().to_string()),
        "sources": settings.sources.iter().map(|(k, v)| (k.to_string(), v.clone())).collect::<std::collections::BTreeMap<_, _>>(),
    });
    let mut text = String::new();
    for (name, value) in [
        ("proxy", Some(settings.proxy.clone())),
        ("key", settings.key.as_ref().map(|_| "(set)".to_string())),
        ("store", store),
    ] {
        let source = settings
            .sources
            .iter()
            .find(|(k, _)| *k == name)
            .map_or("", |(_, s)| s.as_str());
        text.push_str(&format!(
            "{name:<6} {}  ({source})\n",
            value.as_deref().unwrap_or("-")
        ));
    }
    text.push_str(&format!(
        "file   {}\n",
        settings
            .file
            .as_ref()
            .map_or("(none)".to_string(), |p| p.display().to_string())
    ));
    Output { json, text }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
