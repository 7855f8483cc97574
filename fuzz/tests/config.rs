//! Fuzz target `config`: loading `ScorerConfig` and `ProxyConfig` from a TOML file,
//! environment variables and `--set` pairs (`manymodels_config::Sources`), and the unit
//! parsers (`parse_bytes`, `parse_duration`).
//!
//! Corpus: `*.toml` files are configuration files (the helm chart's and README's among
//! them), `*.sets` files hold one `--set` pair a line. Generated inputs set the real keys
//! (from the `KEYS` tables) to hostile values: huge, negative, NaN, wrong types, nested
//! tables, broken TOML. The property: no panic; a refusal names the key or the file; a
//! secret's value never appears in an error or in the loaded config's debug output.

use std::path::PathBuf;

use manymodels_config::proxy::ProxyConfig;
use manymodels_config::scorer::ScorerConfig;
use manymodels_config::{Sources, parse_bytes, parse_duration};
use manymodels_fuzz::proptest::prelude::*;
use manymodels_fuzz::{generate, replay};

const MARKER: &str = "s3cr3t-marker";

fn file_path() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-config");
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir.join("config.toml")
}

fn check(file: Option<&str>, env: &[(String, String)], sets: &[String]) -> Result<(), String> {
    let path = file_path();
    if let Some(text) = file {
        std::fs::write(&path, text).map_err(|e| e.to_string())?;
    }
    let sources = Sources {
        file: file.map(|_| path.as_path()),
        env: env.to_vec(),
        sets: sets.to_vec(),
    };
    let outcomes = [
        ScorerConfig::load(&sources).map(|c| format!("{c:?}")),
        ProxyConfig::load(&sources).map(|c| format!("{c:?}")),
    ];
    for outcome in outcomes {
        let text = match outcome {
            Ok(debug) => debug,
            Err(e) => {
                let message = e.to_string();
                if !(message.starts_with("config key `") || message.starts_with("config file ")) {
                    return Err(format!("an error that names no key or file: {message}"));
                }
                message
            }
        };
        if text.contains(MARKER) {
            return Err(format!("a secret printed: {text}"));
        }
    }
    for set in sets {
        let value = set.split_once('=').map_or(set.as_str(), |(_, v)| v);
        let _ = parse_bytes(value);
        let _ = parse_duration(value);
    }
    Ok(())
}

fn keys() -> Vec<(&'static str, bool)> {
    manymodels_config::scorer::KEYS
        .iter()
        .chain(manymodels_config::proxy::KEYS)
        .map(|k| (k.key, k.secret))
        .collect()
}

fn value() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        prop::sample::select(vec![
            "0",
            "-1",
            "1",
            "4294967296",
            "18446744073709551616",
            "9223372036854775807",
            "1e400",
            "nan",
            "inf",
            "-inf",
            "1.5",
            "true",
            "\"\"",
            "\"x\"",
            "[]",
            "[1, {a = 2}]",
            "{}",
            "{ x = 1 }",
            "512MiB",
            "1.5GiB",
            "-1MiB",
            "1e30TiB",
            "18446744073709551615B",
            "99999999999999999999h",
            "1e300s",
            "-5s",
            "0.000001us",
            "5µs",
            "NaNs",
            "30s",
            "auto",
            "off",
            "json",
            "local",
            "azure",
            "0.0.0.0:8001",
            "[::1]:0",
            "256.1.1.1:1",
            "a,b,,c",
            ",",
            "\"a\\u0000b\"",
            "'''",
            "\"\"\"",
            "=",
            "#",
        ])
        .prop_map(str::to_string),
        "[ -~]{0,16}",
        any::<String>(),
    ]
}

#[derive(Clone, Debug)]
struct Input {
    file: Option<String>,
    env: Vec<(String, String)>,
    sets: Vec<String>,
}

fn toml_text(pairs: &[((&'static str, bool), String)]) -> String {
    let mut out = String::new();
    for ((key, secret), value) in pairs {
        let value = if *secret {
            format!("\"{MARKER}\"")
        } else {
            value.clone()
        };
        out.push_str(&format!("{key} = {value}\n"));
    }
    out
}

#[test]
fn config() {
    let files = replay("config", |name, bytes| {
        let text = String::from_utf8_lossy(bytes);
        if name.ends_with(".sets") {
            let sets: Vec<String> = text.lines().map(str::to_string).collect();
            check(None, &[], &sets)
        } else {
            check(Some(&text), &[], &[])
        }
    });
    println!("fuzz config: {files} corpus files replayed");
    let keys = keys();
    let pair = (prop::sample::select(keys), value());
    let pair = move || pair.clone();
    let strategy = (
        prop::option::of(prop::collection::vec(pair(), 0..6)),
        prop::collection::vec(pair(), 0..3),
        prop::collection::vec(pair(), 0..4),
        any::<bool>(),
    )
        .prop_map(|(file, env, sets, bare)| Input {
            file: file.map(|pairs: Vec<_>| toml_text(&pairs)),
            env: env
                .into_iter()
                .map(|((key, secret), v)| {
                    let name = format!("MM_SCORER_{}", key.replace(['.', '-'], "_").to_uppercase());
                    (name, if secret { MARKER.to_string() } else { v })
                })
                .collect(),
            sets: sets
                .into_iter()
                .map(|((key, secret), v)| match (secret, bare) {
                    (true, _) => format!("{key}={MARKER}"),
                    (false, true) => v,
                    (false, false) => format!("{key}={v}"),
                })
                .collect(),
        });
    generate("config", 1_500, strategy, |input| {
        check(input.file.as_deref(), &input.env, &input.sets)
    });
}
