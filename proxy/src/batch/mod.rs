//! The many-model route: one request, records for many models ([`records`] reads them).
//! The proxy groups the records by model (and version) and chooses each group's scorer
//! exactly as it would a single request's for that model (`Proxy::choose`: rendezvous
//! ranking, the hot table, spills, warm loads, statistics); then it sends each scorer the
//! groups chosen for it, up to `batch.groups_per_request` to a request
//! (`contract::route::RECORD_GROUPS`: a few requests per scorer rather than one per model),
//! at most `batch.parallelism` requests at once, and answers one result per record in the
//! request's order.
//!
//! Failures stay with their records: a record the proxy cannot read, or whose model the
//! key may not use, fails alone (400, 403); a group the scorer refuses (an unknown model's
//! 404, a model that takes no records' 400) fails that group's records; a scorer that
//! cannot be reached or dies before answering is ejected and its groups go to their next
//! candidates (`upstream.retries` times), as a single request would. The deadline
//! (`x-mm-timeout-ms`) is the whole request's: each request to a scorer gets what is left.
//!
//! Memory is bounded: a body is at most `batch.max_bytes` and `batch.max_records` (413),
//! and at most `batch.concurrency` many-model requests are read and served at once.

pub mod records;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use manymodels_boot::telemetry;
use manymodels_config::proxy::BatchConfig;
use manymodels_contract::batch::Group;
use manymodels_contract::oip::ErrorBody;
use manymodels_contract::{Lookup, header, route as scorer};
use pingora::proxy::Session;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::Semaphore;

use crate::pool::Candidate;
use crate::reject::{Rejection, Reply};
use crate::service::{Proxy, declared_length};
use records::{BodyError, Parsed, Reading, Refused, Target};

/// The route's shared parts: the client to the scorers (connections kept and reused) and
/// the turns that bound how many many-model requests run at once.
pub struct Batches {
    client: reqwest::Client,
    turns: Arc<Semaphore>,
}

impl Batches {
    pub fn new(config: &BatchConfig, connect_timeout: Duration) -> Self {
        let client = reqwest::Client::builder()
            .no_proxy()
            .http1_only()
            .tcp_nodelay(true)
            .connect_timeout(connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .expect("a plain HTTP client builds");
        Batches {
            client,
            turns: Arc::new(Semaphore::new(config.concurrency)),
        }
    }
}

/// What the service hands the route, already checked: the key's scope and name.
pub struct Asked<'a> {
    /// The request's id, sent to every scorer asked (`x-request-id`).
    pub request_id: &'a str,
    /// The request's span: each group's route decision and each scorer request are its
    /// children.
    pub span: &'a tracing::Span,
    /// The client's `traceparent`, sent on as it came when tracing is off.
    pub traceparent: Option<reqwest::header::HeaderValue>,
    /// The asking key's model-id prefixes (empty: every model).
    pub scope: &'a [String],
    /// The asking key's name, which may choose its own id template.
    pub key: Option<&'a str>,
    /// The client's `Authorization` header, sent to scorers only without a pool key (with
    /// one, each scorer gets the pool key it takes: `Pool::authorization_for`).
    pub client_authorization: Option<String>,
    /// The request's priority (the key's, else the client's `x-mm-priority`), sent to each
    /// scorer as `x-mm-priority`; `None`: none was said.
    pub priority: Option<manymodels_contract::Priority>,
    pub deadline: Option<Instant>,
}

/// A scorer's answer to one group, as the proxy passes it on: each record's result as
/// the scorer wrote it (never parsed into numbers and written again).
#[derive(Deserialize)]
struct Answered {
    model_version: String,
    results: Vec<Box<RawValue>>,
    /// How many of `results` are failures, as the scorer counted them.
    failed: usize,
}

/// A group's outcome: its records' results as JSON objects, or one failure for all.
enum Outcome {
    Answered(Answered),
    Failed(Refused),
}

/// Serves a many-model request whose key was checked: reads the body, fans the groups
/// out, answers in order. Errors of the whole request are answered as such.
pub async fn serve(proxy: &Proxy, session: &mut Session, asked: Asked<'_>) -> Reply {
    let config = &proxy.config.batch;
    if declared_length(session).is_some_and(|n| n > config.max_bytes.bytes()) {
        return Rejection::TooLarge {
            limit: config.max_bytes.bytes(),
        }
        .into();
    }
    // The turn and the body are waited for within the client's deadline (or the read
    // timeout): a slow client must not hold a turn past it.
    let until = Instant::now()
        + asked
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(proxy.config.read_timeout);
    let past_deadline =
        || -> Reply { Reply::json(504, &ErrorBody::new("the request's deadline passed")) };
    let turn = tokio::time::timeout_at(until.into(), proxy.batches.turns.acquire()).await;
    let Ok(Ok(_turn)) = turn else {
        if asked.deadline.is_some_and(|d| Instant::now() >= d) {
            return past_deadline();
        }
        return Reply::json(
            503,
            &ErrorBody::new(format!(
                "too many many-model requests at once (batch.concurrency = {}): try again",
                config.concurrency
            )),
        );
    };
    let read = read_body(session, config.max_bytes.bytes());
    let body = match tokio::time::timeout_at(until.into(), read).await {
        Ok(Ok(body)) => body,
        Ok(Err(reply)) => return reply,
        Err(_) if asked.deadline.is_some() => return past_deadline(),
        Err(_) => return Rejection::BadClientRequest.into(),
    };
    let reading = Reading {
        template: config.template(asked.key),
        scope: asked.scope,
        max_records: config.max_records,
    };
    let mut parsed = match records::read(&body, &reading) {
        Ok(parsed) => parsed,
        Err(BodyError::Invalid(message)) => return Rejection::Invalid(message).into(),
        Err(BodyError::TooMany { records, limit }) => {
            return Reply::json(
                413,
                &ErrorBody::new(format!(
                    "{records} records: the limit is {limit} (batch.max_records)"
                )),
            );
        }
    };
    drop(body);
    let groups = records::group(&parsed);
    let mut pending: Vec<Pending> = Vec::with_capacity(groups.len());
    let mut outcomes: Vec<(Target, Vec<usize>, Outcome)> = Vec::with_capacity(groups.len());
    for (target, positions) in groups {
        let group = Group {
            model: target.0.clone(),
            version: target.1,
            records: positions
                .iter()
                .map(|&i| std::mem::take(&mut parsed[i].record))
                .collect(),
        };
        match serde_json::to_vec(&group) {
            Ok(json) => pending.push(Pending {
                target,
                positions,
                json: Bytes::from(json),
                tried: Vec::new(),
            }),
            Err(e) => {
                let failed = refused(&target, 400, format!("a record cannot be sent: {e}"));
                outcomes.push((target, positions, Outcome::Failed(failed)));
            }
        }
    }
    // Rounds: choose each pending group's scorer, send each scorer its groups in requests
    // of at most `batch.groups_per_request`, and put back the groups of a scorer that died
    // (the next round chooses past it).
    while !pending.is_empty() {
        let mut requests: Vec<(Candidate, Vec<Pending>)> = Vec::new();
        for mut group in pending.drain(..) {
            if asked.deadline.is_some_and(|d| Instant::now() >= d) {
                let failed = refused(&group.target, 504, "the request's deadline passed".into());
                outcomes.push((group.target, group.positions, Outcome::Failed(failed)));
                continue;
            }
            let route = if asked.span.is_none() {
                tracing::Span::none()
            } else {
                tracing::debug_span!(
                    parent: asked.span,
                    "route",
                    model = %group.target.0,
                    attempt = group.tried.len() + 1,
                    scorer = tracing::field::Empty,
                    why = tracing::field::Empty,
                    warm = tracing::field::Empty,
                )
            };
            let chosen = route.in_scope(|| proxy.choose(&group.target.0, &group.tried));
            if let Some(chosen) = &chosen {
                route.record("scorer", &*chosen.name);
            }
            let Some(chosen) = chosen else {
                let failed = refused(&group.target, 503, "no scorer available".into());
                outcomes.push((group.target, group.positions, Outcome::Failed(failed)));
                continue;
            };
            group.tried.push(chosen.name.clone());
            match requests.iter_mut().rev().find(|(c, groups)| {
                c.name == chosen.name && groups.len() < config.groups_per_request
            }) {
                Some((_, groups)) => groups.push(group),
                None => requests.push((chosen, vec![group])),
            }
        }
        let sends = requests
            .into_iter()
            .map(|(chosen, groups)| send(proxy, chosen, groups, &asked));
        let sent: Vec<(Vec<Pending>, Sent)> = futures::stream::iter(sends)
            .buffer_unordered(config.parallelism)
            .collect()
            .await;
        for (groups, sent) in sent {
            match sent {
                Sent::Answered(answers) => {
                    for (group, outcome) in groups.into_iter().zip(answers) {
                        outcomes.push((group.target, group.positions, outcome));
                    }
                }
                Sent::Failed { status, error } => {
                    for group in groups {
                        let failed = refused(&group.target, status, error.clone());
                        outcomes.push((group.target, group.positions, Outcome::Failed(failed)));
                    }
                }
                Sent::Died(error) => {
                    for group in groups {
                        if group.tried.len() > proxy.config.retries {
                            let failed = refused(&group.target, 502, error.clone());
                            outcomes.push((group.target, group.positions, Outcome::Failed(failed)));
                        } else {
                            proxy.metrics.retries.inc();
                            pending.push(group);
                        }
                    }
                }
            }
        }
    }
    answer(proxy, parsed, outcomes)
}

/// A group on its way: its model, its records' positions in the request, its records as
/// the scorer reads them (`contract::batch::Group`, written once), and the scorers tried.
struct Pending {
    target: Target,
    positions: Vec<usize>,
    json: Bytes,
    tried: Vec<Arc<str>>,
}

/// What became of one request to a scorer.
enum Sent {
    /// One outcome per group, in order.
    Answered(Vec<Outcome>),
    /// The scorer answered an error for the whole request, or did not answer in time:
    /// every group fails with it.
    Failed { status: u16, error: String },
    /// Not reached, or died before answering: the groups may go to the next candidate.
    Died(String),
}

fn refused((id, _): &Target, status: u16, error: String) -> Refused {
    Refused {
        status,
        error,
        model: Some(id.clone()),
    }
}

/// The whole body, refused past `limit` bytes.
pub(crate) async fn read_body(session: &mut Session, limit: u64) -> Result<Bytes, Reply> {
    let mut body = BytesMut::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if (body.len() + chunk.len()) as u64 > limit {
                    return Err(Rejection::TooLarge { limit }.into());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body.freeze()),
            Err(_) => return Err(Rejection::BadClientRequest.into()),
        }
    }
}

/// A scorer's answer to one group, as the scorer wrote it (`contract::batch::GroupAnswer`):
/// each record's result is kept as its text (never parsed into numbers and written again).
#[derive(Deserialize)]
struct RawGroup {
    model_version: Option<String>,
    cache: Option<String>,
    results: Option<Vec<Box<RawValue>>>,
    failed: Option<usize>,
    error: Option<String>,
    status: Option<u16>,
}

#[derive(Deserialize)]
struct RawGroups {
    groups: Vec<RawGroup>,
}

/// Sends `groups` to the scorer `chosen` in one request
/// (`contract::route::RECORD_GROUPS`); hands the groups back with what became of them.
async fn send(
    proxy: &Proxy,
    chosen: Candidate,
    groups: Vec<Pending>,
    asked: &Asked<'_>,
) -> (Vec<Pending>, Sent) {
    let mut timeout = proxy.config.read_timeout;
    if let Some(deadline) = asked.deadline {
        timeout = timeout.min(deadline.saturating_duration_since(Instant::now()));
        if timeout.is_zero() {
            let sent = Sent::Failed {
                status: 504,
                error: "the request's deadline passed".into(),
            };
            return (groups, sent);
        }
    }
    let size = groups.iter().map(|g| g.json.len() + 1).sum::<usize>() + 16;
    let mut body = BytesMut::with_capacity(size);
    body.extend_from_slice(b"{\"groups\":[");
    let mut ranges = Vec::with_capacity(groups.len());
    for (i, group) in groups.iter().enumerate() {
        if i > 0 {
            body.extend_from_slice(b",");
        }
        let start = body.len();
        body.extend_from_slice(&group.json);
        ranges.push(start..body.len());
    }
    body.extend_from_slice(b"]}");
    // Each group's text now lives once, in the request's body: the groups keep slices of it
    // (for a retry), and their own copies are freed.
    let body = body.freeze();
    let mut groups = groups;
    for (group, range) in groups.iter_mut().zip(ranges) {
        group.json = body.slice(range);
    }
    let counter = proxy.pool.inflight(&chosen.name);
    counter.fetch_add(groups.len(), Ordering::Relaxed);
    let mut request = proxy
        .batches
        .client
        .post(format!("http://{}{}", chosen.addr, scorer::RECORD_GROUPS))
        .header("content-type", "application/json")
        .timeout(timeout)
        .body(body);
    if let Some(priority) = asked.priority {
        request = request.header(header::PRIORITY, priority.as_str());
    }
    if asked.deadline.is_some() {
        request = request.header(header::TIMEOUT_MS, timeout.as_millis().max(1).to_string());
    }
    request = request.header(header::REQUEST_ID, asked.request_id);
    let span = if asked.span.is_none() {
        tracing::Span::none()
    } else {
        tracing::debug_span!(
            parent: asked.span,
            "upstream",
            scorer = &*chosen.name,
            groups = groups.len(),
            status = tracing::field::Empty,
        )
    };
    if let Some(traceparent) = telemetry::outgoing(&span, asked.traceparent.as_ref()) {
        request = request.header(header::TRACEPARENT, traceparent);
    }
    // The pool key this scorer takes, else (no pool key) the client's header.
    let pool_key = proxy.pool.authorization_for(&chosen.name);
    let send = |authorization: Option<&str>| {
        // The body is in memory (`Bytes`): the request clones.
        let mut request = request
            .try_clone()
            .expect("a request with an in-memory body");
        if let Some(authorization) = authorization.or(asked.client_authorization.as_deref()) {
            request = request.header("authorization", authorization);
        }
        async move {
            let response = request.send().await?;
            let status = response.status().as_u16();
            let bytes = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, bytes))
        }
    };
    let started = Instant::now();
    let mut result = send(pool_key.as_deref()).await;
    // During a pool key rotation a scorer that refuses the key sent is switched to the
    // other one, and the groups are sent again with it (once).
    if matches!(&result, Ok((401, _)))
        && let Some(sent) = &pool_key
    {
        proxy.pool.pool_key_refused(&chosen.name, Some(sent));
        if let Some(other) = proxy.pool.authorization_for(&chosen.name)
            && other != *sent
        {
            result = send(Some(&other)).await;
        }
    }
    counter.fetch_sub(groups.len(), Ordering::Relaxed);
    if let Ok((status, _)) = &result {
        span.record("status", status);
    }
    drop(span);
    proxy
        .metrics
        .upstream_latency
        .observe(started.elapsed().as_secs_f64());
    let sent = match result {
        Ok((200, bytes)) => match serde_json::from_slice::<RawGroups>(&bytes) {
            Ok(answer) if answer.groups.len() == groups.len() => Sent::Answered(
                groups
                    .iter()
                    .zip(answer.groups)
                    .map(|(group, raw)| outcome(proxy, &group.target, &chosen.name, raw))
                    .collect(),
            ),
            Ok(answer) => Sent::Failed {
                status: 502,
                error: format!(
                    "the scorer answered {} groups for {}",
                    answer.groups.len(),
                    groups.len()
                ),
            },
            Err(e) => Sent::Failed {
                status: 502,
                error: format!("the scorer's answer was unreadable: {e}"),
            },
        },
        Ok((status, bytes)) => Sent::Failed {
            status,
            error: serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|b| b.error)
                .unwrap_or_else(|_| format!("the scorer answered {status}")),
        },
        Err(e) if e.is_timeout() => Sent::Failed {
            status: 504,
            error: "the scorer did not answer in time".into(),
        },
        Err(e) => {
            proxy.pool.eject(&chosen.name);
            Sent::Died(format!("the scorer failed: {}", error_chain(&e)))
        }
    };
    (groups, sent)
}

/// One group's outcome from its answer; a group the scorer answered teaches the proxy
/// where its model is (the hot table) and whether it was in memory.
fn outcome(proxy: &Proxy, target: &Target, scorer: &str, raw: RawGroup) -> Outcome {
    match raw {
        RawGroup {
            model_version: Some(model_version),
            cache,
            results: Some(results),
            failed: Some(failed),
            ..
        } => {
            if let Some(lookup) = cache.as_deref().and_then(Lookup::parse) {
                proxy.learn(&target.0, scorer, lookup);
            }
            Outcome::Answered(Answered {
                model_version,
                results,
                failed,
            })
        }
        RawGroup { error, status, .. } => Outcome::Failed(refused(
            target,
            status.unwrap_or(502),
            error.unwrap_or_else(|| "the scorer's answer for the group was unreadable".into()),
        )),
    }
}

/// An error and its causes, joined: reqwest's own message is only "error sending request".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The answer: one result per record, in the request's order, counted.
fn answer(
    proxy: &Proxy,
    parsed: Vec<Parsed>,
    outcomes: Vec<(Target, Vec<usize>, Outcome)>,
) -> Reply {
    let records = parsed.len();
    let models = outcomes.len();
    let (body, failed) = assemble(parsed, outcomes);
    proxy.metrics.count_records(records - failed, failed);
    proxy.metrics.batch_groups.inc_by(models as u64);
    Reply {
        status: 200,
        content_type: "application/json",
        body: Bytes::from(body),
    }
}

/// The answer's body (`contract::batch::BatchAnswer`) and how many records failed: each
/// record's result where its position says, the scorer's text passed on with the model's
/// id and version put first.
fn assemble(parsed: Vec<Parsed>, outcomes: Vec<(Target, Vec<usize>, Outcome)>) -> (String, usize) {
    // Every group ends in `outcomes` exactly once.
    let models = outcomes.len();
    let mut results: Vec<Option<String>> = vec![None; parsed.len()];
    let mut failed = 0usize;
    for (i, p) in parsed.iter().enumerate() {
        if let Err(refused) = &p.target {
            results[i] = Some(failure(refused));
            failed += 1;
        }
    }
    for ((id, _), positions, outcome) in outcomes {
        let refused = match outcome {
            Outcome::Answered(answered) if answered.results.len() == positions.len() => {
                let head = format!(
                    "{{\"model\":{},\"model_version\":{}",
                    json_string(&id),
                    json_string(&answered.model_version)
                );
                failed += answered.failed;
                for (position, raw) in positions.into_iter().zip(answered.results) {
                    // `raw` is a JSON object (`{...}`): the model's fields go first.
                    let raw = raw.get();
                    let rest = raw.strip_prefix('{').unwrap_or(raw).trim_start();
                    results[position] = Some(if rest.starts_with('}') {
                        format!("{head}}}")
                    } else {
                        format!("{head},{rest}")
                    });
                }
                continue;
            }
            Outcome::Answered(answered) => Refused {
                status: 502,
                error: format!(
                    "the scorer answered {} results for {} records",
                    answered.results.len(),
                    positions.len()
                ),
                model: Some(id),
            },
            Outcome::Failed(refused) => refused,
        };
        let text = failure(&refused);
        for position in positions {
            results[position] = Some(text.clone());
            failed += 1;
        }
    }
    let mut body =
        String::with_capacity(results.iter().flatten().map(|r| r.len() + 1).sum::<usize>() + 64);
    body.push_str("{\"results\":[");
    for (i, result) in results.into_iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        // Every position is filled (a record is refused, or in exactly one group); were
        // one not, it would fail alone rather than take the request down.
        body.push_str(&result.unwrap_or_else(|| {
            failure(&Refused {
                status: 500,
                error: "the record was not answered".into(),
                model: None,
            })
        }));
    }
    body.push_str(&format!("],\"models\":{models},\"failed\":{failed}}}"));
    (body, failed)
}

/// A record's failure as the answer writes it (`{"model"?, "error", "status"}`).
fn failure(refused: &Refused) -> String {
    let mut text = String::from("{");
    if let Some(model) = &refused.model {
        text.push_str("\"model\":");
        text.push_str(&json_string(model));
        text.push(',');
    }
    text.push_str("\"error\":");
    text.push_str(&json_string(&refused.error));
    text.push_str(",\"status\":");
    text.push_str(&refused.status.to_string());
    text.push('}');
    text
}

fn json_string(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

#[cfg(test)]
mod tests;
