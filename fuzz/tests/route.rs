//! Fuzz target `route`: the proxy's request classification
//! (`manymodels_proxy::route::classify`, `Action::path`) and the contract's rules it
//! applies (`parse_version`, `valid_model_id`, `bearer`).
//!
//! Corpus files are `METHOD PATH` on the first line, then optional `x-mm-model: ...` and
//! `x-mm-model-version: ...` lines. Generated paths are built from route fragments,
//! percent escapes (good, broken, of `/`, NUL and invalid UTF-8), long ids and versions.
//! The property: no panic; a model route names a valid id and its upstream path is the
//! scorer's route for exactly that id (no escape survives into it); a bad request says why.

use manymodels_contract::{bearer, parse_version, valid_model_id};
use manymodels_fuzz::proptest::prelude::*;
use manymodels_fuzz::{generate, replay};
use manymodels_proxy::route::{Route, classify};

fn check(
    method: &str,
    path: &str,
    model: Option<&str>,
    version: Option<&str>,
) -> Result<(), String> {
    let route = classify(method, path, model, version);
    match &route {
        Route::Model { id, action } => {
            if !valid_model_id(id) {
                return Err(format!("{method} {path:?} routed to invalid id {id:?}"));
            }
            let upstream = action.path(id);
            let segments: Vec<&str> = upstream.split('/').collect();
            if !upstream.starts_with("/v2/")
                || !segments.contains(&id.as_str())
                || upstream.contains('%')
                || segments.iter().skip(1).any(|s| s.is_empty() || *s == "..")
            {
                return Err(format!("{method} {path:?} → upstream {upstream:?}"));
            }
        }
        Route::Invalid(message) if message.is_empty() => {
            return Err(format!("{method} {path:?}: a 400 without a reason"));
        }
        _ => {}
    }
    // The contract's rules agree with themselves.
    for text in [path, model.unwrap_or(""), version.unwrap_or("")] {
        if let Some(v) = parse_version(text)
            && (v == 0 || v.to_string() != text)
        {
            return Err(format!("parse_version({text:?}) = {v}"));
        }
        if valid_model_id(text) && (text.len() > 128 || text.contains(['/', '%', '\0'])) {
            return Err(format!("valid_model_id({text:?})"));
        }
        if let Some(key) = bearer(text)
            && (key.is_empty() || key.trim() != key)
        {
            return Err(format!("bearer({text:?}) = {key:?}"));
        }
    }
    Ok(())
}

fn parse_file(bytes: &[u8]) -> (String, String, Option<String>, Option<String>) {
    let text = String::from_utf8_lossy(bytes);
    let mut lines = text.lines();
    let first = lines.next().unwrap_or("");
    let (method, path) = first.split_once(' ').unwrap_or((first, ""));
    let (mut model, mut version) = (None, None);
    for line in lines {
        if let Some(v) = line.strip_prefix("x-mm-model: ") {
            model = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("x-mm-model-version: ") {
            version = Some(v.to_string());
        }
    }
    (method.into(), path.into(), model, version)
}

const FRAGMENTS: &[&str] = &[
    "/v2",
    "/models/",
    "/admin/models/",
    "/repository/models/",
    "/versions/",
    "/infer",
    "/ready",
    "/load",
    "/unload",
    "/canary",
    "/canary/promote",
    "/pin",
    "/unpin",
    "/refresh",
    "/",
    "//",
    "store-1",
    "a",
    "A.b_c-d",
    "..",
    ".",
    "-x",
    "%2F",
    "%2f",
    "%2E%2E",
    "%00",
    "\0",
    "%",
    "%4",
    "%zz",
    "%C3%A9",
    "%FF",
    "%2D",
    "1",
    "01",
    "0",
    "18446744073709551615",
    "18446744073709551616",
    "é",
    " ",
    "?q=1",
    "#f",
    "\u{202e}",
    "/health/live",
    "/mm/pool",
    "/status",
    "/score",
    "/metrics",
    "/repository/index",
];

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::collection::vec(prop::sample::select(FRAGMENTS), 0..10).prop_map(|f| f.concat()),
        1 => (prop::sample::select(&FRAGMENTS[..4]), "[a-z0-9]{120,140}", "(/[a-z0-9]{0,3}){0,3}")
            .prop_map(|(p, id, tail)| format!("/v2{p}{id}{tail}")),
        1 => any::<String>(),
    ]
}

fn header() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        prop::sample::select(FRAGMENTS).prop_map(str::to_string),
        "[ a-zA-Z0-9._%-]{0,12}",
        Just("Bearer  k1 ".to_string()),
        any::<String>(),
    ])
}

#[test]
fn route() {
    let files = replay("route", |_, bytes| {
        let (method, path, model, version) = parse_file(bytes);
        check(&method, &path, model.as_deref(), version.as_deref())
    });
    println!("fuzz route: {files} corpus files replayed");
    let method = prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "HEAD", "get", ""]);
    generate(
        "route",
        20_000,
        (method, path(), header(), header()),
        |(method, path, model, version)| check(method, &path, model.as_deref(), version.as_deref()),
    );
}
