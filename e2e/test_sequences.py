"""A sequence model end to end with real parts: a 2-worker DDP TrainingJob trains the transformer on the built-in
order task (kubelet stand-in), a ModelService follows it, and its Service (kube-proxy -> real tritonserver)
answers INT64 token-id requests of any length, the same for a sequence alone as padded among longer ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lifecycle import Lifecycle, Space
from support import eventually as wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.triton, pytest.mark.slow]

NAME = "orders"


def infer(address: str, batch: np.ndarray) -> np.ndarray:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(address, connection_timeout=10, network_timeout=10)
    try:
        tensor = triton.InferInput("INPUT__0", list(batch.shape), "INT64")
        tensor.set_data_from_numpy(batch.astype(np.int64))
        return np.asarray(client.infer(NAME, [tensor]).as_numpy("OUTPUT__0"))
    finally:
        client.close()


def test_sequence_training_job_to_a_model_service_answering_over_triton(  # type: ignore[no-untyped-def]
        kube, kubelet, serving_operator, tmp_path: Path) -> None:
    from modelops.trainer.data import Missing, load_builtin, prepare, sequence_lengths

    space = Space(kube.cluster, kube.namespace)
    repository = tmp_path / "models"
    Lifecycle(space, repository).setup()  # the trainer's RBAC, as the lifecycle test has it
    where = {"hostPath": {"path": str(repository)}}
    space.apply({"apiVersion": "modelops.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": NAME},
                 "spec": {"workers": 2, "resources": {"gpus": 1},
                          "trainer": {"dataset": "synthetic-sequence", "model": "transformer", "epochs": 20,
                                      "learningRate": 0.003, "embeddingDim": 32, "heads": 2},
                          "output": {"modelName": NAME, "repository": where}}})
    job: dict[str, Any] = wait_for(lambda: (j := space.get("tj", NAME)).get("status", {}).get("phase")
                                   in ("Succeeded", "Failed") and j, 420, "the TrainingJob to finish", interval=2)
    status = job["status"]
    assert status["phase"] == "Succeeded", status.get("conditions")
    assert status["model"]["signature"]["inputs"] == [{"name": "INPUT__0", "datatype": "INT64", "dims": [-1]}]
    assert status["model"]["testAccuracy"] >= 0.85

    space.apply({"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelService", "metadata": {"name": NAME},
                 "spec": {"model": {"name": NAME, "fromTrainingJob": NAME}, "repository": where,
                          "triton": {"backend": "python", "maxBatchSize": 32}, "replicas": 1}})

    def ready() -> dict[str, Any] | None:
        served = space.get("ms", NAME).get("status") or {}
        conditions = {c["type"]: c["status"] for c in served.get("conditions", [])}
        return served if conditions.get("Ready") == "True" else None

    wait_for(ready, 300, "the ModelService to be Ready", interval=2)
    address = f"{space.get('service', NAME)['spec']['clusterIP']}:8000"

    data = prepare(load_builtin("synthetic-sequence", 0), missing=Missing.DROP, val_fraction=0.1, test_fraction=0.1,
                   seed=0)
    x, y = data.test.x[:24], data.test.y[:24]
    rows = [row[:n] for row, n in zip(x, sequence_lengths(x), strict=True)]
    alone = np.concatenate([infer(address, row[None, :]) for row in rows])
    width = max(len(r) for r in rows) + 5
    padded = infer(address, np.stack([np.pad(r, (0, width - len(r))) for r in rows]))
    np.testing.assert_allclose(padded, alone, rtol=1e-5, atol=1e-5)
    assert (alone.argmax(1) == y).mean() >= 0.8
