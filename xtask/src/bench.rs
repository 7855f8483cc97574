//! Benchmarks recorded in BENCHMARKS.md. Each prints Markdown rows to paste, with the
//! command that made them. Servers run in release mode on 127.0.0.1; the load generator
//! is `wrk` (closed loop: the connection count is printed with every figure).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use manymodels_config::scorer::NativeEngine;
use manymodels_models::{Mix, Spec};
use manymodels_policy::sim;
use manymodels_policy::trace::{self as policy_trace, Shape, TraceSpec};
use manymodels_policy::{PolicyConfig, PoolStats};
use manymodels_scorer::engine::{self as runtime, Engines};
use manymodels_scorer::model_id::ModelId;
use manymodels_scorer::tensor::{DataType, NamedTensor, TensorData};
use serde_json::Value;

use crate::setup;

#[derive(Subcommand)]
pub enum Bench {
    /// Hot-hit latency at one connection and peak throughput, with wrk, against one
    /// release scorer.
    Hot {
        /// Demo models to measure.
        #[arg(long, default_values_t = ["linear-small".to_string(), "forest-1mb".to_string()])]
        models: Vec<String>,
        /// Seconds per wrk run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Connections for the throughput run.
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// Scorer configuration overrides (`key=value`), applied to the server and to the
        /// in-process handler alike.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
    /// ONNX Runtime's own per-call time (the floor) and cold-load cost by model size:
    /// file read, ORT session creation alone, the scorer's whole load, and a cold request
    /// over HTTP.
    Load {
        /// Repetitions per figure.
        #[arg(long, default_value_t = 7)]
        reps: usize,
    },
    /// Proxy overhead: the same hot tiny model straight to a scorer and through the proxy,
    /// same tools, same run; CPU per request of each process at saturation.
    Proxy {
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 32)]
        connections: usize,
    },
    /// The realistic workload (real scikit-learn models, heavy forests included; Zipf 1.0
    /// with drift and scans; closed-loop clients) through the proxy and three scorers, per
    /// engine setting, beside the naive baseline in the same run.
    Replay(crate::replay::ReplayArgs),
    /// Replays a generated trace through the proxy and three scorers and compares the pool
    /// hit ratio with the simulator's for the same trace and budget.
    SimReplay(ReplayArgs),
    /// The native engine against ONNX Runtime per model size class: load time, resident
    /// bytes, peak memory during a load, hot-hit latency.
    Engines(crate::engines::EnginesArgs),
    /// The offline cache simulator: the scorer's policy against LRU, moka's W-TinyLFU and
    /// Belady on generated many-model traces.
    Policy(crate::sim::SimArgs),
    /// A hot model's latency alone and while cold loads of big forests run beside it.
    HotUnderLoad(crate::hot_under_load::HotUnderLoadArgs),
    /// Publish-to-live delay of a hot model on a local and an Azure Blob (Azurite) store,
    /// and latency during swaps against steady state.
    Swap {
        /// Versions published per store.
        #[arg(long, default_value_t = 10)]
        publishes: u64,
        /// Requests per second on the hot model.
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
    },
    /// The proxy's per-request statistics cost and memory with many model ids.
    Stats {
        /// Distinct model ids.
        #[arg(long, default_value_t = 100_000)]
        ids: usize,
        #[arg(long, default_value_t = 2_000_000)]
        requests: usize,
    },
    /// Resident memory per 1,000 small (linear) models.
    Memory {
        #[arg(long, default_value_t = 1000)]
        models: usize,
    },
}

#[derive(clap::Args, Clone, Debug)]
pub struct ReplayArgs {
    /// Models in the generated store (realistic size mix).
    #[arg(long, default_value_t = 2_000)]
    models: usize,
    /// Traffic shape (zipf-<alpha>, drift, scan, daynight).
    #[arg(long, default_value = "zipf-1.0")]
    shape: String,
    #[arg(long, default_value_t = 60_000)]
    requests: usize,
    /// Requests per second (the trace's pace).
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Concurrent keep-alive clients.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// The pool's budget as a fraction of all models' estimated memory.
    #[arg(long, default_value_t = 0.1)]
    budget_fraction: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

pub fn run(which: Bench) -> Result<()> {
    setup::tools(&["cmake", "wrk"])?;
    setup::onnxruntime()?;
    if cfg!(debug_assertions) {
        // Benchmarks time in-process code too: run them from a release build of xtask.
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut command = vec!["run", "--quiet", "--release", "--package", "xtask", "--"];
        command.extend(args.iter().map(String::as_str));
        return setup::cargo(&command);
    }
    match which {
        Bench::Hot {
            models,
            seconds,
            connections,
            sets,
        } => hot(&models, seconds, connections, &sets),
        Bench::Load { reps } => load(reps),
        Bench::Policy(args) => crate::sim::run(args),
        Bench::HotUnderLoad(args) => crate::hot_under_load::run(args),
        Bench::Memory { models } => memory(models),
        Bench::Proxy {
            seconds,
            connections,
        } => proxy(seconds, connections),
        Bench::Replay(args) => crate::replay::run(args),
        Bench::SimReplay(args) => replay(args),
        Bench::Engines(args) => crate::engines::run(args),
        Bench::Stats { ids, requests } => stats_cost(ids, requests),
        Bench::Swap { publishes, rate } => crate::swap::run(publishes, rate),
    }
}

/// A release scorer process, killed on drop.
pub(crate) struct Server {
    child: Child,
    pub(crate) url: String,
}

impl Server {
    pub(crate) fn start(store: &Path, port: u16, sets: &[&str]) -> Result<Self> {
        Self::start_with_env(store, port, sets, &[])
    }

    /// A release scorer with extra environment variables.
    pub(crate) fn start_with_env(
        store: &Path,
        port: u16,
        sets: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        setup::cargo(&["build", "--release", "-p", "manymodels-scorer"])?;
        let binary = setup::target_dir().join("release/mm-scorer");
        let mut command = Command::new(binary);
        command
            .args(["--listen", &format!("127.0.0.1:{port}"), "--store"])
            .arg(store)
            .envs(env.iter().copied())
            // Started before their proxy: ready at once, not after a warm-up push.
            .args([
                "--set",
                "log.level=warn",
                "--set",
                "warmup.ready_timeout=0s",
            ]);
        for set in sets {
            command.args(["--set", set]);
        }
        let child = command.stdout(Stdio::null()).spawn()?;
        let url = format!("http://127.0.0.1:{port}");
        let server = Server { child, url };
        setup::wait_ready(
            &format!("{}/v2/health/ready", server.url),
            Duration::from_secs(30),
        )?;
        Ok(server)
    }

    /// A release proxy in front of `scorers`.
    pub(crate) fn proxy(port: u16, scorers: &[String], sets: &[&str]) -> Result<Self> {
        setup::cargo(&["build", "--release", "-p", "manymodels-proxy"])?;
        let mut command = Command::new(setup::target_dir().join("release/mm-proxy"));
        command
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--scorers",
                &scorers.join(","),
            ])
            .args(["--set", "log.level=warn", "--set", "shutdown.grace=1s"]);
        for set in sets {
            command.args(["--set", set]);
        }
        let child = command.stdout(Stdio::null()).spawn()?;
        let server = Server {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        setup::wait_ready(
            &format!("{}/v2/health/ready", server.url),
            Duration::from_secs(30),
        )?;
        Ok(server)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn addr(&self) -> String {
        self.url.trim_start_matches("http://").to_string()
    }

    pub(crate) fn metric(&self, name: &str) -> Result<f64> {
        let (_, text) = setup::http("GET", &format!("{}/metrics", self.url), "")?;
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0))
    }

    /// User plus system CPU seconds of the process so far.
    fn cpu_seconds(&self) -> Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .context("stat format")?
            .1
            .split_whitespace()
            .collect();
        let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
        Ok(ticks / 100.0)
    }

    fn rss_bytes(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("VmRSS")?;
        Ok(kib * 1024)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn demo_reference() -> Result<Vec<Value>> {
    let text = std::fs::read_to_string("models/demo/reference.json")?;
    let value: Value = serde_json::from_str(&text)?;
    Ok(value["models"].as_array().context("models array")?.clone())
}

/// The first row of a reference entry's inputs, as an OIP request body.
fn one_row_body(reference: &Value) -> Value {
    let inputs: Vec<Value> = reference["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|input| {
            let shape = input["shape"].as_array().unwrap();
            let rows = shape[0].as_u64().unwrap() as usize;
            let data = input["data"].as_array().unwrap();
            let per_row = data.len() / rows;
            let mut one = shape.clone();
            one[0] = 1.into();
            serde_json::json!({
                "name": input["name"], "datatype": input["datatype"], "shape": one,
                "data": data[..per_row].to_vec(),
            })
        })
        .collect();
    serde_json::json!({ "inputs": inputs })
}

/// The same row as typed tensors, for timing ONNX Runtime in-process.
pub(crate) fn one_row_tensors(body: &Value) -> Vec<NamedTensor> {
    body["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|input| {
            let datatype = DataType::parse(input["datatype"].as_str().unwrap()).unwrap();
            let values = input["data"].as_array().unwrap();
            let data = match datatype {
                DataType::Fp32 => {
                    TensorData::Fp32(values.iter().map(|v| v.as_f64().unwrap() as f32).collect())
                }
                DataType::Fp64 => {
                    TensorData::Fp64(values.iter().map(|v| v.as_f64().unwrap()).collect())
                }
                DataType::Int32 => {
                    TensorData::Int32(values.iter().map(|v| v.as_i64().unwrap() as i32).collect())
                }
                DataType::Int64 => {
                    TensorData::Int64(values.iter().map(|v| v.as_i64().unwrap()).collect())
                }
                DataType::Bool => {
                    TensorData::Bool(values.iter().map(|v| v.as_bool().unwrap()).collect())
                }
                DataType::Bytes => TensorData::Bytes(
                    values
                        .iter()
                        .map(|v| v.as_str().unwrap().to_string())
                        .collect(),
                ),
            };
            NamedTensor {
                name: input["name"].as_str().unwrap().to_string(),
                datatype,
                shape: input["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_i64().unwrap())
                    .collect(),
                data,
            }
        })
        .collect()
}

struct WrkResult {
    p50_us: f64,
    p99_us: f64,
    requests_per_sec: f64,
    requests: f64,
    errors: bool,
}

fn wrk(
    url: &str,
    body: &Value,
    threads: usize,
    connections: usize,
    seconds: u64,
) -> Result<WrkResult> {
    let script = std::env::temp_dir().join(format!("mm-wrk-{}.lua", std::process::id()));
    let body = serde_json::to_string(body)?;
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = [[{body}]]\n\
             done = function(summary, latency, requests)\n  io.write(string.format(\"MM p50=%d p99=%d\\n\", latency:percentile(50), latency:percentile(99)))\nend\n"
        ),
    )?;
    let output = Command::new("wrk")
        .args(["-t", &threads.to_string(), "-c", &connections.to_string()])
        .args(["-d", &format!("{seconds}s"), "--latency", "-s"])
        .arg(&script)
        .arg(url)
        .output()
        .context("running wrk (apt-get install -y wrk)")?;
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let field = |prefix: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    let mm = text
        .lines()
        .find(|l| l.starts_with("MM "))
        .context(text.clone())?;
    let value = |key: &str| -> f64 {
        mm.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    Ok(WrkResult {
        p50_us: value("p50="),
        p99_us: value("p99="),
        requests_per_sec: field("Requests/sec:").unwrap_or(f64::NAN),
        requests,
        errors: text.contains("Non-2xx") || text.contains("Socket errors"),
    })
}

/// A client on one keep-alive connection with blocking I/O: the least client-side
/// overhead per request, so the latency it sees is the server's plus loopback.
pub struct KeepAlive {
    host: String,
    reader: std::io::BufReader<std::net::TcpStream>,
    writer: std::net::TcpStream,
    line: String,
    payload: Vec<u8>,
}

impl KeepAlive {
    pub fn connect(host: &str) -> Result<Self> {
        let stream = std::net::TcpStream::connect(host)?;
        stream.set_nodelay(true)?;
        Ok(KeepAlive {
            host: host.to_string(),
            reader: std::io::BufReader::new(stream.try_clone()?),
            writer: stream,
            line: String::new(),
            payload: Vec::new(),
        })
    }

    /// POSTs `body` to `path`; returns the status and the round-trip time.
    pub fn post(&mut self, path: &str, body: &str) -> Result<(u16, Duration)> {
        use std::io::{BufRead, Read, Write};
        let started = Instant::now();
        write!(
            self.writer,
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        )?;
        let mut length = 0usize;
        let mut status = 0u16;
        loop {
            self.line.clear();
            if self.reader.read_line(&mut self.line)? == 0 {
                bail!("connection closed");
            }
            if let Some(rest) = self.line.strip_prefix("HTTP/1.1 ") {
                status = rest.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            } else if let Some(v) = self
                .line
                .to_ascii_lowercase()
                .strip_prefix("content-length:")
            {
                length = v.trim().parse()?;
            } else if self.line == "\r\n" {
                break;
            }
        }
        self.payload.resize(length, 0);
        self.reader.read_exact(&mut self.payload)?;
        Ok((status, started.elapsed()))
    }

    /// The body of the last answer.
    pub fn last_body(&self) -> &[u8] {
        &self.payload
    }
}

/// `requests` round trips on one keep-alive connection; every answer must be 200.
pub fn probe(url: &str, body: &str, requests: usize) -> Result<Vec<Duration>> {
    let rest = url.strip_prefix("http://").context("http:// URL")?;
    let (host, path) = rest.split_once('/').context("URL path")?;
    let path = format!("/{path}");
    let mut client = KeepAlive::connect(host)?;
    let mut times = Vec::with_capacity(requests);
    for _ in 0..requests {
        let (status, elapsed) = client.post(&path, body)?;
        if status != 200 {
            bail!("non-200 answer ({status}) from {url}");
        }
        times.push(elapsed);
    }
    Ok(times)
}

/// The scorer's own time for a hot hit, without sockets: the whole axum router (body
/// read, JSON parse, cache look-up, ONNX Runtime on a blocking thread, JSON response)
/// called in-process, `requests` times in a row.
fn in_process(id: &str, body: &str, requests: usize, sets: &[String]) -> Result<Vec<Duration>> {
    use tower::ServiceExt;
    let mut all = vec!["store.path=models/demo".to_string()];
    all.extend(sets.iter().cloned());
    let mut config = manymodels_config::scorer::ScorerConfig::load(&manymodels_config::Sources {
        file: None,
        env: Vec::new(),
        sets: all,
    })?;
    config.onnxruntime_library = Some(setup::onnxruntime()?);
    let scorer = manymodels_scorer::Scorer::new(config)?;
    let app = manymodels_scorer::app(scorer);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut times = Vec::with_capacity(requests);
        for i in 0..requests + 100 {
            let request = axum::http::Request::post(format!("/v2/models/{id}/infer"))
                .header("content-type", "application/json")
                .body(axum::body::Body::from(body.to_string()))?;
            let started = Instant::now();
            let response = app.clone().oneshot(request).await?;
            let _ = axum::body::to_bytes(response.into_body(), usize::MAX).await?;
            if i >= 100 {
                times.push(started.elapsed());
            }
        }
        Ok(times)
    })
}

/// The machine's floor for any request between two threads over loopback TCP: a
/// ping-pong of request-sized and response-sized messages, no HTTP, no work.
fn loopback_floor(
    request_bytes: usize,
    response_bytes: usize,
    rounds: usize,
) -> Result<Vec<Duration>> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        let mut request = vec![0u8; request_bytes];
        let response = vec![1u8; response_bytes];
        for _ in 0..rounds {
            stream.read_exact(&mut request)?;
            stream.write_all(&response)?;
        }
        Ok(())
    });
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let request = vec![2u8; request_bytes];
    let mut response = vec![0u8; response_bytes];
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        stream.write_all(&request)?;
        stream.read_exact(&mut response)?;
        times.push(started.elapsed());
    }
    server.join().expect("echo thread")?;
    times.sort();
    Ok(times)
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6
}

fn hot(models: &[String], seconds: u64, connections: usize, sets: &[String]) -> Result<()> {
    let references = demo_reference()?;
    let set_refs: Vec<&str> = sets.iter().map(String::as_str).collect();
    let server = Server::start(Path::new("models/demo"), 18_001, &set_refs)?;
    let environment = runtime::environment(None).map_err(anyhow::Error::msg)?;
    let floor = loopback_floor(200, 300, 20_000)?;
    println!(
        "Loopback TCP ping-pong between two threads (no HTTP, no work): p50 {:.0} µs, p99 {:.0} µs\n",
        percentile(&floor, 0.5),
        percentile(&floor, 0.99)
    );
    println!(
        "| model | engine | engine call p50 (floor) | in-process handler p50 | probe p50 | probe p99 | wrk 1 conn p50 | wrk 1 conn p99 | wrk {connections} conns req/s | wrk {connections} conns p99 | scorer CPU µs/req |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for id in models {
        let reference = references
            .iter()
            .find(|r| r["id"] == id.as_str())
            .with_context(|| format!("{id} is not a demo model"))?;
        let body = one_row_body(reference);
        let url = format!("{}/v2/models/{id}/infer", server.url);
        setup::http_post(&url, &body.to_string())?;
        // The floor: ONNX Runtime's own call on the same row, in-process.
        let bytes = std::fs::read(format!("models/demo/{id}/1/model.onnx"))?;
        // The engine the server uses for this model (native unless `engine.native=off`).
        let native = if sets.iter().any(|s| s == "engine.native=off") {
            NativeEngine::Off
        } else {
            NativeEngine::Auto
        };
        let engines = Engines {
            environment,
            native,
        };
        let model = engines
            .load(ModelId::parse(id).unwrap(), 1, &bytes, 0)
            .map_err(anyhow::Error::msg)?;
        let mut times = model
            .time_runs(&one_row_tensors(&body), 20_000)
            .map_err(anyhow::Error::msg)?;
        times.sort();
        let floor_us = times[times.len() / 2].as_secs_f64() * 1e6;
        let mut handler = in_process(id, &body.to_string(), 20_000, sets)?;
        handler.sort();
        let mut probed = probe(&url, &body.to_string(), 20_000)?;
        probed.sort();
        let single = wrk(&url, &body, 1, 1, seconds)?;
        let cpu_before = server.cpu_seconds()?;
        let loaded = wrk(&url, &body, 2, connections, seconds)?;
        let cpu = server.cpu_seconds()? - cpu_before;
        if single.errors || loaded.errors {
            bail!("wrk saw errors for {id}");
        }
        println!(
            "| {id} | {} | {floor_us:.1} µs | {:.1} µs | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} | {:.0} µs | {:.1} |",
            model.engine.as_str(),
            percentile(&handler, 0.5),
            percentile(&probed, 0.5),
            percentile(&probed, 0.99),
            single.p50_us,
            single.p99_us,
            loaded.requests_per_sec,
            loaded.p99_us,
            cpu * 1e6 / loaded.requests
        );
    }
    Ok(())
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn load(reps: usize) -> Result<()> {
    let environment = runtime::environment(None).map_err(anyhow::Error::msg)?;
    let scratch = std::env::temp_dir().join(format!("mm-bench-load-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    // (id, file, input width)
    let mut cases: Vec<(String, PathBuf, usize)> = [
        ("linear-small", 10),
        ("gbm-store", 12),
        ("lightgbm-demand", 16),
        ("forest-1mb", 20),
    ]
    .iter()
    .map(|(id, features)| {
        (
            id.to_string(),
            PathBuf::from(format!("models/demo/{id}/1/model.onnx")),
            *features,
        )
    })
    .collect();
    let generated = [
        (
            "gen-forest-100k",
            Spec::Forest {
                features: 16,
                trees: 30,
                depth: 6,
                seed: 3,
            },
        ),
        (
            "gen-forest-1mb",
            Spec::Forest {
                features: 16,
                trees: 60,
                depth: 9,
                seed: 4,
            },
        ),
        (
            "gen-forest-5mb",
            Spec::Forest {
                features: 16,
                trees: 160,
                depth: 10,
                seed: 5,
            },
        ),
    ];
    for (id, spec) in generated {
        let dir = scratch.join(id).join("1");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("model.onnx"),
            manymodels_models::build(&spec).bytes,
        )?;
        cases.push((id.to_string(), dir.join("model.onnx"), spec.features()));
    }
    // Serve the same files over HTTP for the cold-request column.
    let store = scratch.join("store");
    for (id, path, _) in &cases {
        let dir = store.join(id).join("1");
        std::fs::create_dir_all(&dir)?;
        std::fs::copy(path, dir.join("model.onnx"))?;
    }
    let server = Server::start(&store, 18_002, &["cache.budget=2GiB"])?;
    println!(
        "| model | file | read file | ORT session create | scorer load (read + create + measure) | measured weight | scorer load in the server (mean, from metrics) | cold request over HTTP | hot request over HTTP |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (id, path, features) in &cases {
        let features = *features;
        let bytes = std::fs::read(path)?;
        let read = median(
            (0..reps)
                .map(|_| {
                    let t = Instant::now();
                    let b = std::fs::read(path).unwrap();
                    assert_eq!(b.len(), bytes.len());
                    t.elapsed()
                })
                .collect(),
        );
        // Each repetition starts from a heap that has given its free memory back to the OS,
        // as the scorer's does after an eviction: the session's pages are faulted in fresh.
        let create = median(
            (0..reps)
                .map(|_| {
                    trim_heap();
                    let t = Instant::now();
                    let session = runtime::onnx::create_session(environment, &bytes).unwrap();
                    let elapsed = t.elapsed();
                    drop(session);
                    elapsed
                })
                .collect(),
        );
        let mut weight = 0;
        let whole = median(
            (0..reps)
                .map(|_| {
                    trim_heap();
                    let t = Instant::now();
                    let b = std::fs::read(path).unwrap();
                    let engines = Engines {
                        environment,
                        native: NativeEngine::Off,
                    };
                    let model = engines.load(ModelId::parse(id).unwrap(), 1, &b, 0).unwrap();
                    let elapsed = t.elapsed();
                    weight = model.weight;
                    elapsed
                })
                .collect(),
        );
        let body = serde_json::json!({"inputs":[{"name":"input","shape":[1,features],"datatype":"FP32","data":vec![0.5f32; features]}]});
        let url = format!("{}/v2/models/{id}/infer", server.url);
        let unload = format!("{}/v2/repository/models/{id}/unload", server.url);
        let load_metrics = || -> (f64, f64) {
            (
                server
                    .metric("mm_scorer_model_load_duration_seconds_sum")
                    .unwrap_or(0.0),
                server
                    .metric("mm_scorer_model_load_duration_seconds_count")
                    .unwrap_or(0.0),
            )
        };
        let (sum_before, count_before) = load_metrics();
        let cold = median(
            (0..reps)
                .map(|_| {
                    setup::http_post(&unload, "").unwrap();
                    let t = Instant::now();
                    setup::http_post(&url, &body.to_string()).unwrap();
                    t.elapsed()
                })
                .collect(),
        );
        let (sum_after, count_after) = load_metrics();
        let server_load_ms = (sum_after - sum_before) / (count_after - count_before).max(1.0) * 1e3;
        let hot = median(
            (0..reps)
                .map(|_| {
                    let t = Instant::now();
                    setup::http_post(&url, &body.to_string()).unwrap();
                    t.elapsed()
                })
                .collect(),
        );
        println!(
            "| {id} | {:.1} KB | {:.0} µs | {:.2} ms | {:.2} ms | {:.2} MB | {server_load_ms:.2} ms | {:.2} ms | {:.2} ms |",
            bytes.len() as f64 / 1e3,
            read.as_secs_f64() * 1e6,
            create.as_secs_f64() * 1e3,
            whole.as_secs_f64() * 1e3,
            weight as f64 / 1e6,
            cold.as_secs_f64() * 1e3,
            hot.as_secs_f64() * 1e3,
        );
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

pub(crate) fn trim_heap() {
    // SAFETY: malloc_trim only walks glibc's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn memory(models: usize) -> Result<()> {
    let store = std::env::temp_dir().join(format!("mm-bench-memory-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&store);
    manymodels_models::write_store(&store, models, Mix::Tiny, 11)?;
    let server = Server::start(&store, 18_003, &["cache.budget=4GiB"])?;
    let before = server.rss_bytes()?;
    let started = Instant::now();
    for i in 0..models {
        let id = manymodels_models::model_id(i);
        setup::http_post(
            &format!("{}/v2/repository/models/{id}/load", server.url),
            "",
        )?;
    }
    let elapsed = started.elapsed();
    let after = server.rss_bytes()?;
    let charged = server.metric("mm_scorer_resident_bytes")?;
    println!(
        "| models | RSS before | RSS after | RSS per 1,000 models | charged per 1,000 models | load time per model |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| {models} tiny linear | {:.1} MB | {:.1} MB | {:.1} MB | {:.1} MB | {:.2} ms |",
        before as f64 / 1e6,
        after as f64 / 1e6,
        (after - before) as f64 / 1e6 * 1000.0 / models as f64,
        charged / 1e6 * 1000.0 / models as f64,
        elapsed.as_secs_f64() * 1e3 / models as f64
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&store);
    Ok(())
}

fn proxy(seconds: u64, connections: usize) -> Result<()> {
    let references = demo_reference()?;
    let reference = references
        .iter()
        .find(|r| r["id"] == "linear-small")
        .context("linear-small")?;
    let body = one_row_body(reference);
    let scorer = Server::start(Path::new("models/demo"), 18_011, &[])?;
    let proxy = Server::proxy(18_010, &[scorer.addr()], &[])?;
    let path = "/v2/models/linear-small/infer";
    setup::http_post(&format!("{}{path}", proxy.url), &body.to_string())?;
    println!(
        "| path | probe p50 | probe p99 | wrk 1 conn p50 | wrk 1 conn p99 | wrk {connections} conns req/s | wrk {connections} conns p99 | proxy CPU µs/req | scorer CPU µs/req |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (label, server) in [
        ("direct to the scorer", &scorer),
        ("through the proxy", &proxy),
    ] {
        let url = format!("{}{path}", server.url);
        let mut probed = probe(&url, &body.to_string(), 20_000)?;
        probed.sort();
        let single = wrk(&url, &body, 1, 1, seconds)?;
        let (proxy_before, scorer_before) = (proxy.cpu_seconds()?, scorer.cpu_seconds()?);
        let loaded = wrk(&url, &body, 2, connections, seconds)?;
        let (proxy_cpu, scorer_cpu) = (
            proxy.cpu_seconds()? - proxy_before,
            scorer.cpu_seconds()? - scorer_before,
        );
        if single.errors || loaded.errors {
            bail!("wrk saw errors {label}");
        }
        let through_proxy = std::ptr::eq(server, &proxy);
        println!(
            "| {label} | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} | {:.0} µs | {} | {:.1} |",
            percentile(&probed, 0.5),
            percentile(&probed, 0.99),
            single.p50_us,
            single.p99_us,
            loaded.requests_per_sec,
            loaded.p99_us,
            if through_proxy {
                format!("{:.1}", proxy_cpu * 1e6 / loaded.requests)
            } else {
                "-".into()
            },
            scorer_cpu * 1e6 / loaded.requests,
        );
    }
    Ok(())
}

/// Replays a generated trace (the simulator's generator) over generated models through
/// the proxy and three scorers, paced at the trace's own times, and prints the live pool
/// hit ratio and loads beside the simulator's figures for the same trace, budget and
/// scorer names.
fn replay(args: ReplayArgs) -> Result<()> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let ReplayArgs {
        models,
        shape,
        requests,
        rate,
        concurrency,
        budget_fraction,
        seed,
    } = args;
    let shape: Shape = shape.parse().map_err(anyhow::Error::msg)?;
    let store = std::env::temp_dir().join(format!("mm-replay-{models}"));
    let marker = store.join(".complete");
    if !marker.exists() {
        let _ = std::fs::remove_dir_all(&store);
        manymodels_models::write_store(&store, models, Mix::Realistic, 42)?;
        std::fs::write(&marker, "")?;
    }
    // What each model will be charged: measured on these generated models, about 66 KB
    // plus 8.3 × the file (BENCHMARKS.md); the pool's budget is a fraction of all of it,
    // split evenly over the three scorers.
    let specs: Vec<Spec> = (0..models)
        .map(|i| manymodels_models::spec_for(i, Mix::Realistic, 42))
        .collect();
    let mut sizes = Vec::with_capacity(models);
    for i in 0..models {
        let file = std::fs::metadata(manymodels_models::model_path(&store, i))?.len();
        sizes.push(66_000 + file * 83 / 10);
    }
    let budget = (sizes.iter().sum::<u64>() as f64 * budget_fraction / 3.0) as u64;
    let trace = policy_trace::generate(&TraceSpec {
        shape,
        models,
        requests,
        rate,
        seed,
    });
    let ports = [18_021u16, 18_022, 18_023];
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let names: Vec<String> = (0..models).map(manymodels_models::model_id).collect();
    let simulated = sim::run_pool(&trace, &sizes, &names, &addrs, || {
        Box::new(sim::Managed::new(
            budget,
            PolicyConfig::default(),
            Some(2.0),
        ))
    });
    let lru = sim::run_pool(&trace, &sizes, &names, &addrs, || {
        Box::new(sim::Lru::new(budget))
    });

    let budget_set = format!("cache.budget={budget}");
    let scorers: Vec<Server> = ports
        .iter()
        .map(|&p| Server::start(&store, p, &[&budget_set]))
        .collect::<Result<_>>()?;
    let proxy = Server::proxy(18_020, &addrs, &[])?;
    let bodies: Vec<String> = specs
        .iter()
        .map(|spec| {
            let data = vec![0.25f32; spec.features()];
            serde_json::json!({"inputs":[{"name":"input","shape":[1,spec.features()],"datatype":"FP32","data":data}]}).to_string()
        })
        .collect();
    let next = AtomicUsize::new(0);
    let failures = AtomicUsize::new(0);
    let started = Instant::now();
    let mut latencies: Vec<Duration> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                scope.spawn(|| -> Result<Vec<Duration>> {
                    let mut client = KeepAlive::connect(&proxy.addr())?;
                    let mut times = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(request) = trace.get(i) else { break };
                        // Open loop at the trace's own pace (the policy's clock is real
                        // time); a worker that falls behind sends at once.
                        let due = Duration::from_secs_f64(request.t);
                        if let Some(wait) = due.checked_sub(started.elapsed()) {
                            std::thread::sleep(wait);
                        }
                        let model = request.model as usize;
                        let path = format!("/v2/models/{}/infer", names[model]);
                        let (status, elapsed) = client.post(&path, &bodies[model])?;
                        if status != 200 {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                        times.push(elapsed);
                    }
                    Ok(times)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("worker"))
            .collect::<Result<Vec<_>>>()
    })?
    .into_iter()
    .flatten()
    .collect();
    let elapsed = started.elapsed();
    latencies.sort();
    let (mut hits, mut misses, mut loads, mut warmups, mut not_admitted, mut displaced) =
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for scorer in &scorers {
        hits += scorer.metric("mm_scorer_cache_hits_total")?;
        misses += scorer.metric("mm_scorer_cache_misses_total")?;
        loads += scorer.metric("mm_scorer_model_loads_total")?;
        warmups += scorer.metric("mm_scorer_warmup_loads_total")?;
        not_admitted +=
            scorer.metric("mm_scorer_cache_evictions_total{reason=\"not_admitted\"}")?;
        displaced += scorer.metric("mm_scorer_cache_evictions_total{reason=\"capacity\"}")?;
    }
    // Loads the proxy asked for in the background (moving a model home, replication).
    let proxy_warms = proxy.metric("mm_proxy_warm_triggers_total")?;
    warmups += proxy_warms;
    let live_hit = hits / (hits + misses).max(1.0);
    println!(
        "trace: {shape}, {models} models, {requests} requests at {rate} req/s, seed {seed}; {concurrency} clients; budget per scorer {:.0} MB ({budget_fraction} of all models' memory over 3 scorers)",
        budget as f64 / 1e6
    );
    println!(
        "| | pool hit ratio | loads | warm-up loads (proxy-asked) | not admitted | displaced | req/s | p50 | p99 | failed |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| live (proxy + 3 scorers) | {live_hit:.3} | {loads} | {warmups} ({proxy_warms}) | {not_admitted} | {displaced} | {:.0} | {:.2} ms | {:.2} ms | {} |",
        requests as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.5) / 1e3,
        percentile(&latencies, 0.99) / 1e3,
        failures.load(Ordering::Relaxed),
    );
    println!(
        "| simulator, scorer policy | {:.3} | {} | | | | | | | |",
        simulated.hit_ratio(),
        simulated.misses
    );
    println!(
        "| simulator, LRU | {:.3} | {} | | | | | | | |",
        lru.hit_ratio(),
        lru.misses
    );
    println!(
        "live − simulated hit ratio: {:+.1} points; live loads − (simulated + warm-ups): {:+.0}",
        100.0 * (live_hit - simulated.hit_ratio()),
        loads - (simulated.misses as f64 + warmups)
    );
    drop(proxy);
    Ok(())
}

/// Times `PoolStats::record` the way the proxy calls it (through a mutex, by `&str`) on a
/// Zipf 1.0 stream over `ids` ids, then on a stream touching every id equally, and
/// prints the memory held.
fn stats_cost(ids: usize, requests: usize) -> Result<()> {
    use std::sync::{Arc, Mutex};
    let names: Vec<String> = (0..ids).map(|i| format!("store-{i:06}")).collect();
    println!("| stream | ids | requests | ns per request | tick (ms) | tracked ids | memory |");
    println!("|---|---|---|---|---|---|---|");
    for shape in ["zipf-1.0", "uniform"] {
        let order: Vec<usize> = if shape == "uniform" {
            (0..requests).map(|i| i * 7_919 % ids).collect()
        } else {
            policy_trace::generate(&TraceSpec {
                shape: Shape::Zipf(1.0),
                models: ids,
                requests,
                rate: 1e6,
                seed: 1,
            })
            .iter()
            .map(|r| r.model as usize)
            .collect()
        };
        let stats: Mutex<PoolStats<Arc<str>>> = Mutex::new(PoolStats::new(10.0, 16_384, 0.0));
        let started = Instant::now();
        let mut tick = Duration::ZERO;
        for (i, &m) in order.iter().enumerate() {
            stats
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(names[m].as_str());
            if i % 200_000 == 199_999 {
                // The proxy ticks once a second; here every 200,000 requests.
                let t = Instant::now();
                stats
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .tick(i as f64 / 1e5);
                tick += t.elapsed();
            }
        }
        let elapsed = started.elapsed() - tick;
        let ticks = (requests / 200_000).max(1) as f64;
        let stats = stats.into_inner().unwrap_or_else(|p| p.into_inner());
        let id_text: usize = stats.top(usize::MAX).iter().map(|(k, _)| k.len()).sum();
        println!(
            "| {shape} | {ids} | {requests} | {:.0} | {:.2} | {} | {:.2} MB |",
            elapsed.as_nanos() as f64 / requests as f64,
            tick.as_secs_f64() * 1e3 / ticks,
            stats.tracked(),
            (stats.memory_bytes() + id_text) as f64 / 1e6
        );
    }
    Ok(())
}
