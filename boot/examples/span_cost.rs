//! What the request spans cost per request, in ns: `cargo run --release -p manymodels-boot
//! --example span_cost -- off|on [ratio]`. `off`: no `trace.endpoint` (the default);
//! `on`: an endpoint (nothing listens there: sampled spans are queued and their export
//! fails off the measured thread) at `ratio` (default 0.01). Each iteration makes what one
//! model request makes in the scorer (the `info` request span with its id, entered twice,
//! the model recorded, the `debug` load-wait-free engine span) and in the proxy (the
//! `debug` request, route and upstream spans, a `traceparent` read for the upstream).

use std::hint::black_box;
use std::time::Instant;

use manymodels_boot::telemetry;
use manymodels_config::{LogConfig, LogFormat, TraceConfig};

fn main() {
    let mut args = std::env::args().skip(1);
    let on = args.next().as_deref() == Some("on");
    let ratio = args.next().and_then(|r| r.parse().ok()).unwrap_or(0.01);
    let log = LogConfig {
        level: "info".into(),
        format: LogFormat::Text,
    };
    let trace = TraceConfig {
        endpoint: on.then(|| "http://127.0.0.1:9".to_string()),
        sample_ratio: ratio,
    };
    manymodels_boot::init_tracing_with(&log, "span-cost", &trace);
    let headers = http::HeaderMap::new();
    let n = 1_000_000u32;
    for round in 0..3 {
        let started = Instant::now();
        for i in 0..n {
            // The scorer.
            let id = if i % 2 == 0 {
                "0123456789abcdef0123456789abcdef"
            } else {
                "client-id-7"
            };
            let span = tracing::info_span!(target: "manymodels_scorer::request", "scorer.request", request_id = id);
            telemetry::set_parent(&span, &headers);
            span.in_scope(|| {
                let current = tracing::Span::current();
                telemetry::set_attribute(&current, "model", "linear-small");
                let engine =
                    tracing::debug_span!(target: "manymodels_scorer::infer", "engine.run", model = "linear-small", version = 1u64);
                black_box(&engine);
            });
            span.in_scope(|| black_box(()));
            drop(span);
        }
        let scorer = started.elapsed().as_nanos() as f64 / f64::from(n);
        let started = Instant::now();
        for _ in 0..n {
            // The proxy.
            let request = tracing::debug_span!(
                target: "manymodels_proxy::service",
                "proxy.request",
                request_id = "client-id-7",
                method = "POST",
                path = "/v2/models/m/infer",
                model = tracing::field::Empty,
                status = tracing::field::Empty
            );
            telemetry::set_parent(&request, &headers);
            let route = tracing::debug_span!(target: "manymodels_proxy::service", parent: &request, "route", model = "m", why = tracing::field::Empty);
            route.in_scope(|| {
                tracing::Span::current().record("why", "hot");
            });
            drop(route);
            let upstream = tracing::debug_span!(target: "manymodels_proxy::service", parent: &request, "upstream", scorer = "s1");
            black_box(telemetry::traceparent(&upstream));
            request.record("status", 200u16);
            drop(upstream);
            drop(request);
        }
        let proxy = started.elapsed().as_nanos() as f64 / f64::from(n);
        eprintln!(
            "round {round}: tracing {}: scorer {scorer:.0} ns/request, proxy {proxy:.0} ns/request",
            if on { "on" } else { "off" }
        );
    }
    telemetry::shutdown();
}
