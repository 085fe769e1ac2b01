"""The Helm chart rendered by the real helm (no cluster): lint, exact RBAC, hardened workload, peering, values."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelops.api.trainingjob import DEFAULT_TRAINER_IMAGE, TrainingJobSpec
from modelops.dev.cluster import build_tools

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "modelops"
KUBE_VERSION = "v1.33.13"
RELEASE, NAMESPACE = "mo", "ops"

Rules = dict[tuple[str, str], frozenset[str]]


def verbs(*names: str) -> frozenset[str]:
    return frozenset(names)


CRUD = verbs("get", "list", "watch", "create", "patch", "delete")
# THE list of API calls the operator makes. A rule added to or removed from the chart fails these tests
# until this table changes too (and the change is reviewed as a change of the operator's permissions).
NAMESPACED_RULES: Rules = {
    ("modelops.dev", "trainingjobs"): verbs("get", "list", "watch", "patch", "update", "delete"),
    ("modelops.dev", "modelservices"): verbs("get", "list", "watch", "patch", "update"),
    ("modelops.dev", "trainingjobs/status"): verbs("get", "patch", "update"),
    ("modelops.dev", "modelservices/status"): verbs("get", "patch", "update"),
    ("modelops.dev", "modelpools"): verbs("get", "list", "watch", "patch", "update"),
    ("modelops.dev", "modelpools/status"): verbs("get", "patch", "update"),
    ("", "pods"): CRUD,
    ("", "pods/status"): verbs("patch"),
    ("", "services"): CRUD,
    ("", "configmaps"): CRUD,
    ("", "events"): verbs("create", "patch"),
    ("apps", "deployments"): CRUD,
    ("autoscaling", "horizontalpodautoscalers"): CRUD,
    ("monitoring.coreos.com", "servicemonitors"): CRUD,
    ("monitoring.coreos.com", "podmonitors"): CRUD,
    ("discovery.k8s.io", "endpointslices"): CRUD,
    ("kueue.x-k8s.io", "workloads"): verbs("get", "list", "watch", "create", "delete"),
    ("kueue.x-k8s.io", "workloads/status"): verbs("patch"),
}
# Cluster-scoped kinds read whole in both modes (a PriorityClass's value, Kueue's ResourceFlavors).
CLUSTER_READ: Rules = {("scheduling.k8s.io", "priorityclasses"): verbs("list", "watch"),
                       ("kueue.x-k8s.io", "resourceflavors"): verbs("list", "watch")}
CRD_DISCOVERY: Rules = {("apiextensions.k8s.io", "customresourcedefinitions"): verbs("list", "watch")}
NAMESPACE_WATCH: Rules = {("", "namespaces"): verbs("list", "watch")}
CLUSTER_PEERING: Rules = {("kopf.dev", "clusterkopfpeerings"): verbs("get", "list", "watch", "patch")}
NAMESPACED_PEERING: Rules = {("kopf.dev", "kopfpeerings"): verbs("get", "list", "watch", "patch")}
TRAINER_RULES: Rules = {("", "pods"): verbs("get", "patch")}


@pytest.fixture(scope="module")
def tools() -> Path:
    return build_tools(REPO)


@pytest.fixture(scope="module")
def helm(tools: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(tools / "helm"), *args], capture_output=True, text=True, check=False)
        if check and result.returncode:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}")
        return result
    return run


@pytest.fixture(scope="module")
def render(helm: Callable[..., subprocess.CompletedProcess[str]]) -> Callable[..., list[dict[str, Any]]]:
    """`helm template` with the given --set/--set-json flags; the parsed documents."""
    def run(*flags: str) -> list[dict[str, Any]]:
        out = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION,
                   *flags).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]
    return run


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None,
         namespace: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
            and (namespace is None or d["metadata"].get("namespace") == namespace)]


def rules_of(role: dict[str, Any]) -> Rules:
    """A role's rules as {(apiGroup, resource): verbs}; wildcards, resourceNames and URLs are refused."""
    table: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, f"unexpected rule fields: {rule}"
        for value in (*rule["apiGroups"], *rule["resources"], *rule["verbs"]):
            assert "*" not in value, f"wildcard in {role['metadata']['name']}: {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                table.setdefault((group, resource), set()).update(rule["verbs"])
    return {key: frozenset(value) for key, value in table.items()}


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    [workload] = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    [container] = workload["spec"]["template"]["spec"]["containers"]
    return dict(container)


SERVICE_ACCOUNT = {"kind": "ServiceAccount", "name": f"{RELEASE}-modelops", "namespace": NAMESPACE}
VALUE_SETS = {
    "default": [],
    "namespaced": ["--set-json", 'watchNamespaces=["team-a","team-b"]'],
    "peering": ["--set", "peering.enabled=true", "--set", "replicaCount=2"],
    "priority-classes": ["--set", "priorityClasses.create=true"],
    "peering-namespaced": ["--set", "peering.enabled=true", "--set", "replicaCount=3",
                           "--set-json", 'watchNamespaces=["team-a"]'],
    "dashboards": ["--set", "dashboards.enabled=true", "--set", "metrics.serviceMonitor.enabled=true"],
    "activator": ["--set", "activator.enabled=true"],
}


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_chart_lints_and_renders(helm, render, values: list[str]) -> None:  # type: ignore[no-untyped-def]
    lint = helm("lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION, *values)
    assert "0 chart(s) failed" in lint.stdout
    kinds = {d["kind"] for d in render(*values)}
    assert {"ServiceAccount", "Service", "ClusterRole", "ClusterRoleBinding"} <= kinds


def test_priority_classes_recipe_puts_serving_above_training(render) -> None:  # type: ignore[no-untyped-def]
    assert not find(render(), "PriorityClass")  # cluster-wide objects: only when asked for
    classes = {c["metadata"]["name"]: c for c in find(render("--set", "priorityClasses.create=true"), "PriorityClass")}
    serving, training = classes["modelops-serving"], classes["modelops-training"]
    assert serving["value"] > training["value"] and training["preemptionPolicy"] == "Never"
    assert "preemptionPolicy" not in serving and not serving["globalDefault"]


def test_cluster_wide_rbac_is_exactly_the_operators_calls(render) -> None:  # type: ignore[no-untyped-def]
    docs = render()
    [role] = find(docs, "ClusterRole")
    assert rules_of(role) == NAMESPACED_RULES | CRD_DISCOVERY | CLUSTER_READ  # cluster-wide, kopf never lists namespaces
    [binding] = find(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [SERVICE_ACCOUNT]
    # The only namespaced Role is the trainer's.
    assert [r["metadata"]["name"] for r in find(docs, "Role")] == ["modelops-trainer"]
    assert not any(a.startswith("--namespace") for a in operator_container(docs)["args"])


def test_namespaced_rbac_is_a_role_per_watched_namespace(render) -> None:  # type: ignore[no-untyped-def]
    docs = render(*VALUE_SETS["namespaced"])
    [cluster_role] = find(docs, "ClusterRole")
    # CRDs and namespaces are cluster-scoped: kopf's discovery of them is all that stays cluster-wide.
    assert rules_of(cluster_role) == CRD_DISCOVERY | NAMESPACE_WATCH | CLUSTER_READ
    for namespace in ("team-a", "team-b"):
        [role] = find(docs, "Role", f"{RELEASE}-modelops", namespace)
        assert rules_of(role) == NAMESPACED_RULES
        [binding] = find(docs, "RoleBinding", f"{RELEASE}-modelops", namespace)
        assert binding["roleRef"]["name"] == role["metadata"]["name"]
        assert binding["subjects"] == [SERVICE_ACCOUNT]
    args = operator_container(docs)["args"]
    assert [a for a in args if a.startswith("--namespace")] == ["--namespace=team-a", "--namespace=team-b"]


ACTIVATOR_RULES: Rules = {("discovery.k8s.io", "endpointslices"): verbs("get", "list", "watch")}


@pytest.mark.parametrize(("flags", "namespaces"), [
    ([], []), (["--set-json", 'watchNamespaces=["team-a","team-b"]'], ["team-a", "team-b"])], ids=["cluster", "namespaced"])
def test_the_activator_reads_only_endpointslices(render, flags: list[str], namespaces: list[str]) -> None:  # type: ignore[no-untyped-def]
    """docs/scale-to-zero.md: its own Deployment (2 replicas, spread, a PDB), hardened like the operator, and
    get/list/watch on EndpointSlices as its only permission; off by default."""
    assert not find(render(*flags), "Deployment", f"{RELEASE}-modelops-activator")
    docs = render("--set", "activator.enabled=true", *flags)
    name = f"{RELEASE}-modelops-activator"
    account = {"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}
    bindings = find(docs, "ClusterRoleBinding", name) + find(docs, "RoleBinding", name)
    roles = find(docs, "ClusterRole", name) + find(docs, "Role", name)
    assert [r["metadata"].get("namespace") for r in roles] == (namespaces or [None])
    assert all(rules_of(role) == ACTIVATOR_RULES for role in roles)
    assert len(bindings) == len(roles) and all(b["subjects"] == [account] for b in bindings)
    [deployment] = find(docs, "Deployment", name)
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2 and pod["serviceAccountName"] == name
    assert pod["terminationGracePeriodSeconds"] == 300 + 15  # the drain outlasts the longest hold
    assert pod["affinity"]["podAntiAffinity"]
    [container] = pod["containers"]
    assert container["args"][0] == "activator"
    assert [a for a in container["args"] if a.startswith("--namespace")] == [f"--namespace={n}" for n in namespaces]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": 8000, "grpc": 8001, "admin": 9090}
    [service] = find(docs, "Service", name)
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    [budget] = find(docs, "PodDisruptionBudget", name)
    assert budget["spec"]["maxUnavailable"] == 1
    # the operator long-polls the activator pods' /demand: their addresses from its Service's EndpointSlices
    operator = next(w for kind in ("Deployment", "StatefulSet") for w in find(docs, kind)
                    if w["metadata"]["name"] == f"{RELEASE}-modelops")
    env = {e["name"]: e.get("value") for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MODELOPS_ACTIVATOR_SERVICE"] == f"{NAMESPACE}/{name}"
    if namespaces:  # the release's namespace is not among the watched ones: a Role of its own there
        [reader] = [r for r in find(docs, "Role", f"{RELEASE}-modelops-activator-endpoints")]
        assert reader["metadata"]["namespace"] == NAMESPACE
        assert rules_of(reader) == {("discovery.k8s.io", "endpointslices"): verbs("list")}


def test_peering_cluster_wide(render) -> None:  # type: ignore[no-untyped-def]
    docs = render(*VALUE_SETS["peering"])
    [role] = find(docs, "ClusterRole")
    assert rules_of(role) == NAMESPACED_RULES | CRD_DISCOVERY | CLUSTER_READ | CLUSTER_PEERING
    [peering] = find(docs, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == "modelops"
    # Its CRD is created by this same release: the object must be a hook that runs after it exists.
    assert peering["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    crds = {d["metadata"]["name"]: d for d in find(docs, "CustomResourceDefinition")}
    assert set(crds) == {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
    assert crds["clusterkopfpeerings.kopf.dev"]["spec"]["scope"] == "Cluster"
    assert crds["kopfpeerings.kopf.dev"]["spec"]["scope"] == "Namespaced"
    for crd in crds.values():
        status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert status["x-kubernetes-preserve-unknown-fields"] is True  # kopf writes one key per replica


def test_peering_gives_each_replica_its_own_priority(render) -> None:  # type: ignore[no-untyped-def]
    """kopf pauses every replica when two share a priority: the pod index of a StatefulSet tells them apart."""
    docs = render(*VALUE_SETS["peering"])
    [workload] = find(docs, "StatefulSet")
    assert workload["spec"]["replicas"] == 2 and not find(docs, "Deployment")
    container = operator_container(docs)
    assert "--peering=modelops" in container["args"] and "--priority=$(POD_INDEX)" in container["args"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['apps.kubernetes.io/pod-index']"
    assert env["POD_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_peering_namespaced(render) -> None:  # type: ignore[no-untyped-def]
    docs = render(*VALUE_SETS["peering-namespaced"])
    [role] = find(docs, "Role", f"{RELEASE}-modelops", "team-a")
    assert rules_of(role) == NAMESPACED_RULES | NAMESPACED_PEERING
    [cluster_role] = find(docs, "ClusterRole")
    assert rules_of(cluster_role) == CRD_DISCOVERY | NAMESPACE_WATCH | CLUSTER_READ
    [peering] = find(docs, "KopfPeering")
    assert (peering["metadata"]["namespace"], peering["metadata"]["name"]) == ("team-a", "modelops")
    # Without installing the CRDs the peering objects are ordinary release objects (removed on uninstall).
    docs = render(*VALUE_SETS["peering-namespaced"], "--set", "peering.installCRDs=false")
    assert not find(docs, "CustomResourceDefinition")
    [peering] = find(docs, "KopfPeering")
    assert "helm.sh/hook" not in (peering["metadata"].get("annotations") or {})


def test_several_replicas_need_peering(helm) -> None:  # type: ignore[no-untyped-def]
    base = ["template", RELEASE, str(CHART), "--kube-version", KUBE_VERSION, "--set", "replicaCount=2"]
    schema = helm(*base, check=False)
    assert schema.returncode != 0 and "peering.enabled" in schema.stderr
    # The templates refuse it too, for renders that skip the schema.
    template = helm(*base, "--skip-schema-validation", check=False)
    assert template.returncode != 0 and "replicaCount > 1 needs peering.enabled=true" in template.stderr


@pytest.mark.parametrize("bad", [
    ["--set", "unknownKey=1"],
    ["--set", "operator.logFormat=xml"],
    ["--set", "prometheus.url=prometheus:9090"],
    ["--set-json", 'watchNamespaces=["Not_A_Namespace"]'],
    ["--set", "activator.enabled=true", "--set", "activator.replicas=1"],  # one activator is a single point
])
def test_schema_rejects_bad_values(helm, bad: list[str]) -> None:  # type: ignore[no-untyped-def]
    result = helm("template", RELEASE, str(CHART), *bad, check=False)
    assert result.returncode != 0 and "schema" in result.stderr


def test_operator_workload_is_hardened(render) -> None:  # type: ignore[no-untyped-def]
    docs = render()
    [deployment] = find(docs, "Deployment")
    # One unpeered operator: Recreate never runs the old and the new pod side by side.
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == SERVICE_ACCOUNT["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = operator_container(docs)
    assert container["image"] == f"ghcr.io/modelops/operator:{chart_meta()['appVersion']}"
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["runAsNonRoot"] is True and security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    probe = container["livenessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert probe == {"path": "/healthz", "port": "health"} and ports == {"health": 8080, "metrics": 9090}
    assert container["args"] == ["run", "--liveness-port=8080", "--metrics-port=9090", "--log-format=json"]
    # The only writable path is an emptyDir at /tmp.
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"][0]["name"] == "tmp" and "emptyDir" in pod["volumes"][0]


def test_prometheus_address_is_a_value(render) -> None:  # type: ignore[no-untyped-def]
    env = {e["name"]: e.get("value") for e in operator_container(render())["env"]}
    assert env["MODELOPS_PROMETHEUS_URL"] == ""  # unset: autoscaling and analysis hold with a condition
    url = "http://prometheus-operated.monitoring.svc:9090"
    env = {e["name"]: e.get("value") for e in operator_container(render("--set", f"prometheus.url={url}"))["env"]}
    assert env["MODELOPS_PROMETHEUS_URL"] == url


def test_metrics_service_and_optional_service_monitor(render) -> None:  # type: ignore[no-untyped-def]
    docs = render()
    [service] = find(docs, "Service")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}]
    assert service["metadata"]["labels"]["app.kubernetes.io/component"] == "metrics"
    assert service["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    [deployment] = find(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert not find(docs, "ServiceMonitor")

    docs = render("--set", "metrics.serviceMonitor.enabled=true",
                  "--set", "metrics.serviceMonitor.labels.release=kube-prometheus-stack")
    [monitor] = find(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    # the per-resource series' `namespace` is the resource's, not the operator's (no exported_namespace)
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True


GRAFANA_BUILTINS = {"__rate_interval", "__range", "__interval"}


def test_dashboards_are_config_maps_for_the_grafana_sidecar(render) -> None:  # type: ignore[no-untyped-def]
    assert not find(render(), "ConfigMap")  # off by default
    shipped = {p.stem: json.loads(p.read_text()) for p in sorted((CHART / "dashboards").glob("*.json"))}
    assert set(shipped) == {"operator", "training", "serving"}
    maps = find(render("--set", "dashboards.enabled=true"), "ConfigMap")
    assert sorted(m["metadata"]["name"] for m in maps) == [f"{RELEASE}-modelops-dashboard-{n}" for n in sorted(shipped)]
    for config_map in maps:
        assert config_map["metadata"]["namespace"] == NAMESPACE
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert config_map["metadata"]["labels"]["app.kubernetes.io/part-of"] == "modelops"
        [(key, text)] = config_map["data"].items()
        name = config_map["metadata"]["name"].rsplit("-", 1)[1]
        assert key == f"modelops-{name}.json" and json.loads(text) == shipped[name]  # the file, as valid JSON
    assert len({board["uid"] for board in shipped.values()}) == 3

    docs = render("--set", "dashboards.enabled=true", "--set", "dashboards.label=dashboards.example.com/load",
                  "--set", "dashboards.labelValue=yes", "--set", "dashboards.namespace=monitoring",
                  "--set", "dashboards.annotations.grafana_folder=MLOps")
    for config_map in find(docs, "ConfigMap"):
        meta = config_map["metadata"]
        assert meta["namespace"] == "monitoring" and meta["annotations"] == {"grafana_folder": "MLOps"}
        assert meta["labels"]["dashboards.example.com/load"] == "yes" and "grafana_dashboard" not in meta["labels"]
    [config_map, *_] = find(render("--set", "dashboards.enabled=true", "--set", "dashboards.labelValue=1"), "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"  # a number is quoted


@pytest.mark.parametrize("name", ["operator", "training", "serving"])
def test_dashboard_json_is_complete(name: str) -> None:
    """Panels Grafana can place, every query on the dashboard's data source variable, only variables it defines."""
    board = json.loads((CHART / "dashboards" / f"{name}.json").read_text())
    assert board["uid"] == f"modelops-{name}" and "modelops" in board["tags"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert panels and len({p["id"] for p in board["panels"]}) == len(board["panels"])
    for panel in panels:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["title"] and panel["description"] and panel["targets"], panel
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
        for target in [*panel["targets"], panel]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            used = set(re.findall(r"\$\{?(\w+)", target["expr"]))
            assert used <= set(variables) | GRAFANA_BUILTINS, (panel["title"], used)
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert variable["query"]["query"].startswith("label_values(")


def test_trainer_identity_in_configured_namespaces(render) -> None:  # type: ignore[no-untyped-def]
    docs = render()
    [account] = find(docs, "ServiceAccount", "modelops-trainer", NAMESPACE)
    [role] = find(docs, "Role", "modelops-trainer", NAMESPACE)
    assert rules_of(role) == TRAINER_RULES
    [binding] = find(docs, "RoleBinding", "modelops-trainer", NAMESPACE)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "modelops-trainer", "namespace": NAMESPACE}]

    docs = render("--set-json", 'trainer.rbac.namespaces=["ml","research"]')
    assert {r["metadata"]["namespace"] for r in find(docs, "Role", "modelops-trainer")} == {"ml", "research"}
    assert not find(render("--set", "trainer.rbac.create=false"), "Role", "modelops-trainer")


def test_crds_ship_with_the_chart(helm) -> None:  # type: ignore[no-untyped-def]
    out = helm("template", RELEASE, str(CHART), "--include-crds", "--kube-version", KUBE_VERSION).stdout
    names = {d["metadata"]["name"] for d in yaml.safe_load_all(out) if d and d["kind"] == "CustomResourceDefinition"}
    generated = {yaml.safe_load(p.read_text())["metadata"]["name"] for p in (REPO / "crds").glob("*.yaml")}
    assert "trainingjobs.modelops.dev" in generated and generated <= names


def chart_meta() -> dict[str, Any]:
    return dict(yaml.safe_load((CHART / "Chart.yaml").read_text()))


def test_versions_and_images_agree() -> None:
    """Chart appVersion = package version; the trainer image the API defaults to is the one we build."""
    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    assert version and chart_meta()["appVersion"] == version.group(1)
    assert DEFAULT_TRAINER_IMAGE == f"ghcr.io/modelops/trainer:{version.group(1)}"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(values) <= set(schema["properties"])
    assert values["image"]["repository"] == "ghcr.io/modelops/operator"


def test_dockerfiles_match_the_chart() -> None:
    """The images run as the UID the chart's securityContext names, and only the trainer gets torch."""
    uid = yaml.safe_load((CHART / "values.yaml").read_text())["podSecurityContext"]["runAsUser"]
    operator = (REPO / "docker" / "operator.Dockerfile").read_text()
    trainer = (REPO / "docker" / "trainer.Dockerfile").read_text()
    for dockerfile in (operator, trainer):
        assert re.search(rf"^USER {uid}:{uid}$", dockerfile, re.M)
    assert "[trainer]" not in operator and "torch" not in operator.split("FROM")[-1].replace("no torch", "")
    assert "'.[trainer]'" in trainer and "cuda" in trainer.lower()


def test_examples_build_and_match_the_api(tools: Path) -> None:
    built = subprocess.run([str(tools / "kubectl"), "kustomize", str(REPO / "examples")],
                           capture_output=True, text=True, check=True).stdout
    docs = {d["kind"]: d for d in yaml.safe_load_all(built) if d}
    assert set(docs) == {"PersistentVolumeClaim", "TrainingJob", "ModelService"}
    assert docs["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
    job = TrainingJobSpec.model_validate(docs["TrainingJob"]["spec"])
    assert job.output.repository.persistent_volume_claim is not None
    assert job.output.repository.persistent_volume_claim.claim_name == "models"
    assert job.service_account_name == "modelops-trainer"  # the chart's trainer identity
    service = docs["ModelService"]["spec"]
    assert service["model"]["fromTrainingJob"] == docs["TrainingJob"]["metadata"]["name"]
    assert service["repository"] == {"persistentVolumeClaim": {"claimName": "models"}}
    for gitops in (REPO / "examples" / "gitops").glob("*.yaml"):
        paths = [d["spec"].get("path") or d["spec"].get("source", {}).get("path")
                 for d in yaml.safe_load_all(gitops.read_text()) if d and d["kind"] in ("Application", "Kustomization")]
        assert paths and all(p.strip("./") == "examples" for p in paths), gitops.name


def test_the_sequence_example_matches_the_api() -> None:
    from modelops.api.modelservice import ModelServiceSpec

    job, service = yaml.safe_load_all((REPO / "examples" / "sequences" / "orders.yaml").read_text())
    trainer = TrainingJobSpec.model_validate(job["spec"]).trainer
    assert (trainer.dataset, trainer.model) == ("synthetic-sequence", "transformer")
    assert ModelServiceSpec.model_validate(service["spec"]).model.from_training_job == job["metadata"]["name"]
