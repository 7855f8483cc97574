//! `cargo xtask bench hot`: hot-hit latency at one connection and peak throughput against
//! one release scorer, beside the floors: the engine's own call, the whole handler
//! in-process, and a loopback TCP ping-pong.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use manymodels_config::scorer::NativeEngine;
use manymodels_contract::ModelId;
use manymodels_engine::{self as runtime, Engines};
use manymodels_tests::http::post_ok;
use manymodels_tests::reference::{demo_reference, one_row_body};

use super::{one_row_tensors, percentile, wrk};
use crate::setup;

/// The scorer's own time for a hot hit, without sockets: the whole axum router called
/// in-process `requests` times in a row, by the scorer's `in_process_handler` example (so
/// xtask does not link the scorer).
fn in_process(id: &str, body: &str, requests: usize, sets: &[String]) -> Result<Vec<Duration>> {
    setup::cargo(&[
        "build",
        "--quiet",
        "--release",
        "-p",
        "manymodels-scorer",
        "--example",
        "in_process_handler",
    ])?;
    let root = setup::workspace_root();
    let body_file = std::env::temp_dir().join(format!("mm-bench-hot-{}.json", std::process::id()));
    std::fs::write(&body_file, body)?;
    let mut all = vec![
        "store.path=models/demo".to_string(),
        format!("onnxruntime.library={}", setup::onnxruntime()?.display()),
    ];
    all.extend(sets.iter().cloned());
    let output =
        std::process::Command::new(root.join("target/release/examples/in_process_handler"))
            .current_dir(&root)
            .arg(id)
            .arg(&body_file)
            .arg(requests.to_string())
            .args(&all)
            .output()
            .context("running the in-process handler")?;
    let _ = std::fs::remove_file(&body_file);
    if !output.status.success() {
        anyhow::bail!(
            "the in-process handler failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8(output.stdout)?
        .lines()
        .map(|line| Ok(Duration::from_nanos(line.parse()?)))
        .collect()
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

pub fn run(models: &[String], seconds: u64, connections: usize, sets: &[String]) -> Result<()> {
    let references = demo_reference();
    let set_refs: Vec<&str> = sets.iter().map(String::as_str).collect();
    let server = super::scorer(Path::new("models/demo"), 18_001, &set_refs)?;
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
        post_ok(&url, &body.to_string())?;
        // The floor: ONNX Runtime's own call on the same row, in-process.
        let bytes = std::fs::read(format!("models/demo/{id}/1/model.onnx"))?;
        // The engine the server uses for this model (native unless `engine.native=off`).
        let native = if sets.iter().any(|s| s == "engine.native=off") {
            NativeEngine::Off
        } else {
            NativeEngine::Auto
        };
        let engines = Engines {
            environment: Some(environment),
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
        let figures = wrk::measure(&url, &body, seconds, connections, &[&server], &[])?;
        println!(
            "| {id} | {} | {floor_us:.1} µs | {:.1} µs | {} | {:.1} |",
            model.engine.as_str(),
            percentile(&handler, 0.5),
            figures.columns(),
            figures.cpu[0] * 1e6 / figures.loaded.requests
        );
    }
    Ok(())
}
