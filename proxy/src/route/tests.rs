use super::*;

fn model(id: &str, action: Action) -> Route {
    Route::Model {
        id: id.into(),
        action,
    }
}

fn get(path: &str) -> Route {
    classify("GET", path, None, None)
}

fn post(path: &str) -> Route {
    classify("POST", path, None, None)
}

#[test]
fn model_routes_name_their_model_and_action() {
    let cases = [
        (
            post("/v2/models/store-1/infer"),
            Action::Infer { version: None },
        ),
        (
            get("/v2/models/store-1"),
            Action::Metadata { version: None },
        ),
        (
            get("/v2/models/store-1/ready"),
            Action::Ready { version: None },
        ),
        (
            post("/v2/models/store-1/versions/3/infer"),
            Action::Infer { version: Some(3) },
        ),
        (
            get("/v2/models/store-1/versions/3"),
            Action::Metadata { version: Some(3) },
        ),
        (
            get("/v2/models/store-1/versions/3/ready"),
            Action::Ready { version: Some(3) },
        ),
        (post("/v2/repository/models/store-1/load"), Action::Load),
        (post("/v2/repository/models/store-1/unload"), Action::Unload),
    ];
    for (route, action) in cases {
        assert_eq!(route, model("store-1", action));
    }
    // Percent-escapes are decoded before the id is judged, and the upstream path is
    // written from the decoded id.
    assert_eq!(
        post("/v2/models/a%2Db/infer"),
        model("a-b", Action::Infer { version: None })
    );
}

#[test]
fn every_action_maps_to_the_scorer_route_it_came_from() {
    let cases = [
        (Action::Infer { version: None }, "/v2/models/m/infer"),
        (
            Action::Infer { version: Some(7) },
            "/v2/models/m/versions/7/infer",
        ),
        (Action::Metadata { version: None }, "/v2/models/m"),
        (
            Action::Ready { version: Some(2) },
            "/v2/models/m/versions/2/ready",
        ),
        (Action::Load, "/v2/repository/models/m/load"),
        (Action::Unload, "/v2/repository/models/m/unload"),
        (Action::VersionStatus, "/v2/mm/models/m"),
        (Action::Refresh, "/v2/mm/models/m/refresh"),
        (Action::Pin, "/v2/mm/models/m/pin"),
        (Action::Unpin, "/v2/mm/models/m/unpin"),
        (Action::Publish { version: 4 }, "/v2/mm/models/m/versions/4"),
        (Action::CanaryShow, "/v2/mm/models/m/canary"),
        (Action::CanarySet, "/v2/mm/models/m/canary"),
        (Action::CanaryDrop, "/v2/mm/models/m/canary"),
        (Action::CanaryPromote, "/v2/mm/models/m/canary/promote"),
        (Action::ShadowSet, "/v2/mm/models/m/shadow"),
        (Action::ShadowDrop, "/v2/mm/models/m/shadow"),
        (Action::ShadowPromote, "/v2/mm/models/m/shadow/promote"),
        (
            Action::VersionDigest { version: 4 },
            "/v2/mm/models/m/versions/4",
        ),
        (Action::Explain, "/v2/mm/models/m/explain"),
    ];
    for (action, path) in cases {
        assert_eq!(action.path("m"), path, "{action:?}");
    }
    // The OIP routes are their own upstream path: classifying the path gives the action
    // back.
    for (action, path) in &cases[..6] {
        let method = if matches!(action, Action::Metadata { .. } | Action::Ready { .. }) {
            "GET"
        } else {
            "POST"
        };
        assert_eq!(classify(method, path, None, None), model("m", *action));
    }
}

#[test]
fn admin_flags_follow_the_action() {
    assert!(!Action::Infer { version: None }.admin());
    assert!(!Action::Metadata { version: None }.admin());
    assert!(Action::Load.admin() && Action::Unload.admin() && Action::Pin.admin());
    assert!(Action::Publish { version: 1 }.changes_versions());
    assert!(Action::Pin.changes_versions() && Action::Refresh.changes_versions());
    assert!(!Action::VersionStatus.changes_versions());
    assert!(!Action::Load.changes_versions());
    // A canary is what unversioned requests get: setting, dropping or promoting one makes
    // every scorer look at the store at once; showing it does not.
    for action in [Action::CanarySet, Action::CanaryDrop, Action::CanaryPromote] {
        assert!(action.admin() && action.changes_versions(), "{action:?}");
    }
    assert!(Action::CanaryShow.admin() && !Action::CanaryShow.changes_versions());
    // So is a shadow: the scorers read it from the store, and a promotion pins.
    for action in [Action::ShadowSet, Action::ShadowDrop, Action::ShadowPromote] {
        assert!(action.admin() && action.changes_versions(), "{action:?}");
        assert!(!action.is_upload(), "{action:?}");
    }
    // Reading a digest or an explanation is an admin call that changes nothing.
    for action in [Action::VersionDigest { version: 1 }, Action::Explain] {
        assert!(action.admin(), "{action:?}");
        assert!(
            !action.changes_versions() && !action.is_upload(),
            "{action:?}"
        );
    }
    assert!(Action::Publish { version: 1 }.is_upload());
    assert!(!Action::Pin.is_upload());
}

#[test]
fn bad_ids_and_paths_are_rejected_without_a_scorer() {
    for path in [
        "/v2/models/..%2F..%2Fetc/infer",
        "/v2/models//infer",
        "/v2/models/.hidden/infer",
        "/v2/repository/models/a%2Fb/load",
    ] {
        assert!(matches!(post(path), Route::Invalid(_)), "{path}");
    }
    assert_eq!(post("/v2/models/a/b/infer"), Route::NotFound);
    assert_eq!(
        classify("DELETE", "/v2/models/a", None, None),
        Route::NotFound
    );
    assert_eq!(get("/admin"), Route::NotFound);
    assert_eq!(get("/v2/repository/models/a/load"), Route::NotFound);
}

/// One version rule on every route: the scorer's (`manymodels_contract::parse_version`).
/// `versions/01` used to pass the proxy and be refused by the scorer.
#[test]
fn versions_follow_the_contract_rule_everywhere() {
    for bad in ["01", "0", "x", "-1", "99999999999999999999"] {
        for route in [
            post(&format!("/v2/models/a/versions/{bad}/infer")),
            get(&format!("/v2/models/a/versions/{bad}")),
            classify(
                "PUT",
                &format!("/v2/admin/models/a/versions/{bad}"),
                None,
                None,
            ),
            classify("POST", "/", Some("a"), Some(bad)),
        ] {
            assert!(
                matches!(&route, Route::Invalid(m) if m.contains("invalid model version")),
                "{bad}: {route:?}"
            );
        }
    }
}

#[test]
fn the_azure_ml_scoring_route_takes_the_model_from_a_header() {
    assert_eq!(
        classify("POST", "/", Some("store-7"), None),
        model("store-7", Action::Infer { version: None })
    );
    assert_eq!(
        classify("POST", "/score", Some(" store-7 "), Some("2")),
        model("store-7", Action::Infer { version: Some(2) })
    );
    // Without a model header the records name their models: the many-model route.
    assert_eq!(classify("POST", "/", None, None), Route::Batch);
    assert_eq!(classify("POST", "/score", Some("  "), None), Route::Batch);
    assert_eq!(classify("POST", "/v2/mm/batch", None, None), Route::Batch);
    assert_eq!(classify("GET", "/v2/mm/batch", None, None), Route::NotFound);
    // A version names one model's version: alone it is a mistake, not a batch.
    assert!(matches!(
        classify("POST", "/score", None, Some("2")),
        Route::Invalid(m) if m.contains(header::MODEL)
    ));
    assert!(matches!(
        classify("POST", "/", Some("../x"), None),
        Route::Invalid(_)
    ));
}

/// The paths an Azure ML online endpoint (scoring route `/`) forwards to the container:
/// `<scoring_uri minus /score>/v2/models/...` arrives as the OIP path itself; a client that
/// appends the OIP path to the whole scoring URI sends it under `/score`. Both name the
/// model in the path, with or without `x-mm-model` (the path wins).
#[test]
fn the_azure_ml_endpoint_paths_name_the_model() {
    let cases = [
        (
            "POST",
            "/v2/models/store-7/infer",
            Action::Infer { version: None },
        ),
        (
            "POST",
            "/score/v2/models/store-7/infer",
            Action::Infer { version: None },
        ),
        (
            "POST",
            "/score/v2/models/store-7/versions/2/infer",
            Action::Infer { version: Some(2) },
        ),
        (
            "GET",
            "/score/v2/models/store-7",
            Action::Metadata { version: None },
        ),
        (
            "GET",
            "/score/v2/models/store-7/ready",
            Action::Ready { version: None },
        ),
    ];
    for (method, path, action) in cases {
        assert_eq!(
            classify(method, path, None, None),
            model("store-7", action),
            "{path}"
        );
        assert_eq!(
            classify(method, path, Some("other"), Some("9")),
            model("store-7", action),
            "{path}: the path names the model, not the header"
        );
    }
    // Only the model routes are taken under `/score`; the id is judged as anywhere else.
    for path in [
        "/score/v2/health/ready",
        "/score/",
        "/scorex/v2/models/m/infer",
    ] {
        assert_eq!(classify("GET", path, None, None), Route::NotFound, "{path}");
    }
    assert!(matches!(
        post("/score/v2/models/..%2Fx/infer"),
        Route::Invalid(_)
    ));
}

#[test]
fn the_proxy_answers_health_and_metrics_and_forwards_admin_calls() {
    assert_eq!(get("/v2/health/live"), Route::Live);
    assert_eq!(get("/v2/health/ready"), Route::Ready);
    assert_eq!(get("/metrics"), Route::Metrics);
    assert_eq!(get("/status"), Route::Status);
    assert_eq!(get("/v2/mm/pool"), Route::PoolView);
    assert_eq!(
        get("/v2"),
        Route::AnyScorer {
            lists_models: false
        }
    );
    assert_eq!(
        post("/v2/repository/index"),
        Route::AnyScorer { lists_models: true }
    );
    assert_eq!(post("/v2/repository/index").model(), None);
    assert_eq!(
        classify("PUT", "/v2/admin/models/store-1/versions/3", None, None),
        model("store-1", Action::Publish { version: 3 })
    );
    assert_eq!(
        post("/v2/admin/models/store-1/pin"),
        model("store-1", Action::Pin)
    );
    assert_eq!(
        get("/v2/admin/models/store-1"),
        model("store-1", Action::VersionStatus)
    );
    // Canaries are the scorers' (in the store), forwarded like pins.
    for (method, tail, action) in [
        ("GET", "canary", Action::CanaryShow),
        ("PUT", "canary", Action::CanarySet),
        ("DELETE", "canary", Action::CanaryDrop),
        ("POST", "canary/promote", Action::CanaryPromote),
    ] {
        let route = classify(method, &format!("/v2/admin/models/s/{tail}"), None, None);
        assert_eq!(route, model("s", action));
        assert_eq!(route.model(), Some("s"));
    }
    // A shadow's changes are forwarded like a canary's; reading one is the pool's merge
    // of every scorer's counts, answered by the proxy.
    for (method, tail, action) in [
        ("PUT", "shadow", Action::ShadowSet),
        ("DELETE", "shadow", Action::ShadowDrop),
        ("POST", "shadow/promote", Action::ShadowPromote),
    ] {
        let route = classify(method, &format!("/v2/admin/models/s/{tail}"), None, None);
        assert_eq!(route, model("s", action));
        assert_eq!(route.model(), Some("s"));
    }
    assert_eq!(
        get("/v2/admin/models/s/shadow"),
        Route::ShadowModel { id: "s".into() }
    );
    assert_eq!(get("/v2/admin/models/s/shadow").model(), None);
    assert_eq!(get("/v2/admin/shadows"), Route::Shadows);
    assert!(matches!(
        get("/v2/admin/models/..%2Fx/shadow"),
        Route::Invalid(_)
    ));
    // A version's digest is a GET on the publish path; the explanation has its own.
    assert_eq!(
        get("/v2/admin/models/store-1/versions/3"),
        model("store-1", Action::VersionDigest { version: 3 })
    );
    assert_eq!(
        get("/v2/admin/models/store-1/explain"),
        model("store-1", Action::Explain)
    );
    for bad in ["0", "01", "x", ""] {
        assert!(
            matches!(
                get(&format!("/v2/admin/models/s/versions/{bad}")),
                Route::Invalid(_)
            ),
            "{bad}"
        );
    }
    for (method, tail) in [
        ("POST", "canary"),
        ("GET", "canary/promote"),
        ("POST", "shadow"),
        ("GET", "shadow/promote"),
        ("PUT", "shadow/promote"),
        ("POST", "explain"),
        ("DELETE", "versions/3"),
        ("POST", "versions/3"),
        ("GET", "explain/more"),
    ] {
        let route = classify(method, &format!("/v2/admin/models/s/{tail}"), None, None);
        assert_eq!(route, Route::NotFound, "{method} {tail}");
    }
    assert!(matches!(
        post("/v2/admin/models/..%2Fx/pin"),
        Route::Invalid(_)
    ));
    assert_eq!(
        classify("DELETE", "/v2/admin/models/store-1/pin", None, None),
        Route::NotFound
    );
}

#[test]
fn the_placement_route_is_local_and_checks_its_id() {
    assert_eq!(
        get("/v2/mm/pool/models/store-1"),
        Route::PoolModel {
            id: "store-1".into()
        }
    );
    assert_eq!(
        get("/v2/mm/pool/models/a%2Db"),
        Route::PoolModel { id: "a-b".into() }
    );
    // Local: it names no scorer route, so nothing is forwarded or counted for the model.
    assert_eq!(get("/v2/mm/pool/models/store-1").model(), None);
    for bad in ["..%2Fx", "", ".hidden", "a%2Fb"] {
        assert!(
            matches!(get(&format!("/v2/mm/pool/models/{bad}")), Route::Invalid(_)),
            "{bad}"
        );
    }
    assert_eq!(get("/v2/mm/pool/models/a/b"), Route::NotFound);
    assert_eq!(post("/v2/mm/pool/models/a"), Route::NotFound);
    assert_eq!(get("/v2/mm/pool/"), Route::NotFound);
}

/// `classify_grpc`'s answer when it is a route (a model header, or a call about no model).
fn grpc(path: &str, model: Option<&str>, version: Option<&str>) -> Route {
    match classify_grpc(path, model, version) {
        GrpcCall::Routed(route) => route,
        other => panic!("{path} {model:?}: {other:?}"),
    }
}

#[test]
fn grpc_calls_route_on_the_model_header_and_keep_their_path() {
    let infer = "/inference.GRPCInferenceService/ModelInfer";
    let route = grpc(infer, Some("store-7"), None);
    let Route::Model { id, action } = &route else {
        panic!("{route:?}");
    };
    assert_eq!(id, "store-7");
    assert_eq!(action.path(id), infer, "the path is never rewritten");
    assert!(!action.admin());
    // A version in metadata is checked here and read by the scorer (which never splits
    // a call naming a version); the path stays the call's.
    let Route::Model { action, .. } = grpc(infer, Some("store-7"), Some("3")) else {
        panic!();
    };
    assert_eq!(
        action,
        Action::Grpc {
            call: Call::ModelInfer,
            version: Some(3)
        }
    );
    assert_eq!(action.path("store-7"), infer);
    // A bad id or version in metadata is the proxy's 400.
    for (model, version) in [(Some("a/../b"), None), (Some("m"), Some("01"))] {
        assert!(
            matches!(grpc(infer, model, version), Route::Invalid(_)),
            "{model:?} {version:?}"
        );
    }
    // Loading is an admin call; calls about no model go to any scorer.
    let Route::Model { action, .. } = grpc(
        "/inference.GRPCInferenceService/RepositoryModelLoad",
        Some("m"),
        None,
    ) else {
        panic!();
    };
    assert!(action.admin() && !action.changes_versions());
    assert_eq!(
        grpc("/inference.GRPCInferenceService/ServerLive", None, None),
        Route::AnyScorer {
            lists_models: false
        }
    );
    assert_eq!(
        grpc(
            "/inference.GRPCInferenceService/RepositoryIndex",
            None,
            None
        ),
        Route::AnyScorer { lists_models: true }
    );
    assert_eq!(
        grpc(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            Some("m"),
            None
        ),
        Route::NotFound
    );
}

#[test]
fn grpc_calls_about_a_model_without_its_header_are_routed_by_their_message() {
    // No header (or a blank one): the model is read from the message, every call about
    // one model alike; calls about none never read their body.
    for call in Call::ALL {
        let path = format!("{}{}", grpc::PREFIX, call.method());
        for model in [None, Some("  ")] {
            let classified = classify_grpc(&path, model, Some("2"));
            if call.names_model() {
                assert_eq!(classified, GrpcCall::ModelInBody(call), "{call:?}");
            } else {
                assert!(matches!(classified, GrpcCall::Routed(_)), "{call:?}");
            }
        }
    }
    // The message's model by the header's rules; its version wins over the header's.
    assert_eq!(
        named_in_body(Call::ModelInfer, "store-7", Some("3"), Some("9")),
        model(
            "store-7",
            Action::Grpc {
                call: Call::ModelInfer,
                version: Some(3)
            }
        )
    );
    assert_eq!(
        named_in_body(Call::ModelReady, "store-7", Some(""), Some("9")),
        model(
            "store-7",
            Action::Grpc {
                call: Call::ModelReady,
                version: Some(9)
            }
        )
    );
    for (name, version) in [
        ("a/../b", None),
        ("", None),
        ("m", Some("v1")),
        ("m", Some("0")),
    ] {
        assert!(
            matches!(
                named_in_body(Call::ModelInfer, name, version, None),
                Route::Invalid(_)
            ),
            "{name:?} {version:?}"
        );
    }
}
