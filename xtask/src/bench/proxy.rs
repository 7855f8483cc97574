//! `cargo xtask bench proxy`: the proxy's overhead: the same hot tiny model straight to a
//! scorer and through the proxy, same tools, same run; CPU per request of each process
//! at saturation.

use std::path::Path;

use anyhow::Result;
use manymodels_tests::http::post_ok;
use manymodels_tests::reference::{one_row_body, reference};

use super::wrk;

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
        let figures = wrk::measure(&url, &body, seconds, connections, &[&proxy, &scorer])?;
        let (proxy_cpu, scorer_cpu) = (figures.cpu[0], figures.cpu[1]);
        let requests = figures.loaded.requests;
        println!(
            "| {label} | {} | {} | {:.1} |",
            figures.columns(),
            if through_proxy {
                format!("{:.1}", proxy_cpu * 1e6 / requests)
            } else {
                "-".into()
            },
            scorer_cpu * 1e6 / requests,
        );
    }
    Ok(())
}
