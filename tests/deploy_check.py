"""Offline checks of the deployment files with the real tools (run by tests/tests/deploy.rs).

- The Helm chart is linted and rendered with Helm's own SDK (helm-python-sdk embeds Helm
  v4's Go library) for the default values and each values file in helm/manymodels/ci/.
- Every rendered Kubernetes object passes kubernetes-validate --strict for the AKS
  version we target; ServiceMonitor (a CRD without a bundled schema) is checked by shape.
- Bad values are rejected by values.schema.json.
- The Azure ML endpoint and deployment YAML load with azure-ai-ml's own schemas.
- The rendered scorer.toml / proxy.toml of each case are written to OUT/<case>/ so the Rust
  test can parse them with the config crate.

Usage: deploy_check.py ROOT OUT. Prints one JSON summary line; exits non-zero on failure.
"""

import json
import subprocess
import sys
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
}


def fail(message):
    print(json.dumps({"ok": False, "error": message}))
    sys.exit(1)


def main():
    root, out = Path(sys.argv[1]), Path(sys.argv[2])
    chart_dir = root / "helm" / "manymodels"
    lint = helm_python.lint(str(chart_dir))
    serious = [m for m in lint.get("messages", []) if m.get("severity", 0) >= 2]
    if lint.get("errors") or serious:
        fail(f"helm lint: {lint}")
    chart = helm_python.Chart.load(str(chart_dir))
    cases = {"default": {}}
    for path in sorted((chart_dir / "ci").glob("*.yaml")):
        cases[path.stem] = yaml.safe_load(path.read_text())
    summary = {"ok": True, "cases": {}, "rejected": []}
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
                names = [e["name"] for c in pod["containers"] for e in c.get("env", [])
                         if e["name"].startswith("MM_")]
                (case_dir / f"{component}.env").write_text("\n".join(names))
                (case_dir / f"{component}.replicas").write_text(str(obj["spec"].get("replicas", 0)))
                if not pod["securityContext"].get("runAsNonRoot"):
                    fail(f"{case}: {kind} runs as root")
                for container in pod["containers"]:
                    sc = container["securityContext"]
                    if not sc.get("readOnlyRootFilesystem") or sc.get("allowPrivilegeEscalation"):
                        fail(f"{case}: {kind} container security context {sc}")
        manifest = case_dir / "manifest.yaml"
        manifest.write_text(yaml.safe_dump_all(plain))
        result = subprocess.run(
            ["kubernetes-validate", "-k", KUBERNETES_VERSION, "--strict", str(manifest)],
            capture_output=True, text=True)
        if result.returncode != 0:
            fail(f"{case}: kubernetes-validate: {result.stdout}{result.stderr}")
        (case_dir / "kinds.json").write_text(json.dumps(kinds))
        summary["cases"][case] = kinds
    for label, values in BAD_VALUES.items():
        try:
            chart.validate_schema(values)
        except Exception:  # noqa: BLE001 - rejection is the expected outcome
            summary["rejected"].append(label)
            continue
        fail(f"bad values were accepted: {label}")
    from azure.ai.ml import load_online_deployment, load_online_endpoint
    endpoint = load_online_endpoint(str(root / "deploy" / "aml" / "endpoint.yml"))
    deployment = load_online_deployment(str(root / "deploy" / "aml" / "deployment.yml"))
    routes = deployment.environment.inference_config
    if routes["scoringRoute"]["path"] != "/" or routes["readinessRoute"]["path"] != "/v2/health/ready" \
            or routes["livenessRoute"]["path"] != "/v2/health/live":
        fail(f"azure ml routes: {routes}")
    settings = deployment.request_settings
    if settings.request_timeout_ms < 30000 or settings.max_concurrent_requests_per_instance < 16:
        fail("azure ml request settings too tight for cold loads and fan-in")
    summary["aml"] = {"endpoint": endpoint.name, "deployment": deployment.name,
                      "type": type(deployment).__name__}
    dockerfiles = sorted(str(p) for p in (root / "docker").glob("Dockerfile.*"))
    result = subprocess.run(["hadolint", *dockerfiles], capture_output=True, text=True)
    if len(dockerfiles) != 2 or result.returncode != 0:
        fail(f"hadolint {dockerfiles}: {result.stdout}{result.stderr}")
    summary["dockerfiles"] = len(dockerfiles)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
