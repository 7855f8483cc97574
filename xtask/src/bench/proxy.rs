//! `cargo xtask bench proxy`: the proxy's overhead: the same hot tiny model straight to a
//! scorer and through the proxy, same tools, same run; CPU per request of each process
//! at saturation.

use std::path::Path;

use anyhow::Result;
use manymodels_tests::http::post_ok;
use manymodels_tests::reference::{one_row_body, reference};

use super::{percentile, wrk};

pub fn run(seconds: u64, connections: usize) -> Result<()> {
    let body = one_row_body(&reference("linear-small"));
    let scorer = super::scorer(Path::new("models/demo"), 18_011, &[])?;
    let proxy = super::proxy(18_010, &[scorer.addr()], &[])?;
    let path = "/v2/models/linear-small/infer";
    post_ok(&format!("{}{path}", proxy.url), &body.to_string())?;
    println!(
        "| path | probe p50 | probe p99 | wrk 1 conn p50 | wrk 1 conn p99 | wrk {connections} conns req/s | wrk {connections} conns p99 | proxy CPU µs/req | scorer CPU µs/req |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (label, base, through_proxy) in [
        ("direct to the scorer", &scorer.url, false),
        ("through the proxy", &proxy.url, true),
    ] {
        let url = format!("{base}{path}");
        let wrk::Figures {
            probed,
            single,
            loaded,
            cpu,
        } = wrk::measure(&url, &body, seconds, connections, &[&proxy, &scorer])?;
        let (proxy_cpu, scorer_cpu) = (cpu[0], cpu[1]);
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
