//! The request's own context: its id (`x-request-id`), when it arrived and its priority
//! (`x-mm-priority`: a `batch` request's cold loads take only a share of the load slots,
//! behind interactive ones; `cache::slots`), set by a tower
//! layer in front of every route (gRPC included) and readable anywhere on the request's
//! task ([`current`]); the layer also puts the id on the answer.
//!
//! Work a request hands to another task (a load, a blocking engine run) does not see the
//! task-local: read what it needs first.
//!
//! The layer also runs each request in its span (`scorer.request`, with the request id, so
//! every log line about the request names it), whose parent is the caller's `traceparent`
//! when spans are exported (`manymodels_boot::telemetry`). The load-wait, load and engine
//! spans (`cache`, `infer`) are its children.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;
use manymodels_boot::telemetry;
use manymodels_contract::{Priority, header, request_id};
use tracing::Instrument;
use tracing::instrument::Instrumented;

use crate::model_id::ModelId;

/// `x-request-id`.
pub const REQUEST_ID: HeaderName = HeaderName::from_static(header::REQUEST_ID);

/// What every part of the scorer may know about the request it serves.
#[derive(Clone, Debug)]
pub struct RequestContext {
    /// The request's id: the one the caller (the proxy) sent when valid, else a new one.
    pub id: HeaderValue,
    /// When the layer saw the request.
    pub arrived: Instant,
    /// How it came: `rest`, `grpc` or `records` (a captured line says so).
    pub protocol: &'static str,
    /// Its `x-mm-priority` (interactive when absent). A malformed header is refused with
    /// a 400 before any model is looked up (`infer::deadline`), so it never reaches here
    /// as anything but the default.
    pub priority: Priority,
}

impl RequestContext {
    /// The context of a request with these headers: its id kept or given.
    pub fn of(headers: &axum::http::HeaderMap) -> Self {
        let id = match headers.get(&REQUEST_ID) {
            Some(value) if request_id::valid(value.as_bytes()) => value.clone(),
            _ => HeaderValue::from_str(&request_id::generate())
                .expect("a generated request id is a valid header value"),
        };
        RequestContext {
            id,
            arrived: Instant::now(),
            protocol: "rest",
            priority: headers
                .get(header::PRIORITY)
                .and_then(|v| v.to_str().ok())
                .and_then(Priority::parse)
                .unwrap_or_default(),
        }
    }

    /// The id as text (always ASCII: checked or generated).
    pub fn id_str(&self) -> &str {
        self.id.to_str().unwrap_or_default()
    }
}

/// How a request to `path` came: gRPC, the records routes, or REST.
fn protocol_of(path: &str) -> &'static str {
    if path.starts_with(manymodels_contract::grpc::PREFIX) {
        "grpc"
    } else if path.ends_with("/records") || path == manymodels_contract::route::RECORD_GROUPS {
        "records"
    } else {
        "rest"
    }
}

tokio::task_local! {
    static CURRENT: RequestContext;
}

/// The context of the request this task serves, if it runs under [`Layer`].
pub fn current() -> Option<RequestContext> {
    CURRENT.try_with(Clone::clone).ok()
}

/// The priority of the request this task serves (interactive outside a request: warm-ups
/// and version checks are the scorer's own work, not a batch's).
pub fn priority() -> Priority {
    CURRENT.try_with(|c| c.priority).unwrap_or_default()
}

/// How long ago the request this task serves arrived (zero outside a request).
pub fn since_arrival() -> std::time::Duration {
    CURRENT
        .try_with(|c| c.arrived.elapsed())
        .unwrap_or_default()
}

/// `work` to run on another task, with this task's request context (if any) around it.
pub fn carry<F: Future>(work: F) -> impl Future<Output = F::Output> {
    match current() {
        Some(context) => futures::future::Either::Left(CURRENT.scope(context, work)),
        None => futures::future::Either::Right(work),
    }
}

/// Runs `work` as a request of `priority` would run (for the cache's tests).
#[cfg(test)]
pub async fn as_priority<F: Future>(priority: Priority, work: F) -> F::Output {
    let mut context = RequestContext::of(&axum::http::HeaderMap::new());
    context.priority = priority;
    CURRENT.scope(context, work).await
}

/// The name of the request's span.
const SPAN: &str = "scorer.request";

/// Puts the model a request is about (the id is validated) on its exported span, when
/// spans are exported and the current span is a request's: the cache's look-up calls it.
/// Not a log field: formatting it into every request's span would cost a few hundred ns
/// with nothing exported.
pub fn record_model(id: &ModelId) {
    if !telemetry::enabled() {
        return;
    }
    let span = tracing::Span::current();
    if span.metadata().is_some_and(|m| m.name() == SPAN) {
        telemetry::set_attribute(&span, "model", id.as_str());
    }
}

/// The layer: wraps each request in its context and its span, and answers with its id.
#[derive(Clone)]
pub struct WithContext<S> {
    pub inner: S,
}

impl<S> tower::Service<axum::extract::Request> for WithContext<S>
where
    S: tower::Service<axum::extract::Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Answered<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::extract::Request) -> Self::Future {
        let mut context = RequestContext::of(request.headers());
        context.protocol = protocol_of(request.uri().path());
        let id = context.id.clone();
        // `info`: log lines inside it carry the request id. The path goes only to exported
        // spans (it may hold a model id not yet validated, which a log line must not).
        // Whether it is recorded is decided before any span is built: an unsampled
        // request's span (target `mm_log`, which the OpenTelemetry layer does not take)
        // only carries its id into the log lines, and costs no OpenTelemetry work.
        let span = if telemetry::sampled(request.headers()) {
            let span = tracing::info_span!("scorer.request", request_id = context.id_str());
            telemetry::set_parent(&span, request.headers());
            telemetry::set_attribute(&span, "url.path", request.uri().path());
            span
        } else {
            tracing::info_span!(target: "mm_log", "scorer.request", request_id = context.id_str())
        };
        let inner = span.in_scope(|| self.inner.call(request));
        Answered {
            inner: CURRENT.scope(context, inner).instrument(span),
            id: Some(id),
        }
    }
}

pin_project_lite::pin_project! {
    /// A route's future run in its request's context; its answer gets the request id.
    pub struct Answered<F: Future> {
        #[pin]
        inner: Instrumented<tokio::task::futures::TaskLocalFuture<RequestContext, F>>,
        id: Option<HeaderValue>,
    }
}

impl<F> Future for Answered<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(mut response) = std::task::ready!(this.inner.poll(cx));
        if let Some(id) = this.id.take() {
            response.headers_mut().insert(REQUEST_ID, id);
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protocol_comes_from_the_path() {
        assert_eq!(
            protocol_of("/inference.GRPCInferenceService/ModelInfer"),
            "grpc"
        );
        assert_eq!(protocol_of("/v2/mm/models/m/records"), "records");
        assert_eq!(protocol_of("/v2/mm/models/m/versions/2/records"), "records");
        assert_eq!(
            protocol_of(manymodels_contract::route::RECORD_GROUPS),
            "records"
        );
        assert_eq!(protocol_of("/v2/models/m/infer"), "rest");
    }

    #[test]
    fn a_valid_id_is_kept_and_a_bad_one_replaced() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(REQUEST_ID, HeaderValue::from_static("client-7"));
        assert_eq!(RequestContext::of(&headers).id_str(), "client-7");
        headers.insert(REQUEST_ID, HeaderValue::from_static("has space"));
        let given = RequestContext::of(&headers);
        assert_ne!(given.id_str(), "has space");
        assert!(request_id::valid(given.id.as_bytes()));
        assert_eq!(
            RequestContext::of(&axum::http::HeaderMap::new())
                .id_str()
                .len(),
            32
        );
    }
}
