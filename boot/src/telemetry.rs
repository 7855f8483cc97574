//! Distributed tracing: `tracing` spans exported to an OpenTelemetry collector over OTLP/HTTP
//! (protobuf) when `trace.endpoint` is set, and the W3C Trace Context (`traceparent`,
//! `tracestate`) read from and written into headers.
//!
//! With no endpoint nothing of OpenTelemetry is installed: the subscriber is the plain log
//! one, [`enabled`] is false, [`set_parent`] and [`traceparent`] return at once, and a span a
//! request opens costs what any `tracing` span costs (a disabled one: one relaxed load).
//! With an endpoint, every span of the manymodels crates goes to the OpenTelemetry layer,
//! the sampler (`ParentBased(TraceIdRatioBased(trace.sample_ratio))`) decides per trace, and
//! sampled spans leave in batches from the SDK's own thread (its blocking HTTP client never
//! runs on a serving runtime). [`shutdown`] flushes what is still queued; `main` calls it on
//! the way out.

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use http::{HeaderMap, HeaderName, HeaderValue};
use manymodels_config::TraceConfig;
use manymodels_config::proxy::ProxyConfig;
use manymodels_config::scorer::ScorerConfig;
use opentelemetry::Context;
use opentelemetry::KeyValue;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    Link, SpanKind, TraceContextExt, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    Sampler, SamplingDecision, SamplingResult, SdkTracerProvider, ShouldSample,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// A configuration with a `trace` section (both binaries').
pub trait Traced {
    /// The `trace` section.
    fn trace(&self) -> &TraceConfig;
}

impl Traced for ScorerConfig {
    fn trace(&self) -> &TraceConfig {
        &self.trace
    }
}

impl Traced for ProxyConfig {
    fn trace(&self) -> &TraceConfig {
        &self.trace
    }
}

/// Whether spans are exported (an endpoint was configured and the exporter built).
static ENABLED: AtomicBool = AtomicBool::new(false);
/// The provider, kept for [`shutdown`].
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Whether this process exports spans. False until [`tracer`] built an exporter.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The OTLP path spans are posted to, under `trace.endpoint`.
pub const TRACES_PATH: &str = "/v1/traces";

/// Builds the exporting tracer of `service` (`service.name`) when `trace.endpoint` is set:
/// OTLP/HTTP protobuf to `<endpoint>/v1/traces`, a batch span processor on its own thread,
/// the parent-based ratio sampler; installs the W3C propagator. `None` without an endpoint.
/// An exporter that cannot be built is reported on stderr and tracing stays off: a
/// collector must never keep a server from starting.
pub(crate) fn tracer(
    service: &str,
    trace: &TraceConfig,
) -> Option<opentelemetry_sdk::trace::Tracer> {
    let endpoint = trace.endpoint.as_deref().filter(|e| !e.is_empty())?;
    let url = format!("{}{TRACES_PATH}", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url)
        .build();
    let exporter = match exporter {
        Ok(exporter) => exporter,
        Err(error) => {
            eprintln!("{service}: tracing stays off, the OTLP exporter cannot be built: {error}");
            return None;
        }
    };
    let ratio = trace.sample_ratio.clamp(0.0, 1.0);
    RATIO.store(ratio.to_bits(), Ordering::Relaxed);
    let sampler = Sampler::ParentBased(Box::new(Decided { ratio }));
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(sampler)
        .with_resource(
            Resource::builder_empty()
                .with_service_name(service.to_owned())
                .build(),
        )
        .build();
    let tracer = provider.tracer("manymodels");
    let _ = PROVIDER.set(provider);
    ENABLED.store(true, Ordering::Relaxed);
    Some(tracer)
}

/// Exports what is still queued and stops the exporter's thread. Call once, on the way out
/// (after the server stopped); nothing when tracing is off.
/// `trace.sample_ratio`, as [`sampled`] draws it.
static RATIO: AtomicU64 = AtomicU64::new(0);

/// The names of the spans whose recording [`sampled`] decided before they were built: a
/// request's own span in each process. The SDK's sampler records them as roots; any other
/// root (a warm-up, a version check) is sampled at the ratio by its trace id.
pub const REQUEST_SPANS: [&str; 2] = ["proxy.request", "scorer.request"];

/// The root sampler behind `ParentBased`: see [`REQUEST_SPANS`].
#[derive(Clone, Debug)]
struct Decided {
    ratio: f64,
}

impl ShouldSample for Decided {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        if REQUEST_SPANS.contains(&name) {
            return SamplingResult {
                decision: SamplingDecision::RecordAndSample,
                attributes: Vec::new(),
                trace_state: TraceState::default(),
            };
        }
        Sampler::TraceIdRatioBased(self.ratio).should_sample(
            parent_context,
            trace_id,
            name,
            span_kind,
            attributes,
            links,
        )
    }
}

thread_local! {
    static DRAW: Cell<u64> = Cell::new({
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(0x9e37_79b9_7f4a_7c15);
        hasher.finish() | 1
    });
}

/// A uniform draw in [0, 1) from a per-thread xorshift (no lock, no system call): trace
/// sampling's, and payload capture's (`scorer::capture`).
pub fn draw() -> f64 {
    DRAW.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}

/// The trace flags of a `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), if it is one.
fn flags_of(value: &[u8]) -> Option<u8> {
    let text = std::str::from_utf8(value).ok()?;
    let mut parts = text.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let valid = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(span, 16)
        && span.bytes().any(|b| b != b'0')
        && hex(flags, 2);
    if !valid {
        return None;
    }
    u8::from_str_radix(flags, 16).ok()
}

/// Whether a request with these headers is recorded: with spans exported, its valid
/// `traceparent`'s sampled flag, else a draw at `trace.sample_ratio`; never without an
/// exporter. Decided before any span is built, so an unsampled request costs no
/// OpenTelemetry work at all (its spans are not made, or made for the log only).
pub fn sampled(headers: &HeaderMap) -> bool {
    if !enabled() {
        return false;
    }
    match headers
        .get(&TRACEPARENT)
        .and_then(|v| flags_of(v.as_bytes()))
    {
        Some(flags) => flags & 1 == 1,
        None => draw() < f64::from_bits(RATIO.load(Ordering::Relaxed)),
    }
}

/// Whether the current span is one being exported (a sampled request's, or one of its
/// children): where a child span is made from the current one, it is made only then, so
/// an unsampled request's work never starts a trace of its own.
pub fn traced_here() -> bool {
    enabled()
        && tracing::Span::current()
            .metadata()
            .is_some_and(|m| m.target().starts_with("manymodels"))
}

/// The `traceparent` to send a scorer for a request whose attempt span is `span` and whose
/// client sent `incoming`: the span's when it is exported; else the client's when it is
/// valid (a request not recorded here is not recorded there either); else, with an
/// exporter, a new unsampled one, so the scorer does not draw again; else nothing.
pub fn outgoing(span: &tracing::Span, incoming: Option<&HeaderValue>) -> Option<HeaderValue> {
    if let Some(own) = traceparent(span) {
        return Some(own);
    }
    match incoming {
        Some(value) if flags_of(value.as_bytes()).is_some() => Some(value.clone()),
        _ if enabled() => {
            let id = |bits: u32| {
                let mut text = String::new();
                for _ in 0..bits / 64 {
                    text.push_str(&format!(
                        "{:016x}",
                        (draw() * (1u64 << 53) as f64) as u64 | 1
                    ));
                }
                text
            };
            HeaderValue::from_str(&format!("00-{}-{}-00", id(128), id(64))).ok()
        }
        _ => incoming.cloned(),
    }
}

pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        ENABLED.store(false, Ordering::Relaxed);
        if let Err(error) = provider.shutdown() {
            eprintln!("tracing: the last spans may be lost: {error}");
        }
    }
}

/// `traceparent`.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Makes `span`'s parent the trace context in `headers` (`traceparent`, `tracestate`), when
/// tracing is on and the headers carry a valid one. Call before the span is first entered.
pub fn set_parent(span: &tracing::Span, headers: &HeaderMap) {
    if !enabled() || !headers.contains_key(&TRACEPARENT) {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// The `traceparent` naming `span` as the parent (with its sampled flag), for a request this
/// process sends on; `None` when tracing is off or the span has no valid context.
pub fn traceparent(span: &tracing::Span) -> Option<HeaderValue> {
    if !enabled() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if !span_context.is_valid() {
        return None;
    }
    let text = format!(
        "00-{}-{}-{:02x}",
        span_context.trace_id(),
        span_context.span_id(),
        span_context.trace_flags().to_u8()
    );
    HeaderValue::from_str(&text).ok()
}

/// Writes `span`'s trace context (`traceparent`, and `tracestate` when there is one) into
/// `headers`, replacing what was there; nothing when tracing is off, so a client's own
/// `traceparent` then passes on unchanged.
pub fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
    if !enabled() {
        return;
    }
    let context: Context = span.context();
    if context.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&context, &mut HeadersMut(headers));
    }
}

/// Sets an attribute on `span`'s exported span only (no log line shows it); nothing when
/// tracing is off.
pub fn set_attribute(span: &tracing::Span, key: &'static str, value: &str) {
    if enabled() {
        span.set_attribute(key, value.to_owned());
    }
}

/// The trace id of `span` in hex, when tracing is on and the span has one.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    if !enabled() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    #[test]
    fn only_a_well_formed_traceparent_gives_its_flags() {
        assert_eq!(
            flags_of(format!("00-{TRACE}-00f067aa0ba902b7-01").as_bytes()),
            Some(1)
        );
        assert_eq!(
            flags_of(format!("00-{TRACE}-00f067aa0ba902b7-00").as_bytes()),
            Some(0)
        );
        for bad in [
            format!("00-{TRACE}-00f067aa0ba902b7"),
            format!("ff-{TRACE}-00f067aa0ba902b7-01"),
            format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32)),
            format!("00-{TRACE}-0000000000000000-01"),
            format!("00-{TRACE}-00f067aa0ba902bx-01"),
            "garbage".to_string(),
        ] {
            assert_eq!(flags_of(bad.as_bytes()), None, "{bad}");
        }
        let mut draws: Vec<f64> = (0..1000).map(|_| draw()).collect();
        draws.sort_by(f64::total_cmp);
        assert!(draws[0] >= 0.0 && draws[999] < 1.0 && draws[100] < 0.2 && draws[900] > 0.8);
    }

    #[test]
    fn a_span_continues_the_callers_trace_and_names_itself_the_next_parent() {
        // Nothing listens at the endpoint: nothing here exports.
        let trace = TraceConfig {
            endpoint: Some("http://127.0.0.1:9".into()),
            sample_ratio: 0.0,
        };
        let tracer = tracer("test", &trace).expect("an exporter builds");
        assert!(enabled());
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer));
        tracing::subscriber::with_default(subscriber, || {
            for flags in ["01", "00"] {
                let mut headers = HeaderMap::new();
                let sent = format!("00-{TRACE}-00f067aa0ba902b7-{flags}");
                headers.insert(TRACEPARENT, sent.parse().unwrap());
                let span = tracing::info_span!("request");
                set_parent(&span, &headers);
                let next = traceparent(&span).expect("a traceparent to send on");
                let next = next.to_str().unwrap();
                assert!(next.starts_with(&format!("00-{TRACE}-")), "{next}");
                assert!(
                    next.ends_with(&format!("-{flags}")),
                    "the caller's decision: {next}"
                );
                assert!(
                    !next.contains("00f067aa0ba902b7"),
                    "a span of its own: {next}"
                );
                assert_eq!(trace_id(&span).as_deref(), Some(TRACE));
                let mut injected = HeaderMap::new();
                inject(&span, &mut injected);
                assert_eq!(injected[&TRACEPARENT], next);
            }
            // A malformed traceparent starts a trace of its own.
            let mut headers = HeaderMap::new();
            headers.insert(TRACEPARENT, "00-zz-yy-01".parse().unwrap());
            let span = tracing::info_span!("request");
            set_parent(&span, &headers);
            assert_ne!(trace_id(&span).as_deref(), Some(TRACE));
        });
        shutdown();
        assert!(!enabled());
    }
}
