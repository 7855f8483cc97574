//! The proxy's own answers, in one table, and the pure rules that turn a failure into one:
//! which Pingora error becomes which status, when a failed attempt may be retried on the
//! next scorer, and which outcome a finished request is counted under. Every rule is a
//! plain function of plain values, unit-tested without a socket.

use bytes::Bytes;
use manymodels_contract::oip::ErrorBody;
use pingora::{ErrorSource, ErrorType};
use serde::Serialize;

use crate::route::Route;

/// An answer the proxy writes itself.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Bytes,
}

impl Reply {
    /// `body` as JSON: one of the contract's views, or an error body.
    pub fn json<T: Serialize>(status: u16, body: &T) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            // Plain structs of strings, numbers and lists: serializing cannot fail.
            body: Bytes::from(serde_json::to_vec(body).expect("an answer serializes")),
        }
    }
}

impl From<Rejection> for Reply {
    fn from(rejection: Rejection) -> Reply {
        Reply::json(rejection.status(), &rejection.body())
    }
}

/// Everything the proxy answers by itself with an error, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The request is malformed (bad id, bad version, missing model header).
    Invalid(String),
    /// No route for this method and path.
    NoRoute { method: String, path: String },
    /// No bearer key, or one not in the keys of this route.
    Unauthorized,
    /// A key scoped to model-id prefixes, used on a model outside them (or on a route
    /// that lists every model). Carries the model id, if any.
    OutOfScope(Option<String>),
    /// The body is over `http.max_body` (or `http.max_upload` for an upload).
    TooLarge { limit: u64 },
    /// The key named `key` is over one of its limits (`limits.*`): `limit` says which
    /// ([`crate::limits::Limited::describe`]); `retry_after` is the answer's `Retry-After`
    /// in whole seconds.
    Limited {
        key: String,
        limit: String,
        retry_after: u64,
    },
    /// No scorer can take the request.
    NoScorer,
    /// The scorer did not answer within the read timeout.
    ScorerTimedOut,
    /// The scorer failed before answering (connection reset, refused, ...).
    ScorerFailed(&'static str),
    /// The client's side of the exchange failed (a malformed request, a hang-up).
    BadClientRequest,
    /// Another error status raised inside the proxy.
    Status(u16),
}

impl Rejection {
    pub fn status(&self) -> u16 {
        match self {
            Rejection::Invalid(_) | Rejection::BadClientRequest => 400,
            Rejection::Unauthorized => 401,
            Rejection::OutOfScope(_) => 403,
            Rejection::NoRoute { .. } => 404,
            Rejection::TooLarge { .. } => 413,
            Rejection::Limited { .. } => 429,
            Rejection::ScorerFailed(_) => 502,
            Rejection::NoScorer => 503,
            Rejection::Status(status) => *status,
            Rejection::ScorerTimedOut => 504,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Rejection::Invalid(message) => message.clone(),
            Rejection::NoRoute { method, path } => format!("no route for {method} {path}"),
            Rejection::Unauthorized => "missing or invalid bearer key".into(),
            Rejection::OutOfScope(Some(id)) => {
                format!("this key may not use model '{id}': it is limited to other model ids")
            }
            Rejection::OutOfScope(None) => {
                "this key is limited to some model ids; this route covers every model".into()
            }
            Rejection::TooLarge { limit } => {
                format!("request body is larger than the limit of {limit} bytes")
            }
            Rejection::Limited {
                key,
                limit,
                retry_after,
            } => format!("key '{key}' is over {limit}; retry after {retry_after} s"),
            Rejection::NoScorer => "no scorer available".into(),
            Rejection::ScorerTimedOut => "the scorer did not answer in time".into(),
            Rejection::ScorerFailed(what) => format!("the scorer failed: {what}"),
            Rejection::BadClientRequest => "bad request from client".into(),
            Rejection::Status(status) => format!("the request failed with status {status}"),
        }
    }

    /// The `Retry-After` of the answer, in whole seconds: a limit's; none otherwise.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Rejection::Limited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The refusal of a request made with the key named `key`, over `limit`.
    pub fn limited(key: &str, limit: &crate::limits::Limited) -> Rejection {
        Rejection::Limited {
            key: key.to_string(),
            limit: limit.describe(),
            retry_after: limit.retry_after(),
        }
    }

    /// The OIP-style body: `{"error": message}`.
    pub fn body(&self) -> ErrorBody {
        ErrorBody::new(self.message())
    }
}

/// The answer for a request that failed inside Pingora: an error status the proxy raised
/// itself (`HTTPStatus`), a timeout, the client's side, or the scorer's. `body_limit` is
/// the request's body limit, named in a 413.
pub fn failure(etype: &ErrorType, source: &ErrorSource, body_limit: u64) -> Rejection {
    match etype {
        ErrorType::HTTPStatus(413) => Rejection::TooLarge { limit: body_limit },
        ErrorType::HTTPStatus(503) => Rejection::NoScorer,
        ErrorType::HTTPStatus(status) if (400..600).contains(status) => Rejection::Status(*status),
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            Rejection::ScorerTimedOut
        }
        _ if matches!(source, ErrorSource::Downstream) => Rejection::BadClientRequest,
        other => Rejection::ScorerFailed(other.as_str()),
    }
}

/// Whether an error while proxying means the scorer died (so the request may go to the
/// next candidate when nothing reached the client yet). A slow scorer (read timeout) is
/// not dead: it is alive and would still be working; a client that hangs up is not a dead
/// scorer.
pub fn scorer_died(etype: &ErrorType, source: &ErrorSource) -> bool {
    matches!(
        etype,
        ErrorType::ConnectionClosed
            | ErrorType::ReadError
            | ErrorType::WriteError
            | ErrorType::ConnectRefused
    ) && matches!(source, ErrorSource::Upstream)
}

/// The `outcome` label of `mm_proxy_requests_total` for a finished request.
pub fn outcome(
    route: &Route,
    status: u16,
    reached_scorer: bool,
    client_closed: bool,
) -> &'static str {
    match (route, status) {
        _ if client_closed => "client_closed",
        (Route::Live | Route::Ready | Route::Metrics, _) => "local",
        (_, 200..=299) => "ok",
        (_, 400..=499) if reached_scorer => "client_error",
        (_, 400..=499) => "rejected",
        (_, 503) if !reached_scorer => "unavailable",
        _ => "upstream_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::Action;

    #[test]
    fn every_rejection_has_an_error_status_and_a_message() {
        let all = [
            Rejection::Invalid("bad".into()),
            Rejection::NoRoute {
                method: "GET".into(),
                path: "/x".into(),
            },
            Rejection::Unauthorized,
            Rejection::OutOfScope(Some("m".into())),
            Rejection::OutOfScope(None),
            Rejection::TooLarge { limit: 10 },
            Rejection::Limited {
                key: "acme".into(),
                limit: "its 2 requests in flight".into(),
                retry_after: 1,
            },
            Rejection::NoScorer,
            Rejection::ScorerTimedOut,
            Rejection::ScorerFailed("ConnectionClosed"),
            Rejection::BadClientRequest,
            Rejection::Status(429),
        ];
        for rejection in all {
            assert!((400..600).contains(&rejection.status()), "{rejection:?}");
            let reply = Reply::from(rejection.clone());
            let body: ErrorBody = serde_json::from_slice(&reply.body).unwrap();
            assert_eq!(body, rejection.body());
            assert!(!body.error.is_empty(), "{rejection:?}");
        }
        assert_eq!(
            Rejection::TooLarge { limit: 10 }.message(),
            "request body is larger than the limit of 10 bytes"
        );
    }

    #[test]
    fn a_limited_key_gets_429_naming_the_key_and_the_limit_with_retry_after() {
        use crate::limits::Limited;
        let rate = Rejection::limited(
            "acme",
            &Limited::Rate {
                per_second: 2.5,
                burst: 5,
                retry_after: 3,
            },
        );
        assert_eq!(rate.status(), 429);
        assert_eq!(rate.retry_after(), Some(3));
        assert_eq!(
            rate.message(),
            "key 'acme' is over its request rate of 2.5/s (burst 5); retry after 3 s"
        );
        let inflight = Rejection::limited("acme", &Limited::InFlight { cap: 4 });
        assert_eq!(inflight.retry_after(), Some(1));
        assert_eq!(
            inflight.message(),
            "key 'acme' is over its 4 requests in flight; retry after 1 s"
        );
        assert_eq!(
            manymodels_contract::grpc::code_for_status(429),
            8,
            "RESOURCE_EXHAUSTED for gRPC callers"
        );
        assert_eq!(Rejection::Unauthorized.retry_after(), None);
    }

    #[test]
    fn failures_map_to_statuses() {
        let up = ErrorSource::Upstream;
        let down = ErrorSource::Downstream;
        let cases = [
            (ErrorType::HTTPStatus(413), &up, 413),
            (ErrorType::HTTPStatus(503), &ErrorSource::Internal, 503),
            (ErrorType::HTTPStatus(429), &ErrorSource::Internal, 429),
            (ErrorType::ReadTimedout, &up, 504),
            (ErrorType::ConnectTimedout, &up, 504),
            (ErrorType::ConnectionClosed, &up, 502),
            (ErrorType::ConnectRefused, &up, 502),
            (ErrorType::ConnectionClosed, &down, 400),
            (ErrorType::InvalidHTTPHeader, &down, 400),
        ];
        for (etype, source, status) in cases {
            assert_eq!(failure(&etype, source, 5).status(), status, "{etype:?}");
        }
        assert_eq!(
            failure(&ErrorType::HTTPStatus(413), &down, 77),
            Rejection::TooLarge { limit: 77 }
        );
    }

    #[test]
    fn only_a_scorer_that_died_is_retried() {
        let up = ErrorSource::Upstream;
        assert!(scorer_died(&ErrorType::ConnectionClosed, &up));
        assert!(scorer_died(&ErrorType::ReadError, &up));
        assert!(scorer_died(&ErrorType::ConnectRefused, &up));
        assert!(
            !scorer_died(&ErrorType::ReadTimedout, &up),
            "slow is not dead"
        );
        assert!(
            !scorer_died(&ErrorType::ConnectionClosed, &ErrorSource::Downstream),
            "a client hang-up is not a dead scorer"
        );
    }

    #[test]
    fn outcomes_tell_the_proxys_answers_from_the_scorers() {
        let infer = Route::Model {
            id: "m".into(),
            action: Action::Infer { version: None },
        };
        assert_eq!(outcome(&infer, 200, true, false), "ok");
        assert_eq!(outcome(&infer, 422, true, false), "client_error");
        assert_eq!(outcome(&infer, 401, false, false), "rejected");
        assert_eq!(outcome(&infer, 503, false, false), "unavailable");
        assert_eq!(outcome(&infer, 503, true, false), "upstream_error");
        assert_eq!(outcome(&infer, 502, true, false), "upstream_error");
        assert_eq!(outcome(&infer, 200, true, true), "client_closed");
        assert_eq!(outcome(&Route::Live, 200, false, false), "local");
        assert_eq!(outcome(&Route::Metrics, 200, false, false), "local");
        assert_eq!(outcome(&Route::NotFound, 404, false, false), "rejected");
    }
}
