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
