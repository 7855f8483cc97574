//! The scorer's own time for a hot hit, without sockets: the whole axum router (body read,
//! JSON parse, cache look-up, the engine's call, JSON response) called in process,
//! `requests` times in a row after 100 warm-up requests. `cargo xtask bench hot` runs it for
//! its "in-process handler" column, so the benchmarks need not link the scorer.
//!
//! Usage: `in_process_handler MODEL BODY_FILE REQUESTS [KEY=VALUE ...]` (configuration sets,
//! as `--set` takes them). Prints each request's time in nanoseconds, one a line.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use tower::ServiceExt;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [id, body_file, requests, sets @ ..] = args.as_slice() else {
        bail!("usage: in_process_handler MODEL BODY_FILE REQUESTS [KEY=VALUE ...]");
    };
    let requests: usize = requests.parse().context("REQUESTS is a count")?;
    let body = std::fs::read_to_string(body_file).with_context(|| body_file.clone())?;
    let config = manymodels_config::scorer::ScorerConfig::load(&manymodels_config::Sources {
        file: None,
        env: Vec::new(),
        sets: sets.to_vec(),
    })?;
    let scorer = manymodels_scorer::Scorer::new(config)?;
    let app = manymodels_scorer::app(scorer);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let times = runtime.block_on(async {
        let mut times = Vec::with_capacity(requests);
        for i in 0..requests + 100 {
            let request = axum::http::Request::post(format!("/v2/models/{id}/infer"))
                .header("content-type", "application/json")
                .body(axum::body::Body::from(body.clone()))?;
            let started = Instant::now();
            let response = app.clone().oneshot(request).await?;
            let _ = axum::body::to_bytes(response.into_body(), usize::MAX).await?;
            if i >= 100 {
                times.push(started.elapsed());
            }
        }
        anyhow::Ok(times)
    })?;
    let out: String = times
        .iter()
        .map(|t| format!("{}\n", t.as_nanos()))
        .collect();
    print!("{out}");
    Ok(())
}
