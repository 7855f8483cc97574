//! The many-model route: one request, records for many models ([`records`] reads them).
//! The proxy groups the records by model (and version), sends each group to the model's
//! scorer as one multi-row request (`contract::route::RECORDS`), chosen exactly as a
//! single request for that model is (`Proxy::choose`: rendezvous ranking, the hot table,
//! spills, warm loads, statistics), at most `batch.parallelism` groups at once, and
//! answers one result per record in the request's order.
//!
//! Failures stay with their records: a record the proxy cannot read, or whose model the
//! key may not use, fails alone (400, 403); a group's scorer that answers an error (an
//! unknown model's 404, a refused body's 400) fails that group's records; a scorer that
//! cannot be reached or dies before answering is ejected and the group goes to the next
//! candidate (`upstream.retries` times), as a single request would. The deadline
//! (`x-mm-timeout-ms`) is the whole request's: each group gets what is left of it.
//!
//! Memory is bounded: a body is at most `batch.max_bytes` and `batch.max_records` (413),
//! and at most `batch.concurrency` many-model requests are read and served at once.

pub mod records;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use manymodels_config::proxy::BatchConfig;
use manymodels_contract::batch::{RecordsRequest, ScorerRecord};
use manymodels_contract::oip::ErrorBody;
use manymodels_contract::{Lookup, header, route as scorer};
use pingora::proxy::Session;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::Semaphore;

use crate::reject::{Rejection, Reply};
use crate::service::Proxy;
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
    /// The asking key's model-id prefixes (empty: every model).
    pub scope: &'a [String],
    /// The asking key's name, which may choose its own id template.
    pub key: Option<&'a str>,
    /// The `Authorization` header sent to scorers: the pool key's, else the client's.
    pub authorization: Option<String>,
    pub deadline: Option<Instant>,
}

/// A scorer's answer to one group, as the proxy passes it on: each record's result as
/// the scorer wrote it (never parsed into numbers and written again).
#[derive(Deserialize)]
struct Answered {
    model_version: String,
    results: Vec<Box<RawValue>>,
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
    let length = session
        .get_header("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if length.is_some_and(|n| n > config.max_bytes.bytes()) {
        return Rejection::TooLarge {
            limit: config.max_bytes.bytes(),
        }
        .into();
    }
    let wait = asked
        .deadline
        .map(|d| d.saturating_duration_since(Instant::now()))
        .unwrap_or(proxy.config.read_timeout);
    let Ok(Ok(_turn)) = tokio::time::timeout(wait, proxy.batches.turns.acquire()).await else {
        return Reply::json(
            503,
            &ErrorBody::new(format!(
                "too many many-model requests at once (batch.concurrency = {}): try again",
                config.concurrency
            )),
        );
    };
    let body = match read_body(session, config.max_bytes.bytes()).await {
        Ok(body) => body,
        Err(reply) => return reply,
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
    let models = groups.len();
    let sends = groups.into_iter().map(|(target, positions)| {
        let group: Vec<ScorerRecord> = positions
            .iter()
            .map(|&i| std::mem::take(&mut parsed[i].record))
            .collect();
        let asked = &asked;
        async move {
            let outcome = send(proxy, &target, group, asked).await;
            (target, positions, outcome)
        }
    });
    let outcomes: Vec<_> = futures::stream::iter(sends)
        .buffer_unordered(config.parallelism)
        .collect()
        .await;
    answer(proxy, parsed, outcomes, models)
}

/// The whole body, refused past `limit` bytes.
async fn read_body(session: &mut Session, limit: u64) -> Result<Bytes, Reply> {
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

/// Sends one group to its model's scorer, retrying on the next candidate when the scorer
/// cannot be reached or dies before answering.
async fn send(
    proxy: &Proxy,
    (id, version): &Target,
    records: Vec<ScorerRecord>,
    asked: &Asked<'_>,
) -> Outcome {
    let fail = |status: u16, error: String| {
        Outcome::Failed(Refused {
            status,
            error,
            model: Some(id.clone()),
        })
    };
    let body = match serde_json::to_vec(&RecordsRequest { records }) {
        Ok(body) => Bytes::from(body),
        Err(e) => return fail(400, format!("a record cannot be sent: {e}")),
    };
    let path = match version {
        Some(v) => scorer::VERSION_RECORDS.path(id, *v),
        None => scorer::RECORDS.path(id),
    };
    let mut tried: Vec<Arc<str>> = Vec::new();
    loop {
        let mut timeout = proxy.config.read_timeout;
        if let Some(deadline) = asked.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return fail(504, "the request's deadline passed".into());
            }
            timeout = timeout.min(left);
        }
        let Some(chosen) = proxy.choose(id, &tried) else {
            return fail(503, "no scorer available".into());
        };
        tried.push(chosen.name.clone());
        let counter = proxy.pool.inflight(&chosen.name);
        counter.fetch_add(1, Ordering::Relaxed);
        let mut request = proxy
            .batches
            .client
            .post(format!("http://{}{path}", chosen.addr))
            .header("content-type", "application/json")
            .timeout(timeout)
            .body(body.clone());
        if let Some(authorization) = &asked.authorization {
            request = request.header("authorization", authorization);
        }
        if asked.deadline.is_some() {
            request = request.header(header::TIMEOUT_MS, timeout.as_millis().max(1).to_string());
        }
        let started = Instant::now();
        let result = async {
            let response = request.send().await?;
            let status = response.status().as_u16();
            let lookup = response
                .headers()
                .get(header::CACHE)
                .and_then(|v| v.to_str().ok())
                .and_then(Lookup::parse);
            let bytes = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, lookup, bytes))
        }
        .await;
        counter.fetch_sub(1, Ordering::Relaxed);
        proxy
            .metrics
            .upstream_latency
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok((200, lookup, bytes)) => {
                if let Some(lookup) = lookup {
                    proxy.learn(id, &chosen.name, lookup);
                }
                return match serde_json::from_slice::<Answered>(&bytes) {
                    Ok(answered) => Outcome::Answered(answered),
                    Err(e) => fail(502, format!("the scorer's answer was unreadable: {e}")),
                };
            }
            Ok((status, _, bytes)) => {
                let error = serde_json::from_slice::<ErrorBody>(&bytes)
                    .map(|b| b.error)
                    .unwrap_or_else(|_| format!("the scorer answered {status}"));
                return fail(status, error);
            }
            Err(e) if e.is_timeout() => {
                return fail(504, "the scorer did not answer in time".into());
            }
            Err(e) => {
                // Not reached, or died before answering: the group is idempotent, so the
                // next candidate may answer it.
                proxy.pool.eject(&chosen.name);
                if tried.len() > proxy.config.retries {
                    return fail(502, format!("the scorer failed: {}", error_chain(&e)));
                }
                proxy.metrics.retries.inc();
            }
        }
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
    models: usize,
) -> Reply {
    let records = parsed.len();
    let (body, failed) = assemble(parsed, outcomes, models);
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
fn assemble(
    parsed: Vec<Parsed>,
    outcomes: Vec<(Target, Vec<usize>, Outcome)>,
    models: usize,
) -> (String, usize) {
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
                for (position, raw) in positions.into_iter().zip(answered.results) {
                    // `raw` is a JSON object (`{...}`): the model's fields go first. A
                    // failed record's object starts with its `error` (RecordResult).
                    let raw = raw.get();
                    let rest = raw.strip_prefix('{').unwrap_or(raw).trim_start();
                    if rest.starts_with("\"error\"") {
                        failed += 1;
                    }
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
