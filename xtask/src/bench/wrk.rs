//! wrk, the closed-loop load generator, and the measurement the `hot` and `proxy`
//! benches make of one URL with it and the harness's probe.

use std::process::Command;

use anyhow::{Context, Result, bail};
use manymodels_tests::http::probe_with;
use manymodels_tests::process::Process;
use serde_json::Value;

pub(crate) struct WrkResult {
    pub p50_us: f64,
    pub p99_us: f64,
    pub requests_per_sec: f64,
    pub requests: f64,
    pub errors: bool,
}

pub(crate) fn wrk(
    url: &str,
    body: &Value,
    threads: usize,
    connections: usize,
    seconds: u64,
    headers: &[(&str, &str)],
) -> Result<WrkResult> {
    let script = std::env::temp_dir().join(format!("mm-wrk-{}.lua", std::process::id()));
    let body = serde_json::to_string(body)?;
    let headers: String = headers
        .iter()
        .map(|(name, value)| format!("wrk.headers[\"{name}\"] = \"{value}\"\n"))
        .collect();
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\n{headers}wrk.body = [[{body}]]\n\
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

/// One URL measured three ways, in this order: 20,000 requests on one keep-alive
/// connection (the probe), wrk with one connection, wrk with `connections`; and the CPU
/// time each of `processes` spent during the last. Every request carries `headers`.
pub(crate) struct Figures {
    /// The probe's round-trip times, sorted.
    pub probed: Vec<std::time::Duration>,
    pub single: WrkResult,
    pub loaded: WrkResult,
    /// CPU seconds per process during the `connections` run, in the order given.
    pub cpu: Vec<f64>,
}

impl Figures {
    /// The table cells `probe p50 | probe p99 | wrk 1 conn p50 | wrk 1 conn p99 | wrk N
    /// conns req/s | wrk N conns p99`.
    pub fn columns(&self) -> String {
        format!(
            "{:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} | {:.0} µs",
            super::percentile(&self.probed, 0.5),
            super::percentile(&self.probed, 0.99),
            self.single.p50_us,
            self.single.p99_us,
            self.loaded.requests_per_sec,
            self.loaded.p99_us,
        )
    }
}

pub(crate) fn measure(
    url: &str,
    body: &Value,
    seconds: u64,
    connections: usize,
    processes: &[&Process],
    headers: &[(&str, &str)],
) -> Result<Figures> {
    let mut probed = probe_with(url, &body.to_string(), 20_000, headers)?;
    probed.sort();
    let single = wrk(url, body, 1, 1, seconds, headers)?;
    let before: Vec<f64> = processes.iter().map(|p| p.cpu_seconds()).collect();
    let loaded = wrk(url, body, 2, connections, seconds, headers)?;
    let cpu = processes
        .iter()
        .zip(before)
        .map(|(p, before)| p.cpu_seconds() - before)
        .collect();
    if single.errors || loaded.errors {
        bail!("wrk saw errors for {url}");
    }
    Ok(Figures {
        probed,
        single,
        loaded,
        cpu,
    })
}
