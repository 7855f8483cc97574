//! The scorer's routes that the proxy forwards to or calls itself. Each is a template with
//! `{id}` (and `{version}`) placeholders, which is also the scorer's axum route, and builds
//! the concrete path for the proxy, so the two sides cannot spell a route differently.

/// A route of one model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelRoute(pub &'static str);

/// A route of one version of one model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VersionRoute(pub &'static str);

impl ModelRoute {
    /// The axum route (`/v2/models/{id}/infer`).
    pub const fn template(self) -> &'static str {
        self.0
    }

    /// The path for `id` (which must be a valid model id: it is not escaped).
    pub fn path(self, id: &str) -> String {
        self.0.replacen("{id}", id, 1)
    }
}

impl VersionRoute {
    pub const fn template(self) -> &'static str {
        self.0
    }

    pub fn path(self, id: &str, version: u64) -> String {
        self.0
            .replacen("{id}", id, 1)
            .replacen("{version}", &version.to_string(), 1)
    }
}

// Open Inference Protocol.
pub const MODEL_METADATA: ModelRoute = ModelRoute("/v2/models/{id}");
pub const MODEL_READY: ModelRoute = ModelRoute("/v2/models/{id}/ready");
pub const INFER: ModelRoute = ModelRoute("/v2/models/{id}/infer");
pub const VERSION_METADATA: VersionRoute = VersionRoute("/v2/models/{id}/versions/{version}");
pub const VERSION_READY: VersionRoute = VersionRoute("/v2/models/{id}/versions/{version}/ready");
pub const VERSION_INFER: VersionRoute = VersionRoute("/v2/models/{id}/versions/{version}/infer");
pub const REPOSITORY_LOAD: ModelRoute = ModelRoute("/v2/repository/models/{id}/load");
pub const REPOSITORY_UNLOAD: ModelRoute = ModelRoute("/v2/repository/models/{id}/unload");
pub const SERVER_METADATA: &str = "/v2";
pub const REPOSITORY_INDEX: &str = "/v2/repository/index";
pub const LIVE: &str = "/v2/health/live";
pub const READY: &str = "/v2/health/ready";
pub const METRICS: &str = "/metrics";

// The scorer's admin routes (the proxy forwards `/v2/admin/models/...` to them).
pub const ADMIN_STATUS: ModelRoute = ModelRoute("/v2/mm/models/{id}");
pub const ADMIN_REFRESH: ModelRoute = ModelRoute("/v2/mm/models/{id}/refresh");
pub const ADMIN_PIN: ModelRoute = ModelRoute("/v2/mm/models/{id}/pin");
pub const ADMIN_UNPIN: ModelRoute = ModelRoute("/v2/mm/models/{id}/unpin");
/// `PUT` publishes the body as the version; `GET` answers its digest (`{"model",
/// "version", "bytes", "sha256"}`).
pub const ADMIN_PUBLISH: VersionRoute = VersionRoute("/v2/mm/models/{id}/versions/{version}");
/// `GET`: why the model is or is not in this scorer's memory.
pub const ADMIN_EXPLAIN: ModelRoute = ModelRoute("/v2/mm/models/{id}/explain");
/// `GET` shows, `PUT` sets (`{"version": v, "percent": p}`), `DELETE` drops the model's
/// canary (`<id>/canary.json` in the store).
pub const ADMIN_CANARY: ModelRoute = ModelRoute("/v2/mm/models/{id}/canary");
/// `POST`: pins the canary's version and drops the canary.
pub const ADMIN_CANARY_PROMOTE: ModelRoute = ModelRoute("/v2/mm/models/{id}/canary/promote");
/// `GET` shows what this scorer counted ([`crate::shadow::ShadowView`]), `PUT` sets
/// ([`crate::shadow::ShadowSpec`], `since_ms` filled by the scorer), `DELETE` drops the
/// model's shadow (`<id>/shadow.json` in the store).
pub const ADMIN_SHADOW: ModelRoute = ModelRoute("/v2/mm/models/{id}/shadow");
/// `POST`: pins the shadow's version and drops the shadow
/// ([`crate::shadow::ShadowPromoted`]); with `?since_ms=S`, only if the shadow is still the
/// one set at `S` (409 otherwise), so two judges never promote twice.
pub const ADMIN_SHADOW_PROMOTE: ModelRoute = ModelRoute("/v2/mm/models/{id}/shadow/promote");
/// `GET`: every shadow this scorer counts ([`crate::shadow::ShadowsReport`]), narrowed by
/// the key's model prefixes.
pub const SHADOWS: &str = "/v2/mm/shadows";

/// `POST`: a group of the many-model route's records for one model
/// ([`crate::batch::RecordsRequest`]), answered per record ([`crate::batch::RecordsAnswer`]);
/// the live version (or the canary's arm) answers, as for `INFER`.
pub const RECORDS: ModelRoute = ModelRoute("/v2/mm/models/{id}/records");
/// `POST`: the same, for one version.
pub const VERSION_RECORDS: VersionRoute =
    VersionRoute("/v2/mm/models/{id}/versions/{version}/records");

/// `POST`: several models' groups of records in one request
/// ([`crate::batch::GroupsRequest`]), answered per group ([`crate::batch::GroupsAnswer`]):
/// what the proxy's many-model route sends each scorer.
pub const RECORD_GROUPS: &str = "/v2/mm/records";

/// `PUT`: a proxy's [`crate::StatsReport`], answered with a [`crate::StatsAnswer`].
pub const STATS: &str = "/v2/mm/stats";
/// `GET`: the scorer's explain view.
pub const CACHE_EXPLAIN: &str = "/v2/mm/cache";

/// `GET`: the per-model ledger ([`crate::ledger::LedgerReport`] from a scorer,
/// [`crate::ledger::PoolLedger`] merged by a proxy); `?top=N` keeps the N models with most
/// requests (the rest in the tail).
pub const LEDGER: &str = "/v2/mm/ledger";
/// `GET`: one model's ledger ([`crate::ledger::ModelReport`]; merged by a proxy:
/// [`crate::ledger::PoolModelLedger`]).
pub const LEDGER_MODEL: ModelRoute = ModelRoute("/v2/mm/ledger/{id}");

/// Payload capture (`crate::capture`), on the scorer and the proxy alike: `GET` answers
/// the rules the key may see and the answering scorer's counters
/// ([`crate::capture::CaptureView`]).
pub const CAPTURE: &str = "/v2/mm/capture";
/// `PUT` sets the rule of `{prefix}` (body [`crate::capture::CaptureSet`]), `DELETE` drops
/// it; both answer the view after the change.
pub const CAPTURE_RULE: &str = "/v2/mm/capture/{prefix}";
/// `POST`: reads the rules from the store now (the proxy calls it on every scorer after a
/// change).
pub const CAPTURE_REFRESH: &str = "/v2/mm/capture/refresh";

/// The path of `prefix`'s capture rule (`prefix` must follow the model-id rule: it is
/// not escaped).
pub fn capture_rule(prefix: &str) -> String {
    CAPTURE_RULE.replacen("{prefix}", prefix, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_fill_the_templates() {
        assert_eq!(INFER.path("store-1"), "/v2/models/store-1/infer");
        assert_eq!(
            VERSION_INFER.path("store-1", 12),
            "/v2/models/store-1/versions/12/infer"
        );
        assert_eq!(ADMIN_PIN.path("a"), "/v2/mm/models/a/pin");
        assert_eq!(ADMIN_PUBLISH.path("a", 3), "/v2/mm/models/a/versions/3");
        assert_eq!(ADMIN_STATUS.template(), "/v2/mm/models/{id}");
        assert_eq!(ADMIN_CANARY.path("a"), "/v2/mm/models/a/canary");
        assert_eq!(ADMIN_EXPLAIN.path("a"), "/v2/mm/models/a/explain");
        assert_eq!(ADMIN_SHADOW.path("a"), "/v2/mm/models/a/shadow");
        assert_eq!(
            ADMIN_SHADOW_PROMOTE.path("a"),
            "/v2/mm/models/a/shadow/promote"
        );
        assert_eq!(
            ADMIN_CANARY_PROMOTE.path("a"),
            "/v2/mm/models/a/canary/promote"
        );
    }
}
