//! Tests of the scorer's configuration: precedence, errors, secrets, the key table.

use super::*;
use crate::layer::testing::{assert_keys_are_the_fields, sources};

fn load(
    file: Option<&str>,
    env: &[(&str, &str)],
    sets: &[&str],
) -> Result<ScorerConfig, ConfigError> {
    let dir = std::env::temp_dir().join(format!("mm-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}.toml", file.map(str::len).unwrap_or(0)));
    if let Some(text) = file {
        std::fs::write(&path, text).unwrap();
    }
    ScorerConfig::load(&sources(file.map(|_| path.as_path()), env, sets))
}

#[test]
fn the_key_table_names_exactly_the_fields_and_its_defaults_are_valid() {
    assert_keys_are_the_fields::<raw::Raw>(KEYS, ENV_PREFIX);
    load(None, &[], &[]).unwrap();
    assert!(load(None, &[], &["warmup.max_fraction=1.5"]).is_err());
    assert!(load(None, &[], &["policy.half_life_requests=0"]).is_err());
}

#[test]
fn file_then_env_then_flags_override_in_order() {
    let file =
        "listen = \"127.0.0.1:9000\"\n[cache]\nbudget = \"1GiB\"\nmax_concurrent_loads = 2\n";
    let config = load(
        Some(file),
        &[
            ("MM_SCORER_CACHE_BUDGET", "64MiB"),
            ("MM_SCORER_LISTEN", "127.0.0.1:9001"),
        ],
        &["listen=127.0.0.1:9002"],
    )
    .unwrap();
    assert_eq!(config.cache.budget, ByteSize::mib(64));
    assert_eq!(config.cache.max_concurrent_loads.get(), 2);
    assert_eq!(config.listen.to_string(), "127.0.0.1:9002");
    // `auto` (the default) is the CPUs this process may use.
    let auto = load(
        None,
        &[("MM_SCORER_CACHE_MAX_CONCURRENT_LOADS", "auto")],
        &[],
    )
    .unwrap();
    assert_eq!(auto.cache.max_concurrent_loads, available_cpus());
    assert_eq!(
        load(None, &[], &[]).unwrap().cache.max_concurrent_loads,
        available_cpus()
    );
    assert!(load(None, &[], &["cache.max_concurrent_loads=often"]).is_err());
}

#[test]
fn a_previous_pool_key_is_a_secret_beside_a_current_one() {
    let config = load(
        None,
        &[("MM_SCORER_AUTH_POOL_KEY_PREVIOUS", "old-key-1")],
        &["auth.pool_key=new-key-2"],
    )
    .unwrap();
    assert_eq!(config.pool_key_previous.expose(), "old-key-1");
    assert!(!format!("{config:?}").contains("old-key-1"));
    let err = load(None, &[], &["auth.pool_key_previous=old-key-1"]).unwrap_err();
    assert!(err.to_string().contains("auth.pool_key_previous"), "{err}");
}

#[test]
fn errors_name_the_bad_key() {
    let err = load(Some("[cache]\nbudget = \"lots\"\n"), &[], &[]).unwrap_err();
    assert!(err.to_string().contains("cache.budget"), "{err}");
    let err = load(Some("[cache]\nbugdet = 1\n"), &[], &[]).unwrap_err();
    assert!(err.to_string().contains("bugdet"), "{err}");
    let err = load(None, &[("MM_SCORER_CACHE_MAX_CONCURRENT_LOADS", "0")], &[]).unwrap_err();
    assert!(
        err.to_string().contains("cache.max_concurrent_loads"),
        "{err}"
    );
    let err = load(None, &[], &["cache.nope=1"]).unwrap_err();
    assert!(err.to_string().contains("cache.nope"), "{err}");
    let err = load(None, &[], &["store.kind=s3"]).unwrap_err();
    assert!(err.to_string().contains("store.kind"), "{err}");
}

#[test]
fn azure_store_requires_a_container_and_redacts_its_key() {
    let err = load(None, &[], &["store.kind=azure", "store.azure.account=acct"]).unwrap_err();
    assert!(err.to_string().contains("store.azure.container"), "{err}");
    let config = load(
        None,
        &[("MM_SCORER_STORE_AZURE_ACCESS_KEY", "c2VjcmV0")],
        &[
            "store.kind=azure",
            "store.azure.account=acct",
            "store.azure.container=models",
            "store.azure.prefix=/team/a/",
        ],
    )
    .unwrap();
    let StoreConfig::Azure(azure) = &config.store else {
        panic!("expected azure store");
    };
    assert_eq!(azure.prefix, "team/a/");
    assert!(matches!(&azure.credential, AzureCredential::AccessKey(k) if k.expose() == "c2VjcmV0"));
    assert!(!format!("{config:?}").contains("c2VjcmV0"));
}

#[test]
fn docs_configuration_documents_every_key_with_its_env_var() {
    let page = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/configuration.md"
    ))
    .unwrap();
    let table = crate::markdown_table(KEYS, ENV_PREFIX);
    assert!(
        page.contains(&table),
        "docs/configuration.md's scorer key table is out of date: run `cargo xtask docs`"
    );
}

#[test]
fn the_weight_rule_charges_overhead_plus_a_multiple_of_the_file() {
    let config = load(
        None,
        &[],
        &[
            "cache.weight_overhead=100KiB",
            "cache.weight_per_file_byte=5",
        ],
    )
    .unwrap();
    assert_eq!(config.cache.weigh(1000), 100 * 1024 + 5000);
}

#[test]
fn tenant_shares_parse_and_bad_ones_name_the_key() {
    let config = load(
        None,
        &[(
            "MM_SCORER_TENANTS_SHARES",
            "b=b-:floor=0.5:cap=1.0, a=a-+scan-:cap=0.25",
        )],
        &[],
    )
    .unwrap();
    assert_eq!(
        config.cache.tenants,
        vec![
            TenantShare {
                name: "b".into(),
                prefixes: vec!["b-".into()],
                floor: 0.5,
                cap: 1.0,
            },
            TenantShare {
                name: "a".into(),
                prefixes: vec!["a-".into(), "scan-".into()],
                floor: 0.0,
                cap: 0.25,
            },
        ]
    );
    assert!(load(None, &[], &[]).unwrap().cache.tenants.is_empty());
    for (bad, why) in [
        ("b=b-:floor=0.6,a=a-:floor=0.5", "sum"),
        ("b=b-:floor=0.5:cap=0.4", "below its floor"),
        ("b=b-:cap=0", "cap"),
        ("b=b-:floor=1.5", "floor"),
        ("b=b-:weight=2", "unknown field"),
        ("b", "name=prefix"),
        ("b=", "prefix"),
        ("default=x", "name"),
        ("b=x,b=y", "twice"),
    ] {
        let error = load(None, &[("MM_SCORER_TENANTS_SHARES", bad)], &[])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("tenants.shares") && error.contains(why),
            "{bad}: {error}"
        );
    }
}

#[test]
fn the_batch_share_of_load_slots_is_at_least_one() {
    let slots = |loads: &str, share: &str| {
        load(
            None,
            &[],
            &[
                &format!("cache.max_concurrent_loads={loads}"),
                &format!("cache.batch_load_share={share}"),
            ],
        )
        .unwrap()
        .cache
        .batch_load_slots()
    };
    assert_eq!(slots("4", "0.5"), 2);
    assert_eq!(slots("3", "0.5"), 1);
    assert_eq!(slots("2", "0"), 1);
    assert_eq!(slots("2", "1"), 2);
    let error = load(None, &[], &["cache.batch_load_share=1.5"]).unwrap_err();
    assert!(
        error.to_string().contains("cache.batch_load_share"),
        "{error}"
    );
}
