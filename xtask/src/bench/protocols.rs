//! `cargo xtask bench protocols`: the same model through the proxy over three encodings of
//! the Open Inference Protocol, in one run: JSON REST, REST with the binary tensor
//! extension, and gRPC (raw tensors). A batch of `--rows` rows per request (throughput,
//! latency, proxy and scorer CPU per row), then single-row hot hits (latency). The
//! encodings take turns in rounds, so drift on this shared machine falls on all alike.
//!
//! Clients: reqwest for REST and tonic for gRPC, both on hyper, one request at a time on
//! one kept-alive connection; request bodies are encoded once up front, and answers are
//! read whole but not decoded (gRPC's are decoded by tonic, the cost of using it).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use manymodels_tests::grpc::{self, pb};
use manymodels_tests::process::Process;
use manymodels_tests::reference::{generated_rows, reference};
use serde_json::json;

use super::{median, percentile};

#[derive(Args)]
pub struct ProtocolsArgs {
    /// Demo models to measure (one FP32 input each).
    #[arg(long, default_values_t = ["linear-small".to_string(), "forest-1mb".to_string()])]
    models: Vec<String>,
    /// Rows per batch request.
    #[arg(long, default_value_t = 10_000)]
    rows: usize,
    /// Batch requests per encoding, over all rounds.
    #[arg(long, default_value_t = 150)]
    batches: usize,
    /// Single-row requests per encoding, over all rounds.
    #[arg(long, default_value_t = 6_000)]
    singles: usize,
    /// Rounds the requests of each encoding are split into, taking turns.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Json,
    Binary,
    Grpc,
}

impl Encoding {
    const ALL: [Encoding; 3] = [Encoding::Json, Encoding::Binary, Encoding::Grpc];

    fn label(self) -> &'static str {
        match self {
            Encoding::Json => "REST, JSON",
            Encoding::Binary => "REST, binary tensors",
            Encoding::Grpc => "gRPC, raw tensors",
        }
    }
}

/// One request, encoded for each encoding.
struct Bodies {
    json: Vec<u8>,
    binary: Vec<u8>,
    binary_header: usize,
    grpc: pb::ModelInferRequest,
}

fn bodies(model: &str, input: &str, output: &str, rows: &[Vec<f32>]) -> Bodies {
    let features = rows[0].len();
    let data: Vec<f32> = rows.iter().flatten().copied().collect();
    let shape = json!([rows.len(), features]);
    let json =
        json!({"inputs": [{"name": input, "shape": shape, "datatype": "FP32", "data": data}]});
    let raw: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    let header = json!({
        "inputs": [{"name": input, "shape": shape, "datatype": "FP32",
                    "parameters": {"binary_data_size": raw.len()}}],
        "outputs": [{"name": output, "parameters": {"binary_data": true}}],
    })
    .to_string();
    let mut binary = header.clone().into_bytes();
    binary.extend_from_slice(&raw);
    let mut grpc = grpc::infer_request(model, &json["inputs"], true);
    grpc.id.clear();
    Bodies {
        json: json.to_string().into_bytes(),
        binary,
        binary_header: header.len(),
        grpc,
    }
}

struct Client {
    http: reqwest::Client,
    grpc: pb::grpc_inference_service_client::GrpcInferenceServiceClient<tonic::transport::Channel>,
    base: String,
    model: String,
}

impl Client {
    /// A client of `model` at `server`, over REST and gRPC.
    async fn connect(server: &Process, model: &str) -> Self {
        Client {
            http: reqwest::Client::new(),
            grpc: grpc::connect(server.addr()).await,
            base: server.url.clone(),
            model: model.to_string(),
        }
    }

    /// Warms up: the model loaded and every connection open, by one request of each of
    /// `bodies` in each encoding.
    async fn warm(&mut self, bodies: &[&Bodies]) -> Result<()> {
        for encoding in Encoding::ALL {
            for body in bodies {
                self.send(encoding, body).await?;
            }
        }
        Ok(())
    }

    /// Sends one request; the time to the whole answer.
    async fn send(&mut self, encoding: Encoding, bodies: &Bodies) -> Result<Duration> {
        let started = Instant::now();
        let url = format!("{}/v2/models/{}/infer", self.base, self.model);
        match encoding {
            Encoding::Json | Encoding::Binary => {
                let request = self.http.post(&url);
                let request = if encoding == Encoding::Json {
                    request
                        .header("content-type", "application/json")
                        .body(bodies.json.clone())
                } else {
                    request
                        .header("content-type", "application/octet-stream")
                        .header("inference-header-content-length", bodies.binary_header)
                        .body(bodies.binary.clone())
                };
                let response = request.send().await?;
                let status = response.status();
                let answer = response.bytes().await?;
                if !status.is_success() {
                    bail!("{url}: {status} {}", String::from_utf8_lossy(&answer));
                }
            }
            Encoding::Grpc => {
                self.grpc
                    .model_infer(grpc::routed(&self.model, bodies.grpc.clone()))
                    .await
                    .with_context(|| format!("gRPC {}", self.model))?;
            }
        }
        Ok(started.elapsed())
    }
}

/// What one encoding did: each request's time, and the CPU the proxy and the scorer spent.
#[derive(Default)]
struct Tally {
    times: Vec<Duration>,
    wall: Duration,
    proxy_cpu: f64,
    scorer_cpu: f64,
}

async fn measure(
    client: &mut Client,
    bodies: &Bodies,
    per_encoding: usize,
    rounds: usize,
    processes: [&Process; 2],
) -> Result<[Tally; 3]> {
    let mut tallies: [Tally; 3] = Default::default();
    let per_round = per_encoding.div_ceil(rounds);
    for _ in 0..rounds {
        for (encoding, tally) in Encoding::ALL.into_iter().zip(tallies.iter_mut()) {
            let cpu = processes.map(Process::cpu_seconds);
            let started = Instant::now();
            for _ in 0..per_round {
                tally.times.push(client.send(encoding, bodies).await?);
            }
            tally.wall += started.elapsed();
            tally.proxy_cpu += processes[0].cpu_seconds() - cpu[0];
            tally.scorer_cpu += processes[1].cpu_seconds() - cpu[1];
        }
    }
    for tally in &mut tallies {
        tally.times.sort();
    }
    Ok(tallies)
}

pub fn run(args: ProtocolsArgs) -> Result<()> {
    let scorer = super::scorer(Path::new("models/demo"), 18_031, &[])?;
    let proxy = super::proxy(18_030, &[scorer.addr()], &[])?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    print_batch_header();
    let mut singles_table = Vec::new();
    for model in &args.models {
        let (batch, single) = model_bodies(model, args.rows)?;
        let servers = [&*proxy as &Process, &*scorer as &Process];
        singles_table
            .extend(runtime.block_on(measure_model(&args, model, servers, &batch, &single))?);
    }
    print_singles(&singles_table);
    Ok(())
}

/// Prints the set-up and the batch table's header.
fn print_batch_header() {
    println!(
        "Through the proxy to one scorer, release builds; proxy, scorer and this client share \
         the machine's 2 vCPUs. One request at a time on one connection."
    );
    println!();
    println!(
        "| model | encoding | rows/request | requests | rows/s | p50 ms | p99 ms | proxy CPU ns/row | scorer CPU ns/row | request bytes |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
}

/// The batch request of `rows` rows and the single-row request for `model`, shaped as
/// its reference says.
fn model_bodies(model: &str, rows: usize) -> Result<(Bodies, Bodies)> {
    let reference = reference(model);
    let input = &reference["inputs"][0];
    let features = input["shape"][1].as_u64().context("input shape")? as usize;
    let input_name = input["name"].as_str().context("input name")?;
    let output_name = reference["outputs"][0]["name"].as_str().context("output")?;
    let batch = bodies(
        model,
        input_name,
        output_name,
        &generated_rows(features, rows, 7),
    );
    let single = bodies(
        model,
        input_name,
        output_name,
        &generated_rows(features, 1, 8),
    );
    Ok((batch, single))
}

/// One model: batches through the proxy (their rows printed at once), then single rows
/// through the proxy and straight to the scorer; returns the single-row rows, printed
/// after every model. `servers`: the proxy, then the scorer.
async fn measure_model(
    args: &ProtocolsArgs,
    model: &str,
    servers: [&Process; 2],
    batch: &Bodies,
    single: &Bodies,
) -> Result<Vec<String>> {
    let mut client = Client::connect(servers[0], model).await;
    client.warm(&[single, batch]).await?;
    let tallies = measure(&mut client, batch, args.batches, args.rounds, servers).await?;
    print_batch_rows(model, args.rows, batch, &tallies);
    let mut direct = Client::connect(servers[1], model).await;
    direct.warm(&[single]).await?;
    let mut rows = Vec::new();
    for (path, client) in [("proxy", &mut client), ("direct", &mut direct)] {
        let tallies = measure(client, single, args.singles, args.rounds, servers).await?;
        rows.extend(singles_rows(model, path, &tallies));
    }
    Ok(rows)
}

/// Prints the batch table's row of each encoding.
fn print_batch_rows(model: &str, rows_per_request: usize, batch: &Bodies, tallies: &[Tally; 3]) {
    for (encoding, tally) in Encoding::ALL.into_iter().zip(tallies) {
        let rows = (tally.times.len() * rows_per_request) as f64;
        let bytes = match encoding {
            Encoding::Json => batch.json.len(),
            Encoding::Binary => batch.binary.len(),
            Encoding::Grpc => prost::Message::encoded_len(&batch.grpc),
        };
        println!(
            "| {model} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.0} | {:.0} | {bytes} |",
            encoding.label(),
            rows_per_request,
            tally.times.len(),
            rows / tally.wall.as_secs_f64(),
            median(tally.times.clone()).as_secs_f64() * 1e3,
            percentile(&tally.times, 0.99) / 1e3,
            tally.proxy_cpu * 1e9 / rows,
            tally.scorer_cpu * 1e9 / rows,
        );
    }
}

/// The single-row table's row of each encoding on `path` (`proxy` or `direct`; the
/// proxy's CPU only counts through it).
fn singles_rows(model: &str, path: &str, tallies: &[Tally; 3]) -> Vec<String> {
    Encoding::ALL
        .into_iter()
        .zip(tallies)
        .map(|(encoding, tally)| {
            let n = tally.times.len() as f64;
            format!(
                "| {model} | {path} | {} | {} | {:.0} | {:.0} | {:.0} | {} | {:.1} |",
                encoding.label(),
                tally.times.len(),
                percentile(&tally.times, 0.5),
                percentile(&tally.times, 0.99),
                n / tally.wall.as_secs_f64(),
                if path == "proxy" {
                    format!("{:.1}", tally.proxy_cpu * 1e6 / n)
                } else {
                    "-".to_string()
                },
                tally.scorer_cpu * 1e6 / n,
            )
        })
        .collect()
}

/// Prints the single-row table, every model's rows.
fn print_singles(rows: &[String]) {
    println!();
    println!("Single-row hot hits, same run, through the proxy and straight to the scorer:");
    println!();
    println!(
        "| model | path | encoding | requests | p50 µs | p99 µs | req/s | proxy CPU µs/req | scorer CPU µs/req |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
}
