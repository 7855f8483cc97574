//! Tests of the proxy's configuration: pools, checks, secrets, the key table.

use super::*;
use crate::layer::testing::{assert_keys_are_the_fields, sources};

fn load(env: &[(&str, &str)], sets: &[&str]) -> Result<ProxyConfig, ConfigError> {
    ProxyConfig::load(&sources(None, env, sets))
}

#[test]
fn the_key_table_names_exactly_the_fields_and_its_defaults_are_valid() {
    assert_keys_are_the_fields::<raw::Raw>(KEYS, ENV_PREFIX);
    load(&[], &["pool.dns=s:1"]).unwrap();
}

#[test]
fn scorers_come_from_a_comma_list_or_an_array() {
    let config = load(
        &[(
            "MM_PROXY_POOL_SCORERS",
            "127.0.0.1:8001, scorer-1.scorers:8001",
        )],
        &[],
    )
    .unwrap();
    assert_eq!(
        config.pool,
        PoolSource::Static(vec![
            "127.0.0.1:8001".into(),
            "scorer-1.scorers:8001".into()
        ])
    );
    let config = load(&[], &[r#"pool.scorers=["a:1","b:2"]"#]).unwrap();
    assert_eq!(
        config.pool,
        PoolSource::Static(vec!["a:1".into(), "b:2".into()])
    );
}

#[test]
fn a_pool_is_required_and_keys_are_checked() {
    assert!(
        load(&[], &[])
            .unwrap_err()
            .to_string()
            .contains("pool.scorers")
    );
    assert!(
        load(&[], &["pool.scorers=nonsense"])
            .unwrap_err()
            .to_string()
            .contains("host:port")
    );
    assert!(
        load(&[], &["pool.scorers=a:1", "pool.dns=b:2"])
            .unwrap_err()
            .to_string()
            .contains("not both pool.scorers and pool.dns")
    );
    assert!(
        load(&[], &["pool.dns=s:1", "routing.load_factor=0.5"])
            .unwrap_err()
            .to_string()
            .contains("routing.load_factor")
    );
}

#[test]
fn docs_configuration_documents_every_key_with_its_env_var() {
    let page = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/configuration.md"
    ))
    .unwrap();
    assert!(
        page.contains(&crate::markdown_table(KEYS, ENV_PREFIX)),
        "docs/configuration.md's proxy key table is out of date: run `cargo xtask docs`"
    );
}

#[test]
fn api_keys_are_secret_and_merge_with_a_key_file() {
    let path = std::env::temp_dir().join(format!("mm-keys-{}", std::process::id()));
    std::fs::write(&path, "# rotated weekly\nfile-key\n\n").unwrap();
    let file = format!("auth.api_keys_file={}", path.display());
    let config = load(
        &[("MM_PROXY_AUTH_API_KEYS", "k1,k2")],
        &["pool.dns=s:1", &file],
    )
    .unwrap();
    let keys: Vec<&str> = config.api_keys.iter().map(|k| k.key.expose()).collect();
    assert_eq!(keys, ["k1", "k2", "file-key"]);
    assert!(!format!("{config:?}").contains("k1"));
    std::fs::remove_file(path).unwrap();
}

#[test]
fn scoped_keys_come_from_env_vars_and_files_in_one_form() {
    let path = std::env::temp_dir().join(format!("mm-scoped-keys-{}", std::process::id()));
    std::fs::write(&path, "globex:g-secret:globex-|shared-\n").unwrap();
    let file = format!("auth.api_keys_file={}", path.display());
    let config = load(
        &[
            ("MM_PROXY_AUTH_API_KEYS", "plain,acme:a-secret:acme-"),
            ("MM_PROXY_AUTH_ADMIN_KEYS", "acme-ops:ops-secret:acme-"),
        ],
        &["pool.dns=s:1", &file],
    )
    .unwrap();
    let keys: Vec<(&str, &str, Vec<&str>)> = config
        .api_keys
        .iter()
        .map(|k| {
            let scope = k.scope.iter().map(String::as_str).collect();
            (k.name.as_str(), k.key.expose(), scope)
        })
        .collect();
    assert_eq!(
        keys,
        [
            ("unnamed", "plain", vec![]),
            ("acme", "a-secret", vec!["acme-"]),
            ("globex", "g-secret", vec!["globex-", "shared-"]),
        ]
    );
    let acme = &config.api_keys[1];
    assert!(acme.allows("acme-7") && !acme.allows("globex-7"));
    assert!(config.api_keys[2].allows("shared-1"));
    assert_eq!(config.admin_keys[0].name, "acme-ops");
    assert!(!format!("{config:?}").contains("secret\""));
    std::fs::remove_file(path).unwrap();
}

#[test]
fn a_name_given_twice_is_one_client_rotating_its_key() {
    let config = load(
        &[],
        &[
            "pool.dns=s:1",
            "auth.api_keys=acme:old-1:acme-,acme:new-2:acme-",
        ],
    )
    .unwrap();
    let names: Vec<(&str, &str)> = config
        .api_keys
        .iter()
        .map(|k| (k.name.as_str(), k.key.expose()))
        .collect();
    assert_eq!(names, [("acme", "old-1"), ("acme", "new-2")]);
    assert_eq!(
        ApiKey::find("new-2", &config.api_keys).unwrap().name,
        "acme"
    );
    assert_eq!(
        ApiKey::find("old-1", &config.api_keys).unwrap().name,
        "acme"
    );
}

#[test]
fn per_key_limits_and_priorities_name_configured_keys() {
    let config = load(
        &[
            ("MM_PROXY_AUTH_API_KEYS", "acme:a-1,etl:e-1,plain"),
            ("MM_PROXY_LIMITS_RATE", "acme=2.5,etl=100"),
            ("MM_PROXY_LIMITS_BURST", "etl=300"),
            ("MM_PROXY_LIMITS_INFLIGHT", "acme=4"),
            ("MM_PROXY_LIMITS_PRIORITY", "etl=batch"),
        ],
        &["pool.dns=s:1"],
    )
    .unwrap();
    let acme = config
        .key_settings
        .iter()
        .find(|s| s.name == "acme")
        .unwrap();
    assert_eq!(
        acme.rate,
        Some(RateLimit {
            per_second: 2.5,
            burst: 3
        }),
        "a burst of one second of the rate by default"
    );
    assert_eq!(acme.inflight, Some(4));
    assert_eq!(acme.priority, None);
    let etl = config
        .key_settings
        .iter()
        .find(|s| s.name == "etl")
        .unwrap();
    assert_eq!(etl.rate.unwrap().burst, 300);
    assert_eq!(etl.priority, Some(manymodels_contract::Priority::Batch));
    assert_eq!(config.key_settings.len(), 2);
    for (set, expected) in [
        ("limits.rate=globex=1", "`globex` is not the name of a key"),
        ("limits.rate=acme=0", "greater than 0"),
        ("limits.rate=acme", "expected `keyname=value`"),
        ("limits.burst=acme=5", "has a burst but no rate"),
        ("limits.inflight=acme=0", "at least 1"),
        ("limits.priority=acme=urgent", "`interactive` or `batch`"),
        ("limits.inflight=acme=1,acme=2", "given twice"),
    ] {
        let error = load(
            &[("MM_PROXY_AUTH_API_KEYS", "acme:a-1")],
            &["pool.dns=s:1", set],
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains(expected), "{set}: {error}");
    }
}

#[test]
fn a_previous_pool_key_needs_a_current_one() {
    let config = load(
        &[],
        &[
            "pool.dns=s:1",
            "auth.pool_key=new-1",
            "auth.pool_key_previous=old-1",
        ],
    )
    .unwrap();
    assert_eq!(config.pool_key_previous.expose(), "old-1");
    assert!(!format!("{config:?}").contains("old-1"));
    let error = load(&[], &["pool.dns=s:1", "auth.pool_key_previous=old-1"])
        .unwrap_err()
        .to_string();
    assert!(error.contains("auth.pool_key_previous"), "{error}");
}

#[test]
fn a_bad_key_entry_is_refused_without_echoing_the_key() {
    for (entry, expected) in [
        ("acme:", "entry 1: (`acme`) the key is empty"),
        (
            "a:k1:acme-,a:k2",
            "entry 2: (`a`) the name is used twice with different model-id prefixes",
        ),
        ("acme:hunter2:../", "each model-id prefix"),
        ("acme:hunter2:", "each model-id prefix"),
        ("bad name:hunter2", "a key name is"),
        ("a:b:c:hunter2", "expected `key`"),
    ] {
        let error = load(&[], &["pool.dns=s:1", &format!("auth.api_keys={entry}")])
            .unwrap_err()
            .to_string();
        assert!(error.contains(expected), "{entry}: {error}");
        assert!(error.contains("auth.api_keys"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }
}

#[test]
fn an_srv_pool_is_a_fully_qualified_name_and_an_optional_resolver_address() {
    let config = load(
        &[(
            "MM_PROXY_POOL_SRV",
            "_http._tcp.mm-scorer.serving.svc.cluster.local",
        )],
        &[],
    )
    .unwrap();
    assert_eq!(
        config.pool,
        PoolSource::Srv {
            name: "_http._tcp.mm-scorer.serving.svc.cluster.local.".into(),
            resolver: None,
        },
        "the name gets its trailing dot: no search domain is tried"
    );
    let config = load(
        &[],
        &[
            "pool.srv=_http._tcp.scorers.test.",
            "pool.resolver=127.0.0.1:5353",
        ],
    )
    .unwrap();
    assert_eq!(
        config.pool,
        PoolSource::Srv {
            name: "_http._tcp.scorers.test.".into(),
            resolver: Some("127.0.0.1:5353".parse().unwrap()),
        }
    );
    let ipv6 = load(&[], &["pool.srv=_http._tcp.s", "pool.resolver=[::1]:53"]).unwrap();
    assert!(matches!(ipv6.pool, PoolSource::Srv { resolver: Some(a), .. } if a.is_ipv6()));
}

#[test]
fn exactly_one_pool_source_and_a_resolver_only_with_srv() {
    let error = |sets: &[&str]| load(&[], sets).unwrap_err().to_string();
    for (sets, expected) in [
        (
            &["pool.scorers=a:1", "pool.srv=_http._tcp.s"][..],
            "`pool.srv`: set one of pool.scorers, pool.dns or pool.srv, not both pool.scorers and pool.srv",
        ),
        (
            &["pool.dns=a:1", "pool.srv=_http._tcp.s"][..],
            "not both pool.dns and pool.srv",
        ),
        (
            &["pool.srv=_http._tcp.s:8001"][..],
            "`pool.srv`: `_http._tcp.s:8001` is not a DNS name (an SRV name has no port",
        ),
        (&["pool.srv=a..b"][..], "is not a DNS name"),
        (&["pool.srv=a b"][..], "is not a DNS name"),
        (
            &["pool.srv=_http._tcp.s", "pool.resolver=kube-dns:53"][..],
            "`pool.resolver`: `kube-dns:53` is not ip:port",
        ),
        (
            &["pool.srv=_http._tcp.s", "pool.resolver=10.0.0.10"][..],
            "is not ip:port",
        ),
        (
            &["pool.dns=a:1", "pool.resolver=10.0.0.10:53"][..],
            "`pool.resolver`: applies to pool.srv only",
        ),
    ] {
        let message = error(sets);
        assert!(message.contains(expected), "{sets:?}: {message}");
    }
    let long = format!("pool.srv={}", vec!["a".repeat(63); 4].join("."));
    assert!(
        error(&[&long]).contains("is not a DNS name"),
        "254 characters"
    );
}

#[test]
fn batch_templates_are_parsed_and_a_key_may_have_its_own() {
    let config = load(
        &[("MM_PROXY_AUTH_API_KEYS", "acme:k1:acme-,globex:k2")],
        &[
            "pool.dns=s:1",
            "batch.id_template={store}_{brand}_{model_type}",
            "batch.key_templates=acme=acme-{store}",
        ],
    )
    .unwrap();
    let fill = |key: Option<&str>| {
        config
            .batch
            .template(key)
            .unwrap()
            .fill(|f| Some(if f == "store" { "S1" } else { "x" }))
            .unwrap()
    };
    assert_eq!(fill(Some("acme")), "acme-S1");
    assert_eq!(fill(Some("globex")), "S1_x_x");
    assert_eq!(fill(None), "S1_x_x");
    let err = |sets: &[&str]| {
        let mut all = vec!["pool.dns=s:1"];
        all.extend_from_slice(sets);
        load(&[("MM_PROXY_AUTH_API_KEYS", "acme:k1")], &all)
            .unwrap_err()
            .to_string()
    };
    assert!(err(&["batch.id_template=plain"]).contains("names no field"));
    assert!(err(&["batch.key_templates=nobody={a}"]).contains("not the name of a key"));
    assert!(err(&["batch.key_templates=acme"]).contains("keyname={template}"));
    assert!(err(&["batch.max_records=0"]).contains("batch.max_records"));
    assert!(
        load(&[], &["pool.dns=s:1"])
            .unwrap()
            .batch
            .id_template
            .is_none()
    );
}
