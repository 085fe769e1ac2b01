"""Bad input refused at admission: every field that names an object, an image, a label, a quantity, an env var
or a tensor is checked by the CRD schema (CEL rules with readable messages) on the real API server, and the
operator's pydantic models refuse the same specs (they read what the API server stored).

Each invalid case says which field the API server must name and which words it must use; the valid edge
cases must be accepted as they are."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from modelops.api.modelservice import ModelServiceSpec
from modelops.api.trainingjob import TrainingJobSpec

API = "modelops.dev/v1alpha1"
SIGNATURE = {"inputs": [{"name": "INPUT__0", "datatype": "FP32", "dims": [1, 8, 8]}],
             "outputs": [{"name": "OUTPUT__0", "datatype": "FP32", "dims": [10]}]}
SUBDOMAIN = "must be the name of a"
LONG = "Too long: may not be more than"


def training_job(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"output": {"modelName": "digits", "repository": {"hostPath": {"path": "/srv/models"}}},
                            "trainer": {"epochs": 1}}
    body.update(spec)
    return {"apiVersion": API, "kind": "TrainingJob", "metadata": {"name": "probe"}, "spec": body}


def model_service(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": {"name": "digits", "version": 1, "signature": copy.deepcopy(SIGNATURE)},
                            "repository": {"hostPath": {"path": "/srv/models"}}}
    body.update(spec)
    return {"apiVersion": API, "kind": "ModelService", "metadata": {"name": "probe"}, "spec": body}


def follower(job: str) -> dict[str, Any]:
    return model_service(model={"name": "digits", "fromTrainingJob": job})


def signature(*, dims: list[int] | None = None, name: str = "INPUT__0", datatype: str = "FP32") -> dict[str, Any]:
    body = model_service()
    body["spec"]["model"]["signature"]["inputs"] = [{"name": name, "datatype": datatype, "dims": dims or [4]}]
    return body


def env(**var: Any) -> dict[str, Any]:
    return training_job(env=[{"name": "TRAINER_MODE", **var}])


def toleration(**fields: Any) -> dict[str, Any]:
    return training_job(tolerations=[fields])


def case(body: dict[str, Any], field: str, words: str, id: str) -> Any:  # noqa: A002
    return pytest.param(body, field, words, id=id)


INVALID = [
    # Names of other objects: a name, never a path (the namespace boundary, issue 16 item 1).
    case(follower("../other-ns/jobs/x"), "spec.model.fromTrainingJob", "fromTrainingJob must be the name of a "
         "TrainingJob in this namespace", "follow-path-segments"),
    case(follower("a/b"), "spec.model.fromTrainingJob", SUBDOMAIN, "follow-slash"),
    case(follower("Vision-Job"), "spec.model.fromTrainingJob", SUBDOMAIN, "follow-upper-case"),
    case(follower("x" * 300), "spec.model.fromTrainingJob", LONG, "follow-300-chars"),
    case(follower(""), "spec.model.fromTrainingJob", SUBDOMAIN, "follow-empty"),
    case(follower("job%2F..%2Fsecret"), "spec.model.fromTrainingJob", SUBDOMAIN, "follow-url-escaped"),
    case(follower("trailing-dash-"), "spec.model.fromTrainingJob", SUBDOMAIN, "follow-trailing-dash"),
    case(model_service(repository={"persistentVolumeClaim": {"claimName": "models/../shared"}}),
         "spec.repository.persistentVolumeClaim.claimName", "claimName must be the name of a PersistentVolumeClaim",
         "serve-claim-path"),
    case(training_job(output={"modelName": "digits", "repository": {"persistentVolumeClaim": {"claimName":
                                                                                              "models_v2"}}}),
         "spec.output.repository.persistentVolumeClaim.claimName", "claimName must be", "train-claim-underscore"),
    case(training_job(serviceAccountName="kube-system/default"), "spec.serviceAccountName",
         "serviceAccountName must be the name of a ServiceAccount", "service-account-path"),
    case(training_job(serviceAccountName="Trainer"), "spec.serviceAccountName", "serviceAccountName must be",
         "service-account-upper-case"),
    case(training_job(serviceAccountName="t" * 260), "spec.serviceAccountName", LONG, "service-account-260-chars"),
    case(training_job(priorityClassName="high priority"), "spec.priorityClassName",
         "priorityClassName must be the name of a PriorityClass", "priority-class-space"),
    case(training_job(priorityClassName="-urgent"), "spec.priorityClassName", "priorityClassName must be",
         "priority-class-leading-dash"),
    case(env(valueFrom={"secretKeyRef": {"name": "../kube-system/admin-token", "key": "token"}}),
         "spec.env[0].valueFrom.secretKeyRef.name", "secretKeyRef.name must be the name of a Secret",
         "env-secret-path"),
    case(env(valueFrom={"configMapKeyRef": {"name": "Settings", "key": "mode"}}),
         "spec.env[0].valueFrom.configMapKeyRef.name", "configMapKeyRef.name must be the name of a ConfigMap",
         "env-configmap-upper-case"),
    case(env(valueFrom={"configMapKeyRef": {"name": "settings", "key": "a/b"}}),
         "spec.env[0].valueFrom.configMapKeyRef.key", "configMapKeyRef.key must be a ConfigMap key",
         "env-configmap-key-slash"),
    # Paths and model names that become paths.
    case(training_job(output={"modelName": "../digits", "repository": {"hostPath": {"path": "/srv/models"}}}),
         "spec.output.modelName", "model name must start with a letter or digit", "model-name-backstep"),
    case(training_job(output={"modelName": "digits/1", "repository": {"hostPath": {"path": "/srv/models"}}}),
         "spec.output.modelName", "model name must", "model-name-slash"),
    case(model_service(model={"name": "my model", "version": 1, "signature": SIGNATURE}), "spec.model.name",
         "model name must", "served-model-name-space"),
    case(training_job(output={"modelName": "digits", "repository": {"hostPath": {"path": "/srv/../etc"}}}),
         "spec.output.repository.hostPath.path", "hostPath.path must be an absolute path", "host-path-backstep"),
    case(model_service(repository={"hostPath": {"path": "srv/models"}}), "spec.repository.hostPath.path",
         "hostPath.path must be an absolute path", "host-path-relative"),
    case(training_job(output={"modelName": "digits", "repository": {"hostPath": {"path": "/srv/m"},
                                                                    "mountPath": "models"}}),
         "spec.output.repository.mountPath", "mountPath must be an absolute path", "mount-path-relative"),
    case(model_service(repository={"uri": "s3://bucket/my models"}), "spec.repository.uri",
         "uri must be an object-store URI", "uri-space"),
    case(model_service(repository={"uri": "https://example.com/models"}), "spec.repository.uri",
         "uri must be an object-store URI", "uri-scheme"),
    # Images.
    case(training_job(image="ghcr.io/team/trainer: 1.0"), "spec.image", "image must be an image reference "
         "without spaces", "train-image-space"),
    case(training_job(image="ghcr.io/team/trainer:1.0\t"), "spec.image", "image must be", "train-image-tab"),
    case(training_job(image=""), "spec.image", "image must be", "train-image-empty"),
    case(model_service(triton={"image": "nvcr.io/nvidia/tritonserver:24.08 -py3"}), "spec.triton.image",
         "image must be an image reference without spaces", "triton-image-space"),
    case(model_service(triton={"image": "nvcr.io/nvidia/tritonserver\u00a0:24.08"}), "spec.triton.image",
         "image must be", "triton-image-no-break-space"),
    # Trainer and signature numbers.
    case(training_job(trainer={"hiddenSizes": [128, -4]}), "spec.trainer.hiddenSizes[1]",
         "greater than or equal to 1", "hidden-size-negative"),
    case(training_job(trainer={"hiddenSizes": [0]}), "spec.trainer.hiddenSizes[0]", "greater than or equal to 1",
         "hidden-size-zero"),
    case(training_job(trainer={"model": "transformer", "embeddingDim": 30, "heads": 4}), "spec.trainer",
         "embeddingDim must be a multiple of heads for the transformer", "transformer-heads-divide-width"),
    case(training_job(trainer={"model": "gru", "vocabSize": 2}), "spec.trainer.vocabSize",
         "greater than or equal to 3", "vocab-too-small"),
    case(signature(dims=[0]), "spec.model.signature.inputs[0].dims[0]",
         "dims entries must be a size of at least 1, or -1", "dims-zero"),
    case(signature(dims=[8, -2]), "spec.model.signature.inputs[0].dims[1]", "dims entries must be", "dims-minus-2"),
    case(signature(name="INPUT 0"), "spec.model.signature.inputs[0].name", "tensor name must be non-empty",
         "tensor-name-space"),
    case(signature(name='x" } ] output [ {'), "spec.model.signature.inputs[0].name", "tensor name must",
         "tensor-name-quote"),
    case(signature(name=""), "spec.model.signature.inputs[0].name", "tensor name must", "tensor-name-empty"),
    case(signature(datatype="FLOAT"), "spec.model.signature.inputs[0].datatype", 'Unsupported value: "FLOAT"',
         "tensor-datatype"),
    # Quantities.
    case(training_job(resources={"cpu": "2 cores"}), "spec.resources.cpu", "cpu must be a quantity such as 500m",
         "cpu-words"),
    case(model_service(resources={"cpu": "1.5 cpus"}), "spec.resources.cpu", "cpu must be a quantity",
         "serve-cpu-words"),
    case(training_job(resources={"memory": "4GB"}), "spec.resources.memory", "memory must be a quantity such as",
         "memory-bad-suffix"),
    case(model_service(resources={"memory": "-1Gi"}), "spec.resources.memory", "memory must be a quantity",
         "memory-negative"),
    case(training_job(resources={"cpu": ""}), "spec.resources.cpu", "cpu must be a quantity", "cpu-empty"),
    # Env vars.
    case(training_job(env=[{"name": "MY VAR", "value": "1"}]), "spec.env[0].name", "env name must start with",
         "env-name-space"),
    case(training_job(env=[{"name": "1ST", "value": "1"}]), "spec.env[0].name", "env name must", "env-name-digit"),
    case(training_job(env=[{"name": "", "value": "1"}]), "spec.env[0].name", "env name must", "env-name-empty"),
    case(training_job(env=[{"name": "GREETING=hi", "value": "1"}]), "spec.env[0].name", "env name must",
         "env-name-equals"),
    case(env(value="on", valueFrom={"fieldRef": {"fieldPath": "metadata.name"}}), "spec.env[0]",
         "an env var sets value or valueFrom, not both", "env-value-and-value-from"),
    case(env(valueFrom={}), "spec.env[0].valueFrom", "valueFrom must set exactly one of", "env-value-from-empty"),
    case(env(valueFrom={"fieldRef": {"fieldPath": "spec.containers[0].image"}}),
         "spec.env[0].valueFrom.fieldRef.fieldPath", "fieldRef.fieldPath must be a pod field", "env-field-path"),
    case(env(valueFrom={"resourceFieldRef": {"resource": "limits.gpu"}}),
         "spec.env[0].valueFrom.resourceFieldRef.resource", "resourceFieldRef.resource must be", "env-resource"),
    # Node selectors.
    case(training_job(nodeSelector={"-bad": "true"}), "spec.nodeSelector", 'nodeSelector key "-bad" is not a label '
         "key", "selector-key-leading-dash"),
    case(model_service(nodeSelector={"\U0001F680gpu": "yes"}), "spec.nodeSelector",
         'nodeSelector key "\U0001F680gpu" is not a label key', "selector-key-emoji"),
    case(training_job(nodeSelector={"a/b/c": "x"}), "spec.nodeSelector", "is not a label key",
         "selector-key-two-slashes"),
    case(training_job(nodeSelector={"k" * 64: "x"}), "spec.nodeSelector", "is not a label key",
         "selector-key-name-64-chars"),
    case(model_service(nodeSelector={"Example.COM/gpu": "x"}), "spec.nodeSelector", "is not a label key",
         "selector-key-upper-case-prefix"),
    case(model_service(nodeSelector={"nvidia.com/": "true"}), "spec.nodeSelector", "is not a label key",
         "selector-key-empty-name"),
    case(training_job(nodeSelector={"kubernetes.io/hostname": "node 1"}), "spec.nodeSelector[kubernetes.io/hostname]",
         "nodeSelector values must be a label value", "selector-value-space"),
    case(model_service(nodeSelector={"pool": "v" * 64}), "spec.nodeSelector.pool", LONG, "selector-value-64-chars"),
    # Tolerations.
    case(toleration(key="gpu", operator="Exists", value="true"), "spec.tolerations[0]",
         "a toleration with operator Exists must not set value", "toleration-exists-with-value"),
    case(model_service(tolerations=[{"key": "dedicated", "operator": "Exists", "value": "ml"}]),
         "spec.tolerations[0]", "operator Exists must not set value", "serve-toleration-exists-with-value"),
    case(toleration(key="bad key!", value="x"), "spec.tolerations[0]", "toleration key must be a label key",
         "toleration-key-syntax"),
    case(toleration(key="\u2603/snow", operator="Exists"), "spec.tolerations[0]", "toleration key must be",
         "toleration-key-emoji"),
    case(toleration(value="x"), "spec.tolerations[0]", "a toleration without key must use operator Exists",
         "toleration-no-key-equal"),
    case(toleration(key="gpu", effect="Sometimes"), "spec.tolerations[0].effect", 'Unsupported value: "Sometimes"',
         "toleration-effect"),
    case(toleration(key="gpu", effect="NoSchedule", tolerationSeconds=30), "spec.tolerations[0]",
         "tolerationSeconds needs effect NoExecute", "toleration-seconds-no-execute"),
    case(toleration(key="gpu", value="a b"), "spec.tolerations[0].value", "toleration value must be a label value",
         "toleration-value-space"),
]

VALID = [
    pytest.param(follower("team.vision.digits-v2"), id="follow-dotted-name"),
    pytest.param(follower(".".join(["a" * 63] * 4)[:253].rstrip(".")), id="follow-253-chars"),
    pytest.param(signature(dims=[-1, 8]), id="dims-variable"),
    pytest.param(signature(name="serving_default_input:0/dense", dims=[-1]), id="tensor-name-onnx-style"),
    pytest.param(training_job(nodeSelector={"nvidia.com/gpu.present": "true", "kubernetes.io/arch": "amd64",
                                            "pool": ""}), id="selector-prefixed-key-and-empty-value"),
    pytest.param(model_service(nodeSelector={"node.kubernetes.io/instance-type": "g5.xlarge"},
                               tolerations=[{"operator": "Exists"},
                                            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                                            {"key": "spot", "value": "true", "effect": "NoExecute",
                                             "tolerationSeconds": 60}]), id="tolerations"),
    pytest.param(training_job(env=[{"name": "GREETING", "value": "hello \U0001F680 world \u00e9"},
                                   {"name": "my.var-1", "value": ""},
                                   {"name": "_HIDDEN", "valueFrom": {"fieldRef": {
                                       "fieldPath": "metadata.labels['app.kubernetes.io/name']"}}},
                                   {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "hub.token-v1",
                                                                                    "key": "token.txt"}}},
                                   {"name": "LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory",
                                                                                        "divisor": "1Mi"}}}]),
                 id="env-emoji-value-and-sources"),
    pytest.param(training_job(resources={"cpu": "1.5", "memory": "1.5Gi"}, serviceAccountName="modelops-trainer",
                              priorityClassName="system-cluster-critical",
                              image="registry.local:5000/team/trainer@sha256:" + "a" * 64), id="quantities-names"),
    pytest.param(training_job(trainer={"dataset": "synthetic-sequence", "model": "transformer", "embeddingDim": 24,
                                       "heads": 3, "layers": 2, "maxLength": 128, "vocabSize": 30000}),
                 id="sequence-trainer"),
    pytest.param(signature(dims=[-1], datatype="INT64"), id="token-ids-any-length"),
    pytest.param(model_service(resources={"cpu": "250m", "memory": "512M"},
                               repository={"uri": "gs://models-bucket/triton"}), id="serve-uri-quantities"),
]


def spec_model(body: dict[str, Any]) -> type[BaseModel]:
    return TrainingJobSpec if body["kind"] == "TrainingJob" else ModelServiceSpec


def apply(kube, body: dict[str, Any]):  # type: ignore[no-untyped-def]
    return kube.cluster.kubectl("-n", kube.namespace, "apply", "-f", "-", stdin=json.dumps(body), check=False)


def test_the_cases_are_many_and_distinct() -> None:
    ids = [p.id for p in INVALID]
    assert len(ids) >= 35 and len(set(ids)) == len(ids)
    assert {p.values[0]["kind"] for p in INVALID} == {"TrainingJob", "ModelService"}


@pytest.mark.cluster
@pytest.mark.parametrize(("body", "field", "words"), INVALID)
def test_invalid_object_is_rejected_naming_the_field(kube, crds_installed, body, field, words) -> None:  # type: ignore[no-untyped-def]
    result = apply(kube, body)
    assert result.returncode != 0, f"accepted: {json.dumps(body['spec'])}"
    assert f"{field}:" in result.stderr and words in result.stderr, result.stderr
    assert "should match" not in result.stderr, f"a raw regex reached the user: {result.stderr}"
    listed = kube.kubectl("get", body["kind"].lower(), "-o", "name")
    assert listed.strip() == "", listed


@pytest.mark.cluster
@pytest.mark.parametrize("body", VALID)
def test_valid_edge_case_is_accepted(kube, crds_installed, body) -> None:  # type: ignore[no-untyped-def]
    result = apply(kube, body)
    assert result.returncode == 0, result.stderr
    stored = json.loads(kube.kubectl("get", body["kind"].lower(), "probe", "-o", "json"))
    spec_model(body).model_validate(stored["spec"])  # and the operator reads what was stored


# The operator validates the stored spec with the same models: it refuses what the schema refuses (an object
# stored before these rules, or by a server with a different CRD, never reaches a child), and accepts the rest.

@pytest.mark.parametrize(("body", "field", "words"), INVALID)
def test_operator_models_refuse_the_same_specs(body, field, words) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError) as refused:
        spec_model(body).model_validate(body["spec"])
    where = re.sub(r"\[([^]]+)\]", r".\1", field.removeprefix("spec."))  # env[0].name -> env.0.name
    locations = [".".join(str(part) for part in error["loc"] if part != "[key]") for error in refused.value.errors()]
    assert any(loc == where or loc.startswith(where + ".") for loc in locations), (where, locations)


@pytest.mark.parametrize("body", VALID)
def test_operator_models_accept_the_valid_edge_cases(body) -> None:  # type: ignore[no-untyped-def]
    spec_model(body).model_validate(body["spec"])
