//! The active health check, and what it tells apart: a scorer that answers late once, one
//! that is not ready, and one that drains.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::lb::Backend;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck};
use pingora::{Error, ErrorType};

use super::admission::Admission;
use super::rotation::PoolKeys;
use crate::ranking::name_ref;

/// The readiness answer of a draining scorer, told apart from any other failure.
const DRAINING: ErrorType = ErrorType::Custom("scorer draining");

/// A ready scorer whose pool key, during a rotation, no probe has learnt yet.
const KEY_UNKNOWN: ErrorType = ErrorType::Custom("scorer pool key unknown");

/// The active health check: `GET /v2/health/ready` must answer 200 within
/// `health.timeout`. A scorer that answers anything else (503 while it warms or shuts
/// down) or refuses the connection leaves the rotation at once. One that was healthy and
/// merely does not answer in time keeps its place for `health.tolerated_timeouts`
/// consecutive checks: a CPU-throttled or briefly starved scorer is still alive, and
/// dropping it would move its whole share to the next-ranked scorers as cold loads (and
/// requests to a scorer that really died are retried elsewhere at once by passive
/// ejection anyway).
///
/// During a pool-key rotation a ready scorer passes only once a probe has learnt which key
/// it takes (`rotation.rs`): one whose probe learns nothing and whose key was never learnt
/// fails the check, as not ready, until a later probe learns it.
pub(super) struct ScorerCheck {
    http: HttpHealthCheck,
    tolerated: usize,
    admission: Arc<Admission>,
    /// Per backend address: whether its last answered check passed, and the timeouts
    /// since. (Addresses of scorers gone stay: a few bytes each, and a scorer that comes
    /// back on the same address starts from its last state.)
    state: Mutex<HashMap<String, (bool, usize)>>,
    /// The pool keys: during a rotation, a passed check also learns which one the scorer
    /// takes, before it (re-)enters rotation.
    keys: Arc<PoolKeys>,
    timeout: Duration,
}

impl ScorerCheck {
    pub(super) fn new(
        timeout: Duration,
        tolerated: usize,
        admission: Arc<Admission>,
        keys: Arc<PoolKeys>,
    ) -> Self {
        let mut http = HttpHealthCheck::new("localhost", false);
        http.req = pingora::http::RequestHeader::build("GET", b"/v2/health/ready", None)
            .expect("static request");
        let _ = http.req.insert_header("Host", "localhost");
        // Pingora's own rule (any 200 passes), plus: a 503 that says it drains is told
        // apart, so the proxy can keep it for the models it holds.
        http.validator = Some(Box::new(|resp: &pingora::http::ResponseHeader| {
            if resp.status == 200 {
                return Ok(());
            }
            let draining = resp
                .headers
                .get(manymodels_contract::header::DRAINING)
                .is_some_and(|v| v.as_bytes() == b"true");
            if draining {
                Error::e_explain(DRAINING, "during http healthcheck")
            } else {
                Error::e_explain(
                    ErrorType::CustomCode("non 200 code", resp.status.as_u16()),
                    "during http healthcheck",
                )
            }
        }));
        http.peer_template.options.connection_timeout = Some(timeout);
        http.peer_template.options.read_timeout = Some(timeout);
        http.peer_template.options.write_timeout = Some(timeout);
        ScorerCheck {
            http,
            tolerated,
            admission,
            state: Mutex::new(HashMap::new()),
            keys,
            timeout,
        }
    }
}

fn timed_out(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
    )
}

#[async_trait]
impl HealthCheck for ScorerCheck {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        let mut result = self.http.check(target).await;
        // During a rotation, which pool key a ready scorer takes, learnt before this check
        // passes: a scorer enters rotation (or comes back after a restart) with it known.
        // A probe that learns nothing keeps a key learnt before; with none learnt, the
        // scorer stays out, since a guess of the current key would be refused (401) by an
        // old scorer on every request that goes Pingora's path.
        if result.is_ok() && self.keys.rotating() {
            let takes = self
                .keys
                .probe(&target.addr.to_string(), self.timeout)
                .await;
            if !self.keys.learnt(name_ref(target), takes) {
                tracing::warn!(
                    scorer = %target.addr,
                    "ready, but which pool key it takes is not known yet: kept out of rotation"
                );
                result = Error::e_explain(
                    KEY_UNKNOWN,
                    "during the pool-key probe after a passed health check",
                );
            }
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // A backend never checked counts as healthy, as Pingora starts it.
        let (healthy, timeouts) = state.entry(target.addr.to_string()).or_insert((true, 0));
        match &result {
            Err(e) if timed_out(e) => {
                *timeouts += 1;
                if *healthy && *timeouts <= self.tolerated {
                    tracing::warn!(scorer = %target.addr, timeouts = *timeouts, "health check timed out; tolerated");
                    return Ok(());
                }
                *healthy = false;
            }
            answered => {
                *healthy = answered.is_ok();
                *timeouts = 0;
            }
        }
        drop(state);
        if result.is_ok() {
            self.admission.passed(target);
        }
        // Draining exactly while it answers so. A timed-out check says nothing either way:
        // a draining scorer is the busiest one, and one slow answer must not send its
        // models cold to their successors (a refused connection, or passive ejection,
        // ends the hand-off).
        if !matches!(&result, Err(e) if timed_out(e)) {
            let draining = matches!(&result, Err(e) if e.etype() == &DRAINING);
            self.admission.draining().set(name_ref(target), draining);
        }
        result
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.http.health_threshold(success)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::pool::discovery::backend;

    /// A real HTTP server on loopback that answers its readiness check with 200 (0), 503
    /// (1), 503 saying it drains (3), or not at all (2), as `mode` says.
    pub(in crate::pool) async fn readiness_server(mode: Arc<AtomicUsize>) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mode = mode.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut request = [0u8; 1024];
                    let _ = stream.read(&mut request).await;
                    let (status, extra) = match mode {
                        0 => ("200 OK", ""),
                        1 => ("503 Service Unavailable", ""),
                        3 => ("503 Service Unavailable", "x-mm-draining: true\r\n"),
                        _ => {
                            tokio::time::sleep(Duration::from_secs(5)).await;
                            return;
                        }
                    };
                    let _ = stream
                        .write_all(
                            format!("HTTP/1.1 {status}\r\n{extra}content-length: 0\r\n\r\n")
                                .as_bytes(),
                        )
                        .await;
                });
            }
        });
        addr
    }

    /// A real HTTP server on loopback, always ready, whose `GET /v2` answers as `mode` says:
    /// 200 to `k-old` only (1), 200 to `k-new` (2), 401 to both (3), or the connection is
    /// closed without an answer (0, a probe that fails). `probes` counts the `GET /v2`.
    async fn keyed_server(
        mode: Arc<AtomicUsize>,
        probes: Arc<AtomicUsize>,
    ) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mode = mode.load(Ordering::SeqCst);
                let probes = probes.clone();
                tokio::spawn(async move {
                    let mut request = [0u8; 2048];
                    let n = stream.read(&mut request).await.unwrap_or(0);
                    let text = String::from_utf8_lossy(&request[..n]).to_string();
                    let status = if text.starts_with("GET /v2/health/ready ") {
                        "200 OK"
                    } else {
                        probes.fetch_add(1, Ordering::SeqCst);
                        let takes = |key: &str| text.contains(&format!("Bearer {key}\r\n"));
                        match mode {
                            1 if takes("k-old") => "200 OK",
                            2 if takes("k-new") => "200 OK",
                            1..=3 => "401 Unauthorized",
                            _ => return,
                        }
                    };
                    let _ = stream
                        .write_all(
                            format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes(),
                        )
                        .await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn while_rotating_a_ready_scorer_whose_key_was_never_learnt_stays_out() {
        const NO_ANSWER: usize = 0;
        const OLD_ONLY: usize = 1;
        const NEITHER: usize = 3;
        let mode = Arc::new(AtomicUsize::new(NO_ANSWER));
        let probes = Arc::new(AtomicUsize::new(0));
        let addr = keyed_server(mode.clone(), probes.clone()).await;
        let target = backend("scorer-0:8001", addr);
        let keys = Arc::new(PoolKeys::new(
            &manymodels_config::Secret::new("k-new"),
            &manymodels_config::Secret::new("k-old"),
        ));
        let check = ScorerCheck::new(Duration::from_secs(2), 1, Default::default(), keys.clone());
        let sent = || keys.authorization_for("scorer-0:8001");
        let steps = [
            (
                NO_ANSWER,
                false,
                "Bearer k-new",
                "a failed probe, never learnt: out",
            ),
            (
                NEITHER,
                false,
                "Bearer k-new",
                "401 to both, never learnt: still out",
            ),
            (OLD_ONLY, true, "Bearer k-old", "learnt on the old key: in"),
            (
                NO_ANSWER,
                true,
                "Bearer k-old",
                "a failed probe keeps the key learnt",
            ),
            (NEITHER, true, "Bearer k-old", "and so does a 401 to both"),
        ];
        for (i, (answer, passes, key, why)) in steps.into_iter().enumerate() {
            mode.store(answer, Ordering::SeqCst);
            assert_eq!(
                check.check(&target).await.is_ok(),
                passes,
                "step {i}: {why}"
            );
            assert_eq!(sent().as_deref(), Some(key), "step {i}: {why}");
        }
        assert!(probes.load(Ordering::SeqCst) >= steps.len());

        // Without a previous key nothing is asked, and a ready scorer passes.
        let probes = Arc::new(AtomicUsize::new(0));
        let addr = keyed_server(Arc::new(AtomicUsize::new(NO_ANSWER)), probes.clone()).await;
        let one_key = Arc::new(PoolKeys::new(
            &manymodels_config::Secret::new("k-new"),
            &manymodels_config::Secret::new(""),
        ));
        let check = ScorerCheck::new(Duration::from_secs(2), 1, Default::default(), one_key);
        assert!(check.check(&backend("scorer-1:8001", addr)).await.is_ok());
        assert_eq!(
            probes.load(Ordering::SeqCst),
            0,
            "no probe without a rotation"
        );
    }

    #[tokio::test]
    async fn a_slow_scorer_is_tolerated_once_but_a_not_ready_or_refusing_one_leaves_at_once() {
        const OK: usize = 0;
        const NOT_READY: usize = 1;
        const SILENT: usize = 2;
        let mode = Arc::new(AtomicUsize::new(OK));
        let addr = readiness_server(mode.clone()).await;
        let backend = Backend::new(&addr.to_string()).unwrap();
        let check = ScorerCheck::new(
            Duration::from_millis(200),
            1,
            Default::default(),
            Default::default(),
        );
        let steps = [
            (OK, true, "answers 200"),
            (SILENT, true, "first timeout: tolerated"),
            (SILENT, false, "second timeout in a row: out"),
            (OK, true, "answers again: back"),
            (NOT_READY, false, "503 (warming, draining): out at once"),
            (SILENT, false, "a timeout after a failure is not tolerated"),
            (OK, true, "back"),
            (SILENT, true, "tolerated again once healthy"),
            (OK, true, "still in"),
        ];
        for (i, (answer, passes, why)) in steps.into_iter().enumerate() {
            mode.store(answer, Ordering::SeqCst);
            assert_eq!(
                check.check(&backend).await.is_ok(),
                passes,
                "step {i}: {why}"
            );
        }
        // Nothing listening any more: the connection is refused, which is not a timeout.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let gone = Backend::new(&closed.to_string()).unwrap();
        assert!(
            check.check(&gone).await.is_err(),
            "a refused connection is out at once"
        );
    }

    #[tokio::test]
    async fn a_draining_scorer_leaves_rotation_and_is_known_as_draining_while_it_says_so() {
        const OK: usize = 0;
        const NOT_READY: usize = 1;
        const SILENT: usize = 2;
        const DRAINING: usize = 3;
        let mode = Arc::new(AtomicUsize::new(OK));
        let addr = readiness_server(mode.clone()).await;
        let target = backend("scorer-0:8001", addr);
        let admission = Arc::new(Admission::default());
        let draining = admission.draining().clone();
        // A timeout long enough for a loaded machine: the silent step waits it out.
        let check = ScorerCheck::new(Duration::from_secs(1), 1, admission, Default::default());
        let steps = [
            (OK, true, false, "ready"),
            (
                DRAINING,
                false,
                true,
                "503 saying it drains: out, and draining",
            ),
            (DRAINING, false, true, "still draining"),
            (SILENT, false, true, "a timed-out check changes nothing"),
            (
                NOT_READY,
                false,
                false,
                "a plain 503 (warming) is not draining",
            ),
            (DRAINING, false, true, "draining again"),
            (OK, true, false, "back"),
        ];
        for (i, (answer, passes, is_draining, why)) in steps.into_iter().enumerate() {
            mode.store(answer, Ordering::SeqCst);
            assert_eq!(
                check.check(&target).await.is_ok(),
                passes,
                "step {i}: {why}"
            );
            let names: Vec<String> = draining.names().iter().map(|n| n.to_string()).collect();
            let expected: &[&str] = if is_draining { &["scorer-0:8001"] } else { &[] };
            assert_eq!(names, expected, "step {i}: {why}");
        }
    }
}
