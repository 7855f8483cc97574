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
            .contains("not both")
    );
    assert!(
        load(&[], &["pool.dns=s:1", "routing.load_factor=0.5"])
            .unwrap_err()
            .to_string()
            .contains("routing.load_factor")
    );
}

#[test]
fn readme_documents_every_key_with_its_env_var() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    assert!(
        readme.contains(&crate::markdown_table(KEYS, ENV_PREFIX)),
        "README.md's proxy key table is out of date: paste the output of `cargo xtask config-table`"
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
    let keys: Vec<&str> = config.api_keys.iter().map(Secret::expose).collect();
    assert_eq!(keys, ["k1", "k2", "file-key"]);
    assert!(!format!("{config:?}").contains("k1"));
    std::fs::remove_file(path).unwrap();
}
