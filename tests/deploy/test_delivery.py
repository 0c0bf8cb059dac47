"""Delivery checks: the Helm chart (Helm's own SDK), rendered manifests (kubernetes-validate),
example resources against the generated CRDs, workflows (actionlint), skaffold.yaml (its JSON
schema), and the chart's wiring checked against a running confab."""

import glob
import json
import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import helm_python as helm
import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "confab"
# Every values file the project ships or deploys with, rendered and validated.
VALUES = sorted(glob.glob(str(CHART / "ci" / "*.yaml"))) + [
    str(CHART / "values-production.yaml"),
    str(ROOT / "deploy" / "environments" / "production.yaml"),
    str(ROOT / "k8s" / "dev" / "values.yaml"),
]
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schema here.
KUBE_VERSIONS = ["1.33.0", "1.37.0"]


def render(values_file):
    return render_values(yaml.safe_load(open(values_file)))


def render_values(values, chart=CHART):
    out = helm.Chart.load(str(chart)).render(values, name="confab", namespace="chat")
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
    workflows = glob.glob(str(ROOT / ".github" / "workflows" / "*.yml"))
    assert {"ci.yml", "deploy.yml", "release.yml"} <= {os.path.basename(w) for w in workflows}
    run = subprocess.run(["actionlint", *workflows], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    run = subprocess.run(["check-jsonschema", "--builtin-schema", "vendor.dependabot", str(ROOT / ".github" / "dependabot.yml")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_action_is_pinned_and_deploys_follow_ci():
    for path in glob.glob(str(ROOT / ".github" / "workflows" / "*.yml")):
        workflow = yaml.safe_load(open(path))
        for job in workflow["jobs"].values():
            for step in job.get("steps", []):
                if "uses" in step:
                    assert "@" in step["uses"] and not step["uses"].endswith(("@main", "@master")), (path, step["uses"])
                if step.get("uses", "").startswith("azure/setup-helm"):
                    assert step["with"]["version"].startswith("v"), "Helm is pinned"
            text = json.dumps(job)
            assert "--reuse-values" not in text, "committed values, never --reuse-values"
    deploy = yaml.safe_load(open(ROOT / ".github" / "workflows" / "deploy.yml"))
    on = deploy.get(True) or deploy["on"]  # YAML 1.1 reads the key `on` as true
    assert on["workflow_run"]["workflows"] == ["ci"], "deploys only what CI passed"
    assert "success" in deploy["jobs"]["publish"]["if"]
    steps = [s.get("run", "") for s in deploy["jobs"]["deploy"]["steps"]]
    crds = next(i for i, r in enumerate(steps) if "--server-side" in r)
    upgrade = next(i for i, r in enumerate(steps) if "helm upgrade" in r)
    assert crds < upgrade, "CRDs are applied server-side before helm upgrade"
    kind = yaml.safe_load(open(ROOT / ".github" / "workflows" / "ci.yml"))["jobs"]["kind-e2e"]
    images = [m["node_image"] for m in kind["strategy"]["matrix"]["include"]]
    assert len(images) >= 2 and all(":v1." in i for i in images), images
    assert images[0].split(":v")[1].startswith(KUBE_VERSIONS[0].rsplit(".", 1)[0]), "the oldest supported Kubernetes is tested"


def test_release_versions_agree_and_the_docs_install_a_pinned_release():
    cargo = re.search(r'^version = "([^"]+)"', (ROOT / "Cargo.toml").read_text(), re.M).group(1)
    chart = yaml.safe_load(open(CHART / "Chart.yaml"))
    assert chart["version"] == chart["appVersion"] == cargo
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in changelog
    assert re.search(rf"^## \[{re.escape(cargo)}\] - \d{{4}}-\d{{2}}-\d{{2}}$", changelog, re.M), "a dated section for this version"
    for doc in (ROOT / "README.md", ROOT / "docs" / "deploy.md", CHART / "README.md"):
        installs = re.findall(r"helm upgrade --install confab oci://\S+(?: \\\n\s*)?([^\n]*)", doc.read_text())
        assert installs, f"{doc.name} shows an install"
        for line in installs:
            assert f"--version {cargo}" in line, f"{doc.name}: install without the pinned version: {line}"


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


def values_of(name, **changes):
    values = yaml.safe_load(open(CHART / "ci" / name))
    for key, value in changes.items():
        node = values
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return values


def refused(values, needle):
    with pytest.raises(Exception) as e:
        render_values(values)
    assert needle in str(e.value), str(e.value)


def deployment(docs):
    return by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]


def test_every_extension_point_reaches_the_pod():
    docs = render(CHART / "ci" / "everything-values.yaml")
    spec = deployment(docs)
    c = spec["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["CONFAB_OTLP_ENDPOINT"] == "http://otel-collector.observability:4318"
    assert env["CONFAB_DATABASE_MAX_CONNECTIONS"] == "24"
    assert env["CONFAB_ATTACHMENTS_URL"] == "file:///attachments"
    assert {"configMapRef": {"name": "confab-extra"}} in c["envFrom"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts == {"data": "/data", "attachments": "/attachments", "db-ca": "/etc/confab/db-ca"}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["attachments"]["persistentVolumeClaim"]["claimName"] == "confab-attachments"
    assert volumes["db-ca"]["secret"]["secretName"] == "postgres-ca"
    assert [i["name"] for i in spec["initContainers"]] == ["wait-for-db"]
    assert [x["name"] for x in spec["containers"]] == ["confab", "cloud-sql-proxy"]
    assert spec["priorityClassName"] == "chat-critical"
    assert spec["securityContext"]["runAsUser"] == 10001
    assert c["startupProbe"]["failureThreshold"] == 120 and c["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["periodSeconds"] == 3 and c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["timeoutSeconds"] == 5
    # global: the registry mirror replaces the image's registry; both pull secrets are used.
    assert c["image"] == "registry.example.com/mirror/confab-chat/confab:0.1.0"
    assert spec["imagePullSecrets"] == [{"name": "mirror-pull"}, {"name": "ghcr-pull"}]
    selftest = by_kind(docs, "Pod")[0]["spec"]
    assert selftest["imagePullSecrets"] == spec["imagePullSecrets"], "helm test pulls the same image"
    monitor = by_kind(docs, "ServiceMonitor")[0]
    assert monitor["metadata"]["namespace"] == "monitoring"
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == ["chat"]
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["scrapeTimeout"] == "10s" and endpoint["relabelings"][0]["targetLabel"] == "node"
    assert endpoint["metricRelabelings"][0]["action"] == "drop"
    hpa = by_kind(docs, "HorizontalPodAutoscaler")[0]["spec"]
    assert hpa["behavior"] == {"scaleDown": {"stabilizationWindowSeconds": 1200, "policies": [{"type": "Percent", "value": 10, "periodSeconds": 300}]}}
    pdb = by_kind(docs, "PodDisruptionBudget")[0]["spec"]
    assert pdb["maxUnavailable"] == "25%" and "minAvailable" not in pdb
    rule = by_kind(docs, "PrometheusRule")[0]
    urls = [r["annotations"]["runbook_url"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
    assert urls and all(u.startswith("https://wiki.example.com/confab/runbooks#confab") for u in urls), urls
    policy = by_kind(docs, "NetworkPolicy")[0]["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert {"port": 53, "protocol": "UDP"} in policy["egress"][0]["ports"]
    assert policy["egress"][1]["to"][0]["ipBlock"]["cidr"] == "10.20.0.0/16"
    # Without the egress option the policy leaves egress alone.
    default = by_kind(render(CHART / "ci" / "default-values.yaml"), "NetworkPolicy")[0]["spec"]
    assert default["policyTypes"] == ["Ingress"] and "egress" not in default


def test_the_chart_works_as_a_subchart_with_global_values(tmp_path):
    parent = tmp_path / "platform"
    (parent / "charts").mkdir(parents=True)
    (parent / "Chart.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v2", "name": "platform", "version": "1.0.0",
        "dependencies": [{"name": "confab", "version": "0.1.0"}],
    }))
    shutil.copytree(CHART, parent / "charts" / "confab")
    values = {
        "global": {"imageRegistry": "mirror.example.com", "imagePullSecrets": [{"name": "pull"}], "team": "chat"},
        "confab": values_of("default-values.yaml"),
    }
    spec = deployment(render_values(values, chart=parent))
    assert spec["containers"][0]["image"] == "mirror.example.com/confab-chat/confab:0.1.0"
    assert spec["imagePullSecrets"] == [{"name": "pull"}]


def test_several_pods_with_unshared_attachments_are_refused():
    for changes in ({"attachments.url": ""}, {"attachments.url": "", "autoscaling.enabled": False, "replicaCount": 3}):
        refused(values_of("default-values.yaml", **changes), "attachments.url")
    # One pod keeps them on its disk; a shared volume or S3 serves several.
    one = values_of("default-values.yaml", **{"attachments.url": "", "autoscaling.enabled": False, "replicaCount": 1})
    env = {e["name"] for e in deployment(render_values(one))["containers"][0]["env"]}
    assert "CONFAB_ATTACHMENTS_URL" not in env


def test_the_route_needs_the_gateway_api_or_force():
    assert by_kind(render_values(values_of("default-values.yaml")), "HTTPRoute")
    assert not by_kind(render_values(values_of("default-values.yaml", **{"gateway.force": False})), "HTTPRoute")


def test_migrations_run_in_a_hook_job_before_the_pods():
    docs = render(CHART / "ci" / "default-values.yaml")
    job = by_kind(docs, "Job")[0]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["migrate"]
    # The hook runs before the release's own Secret exists: it reads a hook copy made before it.
    ref = container["env"][1]["valueFrom"]["secretKeyRef"]
    hook_secret = [s for s in by_kind(docs, "Secret") if s["metadata"]["name"] == ref["name"]][0]
    assert int(hook_secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(job["metadata"]["annotations"]["helm.sh/hook-weight"])
    env = {e["name"]: e.get("value") for e in deployment(docs)["containers"][0]["env"]}
    assert env["CONFAB_MIGRATE_ON_START"] == "false"
    # With an existing Secret the Job reads it directly; without the Job, pods migrate.
    existing = by_kind(render(CHART / "ci" / "keda-ingress-values.yaml"), "Job")[0]
    assert existing["spec"]["template"]["spec"]["containers"][0]["env"][1]["valueFrom"]["secretKeyRef"]["name"] == "confab-db"
    minimal = render(CHART / "ci" / "minimal-values.yaml")
    assert not by_kind(minimal, "Job")
    env = {e["name"]: e.get("value") for e in deployment(minimal)["containers"][0]["env"]}
    assert env["CONFAB_MIGRATE_ON_START"] == "true"


def test_production_values_keep_every_secret_out_of_the_chart():
    docs = render(CHART / "values-production.yaml")
    assert not by_kind(docs, "Secret"), "production values name existing Secrets only"
    refused(values_of("default-values.yaml", **{"jwt.generate": False}), "jwt.existingSecret")
