//! The shared harness of manymodels' integration tests: start `mm-scorer` processes and
//! Azurite on 127.0.0.1, wait for them, read their metrics and memory, and compare outputs
//! with reference data. Every process is killed when its handle drops.
//!
//! The binaries are the ones `cargo xtask test` builds first (`target/debug/mm-scorer`);
//! Azurite is the one it installs from npm (`MM_AZURITE_BLOB`, or `.cache/azurite`).

pub mod azurite;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// A built binary of the workspace, in the profile the tests were built with.
pub fn binary(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let path = target.join(profile).join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo xtask test`, which builds the binaries first",
        path.display()
    );
    path
}

/// A fresh, empty directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("mm-test-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("creating a temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies a directory tree (a model store).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding an ephemeral port")
        .port()
}

/// A running `mm-scorer` process.
pub struct ScorerProcess {
    child: Child,
    pub url: String,
    pub log: PathBuf,
    _logs: TempDir,
}

impl ScorerProcess {
    /// Starts `mm-scorer` on a free loopback port with `--set` overrides and extra env,
    /// and waits until it is ready.
    pub fn start(sets: &[String], env: &[(&str, &str)]) -> Self {
        Self::start_on(free_port(), sets, env)
    }

    /// Starts `mm-scorer` on `port` (to restart one where a proxy expects it).
    pub fn start_on(port: u16, sets: &[String], env: &[(&str, &str)]) -> Self {
        let mut scorer = Self::spawn_on(port, sets, env);
        scorer.wait_ready(Duration::from_secs(30));
        scorer
    }

    /// Starts `mm-scorer` on `port` without waiting for it to be ready. Scorers report
    /// ready at once unless `sets` gives `warmup.ready_timeout` (tests that have no proxy
    /// pushing statistics must not wait for a warm-up).
    pub fn spawn_on(port: u16, sets: &[String], env: &[(&str, &str)]) -> Self {
        let logs = TempDir::new("scorer-log");
        let log = logs.path().join("scorer.log");
        let mut command = Command::new(binary("mm-scorer"));
        command
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args([
                "--set",
                "shutdown.grace=2s",
                "--set",
                "shutdown.drain=300ms",
                "--set",
                "warmup.ready_timeout=0s",
            ])
            .args(sets.iter().flat_map(|s| ["--set", s.as_str()]))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = command.spawn().expect("starting mm-scorer");
        ScorerProcess {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            _logs: logs,
        }
    }

    /// A scorer serving a local store directory.
    pub fn local(store: &Path, sets: &[&str]) -> Self {
        let mut all = vec![format!("store.path={}", store.display())];
        all.extend(sets.iter().map(|s| s.to_string()));
        Self::start(&all, &[])
    }

    pub fn wait_ready(&mut self, timeout: Duration) {
        let started = Instant::now();
        let url = format!("{}/v2/health/ready", self.url);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("mm-scorer exited with {status}:\n{}", self.logs());
            }
            if blocking_get_status(&url) == Some(200) {
                return;
            }
            assert!(
                started.elapsed() < timeout,
                "mm-scorer not ready after {timeout:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `127.0.0.1:PORT`: the name the scorer reports in `x-mm-scorer` by default.
    pub fn addr(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Resident set size of the process, from /proc.
    pub fn rss_bytes(&self) -> u64 {
        self.status_bytes("VmRSS:")
    }

    /// The process's peak resident set size so far (`VmHWM`): the kernel's own high-water
    /// mark, so no sampling can miss a spike.
    pub fn peak_rss_bytes(&self) -> u64 {
        self.status_bytes("VmHWM:")
    }

    fn status_bytes(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc status"));
        kib * 1024
    }

    /// All samples of the Prometheus text exposition, keyed by `name{labels}`.
    pub async fn metrics(&self) -> Metrics {
        scrape(&self.url).await
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        terminate(&mut self.child)
    }
}

impl Drop for ScorerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `mm-proxy` process in front of scorers.
pub struct ProxyProcess {
    child: Child,
    pub url: String,
    pub log: PathBuf,
    _logs: TempDir,
}

impl ProxyProcess {
    /// Starts `mm-proxy` on a free port in front of `scorers` (`host:port`), with fast
    /// health checks for tests, and waits until every scorer passed the proxy's health check.
    pub fn start(scorers: &[&str], sets: &[&str]) -> Self {
        let logs = TempDir::new("proxy-log");
        let log = logs.path().join("proxy.log");
        let port = free_port();
        let mut command = Command::new(binary("mm-proxy"));
        command
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--scorers", &scorers.join(",")])
            .args([
                "--set",
                "shutdown.grace=1s",
                "--set",
                "health.interval=200ms",
            ])
            .args(["--set", "health.eject_for=1s", "--set", "pool.refresh=1s"])
            // A loopback connect that takes seconds means the proxy's own thread was starved
            // (debug builds, parallel tests, two cores), not a dead scorer: those are refused
            // at once. The 1 s default would eject a healthy owner and move its models.
            .args(["--set", "upstream.connect_timeout=5s"])
            .args(sets.iter().flat_map(|s| ["--set", s]))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = command.spawn().expect("starting mm-proxy");
        let mut proxy = ProxyProcess {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            _logs: logs,
        };
        let started = Instant::now();
        loop {
            if let Some(status) = proxy.child.try_wait().unwrap() {
                panic!("mm-proxy exited with {status}:\n{}", proxy.logs());
            }
            // Ready means every scorer passed the proxy's health check: a test that starts
            // while one is still unchecked would see its models routed elsewhere.
            let healthy = blocking_get(&format!("{}/v2/health/ready", proxy.url))
                .filter(|(status, _)| *status == 200)
                .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
                .and_then(|v| v["healthy_scorers"].as_u64());
            if healthy == Some(scorers.len() as u64) {
                return proxy;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "mm-proxy not ready:\n{}",
                proxy.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn metrics(&self) -> Metrics {
        scrape(&self.url).await
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        terminate(&mut self.child)
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Prometheus samples of a process serving `/metrics` at `url`.
pub async fn scrape(url: &str) -> Metrics {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    Metrics::parse(&text)
}

/// SIGTERM, then the exit status.
fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    child.wait().unwrap()
}

fn blocking_get_status(url: &str) -> Option<u16> {
    blocking_get(url).map(|(status, _)| status)
}

/// A plain blocking GET (no runtime needed): the status and the body.
fn blocking_get(url: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/')?;
    let mut stream = std::net::TcpStream::connect(host).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((status, body.to_string()))
}

/// Parsed Prometheus samples.
#[derive(Debug, Default)]
pub struct Metrics(pub Vec<(String, f64)>);

impl Metrics {
    pub fn parse(text: &str) -> Self {
        Metrics(
            text.lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                .filter_map(|l| {
                    let (name, value) = l.rsplit_once(' ')?;
                    Some((name.to_string(), value.parse().ok()?))
                })
                .collect(),
        )
    }

    /// The sample named exactly `name` (with labels, if any, as printed), or 0.
    pub fn get(&self, name: &str) -> f64 {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .unwrap_or(0.0)
    }
}

/// GETs `url`, expects 200 and returns the JSON body.
pub async fn get_json(client: &reqwest::Client, url: &str) -> Value {
    let response = client.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    response.json().await.unwrap()
}

/// The demo models' reference inputs and outputs (computed by Python onnxruntime).
pub fn demo_reference() -> Vec<Value> {
    let text = std::fs::read_to_string(root().join("models/demo/reference.json")).unwrap();
    let value: Value = serde_json::from_str(&text).unwrap();
    value["models"].as_array().unwrap().clone()
}

/// The infer request body for one reference entry.
pub fn infer_body(reference: &Value) -> Value {
    serde_json::json!({ "id": "ref", "inputs": reference["inputs"] })
}

/// Asserts that an OIP response carries every reference output, within `tolerance`
/// (relative to magnitude, absolute below 1).
pub fn assert_outputs_match(response: &Value, reference: &Value, tolerance: f64) {
    let id = reference["id"].as_str().unwrap();
    let outputs = response["outputs"]
        .as_array()
        .unwrap_or_else(|| panic!("{id}: no outputs in {response}"));
    for expected in reference["outputs"].as_array().unwrap() {
        let name = expected["name"].as_str().unwrap();
        let got = outputs
            .iter()
            .find(|o| o["name"] == expected["name"])
            .unwrap_or_else(|| panic!("{id}: output {name} missing"));
        assert_eq!(
            got["datatype"], expected["datatype"],
            "{id}/{name} datatype"
        );
        assert_eq!(got["shape"], expected["shape"], "{id}/{name} shape");
        let got = got["data"].as_array().unwrap();
        let want = expected["data"].as_array().unwrap();
        assert_eq!(got.len(), want.len(), "{id}/{name} length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let (g, w) = (as_f64(g), as_f64(w));
            assert!(
                (g - w).abs() <= tolerance * w.abs().max(1.0),
                "{id}/{name}[{i}]: got {g}, want {w}"
            );
        }
    }
}

fn as_f64(value: &Value) -> f64 {
    match value {
        Value::Bool(b) => f64::from(u8::from(*b)),
        other => other
            .as_f64()
            .unwrap_or_else(|| panic!("not a number: {other}")),
    }
}

/// An OIP request for a generated model: `rows` rows of deterministic inputs.
pub fn generated_rows(features: usize, rows: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..rows)
        .map(|_| {
            (0..features)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
                })
                .collect()
        })
        .collect()
}

pub fn rows_body(rows: &[Vec<f32>]) -> Value {
    let features = rows[0].len();
    let data: Vec<f32> = rows.iter().flatten().copied().collect();
    serde_json::json!({ "inputs": [{ "name": "input", "shape": [rows.len(), features], "datatype": "FP32", "data": data }] })
}
