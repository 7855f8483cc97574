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

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{HeaderMap, HeaderName, HeaderValue};
use manymodels_config::TraceConfig;
use manymodels_config::proxy::ProxyConfig;
use manymodels_config::scorer::ScorerConfig;
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
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
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
        trace.sample_ratio.clamp(0.0, 1.0),
    )));
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
