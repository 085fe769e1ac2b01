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
            if "type" not in value and not value.get("x-kubernetes-preserve-unknown-fields") and \
                    not value.get("x-kubernetes-int-or-string"):
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


def nodes(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every schema node with its path (properties by name, items as [], map values as {})."""
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, value in node.get("properties", {}).items():
            found += nodes(value, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            found += nodes(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            found += nodes(node["additionalProperties"], f"{path}{{}}")
    return found


def spec_schema(kind_name: str) -> dict[str, Any]:
    [kind] = [k for k in KINDS if k.kind == kind_name]
    return crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def test_no_raw_regex_reaches_a_user_and_every_rule_says_why() -> None:
    """Patterns become CEL rules with messages: the API server would answer `should match '^[0-9]+...'`."""
    for kind in KINDS:
        for path, node in nodes(crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]):
            assert "pattern" not in node, f"{kind.kind}{path}: a raw pattern"
            for rule in node.get("x-kubernetes-validations", []):
                assert len(rule.get("message", "")) > 10, f"{kind.kind}{path}: rule without a message: {rule}"
            if node.get("type") == "string" and node.get("x-kubernetes-validations"):
                assert "maxLength" in node, f"{kind.kind}{path}: a CEL rule on an unbounded string"


def test_every_field_naming_an_object_is_checked_as_a_name() -> None:
    from modelops.api.base import DNS1123_SUBDOMAIN, lit

    expected = {
        "TrainingJob": [".serviceAccountName", ".priorityClassName",
                        ".output.repository.persistentVolumeClaim.claimName",
                        ".env[].valueFrom.configMapKeyRef.name", ".env[].valueFrom.secretKeyRef.name"],
        "ModelService": [".model.fromTrainingJob", ".repository.persistentVolumeClaim.claimName", ".pool"],
        "ModelPool": [".priorityClassName", ".repository.persistentVolumeClaim.claimName"],
    }
    for kind_name, paths in expected.items():
        found = dict(nodes(spec_schema(kind_name)))
        for path in paths:
            node = found[path]
            [rule] = node["x-kubernetes-validations"]
            assert rule["rule"] == f"self.matches({lit(DNS1123_SUBDOMAIN)})", path
            named = ".".join(path.split(".")[-2:]) if "KeyRef" in path else path.split(".")[-1]
            assert rule["message"].startswith(f"{named} must be the name of a"), (path, rule["message"])
            assert node["maxLength"] == 253


def test_readable_rules_reach_the_schema() -> None:
    job = dict(nodes(spec_schema("TrainingJob")))
    service = dict(nodes(spec_schema("ModelService")))
    assert job[".trainer.hiddenSizes[]"]["minimum"] == 1
    dims = service[".model.signature.inputs[].dims[]"]
    assert dims["x-kubernetes-validations"][0]["rule"] == "self >= 1 || self == -1"
    assert job[".image"]["x-kubernetes-validations"][0]["message"] == "image must be an image reference without spaces"
    assert service[".triton.image"]["x-kubernetes-validations"][0]["message"].startswith("image must be")
    assert "cpu must be a quantity such as 500m or 2" in job[".resources.cpu"]["x-kubernetes-validations"][0]["message"]
    for schema in (job, service):
        assert "messageExpression" in schema[".nodeSelector"]["x-kubernetes-validations"][0]
        assert schema[".nodeSelector{}"]["maxLength"] == 63
        messages = [r["message"] for r in schema[".tolerations[]"]["x-kubernetes-validations"]]
        assert "a toleration with operator Exists must not set value" in messages


def test_the_operator_checks_with_the_same_syntax() -> None:
    """The pydantic side of the rules (the CEL side runs on the API server: tests/integration/test_admission.py)."""
    import re

    from modelops.api.base import QUANTITY, has_no_space, is_absolute_path, is_label_key, is_label_value

    assert all(is_label_key(k) for k in ("gpu", "nvidia.com/gpu.present", "a_b.c-d", "x" * 63, "kubernetes.io/arch"))
    assert not any(is_label_key(k) for k in ("-bad", "bad-", "a/b/c", "x" * 64, "Example.com/x", "nvidia.com/",
                                             "/x", "\U0001F680", "a b", "a" * 254 + "/x", "ok\n"))
    assert all(is_label_value(v) for v in ("", "true", "g5.xlarge", "v" * 63))
    assert not any(is_label_value(v) for v in ("v" * 64, "a b", "-x", "x_"))
    assert all(re.fullmatch(QUANTITY, q) for q in ("1", "500m", "1.5", "4Gi", "2e3", ".5", "+1", "1E"))
    assert not any(re.fullmatch(QUANTITY, q) for q in ("", "2 cores", "-1", "4GB", "1.5 cpus", "m", "1.2.3"))
    assert has_no_space("nvcr.io/nvidia/tritonserver:24.08-py3")
    assert not any(has_no_space(i) for i in ("", "a b", "a\tb", "a\u00a0b", "a\u200bb", "a\x00"))
    assert is_absolute_path("/srv/models..v2/x") and not is_absolute_path("/srv/../etc")
    assert not is_absolute_path("srv") and not is_absolute_path("/srv/..")


def test_the_model_pool_crd_scales_its_floor_and_checks_its_bounds() -> None:
    from modelops.api.crds import MODEL_POOL

    version = crd(MODEL_POOL)["spec"]["versions"][0]
    assert version["subresources"]["scale"] == {"specReplicasPath": ".spec.minServers",
                                                "statusReplicasPath": ".status.replicas",
                                                "labelSelectorPath": ".status.selector"}
    assert [c["name"] for c in version["additionalPrinterColumns"] if "priority" not in c] == \
        ["Servers", "Models", "Copies", "Memory", "Phase", "Age"]
    spec = spec_schema("ModelPool")
    assert {"rule": "self.minServers <= self.maxServers", "message": "minServers must not exceed maxServers"} in \
        spec["x-kubernetes-validations"]
    assert spec["required"] == ["repository", "capacity"]
    assert spec["properties"]["overcommit"]["maximum"] == 1
    assert "capacity must be a quantity" in spec["properties"]["capacity"]["x-kubernetes-validations"][0]["message"]


def test_a_pooled_model_service_is_refused_what_a_pool_cannot_do_by_both_checkers() -> None:
    """The same four rules in the CRD (CEL) and in pydantic; test_admission.py runs the CEL side."""
    import pytest
    from pydantic import ValidationError

    from modelops.api.modelservice import POOL_RULES, ModelServiceSpec

    assert all(rule in spec_schema("ModelService")["x-kubernetes-validations"] for rule in POOL_RULES)
    signature = {"inputs": [{"name": "I", "datatype": "FP32", "dims": [4]}],
                 "outputs": [{"name": "O", "datatype": "FP32", "dims": [2]}]}
    base = {"model": {"name": "m", "version": 1, "signature": signature}, "pool": "shared",
            "repository": {"hostPath": {"path": "/srv/models"}}}
    assert ModelServiceSpec.model_validate({**base, "resources": {"memory": "300Mi"}}).pool == "shared"
    for bad, words in [({"repository": {"uri": "s3://bucket/models"}}, "not uri"),
                       ({"resources": {"gpus": 1}}, "resources.gpus and resources.cpu"),
                       ({"resources": {"cpu": "2"}}, "resources.gpus and resources.cpu"),
                       ({"triton": {"extraArgs": ["--log-verbose=1"]}}, "server-wide"),
                       ({"autoscaling": {"target": 5, "provider": "hpa"}}, "HorizontalPodAutoscaler")]:
        with pytest.raises(ValidationError, match=words):
            ModelServiceSpec.model_validate({**base, **bad})
        ModelServiceSpec.model_validate({**base, **bad, "pool": None})  # the same without a pool is fine


def test_zero_replicas_are_allowed_with_the_builtin_autoscaler_only_by_both_checkers() -> None:
    """minReplicas 0 (scale to zero) with its idle period; an HPA cannot bring a ModelService back from zero."""
    import pytest
    from pydantic import ValidationError

    from modelops.api.modelservice import ZERO_HPA, Autoscaling

    schema = spec_schema("ModelService")["properties"]["autoscaling"]
    assert schema["properties"]["minReplicas"]["minimum"] == 0
    assert schema["properties"]["scaleToZeroAfterSeconds"]["default"] == 300
    assert {"rule": "self.minReplicas >= 1 || self.provider == 'builtin'", "message": ZERO_HPA} in \
        schema["x-kubernetes-validations"]
    zero = Autoscaling.model_validate({"minReplicas": 0, "target": 5})
    assert (zero.min_replicas, zero.scale_to_zero_after_seconds) == (0, 300)
    with pytest.raises(ValidationError, match="HorizontalPodAutoscaler cannot scale to zero"):
        Autoscaling.model_validate({"minReplicas": 0, "target": 5, "provider": "hpa"})
    with pytest.raises(ValidationError):
        Autoscaling.model_validate({"minReplicas": 0, "target": 5, "scaleToZeroAfterSeconds": 1})
