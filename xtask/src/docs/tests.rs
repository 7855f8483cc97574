use std::path::{Path, PathBuf};

use super::metrics::{Registration, const_literals, registrations};
use super::*;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn committed_region(table: Table) -> String {
    let page = std::fs::read_to_string(root().join(table.page())).unwrap();
    split_region(&page, table).unwrap().1.to_string()
}

#[test]
fn docs_configuration_md_is_the_config_table_of_the_code() {
    assert!(
        committed_region(Table::Config) == Table::Config.render(&root()).unwrap(),
        "docs/configuration.md's tables differ from config/src/*/keys.rs: run `cargo xtask docs`"
    );
}

#[test]
fn docs_metrics_md_is_the_metrics_table_of_the_code() {
    assert!(
        committed_region(Table::Metrics) == Table::Metrics.render(&root()).unwrap(),
        "docs/metrics.md's tables differ from the metrics the code registers: run `cargo xtask docs`"
    );
}

/// `# HELP` and `# TYPE` of every family in a Prometheus text exposition.
fn families(text: &str) -> Vec<(String, String, String)> {
    let mut help = std::collections::BTreeMap::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap();
            help.insert(name.to_string(), text.replace("\\\\", "\\"));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            out.push((name.to_string(), kind.to_string(), help[name].clone()));
        }
    }
    out
}

/// What the parser reads from the source is what a real `Metrics` registers: every family
/// the registry renders (a labelled one only once it has a value) is found once, with the
/// same type and help, and its samples carry the label names the parser read.
fn check_parsed_against_rendered(file: &str) {
    let source = std::fs::read_to_string(root().join(file)).unwrap();
    let parsed = registrations(&source).unwrap();
    let text = if file.starts_with("scorer/") {
        manymodels_scorer::metrics::Metrics::new(1).render()
    } else {
        manymodels_proxy::metrics::Metrics::new().render()
    };
    let rendered = families(&text);
    assert!(!rendered.is_empty());
    for (name, kind, help) in &rendered {
        let found: Vec<&Registration> = parsed.iter().filter(|r| &r.name == name).collect();
        assert_eq!(found.len(), 1, "{name} rendered, registered once in {file}");
        assert_eq!(&found[0].kind, kind, "{name}'s type");
        assert_eq!(&found[0].help, help, "{name}'s help");
        let prefix = format!("{name}{{");
        for sample in text.lines().filter(|l| l.starts_with(&prefix)) {
            for label in &found[0].labels {
                assert!(
                    sample.contains(&format!("{label}=\"")),
                    "{name}: label {label} parsed but not in {sample}"
                );
            }
        }
    }
}

#[test]
fn the_scorer_registrations_parsed_are_those_a_scorer_renders() {
    check_parsed_against_rendered("scorer/src/metrics.rs");
}

#[test]
fn the_proxy_registrations_parsed_are_those_a_proxy_renders() {
    check_parsed_against_rendered("proxy/src/metrics.rs");
}

#[test]
fn registrations_are_read_whatever_the_layout() {
    let source = r#"
        fn new(registry: Registry) {
            let a = registry.counter("a_total", "A \"quoted\" thing.");
            let b = registry
                .counter_vec(
                    "b_total",
                    "B by kind.",
                    &["kind", "code"],
                );
            let c = registry.histogram("c_seconds", "Time.", exponential_buckets(0.1, 2.0, 3));
            let d = other.counter(name, "not a literal name");
        }
    "#;
    let found = registrations(source).unwrap();
    let names: Vec<_> = found.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["a_total", "b_total", "c_seconds"]);
    assert_eq!(found[0].help, "A \"quoted\" thing.");
    assert_eq!(found[1].labels, ["kind", "code"]);
    assert_eq!(found[2].kind, "histogram");
}

/// The values `label` of `metric` has in a Prometheus text exposition.
fn initial_values(text: &str, metric: &str, label: &str) -> Vec<String> {
    let mut values = Vec::new();
    let needle = format!("{label}=\"");
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(metric).and_then(|r| r.strip_prefix('{')) else {
            continue;
        };
        if let Some(start) = rest.find(&needle) {
            let value = &rest[start + needle.len()..];
            if let Some(end) = value.find('"') {
                let value = value[..end].to_string();
                if !values.contains(&value) {
                    values.push(value);
                }
            }
        }
    }
    values
}

#[test]
fn initial_values_are_read_from_the_exposition() {
    let text = "# HELP x_total X.\n# TYPE x_total counter\nx_total{arm=\"a\",code=\"1\"} 0\nx_total{arm=\"b\",code=\"1\"} 0\nx_total_other{arm=\"c\"} 0\n";
    assert_eq!(initial_values(text, "x_total", "arm"), ["a", "b"]);
}

/// The canary arms the table lists (read from `CANARY_ARMS` in the source) are the ones a
/// real scorer registers.
#[test]
fn the_canary_arms_read_from_the_source_are_the_registered_ones() {
    let mut listed = const_literals(&root().join("scorer/src/metrics.rs"), "CANARY_ARMS").unwrap();
    let rendered = manymodels_scorer::metrics::Metrics::new(1).render();
    let mut registered = initial_values(&rendered, "mm_scorer_canary_requests_total", "arm");
    listed.sort();
    registered.sort();
    assert_eq!(listed, registered);
    assert_eq!(listed.len(), 2);
}

#[test]
fn a_region_is_replaced_between_its_markers_and_nothing_else() {
    let page = format!(
        "# Title\n\nprose\n\n{}\nold\n{}\n\nmore prose\n",
        Table::Config.begin(),
        Table::Config.end()
    );
    let updated = replace_region(&page, Table::Config, "new\n").unwrap();
    assert_eq!(
        updated,
        format!(
            "# Title\n\nprose\n\n{}\nnew\n{}\n\nmore prose\n",
            Table::Config.begin(),
            Table::Config.end()
        )
    );
    assert!(replace_region("no markers", Table::Config, "x").is_err());
}
