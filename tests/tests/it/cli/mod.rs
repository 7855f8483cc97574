//! `mmctl` as a user runs it: the built binary against real stores (a directory, Azurite)
//! and a real pool (scorers behind the proxy), and `mmctl top` in a real terminal (tmux).
//!
//! Import: every model is checked as a scorer would check it before it is written; a
//! rerun skips what is already there by content hash (also after the import was killed
//! half-way); refusals are reported with their reason and make the exit code 1. Operate:
//! each command's effect is checked on the pool itself (scores, versions, the store).
//!
//! The import tests are in [`import`], the operate commands' in [`operate`]; the command
//! line itself (configuration, completions, `top`) and the helpers they share are here.

use std::path::Path;
use std::time::{Duration, Instant};

use manymodels_models::{GeneratedModel, Spec};
use manymodels_tests::process::{Pool, binary};
use manymodels_tests::{TempDir, write_model};
use serde_json::{Value, json};

mod batch;
mod import;
mod mlflow;
mod operate;

const KEY: &str = "cli-admin";

fn linear(features: usize, seed: u64) -> GeneratedModel {
    manymodels_models::build(&Spec::Linear { features, seed })
}

fn forest(seed: u64) -> GeneratedModel {
    manymodels_models::build(&Spec::Forest {
        features: 8,
        trees: 20,
        depth: 6,
        seed,
    })
}

const ROW: [f32; 8] = [0.5, -1.0, 2.0, 0.25, 1.5, -0.75, 0.1, 3.0];

/// The request scoring [`ROW`].
fn row_body() -> Value {
    json!({"inputs":[{"name":"input","shape":[1,8],"datatype":"FP32","data":ROW}]})
}

/// Scores [`ROW`] with `id` at `base` (a proxy or a scorer): the status, the scorer that
/// answered and the body.
async fn infer(client: &reqwest::Client, base: &str, id: &str) -> (u16, String, Value) {
    let url = format!("{base}/v2/models/{id}/infer");
    manymodels_tests::http::post_via(client, &url, &row_body()).await
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// The environment every mmctl run gets: no config file from the user's home.
fn isolated(command: &mut tokio::process::Command, home: &Path) {
    command
        .env("XDG_CONFIG_HOME", home)
        .env_remove("MMCTL_PROXY")
        .env_remove("MMCTL_KEY")
        .env_remove("MMCTL_STORE")
        .env_remove("MMCTL_CONFIG");
}

async fn mmctl(args: &[&str], env: &[(&str, &str)]) -> Run {
    let home = TempDir::new("mmctl-home");
    let mut command = tokio::process::Command::new(binary("mmctl"));
    isolated(&mut command, home.path());
    command.args(args).envs(env.iter().copied());
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("mmctl finishes within 2 minutes")
        .expect("mmctl runs");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Each record of an import report by (model, version).
fn outcomes(report: &Value) -> Vec<(String, Option<u64>, String)> {
    report["models"]
        .as_array()
        .expect("models")
        .iter()
        .map(|r| {
            (
                r["model"].as_str().unwrap().to_string(),
                r["version"].as_u64(),
                r["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn record<'a>(report: &'a Value, model: &str) -> &'a Value {
    report["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["model"] == model)
        .unwrap_or_else(|| panic!("{model} not in the report: {report:#}"))
}

fn stored(store: &Path, id: &str, version: u64) -> Option<Vec<u8>> {
    std::fs::read(store.join(id).join(version.to_string()).join("model.onnx")).ok()
}

#[tokio::test]
async fn configuration_comes_from_flags_environment_and_file() {
    let home = TempDir::new("mmctl-config");
    let file = home.path().join("mmctl.toml");
    write(
        &file,
        b"proxy = \"http://127.0.0.1:9\"\nkey = \"file-key\"\nstore = \"dir:/srv/m\"\n",
    );
    let file = file.display().to_string();
    let shown = mmctl(&["--config", &file, "--json", "config"], &[]).await;
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    let shown = shown.json();
    assert_eq!(shown["proxy"], "http://127.0.0.1:9");
    assert_eq!(shown["key"], "(set)", "the key never prints");
    assert_eq!(shown["sources"]["proxy"], "file");
    let overridden = mmctl(
        &["--config", &file, "--json", "config"],
        &[("MMCTL_PROXY", "http://127.0.0.1:7")],
    )
    .await
    .json();
    assert_eq!(overridden["proxy"], "http://127.0.0.1:7");
    assert_eq!(overridden["sources"]["proxy"], "flag or environment");
}

#[tokio::test]
async fn completions_load_in_bash() {
    let script = mmctl(&["completions", "bash"], &[]).await;
    assert_eq!(script.code, 0);
    for word in ["import", "canary", "explain", "top", "--dry-run"] {
        assert!(script.stdout.contains(word), "{word} not completed");
    }
    let dir = TempDir::new("completions");
    let path = dir.path().join("mmctl.bash");
    write(&path, script.stdout.as_bytes());
    let loaded = std::process::Command::new("bash")
        .args([
            "-c",
            &format!("source {} && complete -p mmctl", path.display()),
        ])
        .output()
        .unwrap();
    assert!(
        loaded.status.success(),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    let zsh = mmctl(&["completions", "zsh"], &[]).await;
    assert!(zsh.code == 0 && zsh.stdout.contains("#compdef mmctl"));
}

/// `mmctl top` in tmux: it draws the pool (scorers, hit ratio, hottest models, an
/// eviction: hot-2 unloaded, or not admitted when the small budget is full) and redraws as it changes, and `q` gives the terminal back with exit code 0.
#[tokio::test]
async fn top_draws_the_pool_in_a_real_terminal() {
    let store = TempDir::new("top-store");
    for i in 0..4 {
        write_model(store.path(), &format!("hot-{i}"), 1, &forest(300 + i).bytes).unwrap();
    }
    // A small budget, so the resident bytes fill a visible part of the meter.
    let pool = Pool::local(
        store.path(),
        2,
        &["cache.budget=64KiB"],
        &["stats.push_interval=200ms"],
    );
    let client = reqwest::Client::new();
    let hit = |id: String| {
        let (client, base) = (client.clone(), pool.proxy.url.clone());
        async move {
            assert_eq!(infer(&client, &base, &id).await.0, 200);
        }
    };
    for round in 0..20 {
        hit(format!("hot-{}", round % 2)).await;
    }
    hit("hot-2".into()).await;
    client
        .post(format!(
            "{}/v2/repository/models/hot-2/unload",
            pool.proxy.url
        ))
        .send()
        .await
        .unwrap();

    let socket = format!("mmctl-top-{}", std::process::id());
    let dir = TempDir::new("top");
    let exit_file = dir.path().join("exit");
    let tmux = |args: &[&str]| {
        std::process::Command::new("tmux")
            .args(["-L", &socket])
            .args(args)
            .env_remove("TMUX")
            .output()
            .expect("tmux runs (cargo xtask test installs it)")
    };
    let shell = format!(
        "XDG_CONFIG_HOME={} {} --proxy {} top --interval 0.3; echo $? > {}",
        dir.path().display(),
        binary("mmctl").display(),
        pool.proxy.url,
        exit_file.display()
    );
    let started = tmux(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "150",
        "-y",
        "45",
        &shell,
    ]);
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    struct Server(String);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = std::process::Command::new("tmux")
                .args(["-L", &self.0, "kill-server"])
                .output();
        }
    }
    let _server = Server(socket.clone());
    let screen =
        || String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned();
    let view: Value = client
        .get(format!("{}/v2/mm/pool", pool.proxy.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<String> = view["scorers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    let mut needles: Vec<String> = names.clone();
    needles.extend([
        "hit ratio".into(),
        "hot-0".into(),
        "hot-1".into(),
        "hot-2 v1".into(),
    ]);
    let wait_for = |needles: Vec<String>, limit: Duration| {
        let started = Instant::now();
        loop {
            let text = screen();
            if needles.iter().all(|n| text.contains(n.as_str())) {
                return text;
            }
            assert!(
                started.elapsed() < limit,
                "the screen never showed {needles:?}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let text = wait_for(needles, Duration::from_secs(20));
    eprintln!("mmctl top:\n{text}");
    let meters: Vec<&str> = text
        .lines()
        .filter(|l| names.iter().any(|n| l.contains(n.as_str())) && l.contains(" / 64.0 KiB"))
        .collect();
    assert!(
        meters.len() == 2 && meters.iter().any(|l| l.contains("█░")),
        "resident bytes are drawn against the budget:\n{text}"
    );
    // It redraws: a model hot only after the first frames shows up.
    for _ in 0..30 {
        hit("hot-3".into()).await;
    }
    wait_for(vec!["hot-3".into()], Duration::from_secs(20));
    tmux(&["send-keys", "-t", "top", "q"]);
    let started = Instant::now();
    while !exit_file.exists() && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let code = std::fs::read_to_string(&exit_file).expect("top exited after q");
    assert_eq!(code.trim(), "0");
    // An unreachable proxy fails before taking the terminal.
    let down = mmctl(&["--proxy", "http://127.0.0.1:1", "top"], &[]).await;
    assert_eq!(down.code, 1);
    assert!(down.stderr.contains("cannot reach"), "{}", down.stderr);
}
