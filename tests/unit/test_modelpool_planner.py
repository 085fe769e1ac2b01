"""ModelPool: the server pod builder and the pure placement planner (plan_pool), pass by pass."""

from __future__ import annotations

from typing import Any

from modelops.api.modelpool import ModelPoolSpec
from modelops.resources import modelpool as build
from modelops.triton.pool import POOL_REPOSITORY, server_args

POOL = build.PoolMeta("shared", "ml", "uid-pool", 1)


def pool_spec(**overrides: Any) -> ModelPoolSpec:
    base = {"repository": {"persistentVolumeClaim": {"claimName": "models"}}, "capacity": "1Gi",
            "resources": {"cpu": "2", "memory": "4Gi"}}
    return ModelPoolSpec.model_validate(base | overrides)


# ---- server pods ---------------------------------------------------------------------------------------


def test_a_server_pod_is_triton_with_no_model_owned_by_its_pool() -> None:
    pod = build.server_pod(POOL, pool_spec(nodeSelector={"pool": "cpu"}, priorityClassName="serving"), 2)
    meta = pod["metadata"]
    assert meta["name"] == "shared-s2" and meta["namespace"] == "ml"
    assert meta["ownerReferences"] == [{"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelPool", "name": "shared",
                                        "uid": "uid-pool", "controller": True, "blockOwnerDeletion": True}]
    assert meta["labels"][build.LABEL_POOL] == "shared" and meta["labels"][build.LABEL_SERVER_INDEX] == "2"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "modelops"
    assert build.server_index(pod) == 2
    [container] = pod["spec"]["containers"]
    assert container["args"] == server_args(8000, 8001, 8002)
    assert not any(a.startswith("--load-model") for a in container["args"])
    assert container["volumeMounts"] == [{"name": "model-repository", "mountPath": POOL_REPOSITORY, "readOnly": True}]
    assert pod["spec"]["volumes"] == [{"name": "model-repository",
                                       "persistentVolumeClaim": {"claimName": "models", "readOnly": True}}]
    assert container["resources"] == {"limits": {"cpu": "2", "memory": "4Gi"}, "requests": {"cpu": "2", "memory": "4Gi"}}
    assert pod["spec"]["nodeSelector"] == {"pool": "cpu"} and pod["spec"]["priorityClassName"] == "serving"


def test_gpu_servers_tolerate_the_gpu_taint_and_host_paths_mount_as_directories() -> None:
    pod = build.server_pod(POOL, pool_spec(resources={"gpus": 1}, repository={"hostPath": {"path": "/srv/m"}}), 0)
    assert pod["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"]["tolerations"]
    assert pod["spec"]["volumes"][0]["hostPath"] == {"path": "/srv/m", "type": "Directory"}


def test_the_template_hash_follows_what_shapes_the_pods_only() -> None:
    base = build.template_hash(pool_spec())
    assert base == build.template_hash(pool_spec(minServers=3, capacity="2Gi", overcommit=0.5))
    assert base != build.template_hash(pool_spec(image="example.com/triton:25.01"))
    assert base != build.template_hash(pool_spec(resources={"cpu": "4"}))
    assert build.server_pod(POOL, pool_spec(), 0)["metadata"]["annotations"][build.ANNOTATION_TEMPLATE] == base
