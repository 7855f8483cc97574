//! The routes the proxy answers from its own state: health, metrics, the pool view, one
//! model's placement and the status page.

use bytes::Bytes;
use serde_json::json;

use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::reject::Reply;
use crate::route::Route;
use crate::stats::Statistics;

/// The status page: one self-contained HTML file (inline CSS and JS, no external
/// assets) that polls `/v2/mm/pool`.
const STATUS_PAGE: &str = include_str!("status.html");

/// The answer to a local route; `None` for a route that is not local.
pub(crate) fn answer(
    route: &Route,
    pool: &Pool,
    stats: &Statistics,
    metrics: &Metrics,
) -> Option<Reply> {
    Some(match route {
        Route::Live => Reply::json(200, &json!({ "live": true })),
        Route::Ready => match pool.size() {
            (_, 0) => Reply::json(
                503,
                &json!({ "ready": false, "error": "no healthy scorer" }),
            ),
            (_, healthy) => Reply::json(200, &json!({ "ready": true, "healthy_scorers": healthy })),
        },
        Route::Metrics => Reply {
            status: 200,
            content_type: "text/plain; version=0.0.4",
            body: Bytes::from(render_metrics(pool, metrics)),
        },
        Route::PoolView => Reply::json(200, &stats.view(pool)),
        Route::PoolModel { id } => Reply::json(200, &stats.placement(pool, id)),
        Route::Status => Reply {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body: Bytes::from_static(STATUS_PAGE.as_bytes()),
        },
        _ => return None,
    })
}

/// Sets the gauges that are read on demand, then renders every metric.
fn render_metrics(pool: &Pool, metrics: &Metrics) -> String {
    let (size, healthy) = pool.size();
    metrics.pool_size.set(size as i64);
    metrics.healthy_scorers.set(healthy as i64);
    metrics.hot_models.set(pool.hot_models() as i64);
    for (name, inflight) in pool.inflight_snapshot() {
        metrics
            .inflight
            .with_label_values(&[&name])
            .set(inflight as i64);
    }
    metrics.render()
}
