//! What a proxy pushes to a scorer (`PUT /v2/mm/stats`).

use serde::{Deserialize, Serialize};

/// The pool-wide rates of the hot models a scorer owns, from one proxy.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StatsReport {
    /// The proxy's instance id (random per process): a report replaces that proxy's
    /// previous one.
    pub proxy: String,
    /// `[model id, requests per second]`, hottest first.
    pub models: Vec<(String, f64)>,
}
