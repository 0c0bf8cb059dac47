"""Delivery checks: the Helm chart (Helm's own SDK), rendered manifests (kubernetes-validate),
example resources against the generated CRDs, workflows (actionlint), skaffold.yaml (its JSON
schema), and the chart's wiring checked against a running confab."""

import glob
import json
import os
import subprocess
import urllib.request
from pathlib import Path

import helm_python as helm
import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "confab"
VALUES = sorted(glob.glob(str(CHART / "ci" / "*.yaml")))
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schema here.
KUBE_VERSIONS = ["1.33.0", "1.37.0"]


def render(values_file):
    values = yaml.safe_load(open(values_file))
    out = helm.Chart.load(str(CHART)).render(values, name="confab", namespace="chat")
    docs = []
    for path, text in out.items():
        if path.endswith(".yaml"):
            docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


@pytest.mark.parametrize("values_file", VALUES, ids=os.path.basename)
@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_chart_lints_strictly(values_file, kube):
    report = helm.lint(str(CHART), yaml.safe_load(open(values_file)), strict=True, kube_version=f"v{kube}")
    problems = report["errors"] + [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems, problems


@pytest.mark.parametrize("values_file", VALUES, ids=os.path.basename)
@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_rendered_objects_are_valid_kubernetes(values_file, kube, tmp_path):
    docs = render(values_file)
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    run = subprocess.run(["kubernetes-validate", "-k", kube, "--strict", str(manifest)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    # Custom kinds (Gateway API, Prometheus Operator, KEDA) only warn; a built-in kind never may.
    custom = ("gateway.networking.k8s.io/", "monitoring.coreos.com/", "keda.sh/")
    output = run.stdout + run.stderr
    warnings = [line for line in output.splitlines() if line.startswith("WARN")]
    assert all(any(f"api version {g}" in w for g in custom) for w in warnings), warnings
    passed = sum(1 for line in output.splitlines() if line.startswith("INFO") and "passed" in line)
    builtin = [d for d in docs if not d["apiVersion"].startswith(custom)]
    assert passed == len(builtin), output


def crd_schemas():
    schemas = {}
    for crd in yaml.safe_load_all(open(ROOT / "k8s" / "crds" / "confab.dev.yaml")):
        if crd:
            schemas[crd["spec"]["names"]["kind"]] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schemas


def test_example_resources_match_the_generated_crds():
    schemas = crd_schemas()
    examples = sorted(glob.glob(str(ROOT / "k8s" / "examples" / "*.yaml")))
    assert len(examples) >= 3
    for path in examples:
        for doc in yaml.safe_load_all(open(path)):
            jsonschema.validate(doc["spec"], schemas[doc["kind"]]["properties"]["spec"])


def test_the_crd_schemas_refuse_bad_specs():
    schemas = crd_schemas()
    room = schemas["ChatRoom"]["properties"]["spec"]
    for bad in [{"name": "Bad Name", "kind": "public"}, {"name": "ok", "kind": "secret"}, {"name": "ok", "kind": "public", "slowModeSeconds": -1}, {"name": "ok", "kind": "public", "members": ["NOT valid"]}]:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, room)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"burst": 0}, schemas["ChatPolicy"]["properties"]["spec"])
    hook = schemas["ChatWebhook"]["properties"]["spec"]
    ref = {"name": "s", "key": "secret"}
    jsonschema.validate({"url": "https://x.example/h", "events": ["notification"], "secretRef": ref}, hook)
    for bad in [{"url": "ftp://x", "events": ["notification"], "secretRef": ref},
                {"url": "https://x.example/h", "events": ["message.sent"], "secretRef": ref},
                {"url": "https://x.example/h", "events": [], "secretRef": ref},
                {"url": "https://x.example/h", "events": ["notification"]}]:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, hook)


def test_the_chart_ships_the_generated_crds():
    assert (CHART / "crds" / "confab.dev.yaml").read_text() == (ROOT / "k8s" / "crds" / "confab.dev.yaml").read_text()


def test_workflows_pass_actionlint():
    run = subprocess.run(["actionlint", *glob.glob(str(ROOT / ".github" / "workflows" / "*.yml"))], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_skaffold_matches_its_schema():
    schema = ROOT / "tests" / "deploy" / "schemas" / "skaffold-v4beta14.json"
    run = subprocess.run(["check-jsonschema", "--schemafile", str(schema), str(ROOT / "skaffold.yaml")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_autoscaling_is_hpa_or_keda_never_both():
    default = render(CHART / "ci" / "default-values.yaml")
    assert len(by_kind(default, "HorizontalPodAutoscaler")) == 1 and not by_kind(default, "ScaledObject")
    keda = render(CHART / "ci" / "keda-ingress-values.yaml")
    assert len(by_kind(keda, "ScaledObject")) == 1 and not by_kind(keda, "HorizontalPodAutoscaler")
    assert "replicas" not in by_kind(keda, "Deployment")[0]["spec"], "the autoscaler owns replicas"
    env = lambda docs: {e["name"]: e.get("value") for e in by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env(keda).get("CONFAB_REDIS_CLUSTER") == "true", "redis.cluster turns sharded Pub/Sub on"
    assert "CONFAB_REDIS_CLUSTER" not in env(default)


def test_pods_are_locked_down_and_roll_without_losing_capacity():
    for values_file in VALUES:
        dep = by_kind(render(values_file), "Deployment")[0]
        spec = dep["spec"]["template"]["spec"]
        assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        c = spec["containers"][0]["securityContext"]
        assert c["readOnlyRootFilesystem"] is True and c["allowPrivilegeEscalation"] is False
        assert c["capabilities"]["drop"] == ["ALL"]
        env = {e["name"]: e for e in spec["containers"][0]["env"]}
        drain = int(env["CONFAB_DRAIN_DELAY_SECS"]["value"])
        assert spec["terminationGracePeriodSeconds"] >= drain + 15, "grace must cover the drain"
        assert "checksum/secrets" in dep["spec"]["template"]["metadata"]["annotations"]


def test_the_websocket_route_and_service_are_marked_for_websockets():
    docs = render(CHART / "ci" / "default-values.yaml")
    svc = [s for s in by_kind(docs, "Service") if not s["metadata"]["name"].endswith("-metrics")][0]
    assert svc["spec"]["ports"][0]["appProtocol"] == "kubernetes.io/ws"
    route = by_kind(docs, "HTTPRoute")[0]
    assert route["spec"]["rules"][0]["timeouts"]["request"] == "0s"
    ingress = by_kind(render(CHART / "ci" / "keda-ingress-values.yaml"), "Ingress")[0]
    assert int(ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > 3600


def test_the_hpa_scales_on_a_gauge_the_server_exports(confab):
    hpa = by_kind(render(CHART / "ci" / "default-values.yaml"), "HorizontalPodAutoscaler")[0]
    name = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    text = urllib.request.urlopen(f"http://127.0.0.1:{confab['metrics']}/metrics").read().decode()
    assert f"# TYPE {name} gauge" in text
    adapter = yaml.safe_load(open(ROOT / "k8s" / "prometheus-adapter.yaml"))
    assert adapter["rules"]["custom"][0]["name"]["as"] == name


def test_probes_and_ports_match_the_server(confab):
    dep = by_kind(render(CHART / "ci" / "default-values.yaml"), "Deployment")[0]
    container = dep["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["CONFAB_LISTEN"].endswith(f":{ports['http']}")
    assert env["CONFAB_METRICS_LISTEN"].endswith(f":{ports['metrics']}")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["port"] == "http"
        with urllib.request.urlopen(f"http://127.0.0.1:{confab['http']}{get['path']}") as r:
            assert r.status == 200, probe
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_values_schema_refuses_bad_values():
    bad = yaml.safe_load(open(CHART / "ci" / "default-values.yaml"))
    bad["autoscaling"] = {"enabled": "yes"}
    with pytest.raises(Exception):
        helm.Chart.load(str(CHART)).render(bad, name="confab", namespace="chat")
    bad = yaml.safe_load(open(CHART / "ci" / "default-values.yaml"))
    bad["sysctls"] = [{"name": "net.core.somaxconn"}]
    with pytest.raises(Exception):
        helm.Chart.load(str(CHART)).render(bad, name="confab", namespace="chat")


def test_openid_settings_reach_the_pod_and_go_together():
    spec = by_kind(render(CHART / "ci" / "keda-ingress-values.yaml"), "Deployment")[0]["spec"]
    env = {e["name"]: e.get("value") for e in spec["template"]["spec"]["containers"][0]["env"]}
    assert env["CONFAB_OIDC_ISSUER"] == "https://sso.example.com/realms/chat"
    assert env["CONFAB_OIDC_AUDIENCE"] == "confab"
    assert env["CONFAB_OIDC_ADMIN_GROUP"] == "chat-admins"
    assert env["CONFAB_OIDC_CLIENT_ID"] == "confab-web"
    assert env["CONFAB_LOCAL_ACCOUNTS"] == "true"
    plain = by_kind(render(CHART / "ci" / "default-values.yaml"), "Deployment")[0]["spec"]
    names = {e["name"] for e in plain["template"]["spec"]["containers"][0]["env"]}
    assert not any(n.startswith("CONFAB_OIDC_") for n in names)
    # An issuer without an audience, or a client id without an issuer, is refused.
    for oidc in ({"issuer": "https://sso.example.com"}, {"clientId": "web"}, {"issuer": "sso.example.com", "audience": "a"}):
        bad = yaml.safe_load(open(CHART / "ci" / "default-values.yaml"))
        bad["oidc"] = oidc
        with pytest.raises(Exception):
            helm.Chart.load(str(CHART)).render(bad, name="confab", namespace="chat")


def test_kernel_settings_for_many_sockets_reach_the_pod():
    spec = by_kind(render(CHART / "ci" / "keda-ingress-values.yaml"), "Deployment")[0]["spec"]
    sysctls = {s["name"]: s["value"] for s in spec["template"]["spec"]["securityContext"]["sysctls"]}
    assert sysctls["net.ipv4.ip_local_port_range"] == "1024 65535"
    plain = by_kind(render(CHART / "ci" / "default-values.yaml"), "Deployment")[0]["spec"]
    assert "sysctls" not in plain["template"]["spec"]["securityContext"]
