//! What a request is, from its method, path and headers alone: a pure function, so every
//! rule here is unit-tested without a socket.

use manymodels_config::valid_model_id;

/// The header that names the model on Azure ML's scoring route (`POST /`).
pub const MODEL_HEADER: &str = "x-mm-model";
/// Optional version on the scoring route.
pub const VERSION_HEADER: &str = "x-mm-model-version";

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
    /// `GET /status`: the status page (HTML).
    Status,
    /// A request about one model, forwarded to the scorer chosen for it. `rewrite` is the
    /// path to send upstream when it differs from the client's (the Azure ML route).
    Model {
        id: String,
        admin: bool,
        rewrite: Option<String>,
    },
    /// A request any scorer can answer (`GET /v2`, `POST /v2/repository/index`).
    AnyScorer,
    /// A bad request: answered 400 without touching a scorer.
    Invalid(String),
    /// No such route: 404.
    NotFound,
    /// `/v2/admin/models/{id}/canary[...]`: the proxy's own traffic split (admin).
    Canary { id: String, action: CanaryAction },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CanaryAction {
    Show,
    Set,
    Drop,
    Promote,
}

pub fn classify(
    method: &str,
    path: &str,
    model_header: Option<&str>,
    version_header: Option<&str>,
) -> Route {
    match (method, path) {
        ("GET", "/v2/health/live") => return Route::Live,
        ("GET", "/v2/health/ready") => return Route::Ready,
        ("GET", "/metrics") => return Route::Metrics,
        ("GET", "/v2/mm/pool") => return Route::PoolView,
        ("GET", "/status") => return Route::Status,
        ("GET", "/v2") | ("POST", "/v2/repository/index") => return Route::AnyScorer,
        ("POST", "/") | ("POST", "/score") => return azure_ml(model_header, version_header),
        _ => {}
    }
    if let Some(rest) = path.strip_prefix("/v2/models/") {
        let (id, tail) = rest.split_once('/').unwrap_or((rest, ""));
        let id = percent_decode(id);
        if !valid_model_id(&id) {
            return Route::Invalid(format!("invalid model id '{}'", truncate(&id)));
        }
        let known = matches!(
            (method, tail),
            ("GET", "") | ("GET", "ready") | ("POST", "infer")
        ) || version_tail(method, tail);
        if !known {
            return Route::NotFound;
        }
        return Route::Model {
            id,
            admin: false,
            rewrite: None,
        };
    }
    if let Some(rest) = path.strip_prefix("/v2/admin/models/") {
        return admin(method, rest);
    }
    if let Some(rest) = path.strip_prefix("/v2/repository/models/") {
        let (id, action) = rest.split_once('/').unwrap_or((rest, ""));
        let id = percent_decode(id);
        if !valid_model_id(&id) {
            return Route::Invalid(format!("invalid model id '{}'", truncate(&id)));
        }
        if method == "POST" && matches!(action, "load" | "unload") {
            return Route::Model {
                id,
                admin: true,
                rewrite: None,
            };
        }
        return Route::NotFound;
    }
    Route::NotFound
}

/// The admin API: version status, publish, pin, unpin and refresh are forwarded to a
/// scorer's `/v2/mm/models/...` (which writes the store); canaries are the proxy's own.
fn admin(method: &str, rest: &str) -> Route {
    let (id, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let id = percent_decode(id);
    if !valid_model_id(&id) {
        return Route::Invalid(format!("invalid model id '{}'", truncate(&id)));
    }
    let forward = |tail: &str| Route::Model {
        rewrite: Some(if tail.is_empty() {
            format!("/v2/mm/models/{id}")
        } else {
            format!("/v2/mm/models/{id}/{tail}")
        }),
        id: id.clone(),
        admin: true,
    };
    let canary = |action| Route::Canary {
        id: id.clone(),
        action,
    };
    match (method, tail) {
        ("GET", "") => forward(""),
        ("POST", "refresh" | "pin" | "unpin") => forward(tail),
        ("GET", "canary") => canary(CanaryAction::Show),
        ("PUT", "canary") => canary(CanaryAction::Set),
        ("DELETE", "canary") => canary(CanaryAction::Drop),
        ("POST", "canary/promote") => canary(CanaryAction::Promote),
        ("PUT", tail) => match tail.strip_prefix("versions/") {
            Some(v) if crate::route::is_version(v) => forward(tail),
            Some(v) => Route::Invalid(format!("invalid model version '{}'", truncate(v))),
            None => Route::NotFound,
        },
        _ => Route::NotFound,
    }
}

/// A version number: digits, no leading zero.
pub fn is_version(text: &str) -> bool {
    !text.is_empty() && !text.starts_with('0') && text.bytes().all(|b| b.is_ascii_digit())
}

/// Whether `route` is an admin call that changes a model's live version, after which
/// every scorer should look at the store again.
pub fn changes_versions(method: &str, route: &Route) -> bool {
    matches!(route, Route::Model { admin: true, rewrite: Some(path), .. }
        if path.starts_with("/v2/mm/models/") && method != "GET")
}

/// `versions/{v}`, `versions/{v}/ready`, `versions/{v}/infer`.
fn version_tail(method: &str, tail: &str) -> bool {
    let Some(rest) = tail.strip_prefix("versions/") else {
        return false;
    };
    let (version, action) = rest.split_once('/').unwrap_or((rest, ""));
    !version.is_empty()
        && version.bytes().all(|b| b.is_ascii_digit())
        && matches!(
            (method, action),
            ("GET", "") | ("GET", "ready") | ("POST", "infer")
        )
}

fn azure_ml(model: Option<&str>, version: Option<&str>) -> Route {
    let Some(id) = model.map(str::trim).filter(|m| !m.is_empty()) else {
        return Route::Invalid(format!(
            "the scoring route needs the model id in the `{MODEL_HEADER}` header (or use /v2/models/{{id}}/infer)"
        ));
    };
    if !valid_model_id(id) {
        return Route::Invalid(format!("invalid model id '{}'", truncate(id)));
    }
    let rewrite = match version.map(str::trim).filter(|v| !v.is_empty()) {
        Some(v) if v.bytes().all(|b| b.is_ascii_digit()) => {
            format!("/v2/models/{id}/versions/{v}/infer")
        }
        Some(v) => return Route::Invalid(format!("invalid model version '{}'", truncate(v))),
        None => format!("/v2/models/{id}/infer"),
    };
    Route::Model {
        id: id.to_string(),
        admin: false,
        rewrite: Some(rewrite),
    }
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

fn truncate(text: &str) -> String {
    text.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(id: &str) -> Route {
        Route::Model {
            id: id.into(),
            admin: false,
            rewrite: None,
        }
    }

    #[test]
    fn model_routes_name_their_model() {
        assert_eq!(
            classify("POST", "/v2/models/store-1/infer", None, None),
            model("store-1")
        );
        assert_eq!(
            classify("GET", "/v2/models/store-1", None, None),
            model("store-1")
        );
        assert_eq!(
            classify("GET", "/v2/models/store-1/ready", None, None),
            model("store-1")
        );
        assert_eq!(
            classify("POST", "/v2/models/store-1/versions/3/infer", None, None),
            model("store-1")
        );
        assert_eq!(
            classify("POST", "/v2/repository/models/store-1/load", None, None),
            Route::Model {
                id: "store-1".into(),
                admin: true,
                rewrite: None
            }
        );
    }

    #[test]
    fn bad_ids_and_paths_are_rejected_without_a_scorer() {
        for path in [
            "/v2/models/..%2F..%2Fetc/infer",
            "/v2/models//infer",
            "/v2/models/.hidden/infer",
            "/v2/repository/models/a%2Fb/load",
        ] {
            assert!(
                matches!(classify("POST", path, None, None), Route::Invalid(_)),
                "{path}"
            );
        }
        assert_eq!(
            classify("POST", "/v2/models/a/b/infer", None, None),
            Route::NotFound
        );
        assert_eq!(
            classify("DELETE", "/v2/models/a", None, None),
            Route::NotFound
        );
        assert_eq!(classify("GET", "/admin", None, None), Route::NotFound);
        assert_eq!(
            classify("POST", "/v2/models/a/versions/x/infer", None, None),
            Route::NotFound
        );
    }

    #[test]
    fn the_azure_ml_scoring_route_takes_the_model_from_a_header() {
        assert_eq!(
            classify("POST", "/", Some("store-7"), None),
            Route::Model {
                id: "store-7".into(),
                admin: false,
                rewrite: Some("/v2/models/store-7/infer".into())
            }
        );
        assert_eq!(
            classify("POST", "/", Some("store-7"), Some("2")),
            Route::Model {
                id: "store-7".into(),
                admin: false,
                rewrite: Some("/v2/models/store-7/versions/2/infer".into())
            }
        );
        assert!(
            matches!(classify("POST", "/", None, None), Route::Invalid(m) if m.contains(MODEL_HEADER))
        );
        assert!(matches!(
            classify("POST", "/", Some("../x"), None),
            Route::Invalid(_)
        ));
    }

    #[test]
    fn the_proxy_answers_health_and_metrics_itself() {
        assert_eq!(classify("GET", "/v2/health/live", None, None), Route::Live);
        assert_eq!(
            classify("GET", "/v2/health/ready", None, None),
            Route::Ready
        );
        assert_eq!(classify("GET", "/metrics", None, None), Route::Metrics);
        assert_eq!(classify("GET", "/status", None, None), Route::Status);
        assert_eq!(
            classify("PUT", "/v2/admin/models/store-1/versions/3", None, None),
            Route::Model {
                id: "store-1".into(),
                admin: true,
                rewrite: Some("/v2/mm/models/store-1/versions/3".into())
            }
        );
        assert_eq!(
            classify("POST", "/v2/admin/models/store-1/pin", None, None),
            Route::Model {
                id: "store-1".into(),
                admin: true,
                rewrite: Some("/v2/mm/models/store-1/pin".into())
            }
        );
        assert_eq!(
            classify(
                "POST",
                "/v2/admin/models/store-1/canary/promote",
                None,
                None
            ),
            Route::Canary {
                id: "store-1".into(),
                action: CanaryAction::Promote
            }
        );
        assert!(matches!(
            classify("PUT", "/v2/admin/models/store-1/versions/01", None, None),
            Route::Invalid(_)
        ));
        assert!(matches!(
            classify("POST", "/v2/admin/models/..%2Fx/pin", None, None),
            Route::Invalid(_)
        ));
        assert_eq!(
            classify("DELETE", "/v2/admin/models/store-1/pin", None, None),
            Route::NotFound
        );
        assert_eq!(classify("GET", "/v2/mm/pool", None, None), Route::PoolView);
        assert_eq!(
            classify("POST", "/v2/repository/index", None, None),
            Route::AnyScorer
        );
    }
}
