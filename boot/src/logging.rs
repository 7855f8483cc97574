//! Tracing set-up: one subscriber writing to stderr, as text or as JSON lines, and with
//! `trace.endpoint` set, the OpenTelemetry layer beside it (`telemetry`).

use manymodels_config::{LogConfig, LogFormat, TraceConfig};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Installs the process's tracing subscriber: `log.level` as the filter (`info` if it does
/// not parse), lines to stderr as text or JSON per `log.format`. Call it once, at start;
/// a second call panics.
pub fn init_tracing(log: &LogConfig) {
    let filter = EnvFilter::try_new(&log.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// [`init_tracing`], plus span export when `trace.endpoint` is set: the log lines keep
/// `log.level` as their own filter, and the OpenTelemetry layer sees every span of the
/// manymodels crates down to `debug` (the route, load and engine spans are `debug`, so
/// without an exporter and at the default log level they are never even built). `service`
/// is the exported `service.name`.
pub fn init_tracing_with(log: &LogConfig, service: &str, trace: &TraceConfig) {
    let Some(tracer) = crate::telemetry::tracer(service, trace) else {
        return init_tracing(log);
    };
    let filter = EnvFilter::try_new(&log.level).unwrap_or_else(|_| EnvFilter::new("info"));
    // Spans only: the exporter records no events, and a `debug` event the log level
    // leaves out (the proxy's per-request access line) must not be built for it either.
    // Decided once per callsite (`filter_fn` caches its interest).
    let ours = tracing_subscriber::filter::filter_fn(|m| {
        m.is_span() && m.target().starts_with("manymodels") && *m.level() <= tracing::Level::DEBUG
    })
    .with_max_level_hint(LevelFilter::DEBUG);
    // No per-span bookkeeping beyond the fields: busy/idle times cost two clock reads per
    // poll, and the thread, source location and target would be noise on every span.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        .with_target(false)
        // Nothing else here reads OpenTelemetry's current context: parents come from the
        // span tree, so entering a span need not activate its context too.
        .with_context_activation(false)
        .with_filter(ours);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match log.format {
        LogFormat::Json => fmt.json().with_filter(filter).boxed(),
        LogFormat::Text => fmt.with_filter(filter).boxed(),
    };
    tracing_subscriber::registry().with(fmt).with(otel).init();
}
