"""Generates the CustomResourceDefinitions (structural OpenAPI schemas) from the pydantic API models."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from modelops import GROUP, VERSION
from modelops.api.modelpool import ModelPoolSpec, ModelPoolStatus
from modelops.api.modelservice import ModelServiceSpec, ModelServiceStatus
from modelops.api.trainingjob import TrainingJobSpec, TrainingJobStatus

CATEGORY = "modelops"


@dataclass(frozen=True)
class Kind:
    """What a CRD needs beyond the schema."""

    kind: str
    plural: str
    short_names: list[str]
    spec: type[BaseModel]
    status: type[BaseModel]
    columns: list[dict[str, Any]]
    scale: dict[str, str] | None = None
    extra_root_rules: list[dict[str, str]] = field(default_factory=list)

    @property
    def file_name(self) -> str:
        return f"{self.kind.lower()}.yaml"


TRAINING_JOB = Kind(
    kind="TrainingJob", plural="trainingjobs", short_names=["tj"], spec=TrainingJobSpec, status=TrainingJobStatus,
    columns=[
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Workers", "type": "string", "jsonPath": ".status.workersReady"},
        {"name": "Progress", "type": "string", "jsonPath": ".status.progressSummary"},
        {"name": "Model", "type": "string", "jsonPath": ".status.model.name"},
        {"name": "Version", "type": "integer", "jsonPath": ".status.model.version"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
)

MODEL_SERVICE = Kind(
    kind="ModelService", plural="modelservices", short_names=["ms"], spec=ModelServiceSpec, status=ModelServiceStatus,
    columns=[
        {"name": "Model", "type": "string", "jsonPath": ".spec.model.name"},
        {"name": "Version", "type": "integer", "jsonPath": ".status.modelVersion"},
        {"name": "Ready", "type": "string", "jsonPath": ".status.ready"},
        {"name": "Canary", "type": "string", "jsonPath": ".status.canarySummary"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Accuracy", "type": "number", "jsonPath": ".status.stable.accuracy", "priority": 1},
        {"name": "Gate", "type": "string", "jsonPath": ".status.canary.evaluation.verdict", "priority": 1},
        {"name": "TrainingJob", "type": "string", "jsonPath": ".status.stable.lineage.trainingJob.name",
         "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
    scale={"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
           "labelSelectorPath": ".status.selector"},
)

MODEL_POOL = Kind(
    kind="ModelPool", plural="modelpools", short_names=["mp"], spec=ModelPoolSpec, status=ModelPoolStatus,
    columns=[
        {"name": "Servers", "type": "string", "jsonPath": ".status.serversReady"},
        {"name": "Models", "type": "integer", "jsonPath": ".status.models"},
        {"name": "Copies", "type": "integer", "jsonPath": ".status.copies"},
        {"name": "Memory", "type": "string", "jsonPath": ".status.memory"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Capacity", "type": "string", "jsonPath": ".spec.capacity", "priority": 1},
        {"name": "Evictions", "type": "integer", "jsonPath": ".status.totals.evictions", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
    # the floor of the server count: see api/modelpool.py
    scale={"specReplicasPath": ".spec.minServers", "statusReplicasPath": ".status.replicas",
           "labelSelectorPath": ".status.selector"},
)

KINDS = [TRAINING_JOB, MODEL_SERVICE, MODEL_POOL]


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema turned into a Kubernetes structural schema (no refs, no anyOf-null, OpenAPI v3)."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    definitions = schema.pop("$defs", {})
    structural: dict[str, Any] = _structural(schema, definitions)
    return structural


def _structural(node: Any, definitions: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_structural(item, definitions) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = definitions[node["$ref"].split("/")[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, definitions)
    if "anyOf" in node:  # Optional[X] is X that may be absent
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"unsupported union in API schema: {node['anyOf']}")
        merged = {**options[0], **{k: v for k, v in node.items() if k != "anyOf"}}
        if merged.get("default", ...) is None:
            merged.pop("default")
        return _structural(merged, definitions)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "title":
            continue
        if key == "properties":
            out[key] = {name: _structural(prop, definitions) for name, prop in value.items()}
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "const":
            out["enum"] = [value]
        else:
            out[key] = _structural(value, definitions)
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    if out.get("additionalProperties") is True:
        out.pop("additionalProperties")
        out["x-kubernetes-preserve-unknown-fields"] = True
    if out.get("additionalProperties") is False:
        out.pop("additionalProperties")
    return out


def crd(kind: Kind) -> dict[str, Any]:
    spec_schema = structural_schema(kind.spec)
    status_schema = structural_schema(kind.status)
    root: dict[str, Any] = {
        "type": "object",
        "description": spec_schema.get("description", ""),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
    }
    if kind.extra_root_rules:
        root["x-kubernetes-validations"] = kind.extra_root_rules
    subresources: dict[str, Any] = {"status": {}}
    if kind.scale:
        subresources["scale"] = kind.scale
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{kind.plural}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "modelops"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": kind.kind, "listKind": f"{kind.kind}List", "plural": kind.plural,
                      "singular": kind.kind.lower(), "shortNames": kind.short_names, "categories": [CATEGORY]},
            "versions": [{
                "name": VERSION, "served": True, "storage": True,
                "schema": {"openAPIV3Schema": root},
                "subresources": subresources,
                "additionalPrinterColumns": kind.columns,
            }],
        },
    }


def render(kind: Kind) -> str:
    header = "# Generated from the pydantic models in operator/modelops/api by `modelops crds`. Do not edit.\n"
    return header + yaml.safe_dump(crd(kind), sort_keys=False, width=120)


def write_crds(out: Path, *, check: bool = False, chart: Path | None = None) -> list[Path]:
    """Write every CRD into `out` (and the Helm chart's crds/ folder when given); with check, write
    nothing and return the files that differ."""
    changed = []
    for folder in (out, chart) if chart else (out,):
        for kind in KINDS:
            path = folder / kind.file_name
            text = render(kind)
            if path.exists() and path.read_text() == text:
                continue
            changed.append(path)
            if not check:
                folder.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    return changed
