//! The keys a scorer checks: the pool key on every route but health (a tower layer in
//! front of the router), metrics keys on `/metrics`, admin keys on admin routes.

use std::convert::Infallible;
use std::sync::Arc;

use axum::http::header;
use axum::response::Response;
use manymodels_contract::{self as contract, route};

use super::finish;
use crate::Scorer;
use crate::error::ScorerError;

/// Who may call a path: anyone (health), the pool key or a metrics key (`/metrics`), the
/// pool key or an admin key (admin routes), or the pool key alone (everything else,
/// including statistics pushes and inference).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Guard {
    Open,
    Metrics,
    Admin,
    Pool,
}

pub(super) fn guard_of(path: &str) -> Guard {
    if path.starts_with("/v2/health/") {
        Guard::Open
    } else if path == route::METRICS {
        Guard::Metrics
    } else if (path.starts_with("/v2/mm/models/") && !is_records(path))
        || path.starts_with("/v2/repository/models/")
        || path == route::CACHE_EXPLAIN
        || path == route::CAPTURE
        || path == route::SHADOWS
        || path.starts_with("/v2/mm/capture/")
        || contract::grpc::Call::from_path(path).is_some_and(contract::grpc::Call::admin)
    {
        Guard::Admin
    } else {
        Guard::Pool
    }
}

/// Whether `path` is a model's records route (`/v2/mm/models/{id}/records` or
/// `.../versions/{v}/records`): scoring, which the pool key guards like inference, though
/// it shares the admin routes' prefix.
fn is_records(path: &str) -> bool {
    // Checked on every request: no allocation.
    let Some(rest) = path
        .strip_prefix("/v2/mm/models/")
        .and_then(|rest| rest.strip_suffix("/records"))
    else {
        return false;
    };
    match rest.split_once('/') {
        None => !rest.is_empty(),
        Some((id, version)) => {
            !id.is_empty()
                && version
                    .strip_prefix("versions/")
                    .is_some_and(|v| !v.is_empty() && !v.contains('/'))
        }
    }
}

/// The bearer key of a request, if any.
fn bearer_key(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(contract::bearer)
}

/// Whether `given` is the pool key, or during a rotation the previous one (never when
/// none is set). Both are compared, in constant time each, so a proxy that still sends the
/// old key and one that sends the new are both served while they coexist.
fn is_pool_key(scorer: &Scorer, given: &str) -> bool {
    let config = &scorer.config;
    pool_key_matches(&config.pool_key, &config.pool_key_previous, given)
}

/// [`is_pool_key`] on plain values: `given` is `current` (when set) or `previous` (when
/// set, and only beside a current key: the configuration refuses it alone).
fn pool_key_matches(
    current: &manymodels_config::Secret,
    previous: &manymodels_config::Secret,
    given: &str,
) -> bool {
    let matches = |key: &manymodels_config::Secret| {
        !key.is_empty() && manymodels_config::Secret::matches_any(given, std::slice::from_ref(key))
    };
    // Both comparisons run: the time taken does not tell which key matched.
    let (now, before) = (matches(current), matches(previous));
    !current.is_empty() && (now || before)
}

/// Whether `request` carries a key its path accepts: the pool key anywhere, a metrics key
/// on `/metrics`, an admin key on admin routes; nothing on health. Only called when the
/// scorer has a pool key or metrics keys (an open scorer has no [`KeyCheck`] at all).
fn allowed(scorer: &Scorer, request: &axum::extract::Request) -> bool {
    let config = &scorer.config;
    let given = bearer_key(request.headers());
    let pool = given.is_some_and(|g| is_pool_key(scorer, g));
    let any_of = |keys: &[manymodels_config::Secret]| {
        given.is_some_and(|g| manymodels_config::Secret::matches_any(g, keys))
    };
    match guard_of(request.uri().path()) {
        Guard::Open => true,
        Guard::Metrics => pool || any_of(&config.metrics_keys),
        // The handler still checks `auth.admin_keys` on the routes that always did.
        Guard::Admin => config.pool_key.is_empty() || pool || any_of(&config.admin_keys),
        Guard::Pool => config.pool_key.is_empty() || pool,
    }
}

/// The pool-key layer, in front of every route (the fallbacks too), so nothing behind it
/// (store, cache, statistics) is reached without the key. A plain `tower::Service` that
/// hands on the route's own future unboxed: axum's `from_fn` middleware boxes one per
/// request, which cost 0.4 µs (BENCHMARKS.md, "Hot hits").
#[derive(Clone)]
pub(super) struct KeyCheck<S> {
    pub(super) inner: S,
    pub(super) scorer: Arc<Scorer>,
}

impl<S> tower::Service<axum::extract::Request> for KeyCheck<S>
where
    S: tower::Service<axum::extract::Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future =
        futures::future::Either<S::Future, std::future::Ready<Result<Response, Infallible>>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::extract::Request) -> Self::Future {
        if allowed(&self.scorer, &request) {
            futures::future::Either::Left(self.inner.call(request))
        } else {
            let mut refusal = finish(&self.scorer, "unauthorized", Err(ScorerError::NoPoolKey));
            if request.uri().path().starts_with(contract::grpc::PREFIX) {
                refusal = crate::grpc::refusal(&ScorerError::NoPoolKey);
            }
            futures::future::Either::Right(std::future::ready(Ok(refusal)))
        }
    }
}

/// The admin routes need one of `auth.admin_keys` as a bearer key, when any is set.
/// The pool key (the proxy forwarding an admin call it already checked) also passes.
pub(super) fn admin_authorized(
    scorer: &Scorer,
    headers: &axum::http::HeaderMap,
) -> Result<(), ScorerError> {
    let keys = &scorer.config.admin_keys;
    if keys.is_empty() {
        return Ok(());
    }
    let given = bearer_key(headers).unwrap_or("");
    let matches = manymodels_config::Secret::matches_any(given, keys) || is_pool_key(scorer, given);
    if matches {
        Ok(())
    } else {
        Err(ScorerError::Unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::{Guard, guard_of, pool_key_matches};
    use manymodels_config::Secret;
    use manymodels_contract::route;

    #[test]
    fn during_a_rotation_the_current_and_the_previous_pool_key_both_pass() {
        let (new, old, none) = (Secret::new("new-2"), Secret::new("old-1"), Secret::new(""));
        assert!(pool_key_matches(&new, &old, "new-2"));
        assert!(pool_key_matches(&new, &old, "old-1"));
        assert!(!pool_key_matches(&new, &old, "other"));
        assert!(!pool_key_matches(&new, &old, ""));
        assert!(pool_key_matches(&new, &none, "new-2"));
        assert!(
            !pool_key_matches(&new, &none, "old-1"),
            "after the rotation"
        );
        assert!(
            !pool_key_matches(&none, &none, ""),
            "no key set matches nothing"
        );
    }

    #[test]
    fn only_health_is_open_and_admin_routes_take_admin_keys() {
        assert_eq!(guard_of(route::LIVE), Guard::Open);
        assert_eq!(guard_of(route::READY), Guard::Open);
        assert_eq!(guard_of(route::METRICS), Guard::Metrics);
        for admin in [
            route::REPOSITORY_LOAD.path("m"),
            route::REPOSITORY_UNLOAD.path("m"),
            route::ADMIN_PIN.path("m"),
            route::ADMIN_PUBLISH.path("m", 2),
            route::CACHE_EXPLAIN.to_string(),
            // Payload capture's rules and counters.
            route::CAPTURE.to_string(),
            route::CAPTURE_REFRESH.to_string(),
            route::capture_rule("acme-"),
            // Shadows: one model's, and every shadow's counts.
            route::ADMIN_SHADOW.path("m"),
            route::ADMIN_SHADOW_PROMOTE.path("m"),
            route::SHADOWS.to_string(),
            // A model named `records` is still administered.
            route::ADMIN_STATUS.path("records"),
            route::ADMIN_REFRESH.path("records"),
            "/inference.GRPCInferenceService/RepositoryModelLoad".to_string(),
            "/inference.GRPCInferenceService/RepositoryModelUnload".to_string(),
        ] {
            assert_eq!(guard_of(&admin), Guard::Admin, "{admin}");
        }
        for pool in [
            route::STATS.to_string(),
            route::INFER.path("m"),
            // The many-model route's scoring: the pool key, as inference.
            route::RECORDS.path("m"),
            route::VERSION_RECORDS.path("m", 3),
            route::RECORD_GROUPS.to_string(),
            route::SERVER_METADATA.to_string(),
            route::REPOSITORY_INDEX.to_string(),
            "/inference.GRPCInferenceService/ModelInfer".to_string(),
            "/inference.GRPCInferenceService/ServerLive".to_string(),
            "/v2/health".to_string(),
            "/anything".to_string(),
        ] {
            assert_eq!(guard_of(&pool), Guard::Pool, "{pool}");
        }
    }
}
