"""The checked-in CRDs are exactly what the API models generate, and they are structural."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from modelops.api.crds import KINDS, crd, write_crds

REPO = Path(__file__).resolve().parents[2]


def test_checked_in_crds_match_the_models() -> None:
    drifted = write_crds(REPO / "crds", check=True, chart=REPO / "charts" / "modelops" / "crds")
    assert drifted == [], f"{drifted} differ from the API models: run `modelops crds`"


def walk(node: Any, path: str = "") -> list[str]:
    """Paths of schema nodes breaking structural rules (every node typed, no $ref/anyOf/nullable unions)."""
    problems = []
    if isinstance(node, dict):
        for banned in ("$ref", "anyOf", "oneOf", "allOf", "$defs", "title"):
            if banned in node:
                problems.append(f"{path}: {banned}")
        if "properties" in node or "items" in node:
            if "type" not in node:
                problems.append(f"{path}: no type")
        for key, value in node.get("properties", {}).items():
            if "type" not in value and not value.get("x-kubernetes-preserve-unknown-fields"):
                problems.append(f"{path}.{key}: no type")
            problems += walk(value, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            problems += walk(node["items"], f"{path}[]")
    return problems


def test_schemas_are_structural_with_status_subresource_and_columns() -> None:
    for kind in KINDS:
        definition = crd(kind)
        version = definition["spec"]["versions"][0]
        assert walk(version["schema"]["openAPIV3Schema"]) == []
        assert "status" in version["subresources"]
        assert version["additionalPrinterColumns"][-1]["name"] == "Age"
        assert definition["spec"]["names"]["categories"] == ["modelops"]
        text = (REPO / "crds" / kind.file_name).read_text()
        assert yaml.safe_load(text) == definition


def test_defaults_and_cel_rules_reach_the_schema() -> None:
    spec = crd(KINDS[0])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["workers"] == {
        "default": 1, "maximum": 128, "minimum": 1, "type": "integer",
        "description": spec["properties"]["workers"]["description"]}
    assert spec["properties"]["trainer"]["default"]["epochs"] == 10
    rules = [r["rule"] for r in spec["properties"]["trainer"]["x-kubernetes-validations"]]
    assert "!(has(self.dataset) && has(self.dataPath))" in rules
    learning_rate = spec["properties"]["trainer"]["properties"]["learningRate"]
    assert learning_rate["minimum"] == 0 and learning_rate["exclusiveMinimum"] is True
