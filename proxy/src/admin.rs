//! The fan-out after an admin call changed what a model's requests get (its live version,
//! its canary or its shadow, in the store; also after the shadow judge promoted one,
//! [`crate::shadow`]). Every admin call itself is forwarded to a scorer, which
//! writes the store: the proxy holds no model state. (Who may make an admin call is
//! [`crate::keys`]'s.)

use std::time::Duration;

use manymodels_contract::route as scorer_route;

use crate::pool::Pool;

/// After an admin call changed `model`'s live version, canary or shadow in the store,
/// asks every other healthy or draining scorer of `pool` (a draining one still serves the
/// models it holds; `done_by` answered the call) to look now, in the background, rather
/// than at its next check, so every scorer, and so every proxy, answers alike within a
/// round trip.
/// Each call waits at most `timeout`; a failed one is logged, and that scorer's own check
/// catches up.
/// Each scorer gets the pool key it takes; `client` (the client's `Authorization`) only
/// without a pool key.
pub(crate) fn refresh_everywhere(
    pool: &Pool,
    model: &str,
    done_by: Option<&str>,
    client: Option<String>,
    timeout: Duration,
) {
    let targets = targets(pool, done_by, client);
    let path = scorer_route::ADMIN_REFRESH.path(model);
    tokio::spawn(async move {
        let calls = targets.iter().map(|(addr, authorization)| {
            tokio::time::timeout(
                timeout,
                crate::http1::post(addr, &path, authorization.as_deref()),
            )
        });
        for ((addr, _), result) in targets.iter().zip(futures::future::join_all(calls).await) {
            if !matches!(result, Ok(Ok((200 | 404, _)))) {
                tracing::warn!(scorer = %addr, path, "refresh after an admin change failed; the scorer's own check will catch up");
            }
        }
    });
}

/// After a capture call changed the rules in the store (or asked for a refresh), asks
/// every other healthy or draining scorer of `pool` to read them now
/// (`POST /v2/mm/capture/refresh`), in the background, so every scorer captures alike
/// within a round trip rather than at its next `versions.check_interval`. A failed call
/// is logged; that scorer's own check catches up.
pub(crate) fn refresh_capture_everywhere(
    pool: &Pool,
    done_by: Option<&str>,
    client: Option<String>,
    timeout: Duration,
) {
    let targets = targets(pool, done_by, client);
    let path = scorer_route::CAPTURE_REFRESH;
    tokio::spawn(async move {
        let calls = targets.iter().map(|(addr, authorization)| {
            tokio::time::timeout(
                timeout,
                crate::http1::post(addr, path, authorization.as_deref()),
            )
        });
        for ((addr, _), result) in targets.iter().zip(futures::future::join_all(calls).await) {
            if !matches!(result, Ok(Ok((200, _)))) {
                tracing::warn!(scorer = %addr, path, "capture refresh after a change failed; the scorer's own check will catch up");
            }
        }
    });
}

/// The serving scorers but `done_by`, each with the `Authorization` to send it: the pool
/// key it takes, else (no pool key) the client's.
fn targets(
    pool: &Pool,
    done_by: Option<&str>,
    client: Option<String>,
) -> Vec<(String, Option<String>)> {
    pool.serving(done_by)
        .into_iter()
        .map(|(addr, key)| (addr, key.map(|k| k.to_string()).or_else(|| client.clone())))
        .collect()
}
