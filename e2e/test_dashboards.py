"""Every query of the chart's Grafana dashboards against the real Prometheus scraping real tritonserver pods
(the kubelet stand-in) and the operator's own /metrics: it parses and runs, returns data once a job trained,
a ModelService served load, scaled and promoted a canary, and names only metrics and labels that exist."""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lifecycle import Lifecycle, Space
from load import LoadGenerator
from prometheus import PrometheusServer
from support import REPO, eventually

pytestmark = [pytest.mark.cluster, pytest.mark.triton, pytest.mark.slow]

DASHBOARDS = REPO / "charts" / "modelops" / "dashboards"
SAMPLE = REPO / "model_repo" / "digits" / "1"
SIGNATURE = {"inputs": [{"name": "INPUT__0", "datatype": "FP32", "dims": [1, 8, 8]}],
             "outputs": [{"name": "OUTPUT__0", "datatype": "FP32", "dims": [10]}]}
NAME = "digits"
# The template variables as Grafana would fill them in for this test's objects ($__rate_interval: 4 scrapes).
RATE_INTERVAL = "10s"


# ---- what the dashboards ask ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Query:
    where: str  # dashboard / panel / refId, or dashboard / variable
    expr: str


def dashboard_queries(board: dict[str, Any]) -> tuple[list[Query], list[Query]]:
    """(panel queries, variable queries) of one dashboard, rows' nested panels included."""
    panels: list[Query] = []
    stack = list(board["panels"])
    while stack:
        panel = stack.pop(0)
        stack += panel.get("panels", [])
        for target in panel.get("targets", []):
            panels.append(Query(f"{board['title']} / {panel['title']} / {target['refId']}", target["expr"]))
    variables = [Query(f"{board['title']} / ${v['name']}", v["query"]["query"])
                 for v in board["templating"]["list"] if v["type"] == "query"]
    return panels, variables


def substitute(expr: str, values: dict[str, str]) -> str:
    for name in sorted(values, key=len, reverse=True):  # $__range before $__rate_interval's prefix, etc.
        expr = expr.replace(f"${{{name}}}", values[name]).replace(f"${name}", values[name])
    assert "$" not in expr, f"a template variable the test does not fill in: {expr}"
    return expr


TOKEN = re.compile(r"""\s*(?:(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(?P<range>\[[^\]]*\])
                   |(?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)|(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
                   |(?P<op>=~|!~|!=|==|<=|>=|[-+*/%^(){},=<>]))""", re.X)
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2"}


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: tuple[tuple[str, str, str], ...]  # (label, operator, value)

    def promql(self) -> str:
        return self.metric + "{" + ",".join(f"{n}{o}{json.dumps(v)}" for n, o, v in self.matchers) + "}"


def parse(expr: str) -> tuple[list[Selector], set[str]]:
    """The series selectors of a PromQL expression and the labels its by/without/on/ignoring clauses name.
    A small lexer, enough for what dashboards write: an identifier before `(` is a function or an
    aggregation (so is one before `by`/`without`), one of GROUPING takes a label list, anything else is a
    metric name."""
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(expr.rstrip()):
        match = TOKEN.match(expr, position)
        assert match and match.end() > position, f"cannot read {expr[position:]!r} in {expr!r}"
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        position = match.end()
    selectors, grouping = [], set()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "ident" and text in GROUPING and following == "(":
            i += 2
            while tokens[i][1] != ")":
                if tokens[i][0] == "ident":
                    grouping.add(tokens[i][1])
                i += 1
        elif kind == "ident" and text not in KEYWORDS and following != "(" and following not in GROUPING:
            matchers = []
            if following == "{":
                i += 2
                while tokens[i][1] != "}":
                    if tokens[i][1] != ",":
                        (_, label), (_, op), (_, value) = tokens[i:i + 3]
                        matchers.append((label, op, json.loads(value) if value[0] == '"' else value[1:-1]))
                        i += 2
                    i += 1
            selectors.append(Selector(text, tuple(matchers)))
        i += 1
    return selectors, grouping


def test_parse_reads_selectors_and_grouping() -> None:
    selectors, grouping = parse('histogram_quantile(0.99, sum by (kind, le) (rate(a_bucket{x="1", y=~"b|c"}[5m]))) '
                                '/ on (job) group_left () b and sum(c) without (d)')
    assert selectors == [Selector("a_bucket", (("x", "=", "1"), ("y", "=~", "b|c"))), Selector("b", ()),
                         Selector("c", ())]
    assert grouping == {"kind", "le", "job", "d"}


# ---- the world they are asked about --------------------------------------------------------------------

def training_job(repository: Path) -> dict[str, Any]:
    return {"apiVersion": "modelops.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": NAME},
            "spec": {"workers": 1,
                     "trainer": {"dataset": "digits", "epochs": 12, "batchSize": 16},
                     "output": {"modelName": NAME, "repository": {"hostPath": {"path": str(repository)}}}}}


def pool(repository: Path) -> list[dict[str, Any]]:
    """A ModelPool of one server and a ModelService placed on it: the pool panels' series."""
    return [{"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelPool", "metadata": {"name": NAME},
             "spec": {"repository": {"hostPath": {"path": str(repository)}}, "resources": {"cpu": "1"},
                      "capacity": "700Mi", "minServers": 1, "maxServers": 1}},
            {"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelService", "metadata": {"name": f"{NAME}-pooled"},
             "spec": {"pool": NAME, "model": {"name": NAME, "version": 1, "signature": SIGNATURE},
                      "repository": {"hostPath": {"path": str(repository)}},
                      "triton": {"backend": "python", "maxBatchSize": 16}, "resources": {"memory": "300Mi"},
                      "rollout": {"gates": {"evaluation": {"enabled": False}}}}}]


def model_service(repository: Path, version: int) -> dict[str, Any]:
    return {"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelService", "metadata": {"name": NAME},
            "spec": {
                "model": {"name": NAME, "version": version, "signature": SIGNATURE},
                "repository": {"hostPath": {"path": str(repository)}},
                "triton": {"backend": "python", "maxBatchSize": 16},
                "replicas": 1,
                "autoscaling": {"minReplicas": 1, "maxReplicas": 2, "metric": "inferenceRatePerReplica",
                                "target": 5, "scaleUp": {"periodSeconds": 5}},
                # no panel shows the evaluation gate, which would add an evaluation pod per canary: off
                "rollout": {"steps": [{"weight": 50, "pauseSeconds": 10}],
                            "analysis": {"maxErrorRate": 0.05, "maxP99LatencyMs": 5000, "minRequests": 10},
                            "gates": {"evaluation": {"enabled": False}}, "progressDeadlineSeconds": 180},
            }}


def exercise(space: Space, repository: Path) -> None:
    """Train, serve under load (scaling out), and promote a canary: every panel then has something to show."""
    for version in (1, 2):
        shutil.copytree(SAMPLE, repository / NAME / str(version))
    Lifecycle(space, repository).setup()  # the trainer may report progress on its pod
    space.apply(training_job(repository / "trained"), model_service(repository, 1), *pool(repository))
    started = time.monotonic()

    def status(kind: str) -> dict[str, Any]:
        return dict(space.get(kind, NAME).get("status") or {})

    def wait(kind: str, check: Callable[[dict[str, Any]], object], timeout: float, what: str) -> None:
        try:
            eventually(lambda: check(status(kind)), timeout, what, interval=1)
        except AssertionError as error:
            raise AssertionError(f"{error}; {kind} status: {json.dumps(status(kind))}") from None
        print(f"{time.monotonic() - started:5.0f}s {what}")

    wait("ms", lambda s: s.get("readyReplicas", 0) >= 1, 120, "the ModelService serves")
    address = f"{space.get('service', NAME)['spec']['clusterIP']}:8000"
    inputs = np.random.default_rng(0).random((32, 1, 8, 8), dtype=np.float32)
    load = LoadGenerator(address, NAME, inputs, rate=15, workers=3, max_seconds=300)
    load.start()
    try:
        wait("ms", lambda s: s.get("readyReplicas", 0) >= 2, 90, "scaled out under load")
        space.kubectl("patch", "ms", NAME, "--type=merge", "-p", json.dumps({"spec": {"model": {"version": 2}}}))
        wait("ms", lambda s: s.get("canary"), 30, "the canary started")
        wait("ms", lambda s: s.get("modelVersion") == 2 and not s.get("canary"), 120, "the canary promoted")
    finally:
        load.stop()
    wait("tj", lambda s: s.get("phase") in ("Succeeded", "Failed"), 120, "the job finished")
    assert status("tj")["phase"] == "Succeeded", status("tj")
    assert load.stats.ok > 100, load.stats
    wait("mp", lambda s: s.get("copies", 0) >= 1 and s.get("totals", {}).get("loads", 0) >= 1, 180,
         "the pool holds a copy")
    time.sleep(6)  # a few more scrapes: the last passes and the promotion are in Prometheus


# ---- the test ------------------------------------------------------------------------------------------

def test_every_dashboard_query_runs_returns_data_and_names_real_series(  # type: ignore[no-untyped-def]
        kube, kubelet, serving_operator, prometheus: PrometheusServer, tmp_path: Path) -> None:
    started = time.time()
    exercise(Space(kube.cluster, kube.namespace), tmp_path / "models")
    end = time.time()
    values = {"namespace": kube.namespace, "modelservice": NAME, "trainingjob": NAME,
              "__rate_interval": RATE_INTERVAL, "__range": f"{math.ceil(end - started)}s"}
    window = {"start": started, "end": end}

    names = set(prometheus.api("label/__name__/values", **window))
    labels_of: dict[str, set[str]] = {}  # metric -> every label its series have

    def series(selector: Selector) -> list[dict[str, str]]:
        found = prometheus.api("series", **{"match[]": selector.promql()}, **window)
        for one in found:
            labels_of.setdefault(one["__name__"], set()).update(one)
        return list(found)

    problems: list[str] = []
    checked = 0
    for path in sorted(DASHBOARDS.glob("*.json")):
        panels, variables = dashboard_queries(json.loads(path.read_text()))
        assert panels, path
        for query in panels:
            expr = substitute(query.expr, values)
            selectors, grouping = parse(expr)
            assert selectors, f"{query.where}: no series selector found in {expr}"
            try:
                prometheus.api("query", query=expr, time=end)  # parses and runs
                result = prometheus.api("query_range", query=expr, step=2, **window)["result"]
            except Exception as error:  # noqa: BLE001 - reported with the others
                problems.append(f"{query.where}: {error}")
                continue
            if not any(math.isfinite(float(v)) for one in result for _, v in one["values"]):
                problems.append(f"{query.where}: no data: {expr}")
            for selector in selectors:
                if selector.metric not in names:
                    problems.append(f"{query.where}: no metric {selector.metric} in Prometheus")
                elif not series(selector):
                    problems.append(f"{query.where}: no series match {selector.promql()}")
            known = set().union(*(labels_of.get(s.metric, set()) for s in selectors))
            if grouping - known:
                problems.append(f"{query.where}: grouping by {sorted(grouping - known)}, which no series of "
                                f"{sorted({s.metric for s in selectors})} has")
            checked += 1
        for query in variables:  # label_values(<selector>, <label>): the label has values, ours among them
            match = re.fullmatch(r"label_values\((.+), *(\w+)\)", query.expr)
            assert match, f"{query.where}: not label_values(selector, label): {query.expr}"
            [selector], _ = parse(substitute(match.group(1), values))
            found = {one.get(match.group(2)) for one in series(selector)}
            expected = {"namespace": kube.namespace}.get(match.group(2), NAME)
            if expected not in found:
                problems.append(f"{query.where}: {query.expr} gives {sorted(map(str, found))}, not {expected}")
            checked += 1
    print(f"{checked} dashboard queries checked in {time.time() - end:.1f}s "
          f"after {end - started:.0f}s of training, serving, scaling and a canary")
    assert not problems, "\n".join(problems)
    assert checked >= 45
