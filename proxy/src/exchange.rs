//! A hedged inference request's exchange with the scorers: the body read once, sent to the
//! chosen scorer, and after the hedge delay ([`crate::hedge`]) with no answer sent to the
//! next candidate too; the first answer wins and dropping the other attempt cancels it
//! (its connection is closed). An attempt that cannot reach its scorer ejects it and, with
//! no other attempt running, is retried on the next candidate (`upstream.retries`), as
//! Pingora's path does. A scorer's 5xx answer wins only when no other attempt can answer.
//!
//! Only idempotent model requests come here (REST `infer` and Azure ML scoring naming a
//! model): admin calls, uploads, gRPC and the many-model route keep Pingora's path.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytes::BytesMut;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use manymodels_boot::telemetry;
use manymodels_contract::{Lookup, header};
use pingora::ErrorType;
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession;
use pingora::time::fast_timeout::fast_sleep;
use pingora::upstreams::peer::HttpPeer;

use crate::hedge::Expect;
use crate::pool::Candidate;
use crate::reject::Rejection;
use crate::service::Proxy;

/// The largest body a hedged request may declare: the exchange holds it whole (to send it
/// twice), so a bigger one, or one without a `Content-Length`, streams through Pingora's
/// forwarding instead and is not hedged.
pub const MAX_BODY: u64 = 1 << 20;

/// Request headers never passed on: hop-by-hop ones, what the client says of its own
/// body (the body is re-sent whole), and what the proxy writes itself.
const NOT_FORWARDED: [&str; 14] = [
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "content-length",
    "authorization",
    header::TIMEOUT_MS,
    header::REQUEST_ID,
    header::MODEL_PREFIXES,
];

/// Answer headers not passed back: hop-by-hop, the length (the proxy writes its own),
/// and the request id (the proxy's `identify` writes it).
pub(crate) const NOT_RETURNED: [&str; 6] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "date",
    header::REQUEST_ID,
];

/// The client's request as every attempt starts from it (its URI already the scorer's
/// path, `Proxy::forward`): its headers but for [`NOT_FORWARDED`], as HTTP/1.1 (the scorers
/// are asked over HTTP/1.1 whatever the client spoke), in origin form (an HTTP/2 client's
/// URI carries its authority).
pub(crate) fn forwarded(request: &RequestHeader) -> Option<RequestHeader> {
    let mut request = request.clone();
    for name in NOT_FORWARDED {
        request.remove_header(name);
    }
    request.set_version(pingora::http::Version::HTTP_11);
    if request.uri.authority().is_some() {
        let origin = request.uri.path_and_query()?.clone();
        request.set_uri(origin.into());
    }
    Some(request)
}

/// Why an attempt got no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// The scorer could not be reached (refused, unreachable, connect timeout): nothing
    /// was sent.
    Unreachable,
    /// The connection failed after the request went out, before a whole answer came back.
    Died,
    /// No answer within what was left of the deadline (or `upstream.read_timeout`).
    TimedOut,
}

/// An answer: the scorer's response header and the whole body.
type Answer = (ResponseHeader, Bytes);

/// The connections to the scorers for hedged requests: Pingora's own HTTP/1.1 connector
/// and pool (the proxy's forwarding path uses the same code), one exchange at a time on a
/// connection, kept for reuse when the scorer keeps it alive.
pub struct Forwarder {
    connector: Connector,
    connect_timeout: Duration,
}

impl Forwarder {
    pub fn new(connect_timeout: Duration) -> Forwarder {
        Forwarder {
            connector: Connector::new(None),
            connect_timeout,
        }
    }

    /// Sends the request `build` makes and `body` to `addr` and reads the whole answer,
    /// each read and write within `timeout` (Pingora's own timers, as its forwarding
    /// path). A pooled connection the scorer had closed is retried once on a new one.
    async fn send(
        &self,
        addr: std::net::SocketAddr,
        build: impl Fn() -> Option<RequestHeader>,
        body: &Bytes,
        timeout: Duration,
    ) -> Result<Answer, Failure> {
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        loop {
            let (mut session, reused) = self
                .connector
                .get_http_session(&peer)
                .await
                .map_err(|_| Failure::Unreachable)?;
            session.set_read_timeout(Some(timeout));
            session.set_write_timeout(Some(timeout));
            let request = build().ok_or(Failure::Died)?;
            match Self::exchange(&mut session, request, body).await {
                Ok(answer) => {
                    self.connector
                        .release_http_session(session, &peer, peer.options.idle_timeout)
                        .await;
                    return Ok(answer);
                }
                // A kept connection the scorer closed meanwhile: once more, afresh.
                Err((Failure::Died, false)) if reused => {}
                Err((failure, _)) => return Err(failure),
            }
        }
    }

    /// One exchange on `session`; an error says whether part of an answer had arrived.
    async fn exchange(
        session: &mut HttpSession,
        request: RequestHeader,
        body: &Bytes,
    ) -> Result<Answer, (Failure, bool)> {
        let failed = |answered: bool| {
            move |e: Box<pingora::Error>| {
                let failure = match e.etype() {
                    ErrorType::ReadTimedout | ErrorType::WriteTimedout => Failure::TimedOut,
                    _ => Failure::Died,
                };
                (failure, answered)
            }
        };
        session
            .write_request_header(Box::new(request))
            .await
            .map_err(failed(false))?;
        session
            .write_request_body(body.clone(), true)
            .await
            .map_err(failed(false))?;
        session.finish_request_body().await.map_err(failed(false))?;
        session
            .read_response_header()
            .await
            .map_err(failed(false))?;
        let mut answer = BytesMut::new();
        while let Some(chunk) = session.read_response_body().await.map_err(failed(true))? {
            answer.extend_from_slice(&chunk);
        }
        let head = session.response_header().ok_or((Failure::Died, true))?;
        Ok((head.clone(), answer.freeze()))
    }
}

/// What the service read and checked of a request.
pub(crate) struct Exchange<'a> {
    pub model: &'a str,
    /// The client's request to pass on ([`forwarded`]): its headers but for
    /// [`NOT_FORWARDED`], HTTP/1.1, the scorer's path.
    pub request: RequestHeader,
    pub body: Bytes,
    pub deadline: Option<Instant>,
    pub request_id: &'a str,
    /// The request's span (each attempt's `upstream` span is its child).
    pub span: &'a tracing::Span,
    /// The client's `Authorization`, sent on when no pool key is set (with one, each
    /// scorer gets the pool key it takes, `Pool::authorization_for`).
    pub client_authorization: Option<String>,
}

/// The answer that won.
pub(crate) struct Answered {
    /// The scorer's response header, as it came.
    pub head: ResponseHeader,
    pub body: Bytes,
    pub scorer: Arc<str>,
    pub lookup: Option<Lookup>,
}

/// What became of the exchange: the answer, or the proxy's own, and the scorers tried.
pub(crate) struct Outcome {
    pub result: Result<Answered, Rejection>,
    pub tried: Vec<Arc<str>>,
    /// Whether a copy was sent to a second scorer.
    pub hedged: bool,
    /// When the first attempt was sent (the upstream latency is measured from it).
    pub started: Instant,
}

/// One attempt's end: its scorer, when it was sent, and the answer or the error.
struct Attempt {
    scorer: Candidate,
    hedge: bool,
    started: Instant,
    result: Result<Answer, Failure>,
}

/// Holds one request in flight to a scorer, and gives it back however the attempt ends
/// (answered, failed, or cancelled because the other copy answered first).
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(counter: Arc<AtomicUsize>) -> InFlight {
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight(counter)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs the exchange: the first attempt, a hedge after the delay (within the budget), a
/// retry when an attempt could not reach its scorer; the first good answer.
pub(crate) async fn run(proxy: &Proxy, exchange: Exchange<'_>) -> Outcome {
    let hedging = &proxy.hedging;
    hedging.budget.earn();
    let mut tried: Vec<Arc<str>> = Vec::new();
    let mut attempts = FuturesUnordered::new();
    let mut hedged = false;
    // A 5xx answer, kept while another attempt may still answer better.
    let mut fallback: Option<Attempt> = None;
    let mut failure: Option<Rejection> = None;
    let mut retries = proxy.config.retries;
    let past_deadline = || exchange.deadline.is_some_and(|d| Instant::now() >= d);

    let started = Instant::now();
    let Some(first) = choose(proxy, &exchange, &tried) else {
        return Outcome {
            result: Err(Rejection::NoScorer),
            tried,
            hedged,
            started,
        };
    };
    let expect = if proxy.pool.holds(exchange.model, &first.name) {
        Expect::Hit
    } else {
        Expect::Miss
    };
    let delay = hedging.delays.delay(exchange.model, &first.name, expect);
    let first_name = first.name.clone();
    let mut first_answered = false;
    tried.push(first.name.clone());
    attempts.push(attempt(proxy, &exchange, first, false));
    let mut wake = hedging
        .enabled
        .then(|| (Instant::now() + delay, Wake::Hedge));

    loop {
        let next_wake = wake;
        // Pingora's timers (10 ms ticks, no tokio timer entry per request).
        let timer = async move {
            match next_wake {
                Some((at, _)) => fast_sleep(at.saturating_duration_since(Instant::now())).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            Some(done) = attempts.next() => {
                match &done.result {
                    Ok((head, _)) => {
                        let status = head.status.as_u16();
                        hedging.stalls.answered(&done.scorer.name);
                        first_answered |= !done.hedge;
                        if status >= 500 && !attempts.is_empty() {
                            // The other attempt gets one more hedge delay to do better.
                            fallback = Some(done);
                            wake = Some((Instant::now() + delay, Wake::GiveUp));
                            continue;
                        }
                        if done.hedge {
                            proxy.metrics.hedges_won.inc();
                            // Only a scorer that was expected to answer from memory, and
                            // answered nothing, counts towards a stall: a cold load may
                            // rightly take longer than a hedge to a holder.
                            if expect == Expect::Hit
                                && !first_answered
                                && hedging.stalls.hedged_away(&first_name)
                            {
                                proxy.metrics.stall_ejections.inc();
                                proxy.pool.eject_stalled(&first_name);
                            }
                        }
                        return Outcome {
                            result: Ok(answered(proxy, &exchange, done)),
                            tried,
                            hedged,
                            started,
                        };
                    }
                    &Err(error) => {
                        // Unreachable (a connect timeout included: nothing was sent) or
                        // gone mid-way: ejected, and the request may go to the next
                        // candidate (inference is idempotent). Slow: not retried.
                        let unreachable = error != Failure::TimedOut;
                        if unreachable {
                            proxy.pool.eject(&done.scorer.name);
                        }
                        failure = Some(match error {
                            Failure::Unreachable => Rejection::ScorerFailed("connection failed"),
                            Failure::Died => Rejection::ScorerFailed("connection closed before an answer"),
                            Failure::TimedOut => Rejection::ScorerTimedOut,
                        });
                        if !attempts.is_empty() {
                            continue;
                        }
                        if unreachable && retries > 0 && fallback.is_none() && !past_deadline() {
                            // Nothing was answered: the next candidate, or none is left.
                            let Some(next) = choose(proxy, &exchange, &tried) else {
                                failure = Some(Rejection::NoScorer);
                                break;
                            };
                            retries -= 1;
                            proxy.metrics.retries.inc();
                            tried.push(next.name.clone());
                            wake = None;
                            attempts.push(attempt(proxy, &exchange, next, false));
                            continue;
                        }
                        break;
                    }
                }
            }
            () = timer => {
                let Some((_, why)) = wake.take() else {
                    continue;
                };
                if why == Wake::GiveUp {
                    break;
                }
                if attempts.len() != 1 || past_deadline() {
                    continue;
                }
                if !hedging.budget.spend() {
                    proxy.metrics.hedges_over_budget.inc();
                    continue;
                }
                let Some(next) = choose(proxy, &exchange, &tried) else {
                    continue;
                };
                proxy.metrics.hedges_sent.inc();
                hedged = true;
                tried.push(next.name.clone());
                attempts.push(attempt(proxy, &exchange, next, true));
            }
            else => break,
        }
    }
    let result = match fallback {
        Some(done) => Ok(answered(proxy, &exchange, done)),
        None => Err(failure.unwrap_or(Rejection::NoScorer)),
    };
    Outcome {
        result,
        tried,
        hedged,
        started,
    }
}

/// What the exchange's one timer is set for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wake {
    /// The hedge delay: send a copy to the next candidate.
    Hedge,
    /// A 5xx is held and the other attempt had its extra delay: answer the 5xx.
    GiveUp,
}

/// The next scorer for the model, by the same rules (and side effects) as every request.
fn choose(proxy: &Proxy, exchange: &Exchange<'_>, tried: &[Arc<str>]) -> Option<Candidate> {
    let route = if exchange.span.is_none() {
        tracing::Span::none()
    } else {
        tracing::debug_span!(
            parent: exchange.span,
            "route",
            model = exchange.model,
            attempt = tried.len() + 1,
            scorer = tracing::field::Empty,
            why = tracing::field::Empty,
            warm = tracing::field::Empty,
        )
    };
    let chosen = route.in_scope(|| proxy.choose(exchange.model, tried));
    if let Some(chosen) = &chosen {
        route.record("scorer", &*chosen.name);
    }
    chosen
}

/// Sends the request to `scorer` and reads its whole answer.
async fn attempt(
    proxy: &Proxy,
    exchange: &Exchange<'_>,
    scorer: Candidate,
    hedge: bool,
) -> Attempt {
    let started = Instant::now();
    let _inflight = InFlight::new(proxy.pool.inflight(&scorer.name));
    let span = if exchange.span.is_none() {
        tracing::Span::none()
    } else {
        tracing::debug_span!(
            parent: exchange.span,
            "upstream",
            scorer = &*scorer.name,
            hedge,
            status = tracing::field::Empty,
            cache = tracing::field::Empty,
        )
    };
    let traceparent = telemetry::outgoing(&span, exchange.request.headers.get(header::TRACEPARENT));
    // What is left of the deadline (`None`: no deadline), and the read timeout within it.
    let left = || {
        exchange
            .deadline
            .map(|deadline| deadline.saturating_duration_since(Instant::now()))
    };
    let timeout = |left: Option<Duration>| {
        left.map_or(proxy.config.read_timeout, |left| {
            proxy.config.read_timeout.min(left)
        })
        .max(Duration::from_millis(1))
    };
    let pool_key = proxy.pool.authorization_for(&scorer.name);
    let host = scorer.addr.to_string();
    let host = &host;
    // The client's request as the service prepared it, and the proxy's headers.
    let build = |authorization: Option<&str>, left: Option<Duration>| {
        let mut request = exchange.request.clone();
        request.insert_header("host", host.as_str()).ok()?;
        request
            .insert_header("content-length", exchange.body.len().to_string())
            .ok()?;
        if let Some(left) = left {
            let ms = left.as_millis().max(1) as u64;
            request.insert_header(header::TIMEOUT_MS, ms).ok()?;
        }
        if let Some(authorization) = authorization {
            request.insert_header("authorization", authorization).ok()?;
        }
        request
            .insert_header(header::REQUEST_ID, exchange.request_id)
            .ok()?;
        if let Some(traceparent) = &traceparent {
            request
                .insert_header(header::TRACEPARENT, traceparent.clone())
                .ok()?;
        }
        Some(request)
    };
    let send = |authorization: Option<String>, left: Option<Duration>| {
        proxy.forwarder.send(
            scorer.addr,
            move || build(authorization.as_deref(), left),
            &exchange.body,
            timeout(left),
        )
    };
    let mut result = send(
        pool_key
            .as_deref()
            .or(exchange.client_authorization.as_deref())
            .map(str::to_string),
        left(),
    )
    .await;
    // During a pool key rotation a scorer that refuses the key sent switches to the other
    // one, and the request is sent again with it (once).
    if matches!(&result, Ok((head, _)) if head.status.as_u16() == 401)
        && let Some(sent) = &pool_key
    {
        proxy.pool.pool_key_refused(&scorer.name, Some(sent));
        let now_left = left();
        if let Some(other) = proxy.pool.authorization_for(&scorer.name)
            && other != *sent
            && now_left != Some(Duration::ZERO)
        {
            result = send(Some(other.to_string()), now_left).await;
        }
    }
    if let Ok((head, _)) = &result {
        span.record("status", head.status.as_u16());
        if let Some(cache) = head
            .headers
            .get(header::CACHE)
            .and_then(|v| v.to_str().ok())
        {
            span.record("cache", cache);
        }
    }
    Attempt {
        scorer,
        hedge,
        started,
        result,
    }
}

/// The winning attempt's answer, learnt from: the scorer holds the model, and how long it
/// took teaches the hedge delays.
fn answered(proxy: &Proxy, exchange: &Exchange<'_>, done: Attempt) -> Answered {
    let took = done.started.elapsed();
    let (head, body) = done.result.expect("only answered attempts are kept");
    let status = head.status.as_u16();
    let lookup = head
        .headers
        .get(header::CACHE)
        .and_then(|v| v.to_str().ok())
        .and_then(Lookup::parse);
    if (200..300).contains(&status)
        && let Some(lookup) = lookup
    {
        proxy.learn(exchange.model, &done.scorer.name, lookup);
        let expect = if lookup == Lookup::Hit {
            Expect::Hit
        } else {
            Expect::Miss
        };
        proxy
            .hedging
            .delays
            .observe(exchange.model, &done.scorer.name, expect, took);
    }
    Answered {
        head,
        body,
        scorer: done.scorer.name,
        lookup,
    }
}
