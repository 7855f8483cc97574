//! The Pingora `ProxyHttp` implementation: answer local routes, reject bad requests,
//! choose a scorer per model, retry once when a scorer dies, learn which scorer holds
//! which model, and count everything.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use manymodels_config::Secret;
use manymodels_config::proxy::ProxyConfig;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorType};

use crate::choice::{Policy, View, decide};
use crate::metrics::Metrics;
use crate::pool::{Candidate, Pool};
use crate::route::CanaryAction;
use crate::route::{MODEL_HEADER, Route, VERSION_HEADER, classify};

/// Request-id headers echoed back to the client (Azure ML sends them).
const ECHOED: [&str; 2] = ["x-request-id", "x-ms-client-request-id"];
const CACHE_HEADER: &str = "x-mm-cache";

/// The status page: one self-contained HTML file (inline CSS and JS, no external
/// assets) that polls `/v2/mm/pool`.
const STATUS_PAGE: &str = include_str!("status.html");

pub struct Proxy {
    pub config: ProxyConfig,
    pub pool: Arc<Pool>,
    pub metrics: Arc<Metrics>,
    pub stats: Arc<crate::stats::Statistics>,
    pub canaries: Arc<crate::canary::Canaries>,
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
    echoed: Vec<(&'static str, String)>,
    body_bytes: usize,
    /// The body limit of this route: `http.max_upload` for a model upload, else
    /// `http.max_body`.
    body_limit: u64,
    /// `hit`/`miss` as the scorer reported it.
    cache: Option<String>,
    status: u16,
}

impl Ctx {
    fn release(&mut self) {
        if let Some((_, counter)) = self.current.take() {
            counter.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

async fn respond_json(
    session: &mut Session,
    status: u16,
    body: &serde_json::Value,
) -> pingora::Result<()> {
    respond(
        session,
        status,
        "application/json",
        Bytes::from(body.to_string()),
    )
    .await
}

async fn respond(
    session: &mut Session,
    status: u16,
    content_type: &str,
    body: Bytes,
) -> pingora::Result<()> {
    let mut header = ResponseHeader::build(status, Some(3))?;
    header.insert_header("content-type", content_type)?;
    header.insert_header("content-length", body.len().to_string())?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(body), true).await
}

fn bearer(session: &Session) -> Option<&str> {
    session
        .get_header("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

impl Proxy {
    /// Chooses the scorer for a model (see `choice::decide`) and carries out the
    /// decision's side effects: metrics and background warm loads.
    fn choose(&self, model: &str, tried: &[Arc<str>]) -> Option<Candidate> {
        let k = self.config.top_k.max(2);
        let candidates = self.pool.candidates(model, k, tried);
        if candidates.is_empty() {
            return None;
        }
        let views: Vec<View> = candidates
            .iter()
            .map(|c| View {
                hot: self.pool.hot.holds(model, &c.name),
                inflight: self.pool.inflight(&c.name).load(Ordering::Relaxed),
            })
            .collect();
        let rate = if tried.is_empty() {
            self.stats.record(model)
        } else {
            self.stats.rate(model)
        };
        let replicate = self
            .config
            .replication_threshold
            .is_some_and(|threshold| rate >= threshold);
        let policy = Policy {
            top_k: self.config.top_k,
            load_factor: self.config.load_factor,
            min_inflight: self.config.min_inflight,
            replicate,
        };
        let decision = decide(&views, self.pool.mean_inflight(), policy);
        if decision.hot_route {
            self.metrics.hot_routes.inc();
        }
        if decision.spilled {
            self.metrics.spills.inc();
        }
        if let Some(i) = decision.warm
            && self
                .pool
                .warm(model, &candidates[i], self.config.read_timeout)
        {
            self.metrics.warm_triggers.inc();
        }
        candidates.into_iter().nth(decision.chosen)
    }

    /// Sends a share of `model`'s unversioned inference requests to its canary version.
    fn apply_canary(&self, session: &Session, route: &mut Route) {
        let Route::Model {
            id,
            admin: false,
            rewrite,
        } = route
        else {
            return;
        };
        let path = rewrite
            .as_deref()
            .unwrap_or_else(|| session.req_header().uri.path());
        let infer = path
            .strip_prefix("/v2/models/")
            .and_then(|p| p.strip_suffix("/infer"))
            .is_some_and(|p| p == id.as_str());
        if session.req_header().method != "POST" || !infer {
            return;
        }
        match self.canaries.pick(id) {
            (_, false) => {}
            (Some(version), true) => {
                self.metrics.canary_requests[1].inc();
                *rewrite = Some(format!("/v2/models/{id}/versions/{version}/infer"));
            }
            (None, true) => self.metrics.canary_requests[0].inc(),
        }
    }

    /// The canary admin routes, answered by the proxy.
    async fn canary(
        &self,
        session: &mut Session,
        id: &str,
        action: CanaryAction,
    ) -> pingora::Result<(u16, serde_json::Value)> {
        use serde_json::json;
        Ok(match action {
            CanaryAction::Show => match self.canaries.get(id) {
                Some(canary) => (200, json!({ "model": id, "canary": canary })),
                None => (
                    404,
                    json!({ "error": format!("model '{id}' has no canary") }),
                ),
            },
            CanaryAction::Drop => match self.canaries.remove(id) {
                Some(canary) => (200, json!({ "model": id, "dropped": canary })),
                None => (
                    404,
                    json!({ "error": format!("model '{id}' has no canary") }),
                ),
            },
            CanaryAction::Set => {
                let mut body = Vec::new();
                while let Some(chunk) = session.read_request_body().await? {
                    body.extend_from_slice(&chunk);
                    if body.len() > 4096 {
                        return Ok((413, json!({ "error": "canary body too large" })));
                    }
                }
                #[derive(serde::Deserialize)]
                struct Set {
                    version: u64,
                    percent: f64,
                }
                match serde_json::from_slice::<Set>(&body) {
                    Ok(set) if set.version > 0 && (0.0..=100.0).contains(&set.percent) => {
                        let canary = self.canaries.set(id, set.version, set.percent);
                        tracing::info!(
                            model = id,
                            version = set.version,
                            percent = set.percent,
                            "canary set"
                        );
                        (200, json!({ "model": id, "canary": canary }))
                    }
                    Ok(_) => (
                        400,
                        json!({ "error": "version must be positive and percent within 0-100" }),
                    ),
                    Err(e) => (
                        400,
                        json!({ "error": format!("expected {{\"version\": N, \"percent\": P}}: {e}") }),
                    ),
                }
            }
            CanaryAction::Promote => {
                let Some(canary) = self.canaries.get(id) else {
                    return Ok((
                        404,
                        json!({ "error": format!("model '{id}' has no canary") }),
                    ));
                };
                let Some(owner) = self.pool.candidates(id, 1, &[]).into_iter().next() else {
                    return Ok((503, json!({ "error": "no scorer available" })));
                };
                let authorization = session
                    .get_header("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let mut headers = vec![("Content-Type", "application/json")];
                if let Some(a) = &authorization {
                    headers.push(("Authorization", a.as_str()));
                }
                let body = json!({ "version": canary.version }).to_string();
                let answer = tokio::time::timeout(
                    self.config.read_timeout,
                    crate::http1::call(
                        &owner.addr.to_string(),
                        "POST",
                        &format!("/v2/mm/models/{id}/pin"),
                        &headers,
                        body.as_bytes(),
                    ),
                )
                .await;
                match answer {
                    Ok(Ok((200, answer))) => {
                        self.canaries.remove(id);
                        self.refresh_everywhere(id, Some(&owner.name), authorization);
                        tracing::info!(model = id, version = canary.version, "canary promoted");
                        let pinned: serde_json::Value =
                            serde_json::from_slice(&answer).unwrap_or_default();
                        (
                            200,
                            json!({ "model": id, "promoted": canary, "pinned": pinned }),
                        )
                    }
                    Ok(Ok((status, answer))) => (
                        status,
                        serde_json::from_slice(&answer)
                            .unwrap_or_else(|_| json!({ "error": "promotion failed" })),
                    ),
                    _ => (
                        502,
                        json!({ "error": "the scorer did not answer the promotion" }),
                    ),
                }
            }
        })
    }

    /// After an admin call changed `model`'s live version in the store, asks every other
    /// healthy scorer to look now (in the background) rather than at its next check.
    fn refresh_everywhere(
        &self,
        model: &str,
        done_by: Option<&str>,
        authorization: Option<String>,
    ) {
        let targets: Vec<String> = self
            .pool
            .lb
            .backends()
            .get_backend()
            .iter()
            .filter(|b| self.pool.lb.backends().ready(b))
            .filter(|b| done_by != Some(crate::ranking::name_ref(b)))
            .map(|b| b.addr.to_string())
            .collect();
        let path = format!("/v2/mm/models/{model}/refresh");
        let timeout = self.config.read_timeout;
        tokio::spawn(async move {
            let headers: Vec<(&str, &str)> = authorization
                .as_deref()
                .map(|a| vec![("Authorization", a)])
                .unwrap_or_default();
            let calls = targets.iter().map(|addr| {
                tokio::time::timeout(
                    timeout,
                    crate::http1::call(addr, "POST", &path, &headers, b""),
                )
            });
            for (addr, result) in targets.iter().zip(futures::future::join_all(calls).await) {
                if !matches!(result, Ok(Ok((200 | 404, _)))) {
                    tracing::warn!(scorer = %addr, path, "refresh after an admin change failed; the scorer's own check will catch up");
                }
            }
        });
    }

    fn authorized(&self, session: &Session, admin: bool) -> bool {
        let keys = if admin && !self.config.admin_keys.is_empty() {
            &self.config.admin_keys
        } else {
            &self.config.api_keys
        };
        keys.is_empty() || bearer(session).is_some_and(|given| Secret::matches_any(given, keys))
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
            echoed: Vec::new(),
            body_bytes: 0,
            cache: None,
            status: 0,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> pingora::Result<bool> {
        let header = |name: &str| {
            session
                .get_header(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        ctx.route = classify(
            session.req_header().method.as_str(),
            session.req_header().uri.path(),
            header(MODEL_HEADER).as_deref(),
            header(VERSION_HEADER).as_deref(),
        );
        for name in ECHOED {
            if let Some(value) = header(name) {
                ctx.echoed.push((name, value));
            }
        }
        let (status, body): (u16, serde_json::Value) = match &ctx.route {
            Route::Live => (200, serde_json::json!({ "live": true })),
            Route::Ready => {
                let (_, healthy) = self.pool.size();
                if healthy > 0 {
                    (
                        200,
                        serde_json::json!({ "ready": true, "healthy_scorers": healthy }),
                    )
                } else {
                    (
                        503,
                        serde_json::json!({ "ready": false, "error": "no healthy scorer" }),
                    )
                }
            }
            Route::Metrics => {
                let (size, healthy) = self.pool.size();
                self.metrics.pool_size.set(size as i64);
                self.metrics.healthy_scorers.set(healthy as i64);
                self.metrics.hot_models.set(self.pool.hot.len() as i64);
                for (name, inflight) in self.pool.inflight_snapshot() {
                    self.metrics
                        .inflight
                        .with_label_values(&[&name])
                        .set(inflight as i64);
                }
                ctx.status = 200;
                respond(
                    session,
                    200,
                    "text/plain; version=0.0.4",
                    Bytes::from(self.metrics.render()),
                )
                .await?;
                return Ok(true);
            }
            Route::PoolView => (200, self.stats.view(&self.pool)),
            Route::Status => {
                ctx.status = 200;
                respond(
                    session,
                    200,
                    "text/html; charset=utf-8",
                    Bytes::from_static(STATUS_PAGE.as_bytes()),
                )
                .await?;
                return Ok(true);
            }
            Route::Invalid(message) => (400, serde_json::json!({ "error": message })),
            Route::NotFound => (
                404,
                serde_json::json!({ "error": format!("no route for {} {}", session.req_header().method, session.req_header().uri.path()) }),
            ),
            Route::Model { admin, .. } if !self.authorized(session, *admin) => (
                401,
                serde_json::json!({ "error": "missing or invalid bearer key" }),
            ),
            Route::AnyScorer if !self.authorized(session, false) => (
                401,
                serde_json::json!({ "error": "missing or invalid bearer key" }),
            ),
            Route::Canary { .. } if !self.authorized(session, true) => (
                401,
                serde_json::json!({ "error": "missing or invalid bearer key" }),
            ),
            Route::Canary { id, action } => {
                let (id, action) = (id.clone(), *action);
                self.canary(session, &id, action).await?
            }
            Route::Model { .. } | Route::AnyScorer => {
                let upload = session.req_header().method == "PUT"
                    && crate::route::changes_versions("PUT", &ctx.route);
                ctx.body_limit = if upload {
                    self.config.max_upload.bytes()
                } else {
                    self.config.max_body.bytes()
                };
                let length = session
                    .get_header("content-length")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                if length.is_some_and(|n| n > ctx.body_limit) {
                    (
                        413,
                        serde_json::json!({ "error": format!("request body is larger than the limit of {} bytes", ctx.body_limit) }),
                    )
                } else {
                    self.apply_canary(session, &mut ctx.route);
                    if let Route::Model {
                        rewrite: Some(path),
                        ..
                    } = &ctx.route
                    {
                        let uri = path
                            .parse()
                            .map_err(|_| Error::explain(ErrorType::InternalError, "bad rewrite"))?;
                        session.req_header_mut().set_uri(uri);
                    }
                    return Ok(false);
                }
            }
        };
        ctx.status = status;
        respond_json(session, status, &body).await?;
        Ok(true)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        // Chunked bodies have no Content-Length to check up front. (A retry replays the
        // buffered body through here again; the count only grows, so the check holds.)
        if let Some(chunk) = body {
            ctx.body_bytes += chunk.len();
            if ctx.body_bytes as u64 > ctx.body_limit {
                return Err(Error::explain(
                    ErrorType::HTTPStatus(413),
                    "request body too large",
                ));
            }
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Ctx,
    ) -> pingora::Result<Box<HttpPeer>> {
        ctx.release();
        let key = match &ctx.route {
            Route::Model { id, .. } => id.clone(),
            _ => String::new(),
        };
        let chosen = self
            .choose(&key, &ctx.tried)
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(503), "no scorer available"))?;
        let counter = self.pool.inflight(&chosen.name);
        counter.fetch_add(1, Ordering::Relaxed);
        ctx.tried.push(chosen.name.clone());
        ctx.current = Some((chosen.name, counter));
        ctx.upstream_started = Some(Instant::now());
        let mut peer = HttpPeer::new(chosen.addr, false, String::new());
        peer.options.connection_timeout = Some(self.config.connect_timeout);
        peer.options.read_timeout = Some(self.config.read_timeout);
        peer.options.write_timeout = Some(self.config.read_timeout);
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        Ok(Box::new(peer))
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        let cache = upstream_response
            .headers
            .get(CACHE_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if upstream_response.status.is_success()
            && cache.is_some()
            && let (Route::Model { id, .. }, Some((scorer, _))) = (&ctx.route, &ctx.current)
        {
            self.pool.hot.record(id, scorer);
            let hit = cache.as_deref() == Some("hit");
            self.stats.observe(hit);
            if hit {
                self.metrics.cache_hits.inc();
            } else {
                self.metrics.cache_misses.inc();
            }
        }
        ctx.cache = cache;
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        ctx.status = upstream_response.status.as_u16();
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
        // and the body is still buffered, the next candidate can answer instead. A slow
        // scorer (read timeout) is not retried: it is alive and would still be working.
        let died = matches!(
            e.etype(),
            ErrorType::ConnectionClosed
                | ErrorType::ReadError
                | ErrorType::WriteError
                | ErrorType::ConnectRefused
        );
        // Only the scorer's side counts: a client that hangs up is not a dead scorer.
        let upstream = matches!(e.esource(), pingora::ErrorSource::Upstream);
        let retryable = died
            && upstream
            && session.response_written().is_none()
            && !session.as_ref().retry_buffer_truncated()
            && ctx.tried.len() <= self.config.retries;
        if retryable {
            if !client_reused && let Some((name, _)) = &ctx.current {
                self.pool.eject(name);
            }
            self.metrics.retries.inc();
            e.set_retry(true);
        } else {
            e.set_retry(false);
        }
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let (status, message) = match e.etype() {
            ErrorType::HTTPStatus(code) => (
                *code,
                e.context
                    .as_ref()
                    .map(|c| c.as_str().to_string())
                    .unwrap_or_default(),
            ),
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                (504, "the scorer did not answer in time".to_string())
            }
            _ if matches!(e.esource(), pingora::ErrorSource::Downstream) => {
                (400, "bad request from client".to_string())
            }
            _ => (502, format!("the scorer failed: {}", e.etype().as_str())),
        };
        let message = match status {
            503 if message.is_empty() => "no scorer available".to_string(),
            413 => format!(
                "request body is larger than the limit of {} bytes",
                ctx.body_limit
            ),
            _ => message,
        };
        ctx.status = status;
        if session.response_written().is_none() {
            let _ = respond_json(session, status, &serde_json::json!({ "error": message })).await;
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let scorer = ctx.current.as_ref().map(|(n, _)| n.clone());
        ctx.release();
        let status = if ctx.status != 0 {
            ctx.status
        } else {
            session
                .response_written()
                .map(|r| r.status.as_u16())
                .unwrap_or(0)
        };
        let client_closed =
            e.is_some_and(|e| matches!(e.esource(), pingora::ErrorSource::Downstream));
        let outcome = match (&ctx.route, status) {
            _ if client_closed => "client_closed",
            (Route::Live | Route::Ready | Route::Metrics, _) => "local",
            (_, 200..=299) => "ok",
            (_, 400..=499) if scorer.is_some() => "client_error",
            (_, 400..=499) => "rejected",
            (_, 503) if scorer.is_none() => "unavailable",
            _ => "upstream_error",
        };
        self.metrics.count(outcome);
        if (200..300).contains(&status)
            && let Route::Model { id, .. } = &ctx.route
            && crate::route::changes_versions(session.req_header().method.as_str(), &ctx.route)
        {
            let authorization = session
                .get_header("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            self.refresh_everywhere(id, scorer.as_deref(), authorization);
        }
        if let Some(started) = ctx.upstream_started {
            self.metrics
                .upstream_latency
                .observe(started.elapsed().as_secs_f64());
        }
        let model = match &ctx.route {
            Route::Model { id, .. } => id.as_str(),
            _ => "",
        };
        let request_id = ctx.echoed.first().map(|(_, v)| v.as_str()).unwrap_or("");
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
                cache = ctx.cache.as_deref().unwrap_or(""),
                tries = ctx.tried.len(),
                ms = ctx.started.elapsed().as_secs_f64() * 1e3,
                "request"
            );
        }
    }
}
