//! The Pingora `ProxyHttp` implementation, which only dispatches: classify the request
//! ([`crate::route`]), check its key ([`crate::keys`]), answer local routes
//! ([`crate::local`]), reject with the one table ([`crate::reject`]), or choose a scorer
//! (`Proxy::choose`, by [`crate::choice`]'s rules) and forward; then learn from the
//! answer, count it, and after an admin change ask every scorer to look
//! ([`crate::admin`]). Nothing here changes what a request is answered with: versions and
//! canaries are the scorers' (from the store), so every proxy replica forwards a request
//! alike.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use manymodels_boot::telemetry;
use manymodels_config::proxy::ProxyConfig;
use manymodels_contract::oip::ErrorBody;
use manymodels_contract::{Lookup, grpc, header, request_id};
use pingora::Error;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};

use crate::batch::{self, Batches};
use crate::choice::{Policy, View, decide, least_busy, replicates};
use crate::exchange::{self, Exchange, Forwarder};
use crate::grpc_route::route_by_body;
use crate::hedge::Hedging;
use crate::keys::{self, KeyCheck, Keys};
use crate::limits::{self, Limits, Permit};
use crate::metrics::Metrics;
use crate::pool::{Candidate, Pool};
use crate::reject::{self, Rejection, Reply};
use crate::route::{Action, GrpcCall, Route, classify, classify_grpc};
use crate::stats::Statistics;
use crate::{admin, ledger, local, shadow};

/// Request-id headers echoed back to the client as sent (Azure ML sends it). The request's
/// own id (`x-request-id`) is `Ctx::request_id`, on every answer.
const ECHOED: [&str; 1] = ["x-ms-client-request-id"];

/// Concurrent gRPC calls on one HTTP/2 connection to a scorer.
const GRPC_STREAMS: usize = 128;

/// The proxy: what every request reads (the configuration, the pool, the statistics) and
/// counts (the metrics).
pub struct Proxy {
    pub(crate) config: ProxyConfig,
    pub(crate) pool: Arc<Pool>,
    pub(crate) metrics: Arc<Metrics>,
    stats: Arc<Statistics>,
    /// The many-model route's client and turns.
    pub(crate) batches: Batches,
    /// Per-key limits and priorities (`limits.*`).
    pub(crate) limits: Limits,
    /// Hedged requests: delays, budget, stalls (`hedge.*`), and their client.
    pub(crate) hedging: Hedging,
    pub(crate) forwarder: Forwarder,
    /// What the shadow judge decided (a failure is final), for the shadow views.
    pub(crate) judged: Arc<std::sync::Mutex<shadow::Judged>>,
}

/// Per-request state.
pub struct Ctx {
    route: Route,
    started: Instant,
    /// Scorers tried so far (names), in order.
    tried: Vec<Arc<str>>,
    /// The scorer now serving the request and its in-flight counter.
    current: Option<(Arc<str>, Arc<AtomicUsize>)>,
    upstream_started: Option<Instant>,
    /// The request's id (`x-request-id`): the client's when valid, else a new one; sent to
    /// the scorer and on every answer, in the access log line and on the spans.
    request_id: String,
    /// The request's span (`proxy.request`, `debug`: built only when spans are exported),
    /// its parent the client's `traceparent`.
    span: tracing::Span,
    /// The scorer whose answer a hedged request got (`exchange`, which holds its own
    /// in-flight counts), for the log line and the outcome.
    answered_by: Option<Arc<str>>,
    /// Whether a copy of the request went to a second scorer (a hedge).
    hedged: bool,
    /// The current attempt's span (`upstream`), the scorer's parent.
    upstream_span: tracing::Span,
    echoed: Vec<(&'static str, String)>,
    body_bytes: usize,
    /// The body limit of this route: `http.max_upload` for a model upload, else
    /// `http.max_body`.
    body_limit: u64,
    /// Whether the scorer answered from memory, as it reported.
    cache: Option<Lookup>,
    status: u16,
    /// When the client stops waiting (`x-mm-timeout-ms` or `grpc-timeout` from arrival),
    /// if it said.
    deadline: Option<Instant>,
    /// A gRPC call: forwarded over HTTP/2, refused with a gRPC status.
    grpc: bool,
    /// For a repository index, the asking key's model-id prefixes as
    /// `x-mm-model-prefixes` carries them (empty: every model); `None` on other routes.
    list_scope: Option<String>,
    /// The request's share of its key's in-flight cap (`limits.inflight`), from admission
    /// until `logging` (or the context's end) gives it back.
    permit: Option<Permit>,
    /// `Retry-After` of the proxy's own answer (a key over its limit), in seconds.
    retry_after: Option<u64>,
    /// The `Authorization` sent to the current scorer (the pool key it takes), so a 401
    /// from it can switch it to the other key during a rotation.
    sent_authorization: Option<Arc<str>>,
}

impl Ctx {
    fn release(&mut self) {
        if let Some((_, counter)) = self.current.take() {
            counter.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

async fn respond(session: &mut Session, ctx: &mut Ctx, reply: Reply) -> Result<()> {
    ctx.status = reply.status;
    if ctx.grpc {
        return respond_grpc(session, ctx, reply).await;
    }
    let mut header = ResponseHeader::build(reply.status, Some(4))?;
    header.insert_header("content-type", reply.content_type)?;
    header.insert_header("content-length", reply.body.len().to_string())?;
    if let Some(seconds) = ctx.retry_after {
        header.insert_header("retry-after", seconds.to_string())?;
    }
    identify(&mut header, ctx)?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(reply.body), true).await
}

/// The proxy's own answer to a gRPC call: a trailers-only response whose `grpc-status` is
/// the code of the REST answer's status and whose `grpc-message` is its `error`.
async fn respond_grpc(session: &mut Session, ctx: &Ctx, reply: Reply) -> Result<()> {
    let message = serde_json::from_slice::<ErrorBody>(&reply.body)
        .map(|body| body.error)
        .unwrap_or_default();
    let code = grpc::code_for_status(reply.status).to_string();
    let message = grpc::encode_message(&message);
    let mut header = ResponseHeader::build(200, Some(3))?;
    header.insert_header("content-type", "application/grpc")?;
    identify(&mut header, ctx)?;
    if !session.as_ref().is_http2() {
        // HTTP/1.1 has no trailers here: the status goes in the headers.
        header.insert_header("grpc-status", code)?;
        header.insert_header("grpc-message", message)?;
        session
            .write_response_header(Box::new(header), false)
            .await?;
        return session.write_response_body(None, true).await;
    }
    // Pingora's session sends headers without END_STREAM, so this is headers and then
    // trailers (gRPC's C core refuses a stream that ends on an empty DATA frame).
    session
        .write_response_header(Box::new(header), false)
        .await?;
    let mut trailers = pingora::http::HMap::new();
    let unencodable = |_| Error::explain(InternalError, "unencodable grpc-message");
    trailers.insert("grpc-status", code.parse().map_err(unencodable)?);
    trailers.insert("grpc-message", message.parse().map_err(unencodable)?);
    session.as_mut().write_response_trailers(trailers).await
}

/// Puts the request's id (`x-request-id`) and the echoed client ids on an answer.
fn identify(header: &mut ResponseHeader, ctx: &Ctx) -> Result<()> {
    if !ctx.request_id.is_empty() {
        header.insert_header(header::REQUEST_ID, ctx.request_id.as_str())?;
    }
    for (name, value) in &ctx.echoed {
        header.insert_header(*name, value.as_str())?;
    }
    Ok(())
}

impl Proxy {
    /// The proxy over `pool`, counting into `metrics` and `stats`; Pingora's
    /// `http_proxy_service` serves it.
    pub fn new(
        config: ProxyConfig,
        pool: Arc<Pool>,
        metrics: Arc<Metrics>,
        stats: Arc<Statistics>,
        judged: Arc<std::sync::Mutex<shadow::Judged>>,
    ) -> Self {
        let batches = Batches::new(&config.batch, config.connect_timeout);
        let limits = Limits::new(&config.key_settings);
        let hedging = Hedging::new(&config.hedge);
        let forwarder = Forwarder::new(config.connect_timeout);
        Proxy {
            config,
            pool,
            metrics,
            stats,
            batches,
            limits,
            hedging,
            forwarder,
            judged,
        }
    }

    /// The routing knobs from the configuration, for a model below the replication
    /// threshold.
    fn policy(&self) -> Policy {
        Policy {
            top_k: self.config.top_k,
            load_factor: self.config.load_factor,
            min_inflight: self.config.min_inflight,
            drain_handoff: self.config.drain_handoff,
            replicate: false,
        }
    }

    /// Requests in flight to `name` now.
    fn inflight(&self, name: &str) -> usize {
        self.pool.inflight(name).load(Ordering::Relaxed)
    }

    /// Chooses the scorer for a model: gathers what `choice::decide` decides on, and
    /// carries out the decision's side effects (statistics, metrics and background warm
    /// loads).
    pub(crate) fn choose(&self, model: &str, tried: &[Arc<str>]) -> Option<Candidate> {
        let mut policy = self.policy();
        let mut candidates = self.pool.candidates(model, policy.candidates(), tried);
        let mut views: Vec<View> = candidates
            .iter()
            .map(|c| View {
                hot: self.pool.holds(model, &c.name),
                inflight: self.inflight(&c.name),
                draining: false,
            })
            .collect();
        // The drain hand-off: a draining scorer that holds the model comes last.
        if policy.wants_draining_holder(&views)
            && let Some(holder) = self.pool.draining_holder(model, tried)
        {
            views.push(View {
                hot: true,
                inflight: self.inflight(&holder.name),
                draining: true,
            });
            candidates.push(holder);
        }
        if candidates.is_empty() {
            return None;
        }
        let rate = if tried.is_empty() {
            self.stats.record(model)
        } else {
            self.stats.rate(model)
        };
        policy.replicate = replicates(rate, self.config.replication_threshold);
        let decision = decide(&views, self.pool.mean_inflight(), policy);
        if decision.hot_route {
            self.metrics.hot_routes.inc();
        }
        if decision.spilled {
            self.metrics.spills.inc();
        }
        if decision.drained {
            self.metrics.drain_routes.inc();
        }
        let warmed = decision.warm.is_some_and(|i| {
            self.pool
                .warm(model, &candidates[i], self.config.read_timeout)
        });
        if warmed {
            self.metrics.warm_triggers.inc();
        }
        // Why, for the route span the caller entered (nothing when spans are off).
        let span = tracing::Span::current();
        if !span.is_disabled() {
            let why = if decision.drained {
                "drain"
            } else if decision.spilled {
                "spill"
            } else if decision.hot_route {
                "hot"
            } else {
                "ranked"
            };
            span.record("why", why);
            span.record("warm", warmed);
        }
        candidates.into_iter().nth(decision.chosen)
    }

    /// Learns from a scorer's successful answer for `model`: it holds the model now (the
    /// hot table), and whether it answered from memory (statistics, metrics).
    pub(crate) fn learn(&self, model: &str, scorer: &str, lookup: Lookup) {
        self.pool.record_hot(model, scorer);
        let hit = lookup == Lookup::Hit;
        self.stats.observe(hit);
        if hit {
            self.metrics.cache_hits.inc();
        } else {
            self.metrics.cache_misses.inc();
        }
    }

    /// The scorer for an admin call about a model: the first healthy one in the model's
    /// rendezvous order (its owner), with no statistics counted and nothing warmed. Admin
    /// calls are not traffic: asking why a model is not in memory must not load it.
    fn choose_owner(&self, model: &str, tried: &[Arc<str>]) -> Option<Candidate> {
        self.pool.candidates(model, 1, tried).into_iter().next()
    }

    /// A scorer for a request that names no model: the least busy healthy one, with no
    /// statistics counted and nothing warmed.
    fn choose_any(&self, tried: &[Arc<str>]) -> Option<Candidate> {
        let candidates = self.pool.candidates("", self.policy().candidates(), tried);
        let chosen = least_busy(candidates.iter().map(|c| self.inflight(&c.name)))?;
        candidates.into_iter().nth(chosen)
    }

    /// The request's key check (`keys::check`) and its key's limits (`keys::admit`: the
    /// permit is held until the request ends), counted by key name when keys apply.
    fn check_key(&self, session: &Session, route: &Route) -> (KeyCheck<'_>, Option<Permit>) {
        let keys = Keys {
            api: &self.config.api_keys,
            admin: &self.config.admin_keys,
        };
        let (check, permit) = keys::admit(
            keys::check(keys, route, authorization(session)),
            &self.limits,
            Instant::now(),
        );
        if let Some((key, outcome)) = check.counted {
            self.metrics
                .requests_by_key
                .with_label_values(&[key, outcome])
                .inc();
        }
        (check, permit)
    }

    /// Whether this request is hedged ([`exchange`]): inference naming a model, over
    /// HTTP/1.1 or HTTP/2 but not gRPC, with `hedge.enabled`, whose body declares a length
    /// of at most [`exchange::MAX_BODY`] (the exchange holds the whole body; a larger or
    /// chunked one streams through Pingora's path as before).
    fn hedges(&self, session: &Session, ctx: &Ctx) -> bool {
        self.hedging.enabled
            && !ctx.grpc
            && declared_length(session).is_some_and(|n| n <= exchange::MAX_BODY)
            && matches!(
                ctx.route,
                Route::Model {
                    action: Action::Infer { .. },
                    ..
                }
            )
    }

    /// Serves a hedged request: reads its body (within its limit and deadline), runs the
    /// exchange, and answers with the winning scorer's answer or the proxy's own.
    async fn hedged(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let Route::Model { id, .. } = &ctx.route else {
            return Ok(false);
        };
        let id = id.clone();
        let expects_continue = session
            .get_header("expect")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if expects_continue {
            session.as_mut().write_continue_response().await?;
        }
        let wait = ctx.deadline.map_or(self.config.read_timeout, |deadline| {
            deadline
                .saturating_duration_since(Instant::now())
                .min(self.config.read_timeout)
        });
        let past_deadline = || Reply::json(504, &ErrorBody::new("the request's deadline passed"));
        let read = batch::read_body(session, ctx.body_limit);
        let body = match tokio::time::timeout(wait, read).await {
            Ok(Ok(body)) => body,
            Ok(Err(reply)) => {
                respond(session, ctx, reply).await?;
                return Ok(true);
            }
            Err(_) => {
                let reply = if ctx.deadline.is_some() {
                    past_deadline()
                } else {
                    Rejection::BadClientRequest.into()
                };
                respond(session, ctx, reply).await?;
                return Ok(true);
            }
        };
        ctx.body_bytes = body.len();
        if ctx
            .deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
        {
            respond(session, ctx, past_deadline()).await?;
            return Ok(true);
        }
        let exchange = Exchange {
            model: &id,
            request: exchange::forwarded(session.req_header())
                .ok_or_else(|| Error::explain(InternalError, "bad upstream path"))?,
            body,
            deadline: ctx.deadline,
            request_id: &ctx.request_id,
            span: &ctx.span,
            client_authorization: authorization(session).map(str::to_string),
        };
        // The client may hang up while the scorers work: then the exchange is dropped (its
        // attempts cancelled, their in-flight counts and the key's permit given back).
        let outcome = tokio::select! {
            outcome = exchange::run(self, exchange) => outcome,
            closed = session.as_mut().read_body_or_idle(true) => {
                let error = match closed {
                    Err(error) => error,
                    Ok(_) => Error::explain(ConnectionClosed, "the client sent data after its body"),
                };
                return Err(error.into_down());
            }
        };
        ctx.tried = outcome.tried;
        ctx.hedged = outcome.hedged;
        if !ctx.tried.is_empty() {
            ctx.upstream_started = Some(outcome.started);
        }
        let answer = match outcome.result {
            Ok(answer) => answer,
            Err(rejection) => {
                respond(session, ctx, rejection.into()).await?;
                return Ok(true);
            }
        };
        ctx.status = answer.head.status.as_u16();
        ctx.cache = answer.lookup;
        ctx.answered_by = Some(answer.scorer);
        let mut header = answer.head;
        for name in exchange::NOT_RETURNED {
            header.remove_header(name);
        }
        header.insert_header("content-length", answer.body.len().to_string())?;
        identify(&mut header, ctx)?;
        session
            .write_response_header(Box::new(header), false)
            .await?;
        session.write_response_body(Some(answer.body), true).await?;
        Ok(true)
    }

    /// Prepares a request for a scorer: its body limit, its deadline and the upstream path.
    /// `Err` is the proxy's own answer instead.
    fn forward(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Result<(), Reply>> {
        let upload = matches!(&ctx.route, Route::Model { action, .. } if action.is_upload());
        ctx.body_limit = if upload {
            self.config.max_upload.bytes()
        } else {
            self.config.max_body.bytes()
        };
        if declared_length(session).is_some_and(|n| n > ctx.body_limit) {
            return Ok(Err(Rejection::TooLarge {
                limit: ctx.body_limit,
            }
            .into()));
        }
        match deadline(session, ctx) {
            Ok(deadline) => ctx.deadline = deadline,
            Err(reply) => return Ok(Err(reply)),
        }
        if let Route::Model { id, action } = &ctx.route {
            let mut path = action.path(id);
            // A promotion's guard (`?since_ms=S`) goes on to the scorer, which checks it.
            if *action == Action::ShadowPromote
                && let Some(query) = session.req_header().uri.query()
            {
                path = format!("{path}?{query}");
            }
            if path != session.req_header().uri.path() {
                let uri = path
                    .parse()
                    .map_err(|_| Error::explain(InternalError, "bad upstream path"))?;
                session.req_header_mut().set_uri(uri);
            }
        }
        Ok(Ok(()))
    }
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            route: Route::NotFound,
            started: Instant::now(),
            tried: Vec::new(),
            // Raised for uploads once the route is known.
            body_limit: self.config.max_body.bytes(),
            current: None,
            upstream_started: None,
            answered_by: None,
            hedged: false,
            request_id: String::new(),
            span: tracing::Span::none(),
            upstream_span: tracing::Span::none(),
            echoed: Vec::new(),
            body_bytes: 0,
            cache: None,
            status: 0,
            deadline: None,
            grpc: false,
            list_scope: None,
            permit: None,
            retry_after: None,
            sent_authorization: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let header = |name: &str| {
            session
                .get_header(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        ctx.request_id = request_id::keep_or_generate(
            session
                .get_header(header::REQUEST_ID)
                .map(|value| value.as_bytes()),
        );
        for name in ECHOED {
            if let Some(value) = header(name) {
                ctx.echoed.push((name, value));
            }
        }
        let path = session.req_header().uri.path();
        // Recorded or not is decided before any span is built: an unsampled request costs
        // no OpenTelemetry work (its spans stay `Span::none()`, and so do their children).
        if telemetry::sampled(&session.req_header().headers) {
            ctx.span = tracing::debug_span!(
                "proxy.request",
                request_id = %ctx.request_id,
                method = %session.req_header().method,
                path,
                model = tracing::field::Empty,
                status = tracing::field::Empty,
            );
            telemetry::set_parent(&ctx.span, &session.req_header().headers);
        }
        ctx.grpc = path.starts_with(grpc::PREFIX);
        ctx.route = if ctx.grpc {
            let model = grpc::MODEL_HEADERS.iter().find_map(|name| header(name));
            let version = header(header::MODEL_VERSION);
            match classify_grpc(path, model.as_deref(), version.as_deref()) {
                GrpcCall::Routed(route) => route,
                // No model header: the model is in the message (read before the key check,
                // which then judges the model it names).
                GrpcCall::ModelInBody(call) => {
                    // Within the client's deadline too (a malformed one is refused once
                    // the route is known, in `forward`).
                    let left = deadline(session, ctx)
                        .ok()
                        .flatten()
                        .map(|d| d.saturating_duration_since(Instant::now()));
                    let wait = left.map_or(self.config.read_timeout, |left| {
                        left.min(self.config.read_timeout)
                    });
                    route_by_body(session, call, version.as_deref(), wait).await?
                }
            }
        } else {
            classify(
                session.req_header().method.as_str(),
                path,
                header(header::MODEL).as_deref(),
                header(header::MODEL_VERSION).as_deref(),
            )
        };
        let (checked, permit) = self.check_key(session, &ctx.route);
        ctx.permit = permit;
        ctx.list_scope = checked.list_scope(&ctx.route);
        // The request's priority: its key's (`limits.priority`), else the client's
        // `x-mm-priority`, put on the request as the scorers get it.
        let priority = limits::priority(
            checked
                .allowed_key()
                .and_then(|key| self.limits.priority(key)),
            session
                .get_header(header::PRIORITY)
                .map(|value| value.as_bytes()),
        );
        if let Ok(priority) = priority {
            let request = session.req_header_mut();
            request.remove_header(header::PRIORITY);
            if let Some(priority) = priority {
                request.insert_header(header::PRIORITY, priority.as_str())?;
            }
        }
        let reply = if let Err(rejection) = checked.verdict {
            ctx.retry_after = rejection.retry_after();
            rejection.into()
        } else if let Some(reply) =
            local::answer(&ctx.route, &self.pool, &self.stats, &self.metrics)
        {
            reply
        } else if let Err(message) = &priority {
            Rejection::Invalid(message.clone()).into()
        } else {
            match &ctx.route {
                Route::Invalid(message) => Rejection::Invalid(message.clone()).into(),
                // gRPC's answer to a method the service does not have.
                Route::NotFound if ctx.grpc => Reply::json(
                    501,
                    &ErrorBody::new(format!(
                        "no such method: {}",
                        session.req_header().uri.path()
                    )),
                ),
                Route::Batch => match deadline(session, ctx) {
                    Err(reply) => reply,
                    Ok(deadline) => {
                        let asked = batch::Asked {
                            request_id: &ctx.request_id,
                            span: &ctx.span,
                            traceparent: session.get_header(header::TRACEPARENT).cloned(),
                            scope: checked.verdict.as_ref().map(|s| *s).unwrap_or(&[]),
                            key: checked.counted.map(|(name, _)| name),
                            client_authorization: authorization(session).map(str::to_string),
                            priority: priority.clone().ok().flatten(),
                            deadline,
                        };
                        batch::serve(self, session, asked).await
                    }
                },
                Route::Ledger | Route::LedgerModel { .. } => {
                    let asked = match &ctx.route {
                        Route::LedgerModel { id } => Ok(ledger::Asked::Model(id.clone())),
                        _ => ledger::parse_query(session.req_header().uri.query())
                            .map(|top| ledger::Asked::Pool { top }),
                    };
                    match asked {
                        Err(message) => Rejection::Invalid(message).into(),
                        Ok(asked) => {
                            let scope = checked.verdict.as_ref().map(|s| *s).unwrap_or(&[]);
                            ledger::serve(&self.pool, asked, scope).await
                        }
                    }
                }
                Route::Shadows | Route::ShadowModel { .. } => {
                    let only = match &ctx.route {
                        Route::ShadowModel { id } => Some(id.as_str()),
                        _ => None,
                    };
                    let scope = checked.verdict.as_ref().map(|s| *s).unwrap_or(&[]);
                    shadow::serve(&self.pool, only, scope, &self.judged).await
                }
                Route::NotFound => Rejection::NoRoute {
                    method: session.req_header().method.to_string(),
                    path: session.req_header().uri.path().to_string(),
                }
                .into(),
                _ => match self.forward(session, ctx)? {
                    Ok(()) if self.hedges(session, ctx) => {
                        return self.hedged(session, ctx).await;
                    }
                    Ok(()) => return Ok(false),
                    Err(reply) => reply,
                },
            }
        };
        respond(session, ctx, reply).await?;
        Ok(true)
    }

    /// Scorers see the pool key, never the client's key (already checked in
    /// `request_filter`); without a pool key the client's header goes on unchanged.
    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // The pool key this scorer takes (during a rotation, the current or the previous).
        ctx.sent_authorization = ctx
            .current
            .as_ref()
            .and_then(|(scorer, _)| self.pool.authorization_for(scorer));
        if let Some(value) = &ctx.sent_authorization {
            upstream_request.insert_header("authorization", &**value)?;
        }
        // One id names the request in the proxy's and the scorer's logs, spans and captures.
        upstream_request.insert_header(header::REQUEST_ID, ctx.request_id.as_str())?;
        // The scorer's spans are children of this attempt's; with tracing off the client's
        // `traceparent` goes on as it came.
        if let Some(traceparent) = telemetry::outgoing(
            &ctx.upstream_span,
            upstream_request.headers.get(header::TRACEPARENT),
        ) {
            upstream_request.insert_header(header::TRACEPARENT, traceparent)?;
        }
        // Only the proxy says which models a caller may list (the scorer reads the header
        // on the index alone).
        if let Some(scope) = &ctx.list_scope {
            upstream_request.remove_header(header::MODEL_PREFIXES);
            if !scope.is_empty() {
                upstream_request.insert_header(header::MODEL_PREFIXES, scope.as_str())?;
            }
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // Chunked bodies have no Content-Length to check up front. (A retry replays the
        // buffered body through here again; the count only grows, so the check holds.)
        if let Some(chunk) = body {
            ctx.body_bytes += chunk.len();
            if ctx.body_bytes as u64 > ctx.body_limit {
                return Err(Error::explain(HTTPStatus(413), "request body too large"));
            }
        }
        Ok(())
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        ctx.release();
        // The scorer gets what is left of the client's deadline, and the proxy waits for
        // it no longer than that.
        let mut read_timeout = self.config.read_timeout;
        if let Some(deadline) = ctx.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = left.as_millis() as u64;
            if ms == 0 {
                return Err(Error::explain(
                    HTTPStatus(504),
                    "the request's deadline passed",
                ));
            }
            read_timeout = read_timeout.min(left);
            session
                .req_header_mut()
                .insert_header(header::TIMEOUT_MS, ms.to_string())?;
        }
        let route = if ctx.span.is_none() {
            tracing::Span::none()
        } else {
            tracing::debug_span!(
                parent: &ctx.span,
                "route",
                model = ctx.route.model().unwrap_or(""),
                attempt = ctx.tried.len() + 1,
                scorer = tracing::field::Empty,
                why = tracing::field::Empty,
                warm = tracing::field::Empty,
            )
        };
        let chosen = route.in_scope(|| match &ctx.route {
            Route::Model { id, action } if action.admin() => {
                why(self.choose_owner(id, &ctx.tried), "owner")
            }
            Route::Model { id, .. } => self.choose(id, &ctx.tried),
            _ => why(self.choose_any(&ctx.tried), "least_busy"),
        });
        let chosen =
            chosen.ok_or_else(|| Error::explain(HTTPStatus(503), "no scorer available"))?;
        route.record("scorer", &*chosen.name);
        drop(route);
        if !ctx.span.is_none() {
            ctx.upstream_span = tracing::debug_span!(
                parent: &ctx.span,
                "upstream",
                scorer = &*chosen.name,
                attempt = ctx.tried.len() + 1,
                status = tracing::field::Empty,
                cache = tracing::field::Empty,
            );
        }
        let counter = self.pool.inflight(&chosen.name);
        counter.fetch_add(1, Ordering::Relaxed);
        ctx.tried.push(chosen.name.clone());
        ctx.current = Some((chosen.name, counter));
        ctx.upstream_started = Some(Instant::now());
        let mut peer = HttpPeer::new(chosen.addr, false, String::new());
        peer.options.connection_timeout = Some(self.config.connect_timeout);
        peer.options.read_timeout = Some(read_timeout);
        peer.options.write_timeout = Some(read_timeout);
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        if ctx.grpc {
            // Scorers serve gRPC as HTTP/2 without TLS on their one port; many calls share
            // a connection (Pingora's default is one stream per connection).
            peer.options.set_http_version(2, 2);
            peer.options.max_h2_streams = GRPC_STREAMS;
        }
        Ok(Box::new(peer))
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.cache = upstream_response
            .headers
            .get(header::CACHE)
            .and_then(|v| v.to_str().ok())
            .and_then(Lookup::parse);
        if upstream_response.status.is_success()
            && let (Some(lookup), Route::Model { id, .. }, Some((scorer, _))) =
                (ctx.cache, &ctx.route, &ctx.current)
        {
            self.learn(id, scorer, lookup);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.status = upstream_response.status.as_u16();
        ctx.upstream_span.record("status", ctx.status);
        if let Some(lookup) = ctx.cache {
            ctx.upstream_span.record("cache", lookup.as_str());
        }
        // A gRPC error comes as a trailers-only answer: HTTP 200 with `grpc-status` in the
        // headers. Count it as its REST twin would be.
        if ctx.grpc
            && let Some(code) = upstream_response
                .headers
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u32>().ok())
        {
            ctx.status = grpc::status_for_code(code);
        }
        upstream_response.insert_header(header::REQUEST_ID, ctx.request_id.as_str())?;
        for (name, value) in &ctx.echoed {
            upstream_response.insert_header(*name, value.as_str())?;
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing was sent: trying the next candidate is always safe.
        if let Some((name, _)) = &ctx.current {
            self.pool.eject(name);
        }
        if ctx.tried.len() <= self.config.retries {
            self.metrics.retries.inc();
            e.set_retry(true);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("scorer {peer}"));
        // Inference is idempotent: if the scorer died before anything reached the client
        // and the body is still buffered, the next candidate can answer instead.
        let retryable = reject::scorer_died(e.etype(), e.esource())
            && session.response_written().is_none()
            && !session.as_ref().retry_buffer_truncated()
            && ctx.tried.len() <= self.config.retries;
        if retryable {
            if !client_reused && let Some((name, _)) = &ctx.current {
                self.pool.eject(name);
            }
            self.metrics.retries.inc();
        }
        e.set_retry(retryable);
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let rejection = reject::failure(e.etype(), e.esource(), ctx.body_limit);
        let status = rejection.status();
        ctx.status = status;
        if session.response_written().is_none() {
            // The connection is not reused after a failure (below): say so in the answer
            // (`Connection: close`), or a client may send its next request on a
            // connection that is being closed and lose it.
            session.set_keepalive(None);
            let _ = respond(session, ctx, rejection.into()).await;
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let scorer = ctx
            .current
            .as_ref()
            .map(|(n, _)| n.clone())
            .or_else(|| ctx.answered_by.clone());
        ctx.release();
        // The key's in-flight slot (`limits.inflight`): the request is over.
        ctx.permit = None;
        let status = if ctx.status != 0 {
            ctx.status
        } else {
            session
                .response_written()
                .map(|r| r.status.as_u16())
                .unwrap_or(0)
        };
        // A scorer refused the pool key it was sent: during a rotation, send it the other.
        if status == 401
            && let (Some(scorer), Some(sent)) = (&scorer, &ctx.sent_authorization)
        {
            self.pool.pool_key_refused(scorer, Some(sent));
        }
        let client_closed = e.is_some_and(|e| matches!(e.esource(), ErrorSource::Downstream));
        self.metrics.count(reject::outcome(
            &ctx.route,
            status,
            scorer.is_some(),
            client_closed,
        ));
        if (200..300).contains(&status)
            && let Route::Model { id, action } = &ctx.route
            && action.changes_versions()
        {
            // Each scorer's pool key when one is set (the client's key was checked here and
            // stays here), else the client's header.
            admin::refresh_everywhere(
                &self.pool,
                id,
                scorer.as_deref(),
                authorization(session).map(str::to_string),
                self.config.read_timeout,
            );
        }
        if (200..300).contains(&status)
            && let Route::Capture(action) = &ctx.route
            && action.changes_rules()
        {
            admin::refresh_capture_everywhere(
                &self.pool,
                scorer.as_deref(),
                authorization(session).map(str::to_string),
                self.config.read_timeout,
            );
        }
        if let Some(started) = ctx.upstream_started {
            self.metrics
                .upstream_latency
                .observe(started.elapsed().as_secs_f64());
        }
        let model = ctx.route.model().unwrap_or("");
        let request_id = ctx.request_id.as_str();
        ctx.span.record("model", model);
        ctx.span.record("status", status);
        if (status >= 500 || e.is_some()) && !client_closed {
            tracing::warn!(
                request_id,
                model,
                scorer = scorer.as_deref().unwrap_or(""),
                status,
                tries = ctx.tried.len(),
                error = e.map(|e| e.to_string()).unwrap_or_default(),
                "request failed"
            );
        } else {
            tracing::debug!(
                request_id,
                model,
                scorer = scorer.as_deref().unwrap_or(""),
                status,
                cache = ctx.cache.map(Lookup::as_str).unwrap_or(""),
                tries = ctx.tried.len(),
                hedged = ctx.hedged,
                ms = ctx.started.elapsed().as_secs_f64() * 1e3,
                "request"
            );
        }
    }
}

/// Records a fixed reason on the route span the caller entered.
fn why(chosen: Option<Candidate>, why: &'static str) -> Option<Candidate> {
    let span = tracing::Span::current();
    if !span.is_disabled() {
        span.record("why", why);
    }
    chosen
}

/// When the client stops waiting: `x-mm-timeout-ms` (or a gRPC call's `grpc-timeout`)
/// from the request's arrival; `None` when it did not say. A malformed value is refused.
fn deadline(session: &Session, ctx: &Ctx) -> Result<Option<Instant>, Reply> {
    if let Some(value) = session.get_header(header::TIMEOUT_MS) {
        let Some(ms) = value
            .to_str()
            .ok()
            .and_then(manymodels_contract::parse_timeout_ms)
        else {
            return Err(Rejection::Invalid(format!(
                "{} must be a whole number of milliseconds from 1 to {}",
                header::TIMEOUT_MS,
                manymodels_contract::MAX_TIMEOUT_MS
            ))
            .into());
        };
        return Ok(Some(ctx.started + Duration::from_millis(ms)));
    }
    if ctx.grpc
        && let Some(value) = session.get_header("grpc-timeout")
    {
        let Some(ms) = value.to_str().ok().and_then(grpc::parse_grpc_timeout) else {
            return Err(Rejection::Invalid("malformed grpc-timeout".into()).into());
        };
        return Ok(Some(ctx.started + Duration::from_millis(ms)));
    }
    Ok(None)
}

/// The body length the request declares (`Content-Length`), if it does.
pub(crate) fn declared_length(session: &Session) -> Option<u64> {
    session
        .get_header("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// The request's `Authorization` header, as text.
fn authorization(session: &Session) -> Option<&str> {
    session
        .get_header("authorization")
        .and_then(|v| v.to_str().ok())
}
