//! The routes the proxy answers from its own state: health, metrics, the pool view, one
//! model's placement and the status page.

use bytes::Bytes;
use serde_json::json;

use crate::reject::Reply;
use crate::route::Route;
use crate::service::Proxy;

/// The status page: one self-contained HTML file (inline CSS and JS, no external
/// assets) that polls `/v2/mm/pool`.
const STATUS_PAGE: &str = include_str!("status.html");

impl Proxy {
    /// The answer to a local route; `None` for a route that is not local.
    pub(crate) fn local(&self, route: &Route) -> Option<Reply> {
        Some(match route {
            Route::Live => Reply::json(200, &json!({ "live": true })),
            Route::Ready => match self.pool.size() {
                (_, 0) => Reply::json(
                    503,
                    &json!({ "ready": false, "error": "no healthy scorer" }),
                ),
                (_, healthy) => {
                    Reply::json(200, &json!({ "ready": true, "healthy_scorers": healthy }))
                }
            },
            Route::Metrics => Reply {
                status: 200,
                content_type: "text/plain; version=0.0.4",
                body: Bytes::from(self.render_metrics()),
            },
            Route::PoolView => Reply::json(200, &self.stats.view(&self.pool)),
            Route::PoolModel { id } => Reply::json(200, &self.stats.placement(&self.pool, id)),
            Route::Status => Reply {
                status: 200,
                content_type: "text/html; charset=utf-8",
                body: Bytes::from_static(STATUS_PAGE.as_bytes()),
            },
            _ => return None,
        })
    }

    /// Sets the gauges that are read on demand, then renders every metric.
    fn render_metrics(&self) -> String {
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
        self.metrics.render()
    }
}
