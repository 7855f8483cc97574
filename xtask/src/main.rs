//! `cargo xtask`: the project's tasks, so a fresh clone needs no manual step.
//!
//! - `cargo xtask up`: fetch ONNX Runtime if missing, make the demo models if missing,
//!   build, and start a local pool on 127.0.0.1 serving `models/demo`: `mm-proxy` on
//!   :8080 in front of three `mm-scorer`s on :8081-8083.
//! - `cargo xtask test`: install what the tests need (ONNX Runtime, Azurite) and run every
//!   test.
//! - `cargo xtask gen-models --n 10000 --out DIR`: write N synthetic ONNX models.
//! - `cargo xtask bench ...`: the benchmarks recorded in BENCHMARKS.md.
//! - `cargo xtask docs [--check]`: write (or check) the documentation generated from the
//!   code: the configuration tables in `docs/configuration.md`, the metrics tables in
//!   `docs/metrics.md`. `config-table` and `metrics-table` do one each.

mod bench;
mod docs;
mod setup;

use std::path::PathBuf;
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Start a local pool serving the demo models.
    Up {
        /// Number of scorer processes.
        #[arg(long, default_value_t = 3)]
        scorers: usize,
        /// Port of the proxy; the scorers take the next ports.
        #[arg(long, default_value_t = 8080)]
        base_port: u16,
        /// Model store directory.
        #[arg(long, default_value = "models/demo")]
        store: PathBuf,
        /// Cache budget of each scorer.
        #[arg(long, default_value = "256MiB")]
        budget: String,
        /// Start, print, check one request, and stop (used by CI to test this command).
        #[arg(long)]
        smoke: bool,
    },
    /// Install test dependencies and run every test.
    Test {
        /// Extra arguments for `cargo test`.
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Fetch ONNX Runtime and test tools only.
    Setup,
    /// Write N synthetic ONNX models as a store.
    GenModels {
        #[arg(long, default_value_t = 10_000)]
        n: usize,
        #[arg(long)]
        out: PathBuf,
        /// `realistic` (mostly tiny linear models, some forests up to several MB) or `tiny`.
        #[arg(long, default_value = "realistic")]
        mix: String,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Benchmarks (see BENCHMARKS.md).
    Bench {
        #[command(subcommand)]
        which: bench::Bench,
    },
    /// Write the generated tables of docs/configuration.md and docs/metrics.md.
    Docs {
        /// Fail if a committed page differs from the code instead of writing it.
        #[arg(long)]
        check: bool,
    },
    /// Write the configuration key tables of docs/configuration.md.
    ConfigTable {
        /// Fail if the committed page differs from the code instead of writing it.
        #[arg(long)]
        check: bool,
    },
    /// Write the metrics tables of docs/metrics.md.
    MetricsTable {
        /// Fail if the committed page differs from the code instead of writing it.
        #[arg(long)]
        check: bool,
    },
}

#[global_allocator]
static ALLOCATOR: manymodels_tests::alloc::Counting = manymodels_tests::alloc::Counting;

fn main() -> ExitCode {
    match run(Cli::parse().task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    let root = setup::workspace_root();
    std::env::set_current_dir(&root)?;
    match task {
        Task::Up {
            scorers,
            base_port,
            store,
            budget,
            smoke,
        } => up(scorers, base_port, store, &budget, smoke),
        Task::Test { args } => test(&args),
        Task::Setup => {
            setup::tools(&["cmake"])?;
            setup::onnxruntime()?;
            setup::azurite()?;
            Ok(())
        }
        Task::GenModels { n, out, mix, seed } => {
            let mix = match mix.as_str() {
                "realistic" => manymodels_models::Mix::Realistic,
                "tiny" => manymodels_models::Mix::Tiny,
                other => bail!("unknown mix `{other}` (realistic or tiny)"),
            };
            let started = Instant::now();
            let stats = manymodels_models::write_store(&out, n, mix, seed)
                .with_context(|| format!("writing models to {}", out.display()))?;
            println!(
                "wrote {} models, {:.1} MB, to {} in {:.1}s",
                stats.models,
                stats.bytes as f64 / 1e6,
                out.display(),
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Task::Bench { which } => bench::run(which),
        Task::Docs { check } => docs::run(&root, &docs::Table::ALL, check),
        Task::ConfigTable { check } => docs::run(&root, &[docs::Table::Config], check),
        Task::MetricsTable { check } => docs::run(&root, &[docs::Table::Metrics], check),
    }
}

fn test(args: &[String]) -> Result<()> {
    // chromium: the status page is checked in a real headless browser; tmux: `mmctl top`
    // is checked in a real terminal.
    setup::tools(&["cmake", "chromium", "tmux"])?;
    setup::onnxruntime()?;
    setup::python_test_deps()?;
    let azurite = setup::azurite()?;
    let keda_models = setup::keda_models()?;
    // The integration tests start the binaries as processes: build them first, in the
    // same profile the tests use.
    setup::cargo(&["build", "--workspace", "--bins"])?;
    let mut command = Command::new(env!("CARGO"));
    command
        .args([
            "test",
            "--workspace",
            "--no-fail-fast",
            "--lib",
            "--bins",
            "--tests",
        ])
        .args(args)
        .env("MM_AZURITE_BLOB", &azurite)
        .env("MM_KEDA_MODELS", &keda_models)
        .stdout(std::process::Stdio::piped());
    let mut child = command.spawn().context("running cargo test")?;
    // Echo cargo's output and add up its per-binary results into one closing line.
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    let stdout = child.stdout.take().expect("piped stdout");
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| -> u64 {
                rest.split(';')
                    .find_map(|part| part.trim().strip_suffix(word))
                    .and_then(|n| n.trim().rsplit(' ').next().and_then(|n| n.parse().ok()))
                    .unwrap_or(0)
            };
            passed += count(" passed");
            failed += count(" failed");
            ignored += count(" ignored");
        }
    }
    let status = child.wait()?;
    println!("tests: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("tests failed");
    }
    Ok(())
}

/// Kills the pool's processes when `up` ends, however it ends.
struct Pool(Vec<Child>);

impl Drop for Pool {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn up(scorers: usize, base_port: u16, store: PathBuf, budget: &str, smoke: bool) -> Result<()> {
    if scorers == 0 {
        bail!("--scorers must be at least 1");
    }
    setup::tools(&["cmake"])?;
    setup::onnxruntime()?;
    setup::demo_models(&store)?;
    setup::release_servers()?;
    let release = setup::target_dir().join("release");
    let mut pool = Pool(Vec::new());
    let mut scorer_addrs = Vec::new();
    for i in 0..scorers {
        let addr = format!("127.0.0.1:{}", base_port + 1 + i as u16);
        let child = Command::new(release.join("mm-scorer"))
            .args(["--listen", &addr])
            .args(["--store", &store.display().to_string()])
            .args(["--set", &format!("cache.budget={budget}")])
            .args(["--set", &format!("name=scorer-{i}")])
            // Each scorer its own image directory, as each pod has its own emptyDir.
            .args([
                "--set",
                &format!(
                    "images.dir={}",
                    setup::workspace_root()
                        .join(format!(".cache/images/scorer-{i}"))
                        .display()
                ),
            ])
            .spawn()
            .context("starting mm-scorer")?;
        pool.0.push(child);
        scorer_addrs.push(addr);
    }
    // The proxy starts with the scorers: a starting scorer reports ready once it has
    // warmed the share the proxy's first statistics push names (nothing, on a new pool).
    let proxy = format!("http://127.0.0.1:{base_port}");
    let child = Command::new(release.join("mm-proxy"))
        .args(["--listen", &format!("127.0.0.1:{base_port}")])
        .args(["--scorers", &scorer_addrs.join(",")])
        .args(["--set", "shutdown.grace=1s"])
        .spawn()
        .context("starting mm-proxy")?;
    pool.0.push(child);
    for addr in &scorer_addrs {
        setup::wait_ready(
            &format!("http://{addr}/v2/health/ready"),
            Duration::from_secs(30),
        )?;
    }
    setup::wait_ready(&format!("{proxy}/v2/health/ready"), Duration::from_secs(30))?;
    let body = r#"{"inputs":[{"name":"input","shape":[1,10],"datatype":"FP32","data":[1,2,3,4,5,6,7,8,9,10]}]}"#;
    println!("\nmanymodels local pool is up:");
    println!("  proxy:    {proxy}  (metrics: {proxy}/metrics, status page: {proxy}/status)");
    for (i, addr) in scorer_addrs.iter().enumerate() {
        println!("  scorer-{i}: http://{addr}  (metrics: http://{addr}/metrics)");
    }
    println!(
        "\nScore a demo model through the proxy:\ncurl -s -X POST {proxy}/v2/models/linear-small/infer -H 'content-type: application/json' \\\n  -d '{body}'\n"
    );
    if smoke {
        let answer = setup::http_post(&format!("{proxy}/v2/models/linear-small/infer"), body)?;
        if !answer.contains("\"model_name\":\"linear-small\"") {
            bail!("smoke request failed: {answer}");
        }
        println!("smoke request answered: {answer}");
        return Ok(());
    }
    println!("Press Ctrl-C to stop.");
    loop {
        for child in &mut pool.0 {
            if let Some(status) = child.try_wait()? {
                bail!("a process of the pool exited ({status}); stopping the pool");
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
