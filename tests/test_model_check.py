"""The operator's model check against a real tritonserver: a matching model passes, a wrong signature
and a model that fails to load are definite failures, a server that is not up is only pending."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelops.triton.check import check_model
from modelops.triton.config import render_config
from modelops.triton.repository import stage_python_model
from modelops.triton.server import TritonServer, find_triton
from modelops.triton.signature import load_signature

pytestmark = [pytest.mark.triton, pytest.mark.slow,
              pytest.mark.skipif(find_triton() is None, reason="tritonserver binary absent (pip install nvidia-pytriton)")]

SAMPLE = Path(__file__).resolve().parents[1] / "model_repo" / "digits" / "1"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """The sample model as `good` version 1, and a copy whose model.pt is corrupt as `broken` version 1, served
    by the operator's python-backend runtime; started as the operator starts Triton: explicit model control,
    exit-on-error off."""
    published, repository = tmp_path_factory.mktemp("published"), tmp_path_factory.mktemp("serving")
    signature = load_signature(SAMPLE)
    for name in ("good", "broken"):
        version_dir = published / name / "1"
        shutil.copytree(SAMPLE, version_dir)
        stage_python_model(repository, name, 1, render_config(
            name, signature, backend="python", max_batch_size=16, instance_kind="KIND_CPU", version=1,
            version_directory=str(version_dir)))
    (published / "broken" / "1" / "model.pt").write_bytes(b"weights are corrupt")
    with TritonServer(repository, models=["good", "broken"],
                      extra_args=["--exit-on-error=false", "--strict-readiness=false"]) as triton:
        yield triton


def expected() -> dict[str, object]:
    signature = load_signature(SAMPLE).to_dict()
    return {"inputs": signature["inputs"], "outputs": signature["outputs"]}


def test_matching_model_passes(server: TritonServer) -> None:
    result = check_model(server.http_url, "good", 1, expected())
    assert result.verdict == "passed", result.message


def test_wrong_signature_is_a_definite_failure(server: TritonServer) -> None:
    wrong = expected()
    wrong["outputs"] = [{"name": "OUTPUT__0", "datatype": "FP32", "dims": [12]}]
    result = check_model(server.http_url, "good", 1, wrong)
    assert result.verdict == "failed" and "shape [-1, 10] != [-1, 12]" in result.message


def test_model_that_fails_to_load_is_a_definite_failure(server: TritonServer) -> None:
    result = check_model(server.http_url, "broken", 1, expected())
    assert result.verdict == "failed" and "failed to load" in result.message
    assert "cannot load " in result.message and "broken/1/model.pt" in result.message, result.message


def test_unreachable_server_is_pending() -> None:
    result = check_model("127.0.0.1:9", "good", 1, expected(), timeout=0.5)
    assert result.verdict == "pending"
