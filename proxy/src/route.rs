//! What a request is, from its method, path and headers alone: a pure function, so every
//! rule here is unit-tested without a socket. The typed [`Route`] is carried from here to
//! the end of the request; nothing after this re-reads the path.

use manymodels_contract::grpc::{self, Call};
use manymodels_contract::{
    self as contract, header, parse_version, route as scorer, truncate_for_message as cut,
    valid_model_id,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /v2/health/live`, answered by the proxy.
    Live,
    /// `GET /v2/health/ready`, answered by the proxy (ready when a scorer is).
    Ready,
    /// `GET /metrics`, the proxy's own metrics.
    Metrics,
    /// `GET /v2/mm/pool`: the pool view (JSON).
    PoolView,
    /// `GET /v2/mm/pool/models/{id}`: where one model lives from this proxy's view (its
    /// rendezvous ranking, which scorers hold it hot, its rate), answered locally.
    PoolModel { id: String },
    /// `GET /status`: the status page (HTML).
    Status,
    /// `GET /v2/mm/ledger`: the pool's per-model ledger, merged from every scorer's
    /// ([`crate::ledger`]).
    Ledger,
    /// `GET /v2/mm/ledger/{id}`: one model's ledger, merged from every scorer's.
    LedgerModel { id: String },
    /// `GET /v2/admin/shadows`: every shadow the key may see, its counts merged from every
    /// scorer's ([`crate::shadow`]).
    Shadows,
    /// `GET /v2/admin/models/{id}/shadow`: one model's shadow, merged from every scorer's.
    ShadowModel { id: String },
    /// A request about one model (admin calls included), forwarded to the scorer chosen
    /// for it.
    Model { id: String, action: Action },
    /// A request any scorer can answer (`GET /v2`, `POST /v2/repository/index`): it
    /// names no model, so it is neither counted nor warmed. `lists_models`: the repository
    /// index, which lists the models in the store that the caller's key admits (the
    /// scorer narrows it by `x-mm-model-prefixes`).
    AnyScorer { lists_models: bool },
    /// `POST /v2/mm/batch`, and Azure ML's scoring route without `x-mm-model`: records
    /// for many models in one request, grouped and fanned out by the proxy
    /// ([`crate::batch`]).
    Batch,
    /// Payload capture's admin API (`/v2/mm/capture...`, the scorer's own paths),
    /// forwarded to any scorer: the rules live in the store.
    Capture(CaptureAction),
    /// A bad request: answered 400 without touching a scorer.
    Invalid(String),
    /// No such route: 404.
    NotFound,
}

/// What a payload capture call asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaptureAction {
    /// `GET /v2/mm/capture`: the rules the key may see, and one scorer's counters.
    Show,
    /// `PUT /v2/mm/capture/{prefix}`: sets the prefix's rule.
    Set { prefix: String },
    /// `DELETE /v2/mm/capture/{prefix}`: drops the prefix's rule.
    Drop { prefix: String },
    /// `POST /v2/mm/capture/refresh`: every scorer reads the rules again.
    Refresh,
}

impl CaptureAction {
    /// The rule prefix the call changes, which a scoped key's prefixes must admit.
    pub fn prefix(&self) -> Option<&str> {
        match self {
            CaptureAction::Set { prefix } | CaptureAction::Drop { prefix } => Some(prefix),
            CaptureAction::Show | CaptureAction::Refresh => None,
        }
    }

    /// Whether a success should make every scorer read the rules again now.
    pub fn changes_rules(&self) -> bool {
        !matches!(self, CaptureAction::Show)
    }
}

/// What a model request asks of the scorer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// `GET /v2/models/{id}[/versions/{v}]`.
    Metadata { version: Option<u64> },
    /// `GET /v2/models/{id}[/versions/{v}]/ready`.
    Ready { version: Option<u64> },
    /// `POST /v2/models/{id}[/versions/{v}]/infer` (and the Azure ML scoring route).
    Infer { version: Option<u64> },
    /// `POST /v2/repository/models/{id}/load` (admin).
    Load,
    /// `POST /v2/repository/models/{id}/unload` (admin).
    Unload,
    /// `GET /v2/admin/models/{id}`: versions in the store and what is served.
    VersionStatus,
    /// `POST /v2/admin/models/{id}/refresh`.
    Refresh,
    /// `POST /v2/admin/models/{id}/pin`.
    Pin,
    /// `POST /v2/admin/models/{id}/unpin`.
    Unpin,
    /// `PUT /v2/admin/models/{id}/versions/{v}`: a model upload.
    Publish { version: u64 },
    /// `GET /v2/admin/models/{id}/versions/{v}`: the version's size and SHA-256.
    VersionDigest { version: u64 },
    /// `GET /v2/admin/models/{id}/explain`: why the model is or is not in the memory of
    /// the scorer that answers (the healthy one it ranks first; admin calls are not counted).
    Explain,
    /// `GET /v2/admin/models/{id}/canary`.
    CanaryShow,
    /// `PUT /v2/admin/models/{id}/canary`: body `{"version": v, "percent": p}`.
    CanarySet,
    /// `DELETE /v2/admin/models/{id}/canary`.
    CanaryDrop,
    /// `POST /v2/admin/models/{id}/canary/promote`.
    CanaryPromote,
    /// `PUT /v2/admin/models/{id}/shadow`: body a `ShadowSpec` (version, percent,
    /// tolerance, rule). (`GET` is [`Route::ShadowModel`]: the pool's counts, not one
    /// scorer's.)
    ShadowSet,
    /// `DELETE /v2/admin/models/{id}/shadow`.
    ShadowDrop,
    /// `POST /v2/admin/models/{id}/shadow/promote[?since_ms=S]`: pins the candidate, drops
    /// the shadow.
    ShadowPromote,
    /// A gRPC call about one model (`classify_grpc`): the path is kept as it is, the model
    /// came from a metadata header or the message (`named_in_body`), and `version` is the
    /// message's version or `x-mm-model-version` (checked here, read by the scorer).
    Grpc { call: Call, version: Option<u64> },
}

impl Action {
    /// Whether the route needs an admin key (when admin keys are set).
    pub fn admin(self) -> bool {
        match self {
            Action::Metadata { .. } | Action::Ready { .. } | Action::Infer { .. } => false,
            Action::Grpc { call, .. } => call.admin(),
            _ => true,
        }
    }

    /// Whether a success changes what the model's requests naming no version get (its
    /// live version, its canary or its shadow, in the store), after which every scorer
    /// should look at the store again.
    pub fn changes_versions(self) -> bool {
        matches!(
            self,
            Action::Refresh
                | Action::Pin
                | Action::Unpin
                | Action::Publish { .. }
                | Action::CanarySet
                | Action::CanaryDrop
                | Action::CanaryPromote
                | Action::ShadowSet
                | Action::ShadowDrop
                | Action::ShadowPromote
        )
    }

    /// Whether the body is a model file (`http.max_upload`) rather than a request
    /// (`http.max_body`).
    pub fn is_upload(self) -> bool {
        matches!(self, Action::Publish { .. })
    }

    /// The scorer's path for this action on `id`.
    pub fn path(self, id: &str) -> String {
        match self {
            Action::Metadata { version: None } => scorer::MODEL_METADATA.path(id),
            Action::Metadata { version: Some(v) } => scorer::VERSION_METADATA.path(id, v),
            Action::Ready { version: None } => scorer::MODEL_READY.path(id),
            Action::Ready { version: Some(v) } => scorer::VERSION_READY.path(id, v),
            Action::Infer { version: None } => scorer::INFER.path(id),
            Action::Infer { version: Some(v) } => scorer::VERSION_INFER.path(id, v),
            Action::Load => scorer::REPOSITORY_LOAD.path(id),
            Action::Unload => scorer::REPOSITORY_UNLOAD.path(id),
            Action::VersionStatus => scorer::ADMIN_STATUS.path(id),
            Action::Refresh => scorer::ADMIN_REFRESH.path(id),
            Action::Pin => scorer::ADMIN_PIN.path(id),
            Action::Unpin => scorer::ADMIN_UNPIN.path(id),
            // One scorer route: `PUT` publishes, `GET` answers the digest.
            Action::Publish { version } | Action::VersionDigest { version } => {
                scorer::ADMIN_PUBLISH.path(id, version)
            }
            Action::Explain => scorer::ADMIN_EXPLAIN.path(id),
            Action::CanaryShow | Action::CanarySet | Action::CanaryDrop => {
                scorer::ADMIN_CANARY.path(id)
            }
            Action::CanaryPromote => scorer::ADMIN_CANARY_PROMOTE.path(id),
            Action::ShadowSet | Action::ShadowDrop => scorer::ADMIN_SHADOW.path(id),
            Action::ShadowPromote => scorer::ADMIN_SHADOW_PROMOTE.path(id),
            Action::Grpc { call, .. } => format!("{}{}", grpc::PREFIX, call.method()),
        }
    }
}

impl Route {
    /// The model the request is about, if any.
    pub fn model(&self) -> Option<&str> {
        match self {
            Route::Model { id, .. } => Some(id),
            _ => None,
        }
    }
}

/// Classifies a request. `model_header` and `version_header` are the values of
/// `x-mm-model` and `x-mm-model-version`, read only on the Azure ML scoring route.
pub fn classify(
    method: &str,
    path: &str,
    model_header: Option<&str>,
    version_header: Option<&str>,
) -> Route {
    // Azure ML forwards `<endpoint>/v2/models/...` (the scoring URI without its `/score`)
    // unchanged; a client that appends the OIP path to the whole scoring URI sends
    // `/score/v2/models/...`, which is taken as the same model route (docs/api.md, "Azure
    // ML online endpoint in front").
    let path = match path.strip_prefix(AZURE_ML_SCORE) {
        Some(rest) if rest.starts_with("/v2/models/") => rest,
        _ => path,
    };
    match (method, path) {
        ("GET", contract::route::LIVE) => return Route::Live,
        ("GET", contract::route::READY) => return Route::Ready,
        ("GET", contract::route::METRICS) => return Route::Metrics,
        ("GET", "/v2/mm/pool") => return Route::PoolView,
        ("GET", _) if path.starts_with(POOL_MODELS) => {
            return pool_model(&path[POOL_MODELS.len()..]);
        }
        ("GET", "/status") => return Route::Status,
        ("GET", contract::route::LEDGER) => return Route::Ledger,
        ("GET", _) if path.starts_with(LEDGER_MODELS) => {
            return match pool_model(&path[LEDGER_MODELS.len()..]) {
                Route::PoolModel { id } => Route::LedgerModel { id },
                other => other,
            };
        }
        ("GET", contract::route::SERVER_METADATA) => {
            return Route::AnyScorer {
                lists_models: false,
            };
        }
        ("POST", contract::route::REPOSITORY_INDEX) => {
            return Route::AnyScorer { lists_models: true };
        }
        ("POST", "/") | ("POST", AZURE_ML_SCORE) => {
            return azure_ml(model_header, version_header);
        }
        ("POST", contract::batch::BATCH) => return Route::Batch,
        ("GET", ADMIN_SHADOWS) => return Route::Shadows,
        ("GET", contract::route::CAPTURE) => return Route::Capture(CaptureAction::Show),
        ("POST", contract::route::CAPTURE_REFRESH) => {
            return Route::Capture(CaptureAction::Refresh);
        }
        _ => {}
    }
    if let Some(rest) = path.strip_prefix(CAPTURE_RULES) {
        return capture_rule(method, rest);
    }
    let (area, rest) = if let Some(rest) = path.strip_prefix("/v2/models/") {
        (Area::Inference, rest)
    } else if let Some(rest) = path.strip_prefix("/v2/admin/models/") {
        (Area::Admin, rest)
    } else if let Some(rest) = path.strip_prefix("/v2/repository/models/") {
        (Area::Repository, rest)
    } else {
        return Route::NotFound;
    };
    let (id, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let id = percent_decode(id);
    if !valid_model_id(&id) {
        return Route::Invalid(format!("invalid model id '{}'", cut(&id)));
    }
    let action = match area {
        Area::Admin => return admin(method, id, tail),
        Area::Inference => inference(method, tail),
        Area::Repository => Ok(repository(method, tail)),
    };
    match action {
        Ok(Some(action)) => Route::Model { id, action },
        Ok(None) => Route::NotFound,
        Err(message) => Route::Invalid(message),
    }
}

/// Every shadow, merged: `GET /v2/admin/shadows`.
pub const ADMIN_SHADOWS: &str = "/v2/admin/shadows";

/// The prefix of the local placement route, `GET /v2/mm/pool/models/{id}`.
const POOL_MODELS: &str = "/v2/mm/pool/models/";
/// The prefix of one model's merged ledger, `GET /v2/mm/ledger/{id}`.
const LEDGER_MODELS: &str = "/v2/mm/ledger/";

/// `GET /v2/mm/pool/models/{id}`: a valid id (decoded as every path's), nothing after it.
fn pool_model(rest: &str) -> Route {
    if rest.contains('/') {
        return Route::NotFound;
    }
    let id = percent_decode(rest);
    if !valid_model_id(&id) {
        return Route::Invalid(format!("invalid model id '{}'", cut(&id)));
    }
    Route::PoolModel { id }
}

/// The prefix of a capture rule's path, `/v2/mm/capture/{prefix}`.
const CAPTURE_RULES: &str = "/v2/mm/capture/";

/// `PUT` or `DELETE /v2/mm/capture/{prefix}`: a prefix that could start a model id
/// (decoded as every path's), nothing after it.
fn capture_rule(method: &str, rest: &str) -> Route {
    if rest.contains('/') {
        return Route::NotFound;
    }
    let prefix = percent_decode(rest);
    if !valid_model_id(&prefix) {
        return Route::Invalid(format!(
            "invalid capture prefix '{}': it must be a model id or the start of one",
            cut(&prefix)
        ));
    }
    match method {
        "PUT" => Route::Capture(CaptureAction::Set { prefix }),
        "DELETE" => Route::Capture(CaptureAction::Drop { prefix }),
        _ => Route::NotFound,
    }
}

/// The three path areas that name a model after their prefix.
enum Area {
    Inference,
    Admin,
    Repository,
}

/// The tail after `/v2/models/{id}`: `""`, `ready`, `infer`, each optionally after
/// `versions/{v}`.
fn inference(method: &str, tail: &str) -> Result<Option<Action>, String> {
    let (version, action) = match tail.strip_prefix("versions/") {
        Some(rest) => {
            let (v, action) = rest.split_once('/').unwrap_or((rest, ""));
            (Some(version(v)?), action)
        }
        None => (None, tail),
    };
    Ok(match (method, action) {
        ("GET", "") => Some(Action::Metadata { version }),
        ("GET", "ready") => Some(Action::Ready { version }),
        ("POST", "infer") => Some(Action::Infer { version }),
        _ => None,
    })
}

fn repository(method: &str, tail: &str) -> Option<Action> {
    match (method, tail) {
        ("POST", "load") => Some(Action::Load),
        ("POST", "unload") => Some(Action::Unload),
        _ => None,
    }
}

/// The admin API: every call (version status, publish, a version's digest, pin, unpin,
/// refresh, canaries, shadow changes, a model's explanation) is forwarded to a scorer's
/// `/v2/mm/models/...`, which reads or writes the store: the proxy keeps no model state of
/// its own.
fn admin(method: &str, id: String, tail: &str) -> Route {
    let model = |action| Route::Model {
        id: id.clone(),
        action,
    };
    match (method, tail) {
        ("GET", "") => model(Action::VersionStatus),
        ("POST", "refresh") => model(Action::Refresh),
        ("POST", "pin") => model(Action::Pin),
        ("POST", "unpin") => model(Action::Unpin),
        ("GET", "canary") => model(Action::CanaryShow),
        ("PUT", "canary") => model(Action::CanarySet),
        ("DELETE", "canary") => model(Action::CanaryDrop),
        ("POST", "canary/promote") => model(Action::CanaryPromote),
        ("GET", "shadow") => Route::ShadowModel { id },
        ("PUT", "shadow") => model(Action::ShadowSet),
        ("DELETE", "shadow") => model(Action::ShadowDrop),
        ("POST", "shadow/promote") => model(Action::ShadowPromote),
        ("GET", "explain") => model(Action::Explain),
        ("PUT" | "GET", tail) => match tail.strip_prefix("versions/") {
            Some(v) => match version(v) {
                Ok(version) if method == "PUT" => model(Action::Publish { version }),
                Ok(version) => model(Action::VersionDigest { version }),
                Err(message) => Route::Invalid(message),
            },
            None => Route::NotFound,
        },
        _ => Route::NotFound,
    }
}

pub(crate) fn version(text: &str) -> Result<u64, String> {
    parse_version(text).ok_or_else(|| {
        format!(
            "invalid model version '{}': expected a positive integer without leading zeros",
            cut(text)
        )
    })
}

/// What a gRPC call's path and metadata say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrpcCall {
    /// The route, as for any request.
    Routed(Route),
    /// A call about a model whose metadata names none: the model is in its message, which
    /// `crate::grpc_route` reads before a scorer is chosen, then [`named_in_body`].
    ModelInBody(Call),
}

/// Classifies a gRPC call (`path` under `contract::grpc::PREFIX`). `model_header` is the
/// first of `contract::grpc::MODEL_HEADERS` the request carries: when there is one it names
/// the model, and the body is not read (the scorer then refuses a body naming another
/// model). Without one, a call about a model is [`GrpcCall::ModelInBody`]. Calls about no
/// model go to any scorer, like their REST twins.
pub fn classify_grpc(
    path: &str,
    model_header: Option<&str>,
    version_header: Option<&str>,
) -> GrpcCall {
    let Some(call) = Call::from_path(path) else {
        return GrpcCall::Routed(Route::NotFound);
    };
    if !call.names_model() {
        return GrpcCall::Routed(Route::AnyScorer {
            lists_models: call == Call::RepositoryIndex,
        });
    }
    match model_header.map(str::trim).filter(|m| !m.is_empty()) {
        Some(id) => GrpcCall::Routed(named_in_headers(id, version_header, |version| {
            Action::Grpc { call, version }
        })),
        None => GrpcCall::ModelInBody(call),
    }
}

/// A gRPC call whose message names its model `name` (and perhaps `version`): routed by the
/// same rules as a model named in metadata. The message's version wins over
/// `x-mm-model-version`, as on the scorer; an empty one is no version.
pub fn named_in_body(
    call: Call,
    name: &str,
    version: Option<&str>,
    version_header: Option<&str>,
) -> Route {
    let version = version.filter(|v| !v.is_empty()).or(version_header);
    named_in_headers(name, version, |version| Action::Grpc { call, version })
}

/// A model named in headers rather than the path (gRPC metadata, Azure ML's scoring
/// route): the id and the optional version by the same rules as a path, then `action`.
fn named_in_headers(
    id: &str,
    version_header: Option<&str>,
    action: impl FnOnce(Option<u64>) -> Action,
) -> Route {
    if !valid_model_id(id) {
        return Route::Invalid(format!("invalid model id '{}'", cut(id)));
    }
    let version = match version_header.map(str::trim).filter(|v| !v.is_empty()) {
        Some(v) => match version(v) {
            Ok(v) => Some(v),
            Err(message) => return Route::Invalid(message),
        },
        None => None,
    };
    Route::Model {
        id: id.to_string(),
        action: action(version),
    }
}

/// The last segment of an Azure ML scoring URI (`https://<endpoint>/score`).
const AZURE_ML_SCORE: &str = "/score";

/// Azure ML's scoring route: the model (and optionally its version) in headers; without
/// a model header, the records name their models (the many-model route).
fn azure_ml(model: Option<&str>, version_header: Option<&str>) -> Route {
    let Some(id) = model.map(str::trim).filter(|m| !m.is_empty()) else {
        if version_header.is_some_and(|v| !v.trim().is_empty()) {
            return Route::Invalid(format!(
                "`{}` without `{}`: a many-model request names versions in its records",
                header::MODEL_VERSION,
                header::MODEL
            ));
        }
        return Route::Batch;
    };
    named_in_headers(id, version_header, |version| Action::Infer { version })
}

/// Decodes `%XX` escapes so `..%2F..` is judged as `../..`.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod capture_tests {
    use manymodels_config::Secret;
    use manymodels_config::proxy::ApiKey;

    use super::*;
    use crate::keys::{Keys, check};

    #[test]
    fn capture_paths_are_classified() {
        assert_eq!(
            classify("GET", "/v2/mm/capture", None, None),
            Route::Capture(CaptureAction::Show)
        );
        assert_eq!(
            classify("POST", "/v2/mm/capture/refresh", None, None),
            Route::Capture(CaptureAction::Refresh)
        );
        assert_eq!(
            classify("PUT", "/v2/mm/capture/acme-", None, None),
            Route::Capture(CaptureAction::Set {
                prefix: "acme-".into()
            })
        );
        assert_eq!(
            classify("DELETE", "/v2/mm/capture/acme-fraud", None, None),
            Route::Capture(CaptureAction::Drop {
                prefix: "acme-fraud".into()
            })
        );
        assert!(matches!(
            classify("PUT", "/v2/mm/capture/_x", None, None),
            Route::Invalid(_)
        ));
        assert_eq!(
            classify("PUT", "/v2/mm/capture/a/b", None, None),
            Route::NotFound
        );
        assert_eq!(
            classify("GET", "/v2/mm/capture/acme-", None, None),
            Route::NotFound
        );
    }

    /// Capture calls are admin calls; a scoped key changes only rules inside its
    /// prefixes and its view is narrowed to them (`x-mm-model-prefixes`).
    #[test]
    fn a_scoped_key_captures_only_inside_its_prefixes() {
        let key = |name: &str, scope: &[&str]| ApiKey {
            name: name.into(),
            key: Secret::new(format!("k-{name}")),
            scope: scope.iter().map(|s| s.to_string()).collect(),
        };
        let api = [key("all", &[])];
        let admin = [key("root", &[]), key("ops", &["acme-"])];
        let keys = Keys {
            api: &api,
            admin: &admin,
        };
        let verdict = |method: &str, path: &str, bearer: &str| {
            let route = classify(method, path, None, None);
            let header = format!("Bearer {bearer}");
            let checked = check(keys, &route, Some(&header));
            (
                checked
                    .verdict
                    .as_ref()
                    .map_or_else(|r| r.status(), |_| 200),
                checked.list_scope(&route),
            )
        };
        let acme = Some("acme-".to_string());
        let all = Some(String::new());
        assert_eq!(
            verdict("PUT", "/v2/mm/capture/acme-f", "k-ops"),
            (200, acme.clone())
        );
        assert_eq!(verdict("DELETE", "/v2/mm/capture/acme", "k-ops").0, 403);
        assert_eq!(verdict("PUT", "/v2/mm/capture/globex", "k-ops").0, 403);
        assert_eq!(verdict("GET", "/v2/mm/capture", "k-ops"), (200, acme));
        assert_eq!(
            verdict("GET", "/v2/mm/capture", "k-root"),
            (200, all.clone())
        );
        assert_eq!(
            verdict("PUT", "/v2/mm/capture/globex", "k-root"),
            (200, all)
        );
        // An API key is not an admin key.
        assert_eq!(verdict("GET", "/v2/mm/capture", "k-all").0, 401);
    }
}

#[cfg(test)]
mod tests;
