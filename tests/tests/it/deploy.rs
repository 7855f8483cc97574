//! The deployment files, checked offline with the real tools (`tests/deploy_check.py`):
//! the Helm chart linted and rendered by Helm's own SDK for the default values and three
//! realistic values files, every object through `kubernetes-validate --strict`, bad values
//! rejected by the schema, the pool key and NetworkPolicy checks (both workloads read one
//! Secret; the policies match the pods' labels and port), the Azure ML YAML loaded by
//! `azure-ai-ml`; then the scorer and proxy configuration the chart renders is parsed by
//! the same config crate the binaries use, with the environment variables the chart sets,
//! so chart and binaries cannot drift; the Azure ML proxy's environment too, which must find
//! the scorers as the chart's proxies do. The proxies find the scorers through the headless
//! Service's SRV records (which publish not-ready pods), or the pods' static names when
//! asked; an autoscaled StatefulSet gets no `replicas` from the chart.

use std::path::Path;
use std::process::Command;

use manymodels_config::proxy::{PoolSource, ProxyConfig};
use manymodels_config::scorer::{ScorerConfig, StoreConfig};
use manymodels_config::{Config, LogFormat, Sources};
use manymodels_tests::{TempDir, root};
use serde_json::Value;

/// The environment the chart gives a container, with stand-in values for secrets. A pool or
/// metrics key stands in as `<Secret>/<key>`, so two containers get the same value exactly
/// when the chart points them at the same Secret key; other keys stand in as two keys.
fn env_of(case: &Path, component: &str) -> Vec<(String, String)> {
    std::fs::read_to_string(case.join(format!("{component}.env")))
        .unwrap_or_default()
        .lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            let mut fields = line.split('\t');
            let name = fields.next().unwrap_or_default();
            let secret: Vec<&str> = fields.collect();
            let value = match name {
                "MM_SCORER_NAME" => "mm-manymodels-scorer-0".to_string(),
                _ if name.ends_with("_POOL_KEY")
                    || name.ends_with("_POOL_KEY_PREVIOUS")
                    || name.ends_with("_METRICS_KEYS") =>
                {
                    assert_eq!(secret.len(), 2, "{name} must come from a Secret");
                    secret.join("/")
                }
                _ => "key-one,key-two".to_string(),
            };
            (name.to_string(), value)
        })
        .collect()
}

/// A component's configuration as its pod gets it: the rendered `{component}.toml` and the
/// environment variables the chart sets, loaded the way the binary loads it.
fn rendered<C: Config>(case: &Path, component: &str) -> C {
    let file = case.join(format!("{component}.toml"));
    let env = env_of(case, component);
    C::load(&Sources {
        file: Some(&file),
        env,
        sets: Vec::new(),
    })
    .unwrap_or_else(|e| panic!("{}: {component}.toml is not valid: {e}", case.display()))
}

#[test]
fn the_chart_and_the_azure_ml_yaml_pass_the_real_tools_and_render_configs_the_binaries_accept() {
    let out = TempDir::new("deploy");
    let output = Command::new("python3")
        .arg(root().join("tests/deploy_check.py"))
        .arg(root())
        .arg(out.path())
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "deploy_check.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let cases = summary["cases"].as_object().unwrap();
    for case in ["default", "dev", "azure-wi", "large"] {
        assert!(cases.contains_key(case), "case {case} missing: {summary}");
    }
    assert_eq!(summary["rejected"].as_array().unwrap().len(), 13);
    assert_eq!(
        summary["refused"],
        serde_json::json!([
            "service monitor without a metrics key",
            "static pool with an autoscaled StatefulSet",
            "ScaledObject without a Prometheus address"
        ])
    );
    // The KEDA ScaledObject: only with scorer autoscaling and KEDA on, and it passed
    // KEDA's own schema (which refused broken copies of it).
    assert_eq!(summary["scaled_objects"]["scorer-autoscaled"], true);
    assert_eq!(
        summary["scaled_objects"]["scorer-autoscaled-by-another"],
        false
    );
    assert_eq!(summary["scaled_objects"]["default"], false);
    assert_eq!(cases["scorer-autoscaled"]["ScaledObject"], 1);
    assert_eq!(summary["keda_schema_checked"], 1);
    assert_eq!(summary["aml"]["type"], "KubernetesOnlineDeployment");
    assert_eq!(summary["dockerfiles"], 2, "both Dockerfiles pass hadolint");
    assert_eq!(cases["azure-wi"]["ServiceMonitor"], 2);
    assert_eq!(cases["large"]["HorizontalPodAutoscaler"], 1);

    // The pool key: the chart makes the Secret (default, dev, large) or takes the user's
    // (azure-wi); proxies and scorers read the same Secret key (deploy_check.py compares the
    // two secretKeyRefs; the configs below compare the values the binaries get).
    let keys = &summary["keys"];
    for case in ["default", "dev", "large"] {
        assert_eq!(
            keys[case]["pool_key"],
            serde_json::json!(["mm-manymodels-pool-key", "pool-key"]),
            "{case}"
        );
        assert_eq!(
            cases[case]["Secret"], 2,
            "{case}: pool and metrics key Secrets"
        );
    }
    assert_eq!(
        keys["azure-wi"]["pool_key"],
        serde_json::json!(["manymodels-pool-key", "key"])
    );
    assert!(
        cases["azure-wi"].get("Secret").is_none(),
        "an existingSecret is not rendered"
    );
    // NetworkPolicies are on by default (deploy_check.py checks their selectors and ports
    // against the pods, and kubernetes-validate their schema), off when switched off, and
    // one more for the proxies when their clients are named.
    for case in ["default", "dev", "azure-wi", "large"] {
        assert_eq!(cases[case]["NetworkPolicy"], 1, "{case}: the scorer policy");
    }
    assert!(cases["network-policy-off"].get("NetworkPolicy").is_none());
    assert_eq!(cases["proxy-ingress-restricted"]["NetworkPolicy"], 2);

    // Each case's rendered configuration, parsed the way the binaries parse it.
    // budget = (memory limit - fixed) / 1.1, the bound the burst test measures.
    let expected_budget_mib = [
        ("default", (4096 - 232) * 10 / 11),
        ("dev", (1024 - 256) * 10 / 11),
        ("azure-wi", (8192 - 232) * 10 / 11),
        ("large", (16384 - 232) * 10 / 11),
    ];
    for (case, budget_mib) in expected_budget_mib {
        let dir = out.path().join(case);
        let scorer: ScorerConfig = rendered(&dir, "scorer");
        assert_eq!(
            scorer.cache.budget.bytes(),
            budget_mib * 1024 * 1024,
            "{case}: cache budget must be (memoryMiB - fixedMemoryMiB) / 1.1"
        );
        assert_eq!(scorer.listen.port(), 8001);
        assert_eq!(scorer.name, "mm-manymodels-scorer-0");
        match (case, &scorer.store) {
            ("default" | "dev", StoreConfig::Local { path }) => {
                assert_eq!(path, Path::new("/models"))
            }
            ("azure-wi" | "large", StoreConfig::Azure(azure)) => {
                assert_eq!(azure.account, "contosomodels")
            }
            (_, other) => panic!("{case}: unexpected store {other:?}"),
        }
        let proxy: ProxyConfig = rendered(&dir, "proxy");
        assert_eq!(
            proxy.pool,
            PoolSource::Srv {
                name: SRV_NAME.into(),
                resolver: None
            },
            "{case}: the proxy follows the scorers' SRV records"
        );
        assert_eq!(
            summary["membership"][case]["publish_not_ready"], true,
            "{case}: starting scorers are discovered, and warm, before they are ready"
        );
        // Keys from the Secret reach both: the proxy's API and admin keys, the scorer's
        // admin keys (so its admin routes are closed).
        let has_auth = case == "azure-wi" || case == "large";
        assert_eq!(proxy.api_keys.len(), if has_auth { 2 } else { 0 }, "{case}");
        assert_eq!(
            scorer.admin_keys.len(),
            if has_auth { 2 } else { 0 },
            "{case}"
        );
        // The pool key reaches both from the same Secret key, and the scorer has a metrics
        // key of its own (the one the ServiceMonitor scrapes with).
        assert!(
            !scorer.pool_key.expose().is_empty(),
            "{case}: scorer pool key"
        );
        assert_eq!(
            scorer.pool_key.expose(),
            proxy.pool_key.expose(),
            "{case}: proxy and scorer must read the pool key from the same Secret key"
        );
        assert_eq!(scorer.metrics_keys.len(), 1, "{case}: one metrics key");
        assert_ne!(
            scorer.metrics_keys[0].expose(),
            scorer.pool_key.expose(),
            "{case}: the metrics key is not the pool key"
        );
        assert!(scorer.shutdown_grace.as_secs() >= 1);
        // Both log one JSON object per line, for the cluster's log collector.
        assert_eq!(
            scorer.log.format,
            LogFormat::Json,
            "{case}: scorer log format"
        );
        assert_eq!(
            proxy.log.format,
            LogFormat::Json,
            "{case}: proxy log format"
        );
    }

    // Pool membership beyond the default: the static list (the same names the SRV records
    // give, so switching moves no model), and an autoscaled StatefulSet whose replicas the
    // chart leaves to the autoscaler.
    let dir = out.path().join("static-pool");
    let proxy: ProxyConfig = rendered(&dir, "proxy");
    let replicas: usize = std::fs::read_to_string(dir.join("scorer.replicas"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(replicas, 3);
    let names: Vec<String> = (0..replicas)
        .map(|i| {
            format!("mm-manymodels-scorer-{i}.mm-manymodels-scorer.serving.svc.cluster.local:8001")
        })
        .collect();
    assert_eq!(proxy.pool, PoolSource::Static(names));
    let dir = out.path().join("scorer-autoscaled");
    let proxy: ProxyConfig = rendered(&dir, "proxy");
    assert_eq!(
        proxy.pool,
        PoolSource::Srv {
            name: SRV_NAME.into(),
            resolver: Some("10.0.0.10:53".parse().unwrap()),
        }
    );
    assert_eq!(proxy.pool_refresh, std::time::Duration::from_secs(2));
    assert_eq!(
        summary["membership"]["scorer-autoscaled"]["replicas"],
        Value::Null,
        "no replicas for helm upgrade to reset"
    );
    assert_eq!(summary["membership"]["default"]["replicas"], 3);

    // The Azure ML deployment's proxy, loaded from the environment Azure ML gives it (the
    // pool key, passed at create time, stands in): it finds the scorers exactly as the
    // chart's proxies do, so both rank the same scorers for a model, and it listens on the
    // port Azure ML probes and scores on.
    let aml = &summary["aml"];
    let mut env: Vec<(String, String)> = aml["environment_variables"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, value)| (name.clone(), value.as_str().unwrap().to_string()))
        .collect();
    env.push(("MM_PROXY_AUTH_POOL_KEY".into(), "stand-in".into()));
    let aml_proxy = ProxyConfig::load(&Sources {
        file: None,
        env,
        sets: Vec::new(),
    })
    .unwrap_or_else(|e| {
        panic!("deploy/aml/deployment.yml: the proxy refuses its environment: {e}")
    });
    let chart_proxy: ProxyConfig = rendered(&out.path().join("default"), "proxy");
    assert_eq!(
        aml_proxy.pool, chart_proxy.pool,
        "the Azure ML proxy must find the scorers as the chart's proxies do"
    );
    assert_eq!(
        aml["route_ports"],
        serde_json::json!([aml_proxy.listen.port()]),
        "Azure ML's routes must reach the proxy's port"
    );
}

/// The SRV name of the scorers' port named `http` for release `mm` in namespace `serving`.
const SRV_NAME: &str = "_http._tcp.mm-manymodels-scorer.serving.svc.cluster.local.";

/// Renders the chart with `values` (JSON) through Helm's SDK and writes what
/// `deploy_check.py` writes for a case: `scorer.toml`, `proxy.toml` and each workload's
/// `MM_` environment (`{component}.env`) in `dir`; `Err` with Helm's message when the chart
/// refuses the values.
fn render_case(dir: &Path, values: &str) -> Result<(), String> {
    const SCRIPT: &str = r#"
import json, pathlib, sys, yaml, helm_python
chart_dir, values, out = sys.argv[1], json.loads(sys.argv[2]), pathlib.Path(sys.argv[3])
chart = helm_python.Chart.load(chart_dir)
if helm_python.lint(chart_dir)["errors"]:
    sys.exit("lint: " + str(helm_python.lint(chart_dir)))
chart.validate_schema(values)
try:
    rendered = chart.render(values, name="mm", namespace="serving")
except Exception as error:
    sys.exit(str(error))
for template, text in rendered.items():
    if template.endswith("NOTES.txt"):
        continue
    for obj in yaml.safe_load_all(text):
        if not obj or obj.get("kind") not in ("ConfigMap", "Deployment", "StatefulSet"):
            continue
        if obj["kind"] == "ConfigMap":
            for name in ("scorer.toml", "proxy.toml"):
                if name in obj.get("data", {}):
                    (out / name).write_text(obj["data"][name])
            continue
        component = "scorer" if obj["kind"] == "StatefulSet" else "proxy"
        lines = []
        for container in obj["spec"]["template"]["spec"]["containers"]:
            for env in container.get("env", []):
                if env["name"].startswith("MM_"):
                    ref = env.get("valueFrom", {}).get("secretKeyRef")
                    lines.append("\t".join([env["name"], ref["name"], ref["key"]] if ref else [env["name"]]))
        (out / f"{component}.env").write_text("\n".join(lines))
        (out / f"{component}.checksum").write_text(
            obj["spec"]["template"]["metadata"]["annotations"]["checksum/keys"])
"#;
    let output = Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(root().join("helm/manymodels"))
        .arg(values)
        .arg(dir)
        .output()
        .expect("python3 runs");
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).to_string())
    }
}

/// A pool-key rotation as docs/operating.md describes it: the new key goes in a new field of
/// the user's Secret, so no field a running pod reads is edited in place; the upgrade that
/// starts it points `key` at the new field and `previousKey` at the old one, and both
/// workloads then read the current and the previous key from the same Secret keys (so every
/// proxy can talk to every scorer, old or new, while they roll, and a pod of the old spec
/// still reads the old key from its unchanged field), and roll (the keys' checksum changes);
/// the upgrade that ends it keeps `key` on the new field and renders no previous key. A
/// chart-made Secret cannot hold a previous key: refused.
#[test]
fn a_pool_key_rotation_gives_both_workloads_the_current_and_the_previous_key() {
    let out = TempDir::new("deploy-rotation");
    let before = out.path().join("before");
    let during = out.path().join("during");
    let after = out.path().join("after");
    for dir in [&before, &during, &after] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let secret = r#"{"auth": {"poolKey": {"existingSecret": "pool""#;
    render_case(&before, &format!("{secret}}}}}}}")).unwrap();
    // --set auth.poolKey.key=pool-key-2,auth.poolKey.previousKey=pool-key
    render_case(
        &during,
        &format!(r#"{secret}, "key": "pool-key-2", "previousKey": "pool-key"}}}}}}"#),
    )
    .unwrap();
    // --set auth.poolKey.key=pool-key-2,auth.poolKey.previousKey=
    render_case(
        &after,
        &format!(r#"{secret}, "key": "pool-key-2", "previousKey": ""}}}}}}"#),
    )
    .unwrap();
    let scorer: ScorerConfig = rendered(&before, "scorer");
    let proxy: ProxyConfig = rendered(&before, "proxy");
    assert_eq!(scorer.pool_key.expose(), "pool/pool-key");
    assert_eq!(proxy.pool_key.expose(), "pool/pool-key");
    assert!(proxy.pool_key_previous.is_empty());
    let scorer: ScorerConfig = rendered(&during, "scorer");
    let proxy: ProxyConfig = rendered(&during, "proxy");
    assert_eq!(scorer.pool_key.expose(), "pool/pool-key-2");
    assert_eq!(proxy.pool_key.expose(), "pool/pool-key-2");
    assert_eq!(
        scorer.pool_key_previous.expose(),
        "pool/pool-key",
        "the previous key is the old pods' own, unedited field"
    );
    assert_eq!(proxy.pool_key_previous.expose(), "pool/pool-key");
    let scorer: ScorerConfig = rendered(&after, "scorer");
    let proxy: ProxyConfig = rendered(&after, "proxy");
    assert_eq!(scorer.pool_key.expose(), "pool/pool-key-2");
    assert_eq!(proxy.pool_key.expose(), "pool/pool-key-2");
    assert!(scorer.pool_key_previous.is_empty(), "the rotation ended");
    assert!(proxy.pool_key_previous.is_empty(), "the rotation ended");
    let checksum = |dir: &Path, component: &str| {
        std::fs::read_to_string(dir.join(format!("{component}.checksum"))).unwrap()
    };
    assert_eq!(checksum(&during, "scorer"), checksum(&during, "proxy"));
    assert_ne!(
        checksum(&before, "proxy"),
        checksum(&during, "proxy"),
        "starting a rotation rolls both workloads"
    );
    assert_ne!(
        checksum(&during, "proxy"),
        checksum(&after, "proxy"),
        "ending a rotation rolls both workloads"
    );
    let refused = render_case(
        out.path(),
        r#"{"auth": {"poolKey": {"previousKey": "pool-key-previous"}}}"#,
    )
    .unwrap_err();
    assert!(refused.contains("auth.poolKey.previousKey"), "{refused}");
}
