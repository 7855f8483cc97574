//! The fan-out after an admin call changed what a model's requests get (its live version
//! or its canary, in the store). Every admin call itself is forwarded to a scorer, which
//! writes the store: the proxy holds no model state. (Who may make an admin call is
//! [`crate::keys`]'s.)

use std::time::Duration;

use manymodels_contract::route as scorer_route;

use crate::pool::Pool;

/// After an admin call changed `model`'s live version or canary in the store, asks every
/// other healthy or draining scorer of `pool` (a draining one still serves the models it
/// holds; `done_by` answered the call) to look now, in the background, rather than at its
/// next check, so every scorer, and so every proxy, answers alike within a round trip.
/// Each call waits at most `timeout`; a failed one is logged, and that scorer's own check
/// catches up.
pub(crate) fn refresh_everywhere(
    pool: &Pool,
    model: &str,
    done_by: Option<&str>,
    authorization: Option<String>,
    timeout: Duration,
) {
    let targets = pool.serving_addrs(done_by);
    let path = scorer_route::ADMIN_REFRESH.path(model);
    tokio::spawn(async move {
        let calls = targets.iter().map(|addr| {
            tokio::time::timeout(
                timeout,
                crate::http1::post(addr, &path, authorization.as_deref()),
            )
        });
        for (addr, result) in targets.iter().zip(futures::future::join_all(calls).await) {
            if !matches!(result, Ok(Ok((200 | 404, _)))) {
                tracing::warn!(scorer = %addr, path, "refresh after an admin change failed; the scorer's own check will catch up");
            }
        }
    });
}
