//! `cargo xtask bench proxy`: the proxy's overhead: the same hot tiny model straight to a
//! scorer, through a proxy without keys, and through a second proxy that checks a scoped
//! API key (a key limited to model-id prefixes, the heaviest check), and through a proxy
//! with hedging off (Pingora's own forwarding instead of the hedged exchange), same tools,
//! same run; CPU per request of each process at saturation.

use std::path::Path;

use anyhow::Result;
use manymodels_tests::http::post_ok;
use manymodels_tests::process::ProxyProcess;
use manymodels_tests::reference::{one_row_body, reference};

use super::wrk;

/// The keyed proxy's one API key: named, limited to ids starting with `linear-` or `tree-`.
const SCOPED_KEY: &str = "bench:bench-scoped-key:linear-|tree-";

pub fn run(seconds: u64, connections: usize) -> Result<()> {
    let body = one_row_body(&reference("linear-small"));
    let scorer = super::scorer(Path::new("models/demo"), 18_011, &[])?;
    let proxy = super::proxy(18_010, &[scorer.addr()], &[])?;
    let keyed = super::proxy(
        18_012,
        &[scorer.addr()],
        &[&format!("auth.api_keys={SCOPED_KEY}")],
    )?;
    let unhedged = super::proxy(18_013, &[scorer.addr()], &["hedge.enabled=false"])?;
    let path = "/v2/models/linear-small/infer";
    post_ok(&format!("{}{path}", proxy.url), &body.to_string())?;
    println!(
        "| path | probe p50 | probe p99 | wrk 1 conn p50 | wrk 1 conn p99 | wrk {connections} conns req/s | wrk {connections} conns p99 | proxy CPU µs/req | scorer CPU µs/req |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let bearer = format!(
        "Bearer {}",
        SCOPED_KEY.split(':').nth(1).unwrap_or_default()
    );
    let auth = [("Authorization", bearer.as_str())];
    let rows = [
        Route {
            label: "direct to the scorer",
            base: &scorer.url,
            proxy: None,
            headers: &[],
        },
        Route {
            label: "through the proxy",
            base: &proxy.url,
            proxy: Some(&proxy),
            headers: &[],
        },
        Route {
            label: "through the proxy, scoped API key",
            base: &keyed.url,
            proxy: Some(&keyed),
            headers: &auth,
        },
        Route {
            label: "through the proxy, hedging off",
            base: &unhedged.url,
            proxy: Some(&unhedged),
            headers: &[],
        },
    ];
    for Route {
        label,
        base,
        proxy: through,
        headers,
    } in rows
    {
        let url = format!("{base}{path}");
        let measured = [through.map(|p| &**p), Some(&*scorer)];
        let processes: Vec<_> = measured.into_iter().flatten().collect();
        let figures = wrk::measure(&url, &body, seconds, connections, &processes, headers)?;
        let requests = figures.loaded.requests;
        let scorer_cpu = figures.cpu[processes.len() - 1];
        println!(
            "| {label} | {} | {} | {:.1} |",
            figures.columns(),
            if through.is_some() {
                format!("{:.1}", figures.cpu[0] * 1e6 / requests)
            } else {
                "-".into()
            },
            scorer_cpu * 1e6 / requests,
        );
    }
    Ok(())
}

/// One way to the scorer: where requests go, the proxy on the way (if any) and the
/// headers every request carries.
struct Route<'a> {
    label: &'a str,
    base: &'a str,
    proxy: Option<&'a ProxyProcess>,
    headers: &'a [(&'a str, &'a str)],
}
