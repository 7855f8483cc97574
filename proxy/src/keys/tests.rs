//! The key check as tables: one per way the keys can be configured, each row a request
//! (method, path, key sent) and what the check says of it.

use super::*;
use crate::route::classify;
use manymodels_config::Secret;

fn key(name: &str, key: &str, scope: &[&str]) -> ApiKey {
    ApiKey {
        name: name.into(),
        key: Secret::new(key),
        scope: scope.iter().map(|s| s.to_string()).collect(),
    }
}

/// An unscoped API key (`k-all`) and one scoped to `acme-` (`k-acme`).
fn api_keys() -> Vec<ApiKey> {
    vec![key("all", "k-all", &[]), key("acme", "k-acme", &["acme-"])]
}

/// An unscoped admin key (`k-root`) and one scoped to `acme-` (`k-acme-ops`).
fn admin_keys() -> Vec<ApiKey> {
    vec![
        key("root", "k-root", &[]),
        key("acme-ops", "k-acme-ops", &["acme-"]),
    ]
}

/// One request and what the check says of it: method, path, the key sent as `Bearer
/// <key>` (`None`: no `Authorization` header); the status (200: allowed, the request goes
/// on), what `mm_proxy_requests_by_key_total` counts (key name, outcome), the scope the
/// repository index is narrowed to (`x-mm-model-prefixes`); and why.
type Case = (
    &'static str,
    &'static str,
    Option<&'static str>,
    u16,
    Option<(&'static str, &'static str)>,
    Option<&'static str>,
    &'static str,
);

fn run(keys: Keys<'_>, cases: &[Case]) {
    for &(method, path, bearer, status, counted, scope, why) in cases {
        let route = classify(method, path, None, None);
        let header = bearer.map(|b| format!("Bearer {b}"));
        let check = check(keys, &route, header.as_deref());
        let seen = check
            .verdict
            .as_ref()
            .map_or_else(Rejection::status, |_| 200);
        assert_eq!(
            (seen, check.counted, check.list_scope(&route).as_deref()),
            (status, counted, scope),
            "{why}: {method} {path} with {bearer:?}"
        );
    }
}

const INFER_A: &str = "/v2/models/acme-linear/infer";
const INFER_B: &str = "/v2/models/globex-tree/infer";
const INDEX: &str = "/v2/repository/index";
const LOAD_A: &str = "/v2/repository/models/acme-linear/load";
const CANARY_A: &str = "/v2/admin/models/acme-linear/canary";
const EXPLAIN_B: &str = "/v2/admin/models/globex-tree/explain";
const SHADOW_A: &str = "/v2/admin/models/acme-linear/shadow";
const SHADOW_B: &str = "/v2/admin/models/globex-tree/shadow";
const SHADOWS: &str = "/v2/admin/shadows";
const POOL: &str = "/v2/mm/pool";
const PLACE_A: &str = "/v2/mm/pool/models/acme-linear";
const PLACE_B: &str = "/v2/mm/pool/models/globex-tree";

const NONE: Option<(&str, &str)> = Some(("none", "unauthorized"));
const ALL: Option<(&str, &str)> = Some(("all", "allowed"));
const ACME: Option<(&str, &str)> = Some(("acme", "allowed"));
const ACME_OUT: Option<(&str, &str)> = Some(("acme", "out_of_scope"));
const ROOT: Option<(&str, &str)> = Some(("root", "allowed"));
const OPS: Option<(&str, &str)> = Some(("acme-ops", "allowed"));
const OPS_OUT: Option<(&str, &str)> = Some(("acme-ops", "out_of_scope"));

#[rustfmt::skip]
const API_AND_ADMIN_KEYS: &[Case] = &[
    // Routes no key is asked of, whatever is sent.
    ("GET", "/v2/health/live", None, 200, None, None, "liveness"),
    ("GET", "/v2/health/ready", Some("wrong"), 200, None, None, "readiness"),
    ("GET", "/metrics", None, 200, None, None, "metrics"),
    ("GET", "/status", None, 200, None, None, "the status page"),
    ("GET", "/nope", None, 200, None, None, "an unknown path (404 after)"),
    ("GET", "/v2/models/bad%20id", None, 200, None, None, "a bad id (400 after)"),
    // Inference and metadata: API keys, a scoped one for its models only.
    ("POST", INFER_A, None, 401, NONE, None, "no key"),
    ("POST", INFER_A, Some("wrong"), 401, NONE, None, "a wrong key"),
    ("POST", INFER_A, Some("k-root"), 401, NONE, None, "an admin key is no API key"),
    ("POST", INFER_A, Some("k-all"), 200, ALL, None, "an unscoped key"),
    ("POST", INFER_A, Some("k-acme"), 200, ACME, None, "a scoped key on its model"),
    ("GET", "/v2/models/acme-linear", Some("k-acme"), 200, ACME, None, "its metadata"),
    ("POST", INFER_B, Some("k-acme"), 403, ACME_OUT, None, "a scoped key on another model"),
    // Server metadata and the repository index: any valid key; the index is narrowed.
    ("GET", "/v2", Some("k-acme"), 200, ACME, None, "server metadata"),
    ("POST", INDEX, None, 401, NONE, None, "the index without a key"),
    ("POST", INDEX, Some("k-acme"), 200, ACME, Some("acme-"), "scoped: narrowed, not refused"),
    ("POST", INDEX, Some("k-all"), 200, ALL, Some(""), "unscoped: every model"),
    // Admin routes: admin keys, a scoped one for its models only.
    ("POST", LOAD_A, Some("k-all"), 401, NONE, None, "an API key on an admin route"),
    ("POST", LOAD_A, Some("k-root"), 200, ROOT, None, "a repository load"),
    ("PUT", CANARY_A, Some("k-acme-ops"), 200, OPS, None, "a scoped admin key on its model"),
    ("GET", EXPLAIN_B, Some("k-acme-ops"), 403, OPS_OUT, None, "on another model"),
    ("GET", EXPLAIN_B, None, 401, NONE, None, "an admin route without a key"),
    // Shadows: admin keys; a scoped one sees and changes only its models' (every shadow:
    // narrowed by the proxy, not refused).
    ("GET", SHADOWS, Some("k-acme-ops"), 200, OPS, None, "every shadow, scoped: narrowed"),
    ("GET", SHADOWS, Some("k-root"), 200, ROOT, None, "every shadow"),
    ("GET", SHADOWS, Some("k-all"), 401, NONE, None, "an API key on the shadows"),
    ("GET", SHADOW_A, Some("k-acme-ops"), 200, OPS, None, "its model's shadow"),
    ("GET", SHADOW_B, Some("k-acme-ops"), 403, OPS_OUT, None, "another model's shadow"),
    ("PUT", SHADOW_B, Some("k-acme-ops"), 403, OPS_OUT, None, "setting another's shadow"),
    ("POST", "/v2/admin/models/globex-tree/shadow/promote", Some("k-acme-ops"), 403, OPS_OUT, None, "promoting another's"),
    ("DELETE", SHADOW_A, Some("k-acme-ops"), 200, OPS, None, "dropping its own"),
    // The pool view names every tenant's models: unscoped API keys only.
    ("GET", POOL, Some("k-all"), 200, ALL, None, "the pool view"),
    ("GET", POOL, Some("k-acme"), 403, ACME_OUT, None, "the pool view, scoped key"),
    ("GET", POOL, Some("k-root"), 401, NONE, None, "an admin key on the pool view"),
    ("GET", POOL, None, 401, NONE, None, "the pool view without a key"),
    // One model's placement: an admin route.
    ("GET", PLACE_A, Some("k-all"), 401, NONE, None, "an API key on placement"),
    ("GET", PLACE_A, Some("k-root"), 200, ROOT, None, "placement, admin key"),
    ("GET", PLACE_A, Some("k-acme-ops"), 200, OPS, None, "placement, scoped, its model"),
    ("GET", PLACE_B, Some("k-acme-ops"), 403, OPS_OUT, None, "placement, another model"),
    ("GET", PLACE_B, None, 401, NONE, None, "placement without a key"),
];

#[rustfmt::skip]
const NO_KEYS: &[Case] = &[
    ("POST", INFER_A, Some("anything"), 200, None, None, "inference"),
    ("POST", INDEX, None, 200, None, Some(""), "the index: every model"),
    ("POST", LOAD_A, None, 200, None, None, "an admin route"),
    ("GET", POOL, None, 200, None, None, "the pool view"),
    ("GET", PLACE_A, None, 200, None, None, "placement"),
];

#[rustfmt::skip]
const API_KEYS_ONLY: &[Case] = &[
    ("POST", LOAD_A, Some("k-acme"), 200, ACME, None, "admin routes take API keys"),
    ("GET", PLACE_A, Some("k-acme"), 200, ACME, None, "placement too"),
    ("GET", EXPLAIN_B, Some("k-acme"), 403, ACME_OUT, None, "scoped all the same"),
    ("POST", LOAD_A, None, 401, NONE, None, "and a key is needed"),
];

#[rustfmt::skip]
const ADMIN_KEYS_ONLY: &[Case] = &[
    ("POST", INFER_A, None, 200, None, None, "inference is open"),
    ("GET", POOL, None, 200, None, None, "the pool view is open"),
    ("POST", LOAD_A, None, 401, NONE, None, "admin routes are not"),
    ("POST", LOAD_A, Some("k-root"), 200, ROOT, None, "with an admin key"),
];

#[test]
fn each_key_reaches_exactly_its_routes_and_models() {
    let (api, admin) = (api_keys(), admin_keys());
    run(
        Keys {
            api: &api,
            admin: &admin,
        },
        API_AND_ADMIN_KEYS,
    );
}

#[test]
fn without_keys_every_route_is_open_and_nothing_is_counted() {
    run(
        Keys {
            api: &[],
            admin: &[],
        },
        NO_KEYS,
    );
}

#[test]
fn without_admin_keys_admin_routes_take_the_api_keys() {
    let api = api_keys();
    run(
        Keys {
            api: &api,
            admin: &[],
        },
        API_KEYS_ONLY,
    );
}

#[test]
fn admin_keys_alone_leave_the_other_routes_open() {
    let admin = admin_keys();
    run(
        Keys {
            api: &[],
            admin: &admin,
        },
        ADMIN_KEYS_ONLY,
    );
}

#[test]
fn a_refusal_names_the_model_it_was_out_of_scope_for() {
    let api = api_keys();
    let keys = Keys {
        api: &api,
        admin: &[],
    };
    let verdict = |method: &str, path: &str, header: &str| {
        check(keys, &classify(method, path, None, None), Some(header)).verdict
    };
    assert_eq!(
        verdict("POST", INFER_B, "Bearer k-acme"),
        Err(Rejection::OutOfScope(Some("globex-tree".into())))
    );
    assert_eq!(
        verdict("GET", POOL, "Bearer k-acme"),
        Err(Rejection::OutOfScope(None))
    );
    assert_eq!(
        verdict("GET", POOL, "k-all"),
        Err(Rejection::Unauthorized),
        "a key without `Bearer ` is no key"
    );
    let route = classify("POST", INFER_A, None, None);
    let scope = check(keys, &route, Some("Bearer k-acme")).verdict;
    assert_eq!(scope, Ok(&["acme-".to_string()][..]), "the key's prefixes");
}

#[test]
fn a_rotated_key_is_two_keys_of_one_name_counted_as_that_name() {
    let api = vec![
        key("acme", "k-old", &["acme-"]),
        key("acme", "k-new", &["acme-"]),
    ];
    let keys = Keys {
        api: &api,
        admin: &[],
    };
    let route = classify("POST", INFER_A, None, None);
    for sent in ["Bearer k-old", "Bearer k-new"] {
        let checked = check(keys, &route, Some(sent));
        assert_eq!(checked.verdict, Ok(&["acme-".to_string()][..]), "{sent}");
        assert_eq!(checked.counted, Some(("acme", "allowed")), "{sent}");
    }
    let checked = check(keys, &route, Some("Bearer k-other"));
    assert_eq!(checked.counted, Some(("none", "unauthorized")));
}

#[test]
fn an_allowed_request_over_its_keys_limit_is_refused_with_429_and_counted_as_limited() {
    use manymodels_config::proxy::{KeySettings, RateLimit};
    let api = api_keys();
    let keys = Keys {
        api: &api,
        admin: &[],
    };
    let limits = Limits::new(&[KeySettings {
        name: "acme".into(),
        rate: Some(RateLimit {
            per_second: 1.0,
            burst: 1,
        }),
        inflight: Some(1),
        priority: None,
    }]);
    let now = std::time::Instant::now();
    let route = classify("POST", INFER_A, None, None);
    let admitted = |sent: Option<&str>, now| admit(check(keys, &route, sent), &limits, now);
    let (first, permit) = admitted(Some("Bearer k-acme"), now);
    assert_eq!(first.counted, Some(("acme", "allowed")));
    assert!(permit.is_some(), "holds an in-flight slot");
    let (second, none) = admitted(Some("Bearer k-acme"), now);
    assert!(none.is_none());
    assert_eq!(second.counted, Some(("acme", "inflight_limited")));
    let rejection = second.verdict.unwrap_err();
    assert_eq!(
        (rejection.status(), rejection.retry_after()),
        (429, Some(1))
    );
    drop(permit);
    let (third, _) = admitted(Some("Bearer k-acme"), now);
    assert_eq!(third.counted, Some(("acme", "rate_limited")));
    assert_eq!(third.verdict.unwrap_err().status(), 429);
    // Another key, no key, a refused key: not limited.
    let (other, _) = admitted(Some("Bearer k-all"), now);
    assert_eq!(other.counted, Some(("all", "allowed")));
    let (refused, _) = admitted(Some("Bearer nope"), now);
    assert_eq!(refused.counted, Some(("none", "unauthorized")));
    let health = classify("GET", "/v2/health/ready", None, None);
    let (open, _) = admit(check(keys, &health, None), &limits, now);
    assert_eq!(open.counted, None);
    // A second later the bucket has a token again.
    let later = now + std::time::Duration::from_secs(1);
    let (fourth, _) = admitted(Some("Bearer k-acme"), later);
    assert_eq!(fourth.counted, Some(("acme", "allowed")));
}

#[test]
fn the_many_model_route_takes_any_valid_key_and_hands_on_its_scope() {
    let api = api_keys();
    let keys = Keys {
        api: &api,
        admin: &[],
    };
    let route = classify("POST", "/v2/mm/batch", None, None);
    assert_eq!(route, Route::Batch);
    // The records are checked against the key's prefixes one by one (`batch::records`):
    // the route itself takes any valid key and hands its prefixes on.
    let scoped = check(keys, &route, Some("Bearer k-acme"));
    assert_eq!(scoped.verdict, Ok(&["acme-".to_string()][..]));
    assert_eq!(scoped.counted, Some(("acme", "allowed")));
    let open = check(keys, &route, Some("Bearer k-all"));
    assert_eq!(open.verdict, Ok(&[][..]));
    for bearer in [None, Some("Bearer nope")] {
        let refused = check(keys, &route, bearer);
        assert_eq!(refused.verdict, Err(Rejection::Unauthorized), "{bearer:?}");
    }
    // Azure ML's scoring route without a model header is the same route.
    assert_eq!(classify("POST", "/score", None, None), Route::Batch);
    // Without keys: open.
    let none = Keys {
        api: &[],
        admin: &[],
    };
    assert_eq!(check(none, &route, None).verdict, Ok(&[][..]));
}
