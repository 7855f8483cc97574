"""Offline checks of the deployment files with the real tools (run by tests/tests/it/deploy.rs).

- The Helm chart is linted and rendered with Helm's own SDK (helm-python-sdk embeds Helm
  v4's Go library) for the default values and each values file in helm/manymodels/ci/.
- Every rendered Kubernetes object passes kubernetes-validate --strict for the AKS
  version we target; ServiceMonitor (a CRD without a bundled schema) is checked by shape.
- The pool key: both workloads take it from the same Secret (the chart's, a random
  48-character key, or the user's existingSecret), the scorers' metrics key is the one the
  ServiceMonitor scrapes with, and both pods carry the same keys checksum.
- The NetworkPolicies select the scorer pods (and only them), admit the proxy pods and the
  monitoring namespace on the scorer's container port, and pass kubernetes-validate like
  every other object; switched off, none is rendered; proxyIngressFrom adds one for the proxies.
- Pool membership: the scorers' headless Service publishes not-ready addresses and names its
  port `http`; the proxy config discovers the pool from that port's SRV name (or, with
  proxy.pool.discovery static, lists the StatefulSet's pod names); with
  scorer.autoscaling.enabled the StatefulSet has no `replicas` (helm upgrade must not reset
  what an autoscaler set), and a static pool is refused with it.
- The scorers' KEDA ScaledObject (with scorer.autoscaling): aimed at the StatefulSet, on
  the working set against the budget, with the values' bounds and windows, and valid
  under KEDA's own CRD schema (tests/keda_check.mjs, @kubernetes-models/keda from npm),
  which must also refuse broken copies; none without autoscaling or with keda off.
- Bad values are rejected by values.schema.json.
- The Azure ML endpoint and deployment YAML load with azure-ai-ml's own schemas.
- The rendered scorer.toml / proxy.toml of each case are written to OUT/<case>/ so the Rust
  test can parse them with the config crate.

Usage: deploy_check.py ROOT OUT. Prints one JSON summary line; exits non-zero on failure.
"""

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import helm_python
import yaml

KUBERNETES_VERSION = "1.33.0"  # the AKS version the chart targets

BAD_VALUES = {
    "cache percent out of range": {"scorer": {"cachePercent": 95}},
    "unknown store kind": {"store": {"kind": "s3"}},
    "unknown service type": {"proxy": {"service": {"type": "Ingress"}}},
    "zero scorers": {"scorer": {"replicas": 0}},
    "misspelled key": {"scorer": {"memoryMib": 4096}},
    "azure without an account": {"store": {"kind": "azure", "azure": {"account": ""}}},
    "duration without a unit": {"proxy": {"upstream": {"readTimeout": "60"}}},
    "no pool key": {"auth": {"poolKey": {"create": False}}},
    "network policy peer of an unknown kind": {
        "networkPolicy": {"extraScorerIngressFrom": [{"serviceSelector": {}}]}},
    "monitoring selector that is not a label selector": {
        "networkPolicy": {"monitoringNamespaceSelector": {"name": "monitoring"}}},
    "unknown pool discovery": {"proxy": {"pool": {"discovery": "endpointslices"}}},
    "pool resolver that is a name": {"proxy": {"pool": {"resolver": "kube-dns.kube-system:53"}}},
    "autoscaling target fill above the budget": {
        "scorer": {"autoscaling": {"keda": {"targetFill": 1.5}}}},
}

# Values the chart must refuse at render time (not a schema matter).
BAD_RENDERS = {
    "service monitor without a metrics key": {
        "auth": {"metricsKey": {"create": False}}, "metrics": {"serviceMonitor": {"enabled": True}}},
    "static pool with an autoscaled StatefulSet": {
        "proxy": {"pool": {"discovery": "static"}}, "scorer": {"autoscaling": {"enabled": True}}},
    "ScaledObject without a Prometheus address": {"scorer": {"autoscaling": {"enabled": True}}},
}

PROMETHEUS = "http://prometheus-operated.monitoring:9090"


# More renders checked beyond the ci cases: switches the ci files leave at their defaults.
EXTRA_RENDERS = {
    "network-policy-off": {"networkPolicy": {"enabled": False}},
    "scorer-autoscaled": {"scorer": {"autoscaling": {"enabled": True, "keda": {
                              "prometheus": {"serverAddress": PROMETHEUS, "authenticationRef": "azure-monitor"},
                              "maxReplicas": 20, "targetFill": 0.7}}},
                          "proxy": {"pool": {"resolver": "10.0.0.10:53", "refresh": "2s"}}},
    "scorer-autoscaled-by-another": {"scorer": {"autoscaling": {"enabled": True, "keda": {"enabled": False}}}},
    "static-pool": {"proxy": {"pool": {"discovery": "static"}}},
    "proxy-ingress-restricted": {"networkPolicy": {
        "proxyIngressFrom": [{"ipBlock": {"cidr": "10.0.0.0/16"}}],
        "extraScorerIngressFrom": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": "azureml"}}}]}},
}


def fail(message):
    print(json.dumps({"ok": False, "error": message}))
    sys.exit(1)


def subset(selector, labels):
    """Whether a matchLabels selector selects a pod with these labels."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def secret_ref(pod, env_name):
    for container in pod["containers"]:
        for env in container.get("env", []):
            if env["name"] == env_name:
                ref = env["valueFrom"]["secretKeyRef"]
                return ref["name"], ref["key"]
    return None


def merged(defaults, values):
    out = dict(defaults)
    for key, value in values.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def check_keys_and_policies(case, values, objects):
    """The pool key, the metrics key and the NetworkPolicies of one rendered case."""
    by_kind = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], []).append(obj)
    proxy_pod = by_kind["Deployment"][0]["spec"]["template"]
    scorer_pod = by_kind["StatefulSet"][0]["spec"]["template"]
    secrets = {o["metadata"]["name"]: o for o in by_kind.get("Secret", [])}
    auth = values["auth"]

    proxy_ref = secret_ref(proxy_pod["spec"], "MM_PROXY_AUTH_POOL_KEY")
    scorer_ref = secret_ref(scorer_pod["spec"], "MM_SCORER_AUTH_POOL_KEY")
    if not proxy_ref or proxy_ref != scorer_ref:
        fail(f"{case}: proxy and scorer pool keys differ: {proxy_ref} vs {scorer_ref}")
    metrics_ref = secret_ref(scorer_pod["spec"], "MM_SCORER_AUTH_METRICS_KEYS")
    keys = {"pool": proxy_ref, "metrics": metrics_ref}
    values_b64 = {}
    for which, ref in keys.items():
        cfg = auth[f"{which}Key"]
        if ref is None:
            if which == "pool" or cfg["create"] or cfg["existingSecret"]:
                fail(f"{case}: no {which} key in the scorer's environment")
            continue
        if cfg["existingSecret"]:
            if ref != (cfg["existingSecret"], cfg["key"]) or ref[0] in secrets:
                fail(f"{case}: {which} key should come from the user's Secret {cfg}, got {ref}")
            values_b64[which] = ""
        else:
            secret = secrets.get(ref[0])
            if not secret or secret.get("type") != "Opaque" or ref[1] not in secret.get("data", {}):
                fail(f"{case}: {which} key Secret {ref} is not rendered")
            encoded = secret["data"][ref[1]]
            if not re.fullmatch(r"[A-Za-z0-9]{48}", base64.b64decode(encoded).decode()):
                fail(f"{case}: the generated {which} key is not 48 random alphanumerics")
            values_b64[which] = encoded
    checksums = {p["metadata"]["annotations"].get("checksum/keys") for p in (proxy_pod, scorer_pod)}
    expected = hashlib.sha256(
        f"{values_b64.get('pool', '')}/{values_b64.get('metrics', '')}".encode()).hexdigest()
    if checksums != {expected}:
        fail(f"{case}: keys checksum {checksums}, expected {expected} on both pods")
    for monitor in by_kind.get("ServiceMonitor", []):
        component = monitor["metadata"]["labels"]["app.kubernetes.io/component"]
        token = monitor["spec"]["endpoints"][0].get("bearerTokenSecret")
        if component == "scorer":
            if not token or (token["name"], token["key"]) != metrics_ref:
                fail(f"{case}: the scorer ServiceMonitor does not scrape with the metrics key: {token}")

    policies = {o["metadata"]["labels"]["app.kubernetes.io/component"]: o
                for o in by_kind.get("NetworkPolicy", [])}
    net = values["networkPolicy"]
    if not net["enabled"]:
        if policies:
            fail(f"{case}: networkPolicy.enabled is false but NetworkPolicies were rendered")
        return {"pool_key": list(proxy_ref), "metrics_key": metrics_ref and list(metrics_ref),
                "network_policies": 0}
    scorer_labels = scorer_pod["metadata"]["labels"]
    proxy_labels = proxy_pod["metadata"]["labels"]
    ports = {"scorer": {p["containerPort"] for c in scorer_pod["spec"]["containers"] for p in c["ports"]},
             "proxy": {p["containerPort"] for c in proxy_pod["spec"]["containers"] for p in c["ports"]}}
    pods = {"scorer": scorer_labels, "proxy": proxy_labels}
    expected_components = {"scorer", "proxy"} if net["proxyIngressFrom"] else {"scorer"}
    if set(policies) != expected_components:
        fail(f"{case}: NetworkPolicies for {sorted(policies)}, expected {sorted(expected_components)}")
    for component, policy in policies.items():
        spec = policy["spec"]
        selector = spec["podSelector"]["matchLabels"]
        other = "proxy" if component == "scorer" else "scorer"
        if not subset(selector, pods[component]) or subset(selector, pods[other]):
            fail(f"{case}: the {component} NetworkPolicy selects {selector}")
        if spec["policyTypes"] != ["Ingress"]:
            fail(f"{case}: the {component} NetworkPolicy must leave egress open: {spec['policyTypes']}")
        allowed, monitoring = spec["ingress"]
        for rule in (allowed, monitoring):
            if {(p["protocol"], p["port"]) for p in rule["ports"]} != {("TCP", p) for p in ports[component]}:
                fail(f"{case}: {component} NetworkPolicy ports {rule['ports']} != {ports[component]}")
        if monitoring["from"] != [{"namespaceSelector": net["monitoringNamespaceSelector"]}]:
            fail(f"{case}: {component} monitoring rule {monitoring['from']}")
        if component == "scorer":
            first = allowed["from"][0]
            if set(first) != {"podSelector"} or not subset(first["podSelector"]["matchLabels"], proxy_labels) \
                    or subset(first["podSelector"]["matchLabels"], scorer_labels):
                fail(f"{case}: the scorers must admit exactly the proxy pods: {first}")
            if allowed["from"][1:] != net["extraScorerIngressFrom"]:
                fail(f"{case}: extraScorerIngressFrom not applied: {allowed['from']}")
        elif allowed["from"] != net["proxyIngressFrom"]:
            fail(f"{case}: proxyIngressFrom not applied: {allowed['from']}")
    return {"pool_key": list(proxy_ref), "metrics_key": metrics_ref and list(metrics_ref),
            "network_policies": len(policies)}


def check_membership(case, values, objects, namespace):
    """The scorers' headless Service, the StatefulSet's replicas and the proxy's pool."""
    scorer_set = next(o for o in objects if o["kind"] == "StatefulSet")
    svc_name = scorer_set["spec"]["serviceName"]
    services = [o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == svc_name]
    if len(services) != 1:
        fail(f"{case}: no Service {svc_name} for the StatefulSet's serviceName")
    spec = services[0]["spec"]
    if spec.get("clusterIP") != "None" or spec.get("publishNotReadyAddresses") is not True:
        fail(f"{case}: the scorers' Service must be headless and publish not-ready addresses: {spec}")
    http = [p for p in spec["ports"] if p.get("name") == "http"]
    container_ports = {p.get("name"): p["containerPort"]
                       for c in scorer_set["spec"]["template"]["spec"]["containers"]
                       for p in c.get("ports", [])}
    if len(http) != 1 or http[0]["targetPort"] != "http" or container_ports.get("http") != 8001:
        fail(f"{case}: the scorers' Service needs the port named http (the SRV name's _http): {spec['ports']}")
    autoscaled = values["scorer"]["autoscaling"]["enabled"]
    replicas = scorer_set["spec"].get("replicas")
    if autoscaled != (replicas is None) or (replicas is not None and replicas != values["scorer"]["replicas"]):
        fail(f"{case}: StatefulSet replicas {replicas} with autoscaling {autoscaled}")
    config = next(o for o in objects if o["kind"] == "ConfigMap" and "proxy.toml" in o.get("data", {}))
    pool = tomllib.loads(config["data"]["proxy.toml"])["pool"]
    pool_values = values["proxy"]["pool"]
    if pool_values["discovery"] == "srv":
        expected = {"srv": f"_http._tcp.{svc_name}.{namespace}.svc.cluster.local",
                    "resolver": pool_values["resolver"], "refresh": pool_values["refresh"]}
    else:
        expected = {"scorers": ",".join(f"{svc_name}-{i}.{svc_name}.{namespace}.svc.cluster.local:8001"
                                        for i in range(values["scorer"]["replicas"])),
                    "refresh": pool_values["refresh"]}
    if pool != expected:
        fail(f"{case}: proxy [pool] {pool}, expected {expected}")
    return {"discovery": pool_values["discovery"], "replicas": replicas,
            "publish_not_ready": spec["publishNotReadyAddresses"]}


def check_scaled_object(case, values, objects, namespace):
    """The KEDA ScaledObject: present exactly when the chart's KEDA autoscaling is on,
    aimed at the scorers' StatefulSet, on the working set against the budget."""
    scaled = [o for o in objects if o["kind"] == "ScaledObject"]
    autoscaling = values["scorer"]["autoscaling"]
    wanted = autoscaling["enabled"] and autoscaling["keda"]["enabled"]
    if len(scaled) != (1 if wanted else 0):
        fail(f"{case}: {len(scaled)} ScaledObjects with autoscaling {autoscaling}")
    if not wanted:
        return None
    keda = autoscaling["keda"]
    spec = scaled[0]["spec"]
    scorer_set = next(o for o in objects if o["kind"] == "StatefulSet")
    target = spec["scaleTargetRef"]
    if scaled[0]["apiVersion"] != "keda.sh/v1alpha1" or target != {
            "apiVersion": "apps/v1", "kind": "StatefulSet", "name": scorer_set["metadata"]["name"]}:
        fail(f"{case}: ScaledObject target {target}")
    if (spec["minReplicaCount"], spec["maxReplicaCount"]) != (keda["minReplicas"], keda["maxReplicas"]):
        fail(f"{case}: ScaledObject replica bounds {spec}")
    [trigger] = spec["triggers"]
    metadata = trigger["metadata"]
    query = metadata["query"]
    if trigger["type"] != "prometheus" or trigger["metricType"] != "AverageValue" \
            or metadata["serverAddress"] != keda["prometheus"]["serverAddress"] \
            or "sum(mm_scorer_working_set_bytes{" not in query or "mm_scorer_budget_bytes{" not in query \
            or f'namespace="{namespace}"' not in query \
            or f'pod=~"{scorer_set["metadata"]["name"]}-[0-9]+"' not in query \
            or float(metadata["threshold"]) != keda["targetFill"]:
        fail(f"{case}: ScaledObject trigger {trigger}")
    if keda["prometheus"]["authenticationRef"] and \
            trigger.get("authenticationRef", {}).get("name") != keda["prometheus"]["authenticationRef"]:
        fail(f"{case}: ScaledObject authenticationRef {trigger}")
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    if behavior["scaleDown"]["stabilizationWindowSeconds"] != keda["scaleDownStabilizationSeconds"] \
            or behavior["scaleUp"]["stabilizationWindowSeconds"] != keda["scaleUpStabilizationSeconds"]:
        fail(f"{case}: ScaledObject behavior {behavior}")
    return scaled[0]


def check_with_keda_schema(root, out, scaled_objects):
    """Every rendered ScaledObject against KEDA's CRD schema (tests/keda_check.mjs)."""
    models = Path(os.environ.get("MM_KEDA_MODELS", root / ".cache" / "keda-models"))
    if not (models / "node_modules" / "@kubernetes-models" / "keda").is_dir():
        fail(f"KEDA's schema package is missing from {models}: run the tests with cargo xtask test")
    objects_path = out / "scaledobjects.json"
    objects_path.write_text(json.dumps(scaled_objects))
    result = subprocess.run(["node", str(root / "tests" / "keda_check.mjs"), str(models), str(objects_path)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        fail(f"KEDA schema: {result.stdout}{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])["checked"]


def validate(case, manifest):
    result = subprocess.run(
        ["kubernetes-validate", "-k", KUBERNETES_VERSION, "--strict", str(manifest)],
        capture_output=True, text=True)
    if result.returncode != 0:
        fail(f"{case}: kubernetes-validate: {result.stdout}{result.stderr}")


def main():
    root, out = Path(sys.argv[1]), Path(sys.argv[2])
    chart_dir = root / "helm" / "manymodels"
    lint = helm_python.lint(str(chart_dir))
    serious = [m for m in lint.get("messages", []) if m.get("severity", 0) >= 2]
    if lint.get("errors") or serious:
        fail(f"helm lint: {lint}")
    chart = helm_python.Chart.load(str(chart_dir))
    defaults = yaml.safe_load((chart_dir / "values.yaml").read_text())
    cases = {"default": {}}
    for path in sorted((chart_dir / "ci").glob("*.yaml")):
        cases[path.stem] = yaml.safe_load(path.read_text())
    cases.update(EXTRA_RENDERS)
    summary = {"ok": True, "cases": {}, "rejected": [], "refused": [], "keys": {}, "membership": {},
               "scaled_objects": {}}
    scaled_objects = []
    for case, values in cases.items():
        try:
            chart.validate_schema(values)
        except Exception as error:  # noqa: BLE001 - any schema error fails the case
            fail(f"{case}: values rejected by the schema: {error}")
        rendered = chart.render(values, name="mm", namespace="serving")
        objects = []
        for template, text in sorted(rendered.items()):
            if template.endswith("NOTES.txt"):
                if "infer" not in text:
                    fail(f"{case}: NOTES.txt does not say how to score a model")
                continue
            for document in yaml.safe_load_all(text):
                if document:
                    objects.append(document)
        case_dir = out / case
        case_dir.mkdir(parents=True, exist_ok=True)
        kinds = {}
        plain = []
        for obj in objects:
            kind = obj["kind"]
            kinds[kind] = kinds.get(kind, 0) + 1
            labels = obj["metadata"].get("labels", {})
            for label in ("app.kubernetes.io/name", "app.kubernetes.io/instance",
                          "app.kubernetes.io/version", "app.kubernetes.io/managed-by"):
                if label not in labels:
                    fail(f"{case}: {kind} {obj['metadata']['name']} lacks label {label}")
            if kind == "ScaledObject":
                continue  # a CRD without a bundled schema: check_scaled_object, KEDA's schema
            if kind == "ServiceMonitor":
                spec = obj.get("spec", {})
                if obj.get("apiVersion") != "monitoring.coreos.com/v1" or not spec.get("endpoints") \
                        or not spec.get("selector", {}).get("matchLabels"):
                    fail(f"{case}: malformed ServiceMonitor {obj}")
                continue
            plain.append(obj)
            if kind == "ConfigMap" and "scorer.toml" in obj.get("data", {}):
                (case_dir / "scorer.toml").write_text(obj["data"]["scorer.toml"])
                (case_dir / "proxy.toml").write_text(obj["data"]["proxy.toml"])
            if kind == "ConfigMap" and "manymodels.json" in obj.get("data", {}):
                dashboard = json.loads(obj["data"]["manymodels.json"])
                if len(dashboard["panels"]) < 6:
                    fail(f"{case}: dashboard has too few panels")
            if kind in ("Deployment", "StatefulSet"):
                pod = obj["spec"]["template"]["spec"]
                component = "scorer" if kind == "StatefulSet" else "proxy"
                # One line per MM_ variable: its name, and for one from a Secret the
                # Secret's name and key (tab-separated), so the Rust test can give each
                # Secret's key a stand-in value of its own.
                lines = []
                for container in pod["containers"]:
                    for env in container.get("env", []):
                        if env["name"].startswith("MM_"):
                            ref = env.get("valueFrom", {}).get("secretKeyRef")
                            lines.append("\t".join([env["name"], ref["name"], ref["key"]] if ref
                                                    else [env["name"]]))
                (case_dir / f"{component}.env").write_text("\n".join(lines))
                (case_dir / f"{component}.replicas").write_text(str(obj["spec"].get("replicas", 0)))
                if not pod["securityContext"].get("runAsNonRoot"):
                    fail(f"{case}: {kind} runs as root")
                for container in pod["containers"]:
                    sc = container["securityContext"]
                    if not sc.get("readOnlyRootFilesystem") or sc.get("allowPrivilegeEscalation"):
                        fail(f"{case}: {kind} container security context {sc}")
        manifest = case_dir / "manifest.yaml"
        manifest.write_text(yaml.safe_dump_all(plain))
        validate(case, manifest)
        (case_dir / "kinds.json").write_text(json.dumps(kinds))
        summary["cases"][case] = kinds
        summary["keys"][case] = check_keys_and_policies(case, merged(defaults, values), objects)
        summary["membership"][case] = check_membership(case, merged(defaults, values), objects, "serving")
        scaled = check_scaled_object(case, merged(defaults, values), objects, "serving")
        summary["scaled_objects"][case] = scaled is not None
        if scaled is not None:
            scaled_objects.append(scaled)
    for label, values in BAD_VALUES.items():
        try:
            chart.validate_schema(values)
        except Exception:  # noqa: BLE001 - rejection is the expected outcome
            summary["rejected"].append(label)
            continue
        fail(f"bad values were accepted: {label}")
    for label, values in BAD_RENDERS.items():
        try:
            chart.validate_schema(values)
            chart.render(values, name="mm", namespace="serving")
        except Exception:  # noqa: BLE001 - the template's fail is the expected outcome
            summary["refused"].append(label)
            continue
        fail(f"values that must not render were rendered: {label}")
    summary["keda_schema_checked"] = check_with_keda_schema(root, out, scaled_objects)
    # The generated key is random (helm template cannot look up the cluster's Secret; on a
    # real upgrade the lookup keeps it): two offline renders must differ.
    first, second = (yaml.safe_load(chart.render({}, name="mm", namespace="serving")
                                    ["manymodels/templates/secrets.yaml"].split("---", 2)[1])
                     for _ in range(2))
    if first["data"] == second["data"]:
        fail("the generated pool key is not random")
    from azure.ai.ml import load_online_deployment, load_online_endpoint
    endpoint = load_online_endpoint(str(root / "deploy" / "aml" / "endpoint.yml"))
    deployment = load_online_deployment(str(root / "deploy" / "aml" / "deployment.yml"))
    routes = deployment.environment.inference_config
    if routes["scoringRoute"]["path"] != "/" or routes["readinessRoute"]["path"] != "/v2/health/ready" \
            or routes["livenessRoute"]["path"] != "/v2/health/live":
        fail(f"azure ml routes: {routes}")
    plain_keys = [name for name in deployment.environment_variables if "KEY" in name]
    if plain_keys:
        fail(f"azure ml deployment writes keys in the file: {plain_keys} (pass them at create time)")
    settings = deployment.request_settings
    if settings.request_timeout_ms < 30000 or settings.max_concurrent_requests_per_instance < 16:
        fail("azure ml request settings too tight for cold loads and fan-in")
    # The proxy's environment as Azure ML gives it, and the port every route probes: the
    # Rust side loads that environment with the proxy's config crate.
    summary["aml"] = {"endpoint": endpoint.name, "deployment": deployment.name,
                      "type": type(deployment).__name__,
                      "environment_variables": dict(deployment.environment_variables),
                      "route_ports": sorted({route["port"] for route in routes.values()})}
    dockerfiles = sorted(str(p) for p in (root / "docker").glob("Dockerfile.*"))
    result = subprocess.run(["hadolint", *dockerfiles], capture_output=True, text=True)
    if len(dockerfiles) != 2 or result.returncode != 0:
        fail(f"hadolint {dockerfiles}: {result.stdout}{result.stderr}")
    summary["dockerfiles"] = len(dockerfiles)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
