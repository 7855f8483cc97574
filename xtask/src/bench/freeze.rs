//! `cargo xtask bench freeze`: one scorer of three frozen (SIGSTOP, its port still accepting)
//! for `--freeze` seconds under `--clients` closed-loop clients, with hedging on and off,
//! rounds alternating in one run. Each round starts a fresh pool (release binaries, the
//! production defaults but for `hedge.enabled`), warms the demo models everywhere they
//! route, and sends requests for `--before` seconds, then freezes scorer 0, thaws it after
//! `--freeze` seconds and goes on for `--after` seconds. Reported per round: the normal
//! p99 (requests sent outside the freeze), the slowest request and how far past the normal
//! p99 it was, failures, and hedges (sent, won) outside and during the freeze from the
//! proxy's counters scraped at the freeze's edges.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Args;
use manymodels_tests::http::KeepAlive;
use manymodels_tests::reference::reference;
use manymodels_tests::store::demo_store;
use manymodels_tests::{ProxyProcess, ScorerProcess, infer_body};

use super::percentile;

#[derive(Args, Clone, Debug)]
pub struct FreezeArgs {
    /// Rounds per setting, alternating on, off, on, off, ...
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Seconds of traffic before the freeze.
    #[arg(long, default_value_t = 10)]
    before: u64,
    /// Seconds scorer 0 stays frozen.
    #[arg(long, default_value_t = 10)]
    freeze: u64,
    /// Seconds of traffic after it thaws.
    #[arg(long, default_value_t = 10)]
    after: u64,
}

const IDS: [&str; 6] = [
    "linear-small",
    "gbm-store",
    "linear-f64",
    "logistic-churn",
    "int32-scaler",
    "lightgbm-demand",
];

/// One request: when it was sent (from the round's start), its status (`None`: the
/// connection dropped) and how long it took.
struct Sent {
    at: Duration,
    status: Option<u16>,
    took: Duration,
}

/// The proxy's hedge counters at one moment.
#[derive(Clone, Copy, Default)]
struct Hedges {
    sent: f64,
    won: f64,
    ejections: f64,
}

impl Hedges {
    fn scrape(proxy: &ProxyProcess) -> Hedges {
        let metrics = proxy.metrics_blocking();
        Hedges {
            sent: metrics.get("mm_proxy_hedges_total"),
            won: metrics.get("mm_proxy_hedges_won_total"),
            ejections: metrics.get("mm_proxy_stall_ejections_total"),
        }
    }

    fn minus(self, other: Hedges) -> Hedges {
        Hedges {
            sent: self.sent - other.sent,
            won: self.won - other.won,
            ejections: self.ejections - other.ejections,
        }
    }
}

pub fn run(args: FreezeArgs) -> Result<()> {
    println!(
        "cargo xtask bench freeze --rounds {} --clients {} --before {} --freeze {} --after {}",
        args.rounds, args.clients, args.before, args.freeze, args.after
    );
    println!(
        "3 scorers, 1 proxy and {} load clients share this machine's cores; demo models, all hot",
        args.clients
    );
    println!();
    println!(
        "| hedging | requests | failed | normal p50 ms | normal p99 ms | slowest ms | slowest − normal p99 ms | in freeze: requests, slowest ms | hedges outside the freeze (% of those requests) | hedges in the freeze (won) | stall ejections |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let bodies: Vec<String> = IDS
        .iter()
        .map(|id| infer_body(&reference(id)).to_string())
        .collect();
    for round in 0..args.rounds * 2 {
        let hedging = round % 2 == 0;
        let (scorers, proxy) = start_pool(hedging)?;
        let addr = proxy.addr().to_string();
        // Warm every model on the scorers it routes to.
        let mut client = KeepAlive::connect(&addr)?;
        for _ in 0..4 {
            for (id, body) in IDS.iter().zip(&bodies) {
                let (status, _) = client.post(&format!("/v2/models/{id}/infer"), body)?;
                if status != 200 {
                    bail!("warming {id}: {status}");
                }
            }
        }
        let stop = AtomicBool::new(false);
        let started = Instant::now();
        let freeze_at = Duration::from_secs(args.before);
        let thaw_at = freeze_at + Duration::from_secs(args.freeze);
        let end = thaw_at + Duration::from_secs(args.after);
        let victim = scorers[0].pid();
        let (sent, at_freeze, at_thaw) = std::thread::scope(|scope| -> Result<_> {
            let workers: Vec<_> = (0..args.clients)
                .map(|w| {
                    let (addr, bodies, stop) = (&addr, &bodies, &stop);
                    scope.spawn(move || -> Result<Vec<Sent>> {
                        let mut client = KeepAlive::connect(addr)?;
                        let mut sent = Vec::new();
                        let mut i = w;
                        // Bounded by time (and so in count).
                        while !stop.load(Ordering::Relaxed) {
                            let k = i % IDS.len();
                            i += 1;
                            let at = started.elapsed();
                            let path = format!("/v2/models/{}/infer", IDS[k]);
                            match client.post(&path, &bodies[k]) {
                                Ok((status, took)) => sent.push(Sent {
                                    at,
                                    status: Some(status),
                                    took,
                                }),
                                Err(_) => {
                                    sent.push(Sent {
                                        at,
                                        status: None,
                                        took: started.elapsed() - at,
                                    });
                                    client = KeepAlive::connect(addr)?;
                                }
                            }
                        }
                        Ok(sent)
                    })
                })
                .collect();
            std::thread::sleep(freeze_at.saturating_sub(started.elapsed()));
            let at_freeze = Hedges::scrape(&proxy);
            signal("STOP", victim)?;
            std::thread::sleep(thaw_at.saturating_sub(started.elapsed()));
            signal("CONT", victim)?;
            let at_thaw = Hedges::scrape(&proxy);
            std::thread::sleep(end.saturating_sub(started.elapsed()));
            stop.store(true, Ordering::Relaxed);
            let mut sent = Vec::new();
            for worker in workers {
                sent.extend(worker.join().expect("load client")?);
            }
            Ok((sent, at_freeze, at_thaw))
        })?;
        let at_end = Hedges::scrape(&proxy);
        let in_freeze = |s: &&Sent| s.at >= freeze_at && s.at < thaw_at;
        let mut normal: Vec<Duration> = sent
            .iter()
            .filter(|s| !in_freeze(s))
            .map(|s| s.took)
            .collect();
        normal.sort();
        let frozen: Vec<&Sent> = sent.iter().filter(in_freeze).collect();
        let failed = sent.iter().filter(|s| s.status != Some(200)).count();
        let slowest = sent.iter().map(|s| s.took).max().unwrap_or_default();
        let slowest_frozen = frozen.iter().map(|s| s.took).max().unwrap_or_default();
        // `percentile` is in microseconds.
        let p99 = percentile(&normal, 0.99) / 1e3;
        let during = at_thaw.minus(at_freeze);
        let outside = at_end.minus(during);
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "| {} | {} | {failed} | {:.2} | {p99:.2} | {:.1} | {:.1} | {}, {:.1} | {} ({:.2}%) | {} ({}) | {} |",
            if hedging { "on" } else { "off" },
            sent.len(),
            percentile(&normal, 0.50) / 1e3,
            ms(slowest),
            ms(slowest) - p99,
            frozen.len(),
            ms(slowest_frozen),
            outside.sent,
            100.0 * outside.sent / normal.len().max(1) as f64,
            during.sent,
            during.won,
            at_end.ejections,
        );
        drop(proxy);
        drop(scorers);
    }
    Ok(())
}

/// Three release scorers on the demo store and a proxy with the production defaults but
/// `hedge.enabled`.
fn start_pool(hedging: bool) -> Result<(Vec<ScorerProcess>, ProxyProcess)> {
    let store = demo_store();
    let ports = [18_141u16, 18_142, 18_143];
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let scorers = ports
        .iter()
        .map(|&p| super::scorer(&store, p, &[]))
        .collect::<Result<Vec<_>>>()?;
    let set = format!("hedge.enabled={hedging}");
    let proxy = super::proxy(18_140, &addrs, &[&set])?;
    Ok((scorers, proxy))
}

fn signal(signal: &str, pid: u32) -> Result<()> {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()?;
    if !status.success() {
        bail!("kill -{signal} {pid} failed");
    }
    Ok(())
}
