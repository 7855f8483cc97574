//! The cache policy of the pool, and the tools that measure it.
//!
//! - [`stats`]: what the proxy counts per model (bounded memory) and how the scorers
//!   combine the reports of several proxies.
//! - [`ledger`]: the per-model ledger (requests, errors, latency quantiles, version mix),
//!   exact for the hottest models and bounded for the tail, mergeable across scorers.
//! - [`policy`]: the scorer's eviction and admission policy; [`tenants`]: the tenant
//!   shares (floors and caps of the budget) it respects.
//! - [`quantiles`]: a mergeable latency sketch with a relative-error guarantee.
//! - [`ranking`]: the rendezvous ranking of scorers for a model id.
//! - [`pressure`]: the working set against the budget, the signal the pool scales on.
//! - [`trace`] and [`sim`]: the trace generator and the offline simulator that replays
//!   traces against this same code, LRU and Belady.
//!
//! Nothing here does I/O or reads a clock: time is always passed in. Request counts decay
//! on a traffic clock ([`clock`]), one unit per request; wall time (seconds) only measures
//! rates.

pub mod clock;
pub mod decay;
pub mod ledger;
pub mod policy;
pub mod pressure;
pub mod quantiles;
pub mod ranking;
pub mod sim;
pub mod stats;
pub mod tenants;
pub mod trace;

pub use clock::TrafficClock;
pub use policy::{Admission, CostModel, Key, Policy, PolicyConfig, Resident};
pub use stats::{PoolStats, PoolView, StatsRefusal, StatsReport};
pub use tenants::{Share, TenantUsage, Tenants};
