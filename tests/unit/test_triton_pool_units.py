"""Unit tests of the pool server's pure side (modelops.triton.pool): its args, the load config a copy gets,
the load request, and the reading of Triton's index, statistics and metrics. tests/test_triton_pool.py runs
the same against the real tritonserver."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from modelops.triton.config import python_model_source, threads_per_instance
from modelops.triton.pool import (MEMORY_METRIC, NO_MEMORY, POOL_REPOSITORY, Memory, ModelToLoad, ResidentModel,
                                  load_config, load_request, parse_metrics, read_memory, server_args, server_report)
from modelops.triton.pool_client import TritonPoolClient, TritonPoolError
from modelops.triton.server import free_ports

SIGNATURE = {"inputs": [{"name": "INPUT__0", "datatype": "FP32", "dims": [1, 8, 8]}],
             "outputs": [{"name": "OUTPUT__0", "datatype": "FP32", "dims": [10]}]}


def test_server_args_start_an_empty_explicit_server_on_the_pool_repository() -> None:
    args = server_args(9000, 9001, 9002)
    assert f"--model-repository={POOL_REPOSITORY}" in args and "--model-control-mode=explicit" in args
    assert not any(a.startswith("--load-model") for a in args)
    assert "--exit-on-error=false" in args  # one model failing to load never stops the others
    assert {"--http-port=9000", "--grpc-port=9001", "--metrics-port=9002", "--allow-metrics=true"} <= set(args)


def test_a_python_copy_pins_its_version_and_reads_the_published_folder_of_the_pool_repository() -> None:
    spec = {"backend": "python", "maxBatchSize": 32, "instanceCount": 2,
            "dynamicBatching": {"preferredBatchSizes": [8, 16], "maxQueueDelayMicroseconds": 100}}
    config = load_config("digits", 3, spec, 4.0, signature=SIGNATURE)
    assert config["name"] == "digits" and config["backend"] == "python" and "platform" not in config
    assert config["version_policy"] == {"specific": {"versions": [3]}}
    assert config["max_batch_size"] == 32
    assert config["input"] == [{"name": "INPUT__0", "data_type": "TYPE_FP32", "dims": [1, 8, 8]}]
    assert config["output"] == [{"name": "OUTPUT__0", "data_type": "TYPE_FP32", "dims": [10]}]
    assert config["instance_group"] == [{"count": 2, "kind": "KIND_AUTO"}]
    assert config["dynamic_batching"] == {"preferred_batch_size": [8, 16], "max_queue_delay_microseconds": 100}
    assert config["parameters"] == {
        "INTRA_OP_THREAD_COUNT": {"string_value": str(threads_per_instance(4.0, 2))},  # render_config's rule
        "INTER_OP_THREAD_COUNT": {"string_value": "1"},
        "VERSION_DIRECTORY": {"string_value": f"{POOL_REPOSITORY}/digits/3"}}
    json.dumps(config)  # what the load request carries


def test_a_pytorch_copy_without_batching_or_cpu_limit() -> None:
    config = load_config("digits", 1, {"maxBatchSize": 0}, None, signature=SIGNATURE)
    assert config["platform"] == "pytorch_libtorch" and "backend" not in config
    assert "dynamic_batching" not in config and "parameters" not in config
    # no batching: the variable first dimension is explicit, as render_config writes it
    assert config["input"][0]["dims"] == [-1, 1, 8, 8] and config["output"][0]["dims"] == [-1, 10]


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="signature"):
        load_config("digits", 1, {}, None)
    with pytest.raises(ValueError):
        load_config("digits", 0, {}, None, signature=SIGNATURE)
    with pytest.raises(ValueError):
        load_config("digits", 1, {}, 0.0, signature=SIGNATURE)
    with pytest.raises(ValidationError):
        load_config("digits", 1, {"backend": "onnx"}, None, signature=SIGNATURE)
    with pytest.raises(ValueError):
        load_config("digits", 1, {}, None, signature={**SIGNATURE, "inputs": [{"name": "x", "datatype": "FP99",
                                                                                "dims": [1]}]})


def test_the_load_request_carries_the_runtime_only_for_the_python_backend() -> None:
    python = load_request(ModelToLoad("digits", 4, "python", {"name": "digits"}))["parameters"]
    assert json.loads(python["config"]) == {"name": "digits"}
    assert base64.b64decode(python["file:4/model.py"]).decode() == python_model_source()
    pytorch = load_request(ModelToLoad("digits", 4, "pytorch", {"name": "digits"}))["parameters"]
    assert list(pytorch) == ["config"]


def test_the_runtime_exports_the_gauge_the_pool_reads() -> None:
    assert f'MEMORY_METRIC = "{MEMORY_METRIC}"' in python_model_source()


def test_the_runtime_measures_its_anonymous_memory(tmp_path: Path) -> None:
    from modelops.triton.python_model import process_memory

    status = tmp_path / "status"
    status.write_text("Name:\tstub\nVmRSS:\t  5000 kB\nRssAnon:\t  3000 kB\nRssFile:\t 1900 kB\n"
                      "RssShmem:\t   100 kB\n")
    assert process_memory(str(status)) == 3100 * 1024
    assert process_memory(str(tmp_path / "absent")) == 0
    own = dict(re.findall(r"^(RssAnon|RssShmem):\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M))
    assert abs(process_memory() - sum(int(v) for v in own.values()) * 1024) < 64 << 20  # this process, roughly


METRICS = """\
# HELP nv_gpu_memory_used_bytes GPU used memory, in bytes
# TYPE nv_gpu_memory_used_bytes gauge
nv_gpu_memory_used_bytes{gpu_uuid="GPU-a"} 1000
nv_gpu_memory_used_bytes{gpu_uuid="GPU-b"} 2.5e+03
nv_gpu_memory_used_bytes_extra{gpu_uuid="GPU-a"} 7
# TYPE modelops_model_memory_bytes gauge
modelops_model_memory_bytes{instance="digits_0_0",model="digits",version="1"} 306909184
modelops_model_memory_bytes{instance="digits_0_1",model="digits",version="1"} 100
modelops_model_memory_bytes{instance="a\\"b_0_0",model="a\\"b",version="2"} 5
"""


def test_metrics_are_read_per_model_and_per_gpu() -> None:
    assert parse_metrics(METRICS, "nv_gpu_memory_used_bytes") == [({"gpu_uuid": "GPU-a"}, 1000.0),
                                                                 ({"gpu_uuid": "GPU-b"}, 2500.0)]
    memory = read_memory(METRICS)
    assert memory.gpu == 3500
    assert memory.models == {("digits", 1): 306909284, ('a\\"b', 2): 5}
    assert memory.model("digits") == memory.model("digits", 1) == 306909284 and memory.model("digits", 2) == 0
    assert read_memory("nv_cpu_memory_used_bytes 0\n") == NO_MEMORY


# The shapes Triton 2.51 answers POST /v2/repository/index and GET /v2/models/stats with (recorded).
INDEX = [{"name": "digits", "version": "1", "state": "UNLOADING"}, {"name": "digits", "version": "2", "state": "READY"},
         {"name": "other", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"},
         {"name": "third", "version": "3", "state": "LOADING"}, {"name": "never"}]
STATS = {"model_stats": [
    {"name": "digits", "version": "2", "last_inference": 1765100000123, "inference_count": 8, "execution_count": 1,
     "inference_stats": {"success": {"count": 1, "ns": 900}, "queue": {"count": 1, "ns": 163299}}},
    {"name": "digits", "version": "1", "last_inference": 0, "inference_count": 0,
     "inference_stats": {"queue": {"count": 0, "ns": 0}}}]}


def test_a_report_lists_what_is_resident_with_its_statistics_and_bytes() -> None:
    memory = Memory({("digits", 2): 300, ("digits", 1): 200, ("third", 3): 10}, None)
    report = server_report(INDEX, STATS, memory)
    assert report.reachable and report.models == (
        ResidentModel("digits", 1, False, 0, 0, 0, 200),
        ResidentModel("digits", 2, True, 1765100000123, 8, 163299, 300),
        ResidentModel("third", 3, False, 0, 0, 0, 10))
    assert report.memory_bytes == 510
    # a resident model that is not measured (pytorch on CPU) makes the server's total unknown
    assert server_report(INDEX, STATS, Memory({("digits", 2): 300}, None)).memory_bytes is None
    assert server_report([], {}, NO_MEMORY).memory_bytes == 0


def test_on_a_gpu_server_bytes_are_the_gauge_differences_measured_at_load() -> None:
    report = server_report(INDEX, STATS, Memory({("digits", 2): 300}, 9000), {("digits", 2): 4000})
    assert [(m.version, m.bytes) for m in report.models] == [(1, None), (2, 4000), (3, None)]
    assert report.memory_bytes == 9000


def test_an_unreachable_server_reports_so_and_refuses_loads() -> None:
    port = free_ports(1)[0]  # nothing listens there
    client = TritonPoolClient(f"http://127.0.0.1:{port}", timeout=2)
    assert client.metrics_url == "http://127.0.0.1:8002/metrics"
    assert client.report().reachable is False
    with pytest.raises(TritonPoolError, match="load"):
        client.load(ModelToLoad("digits", 1, "python", load_config("digits", 1, {}, None, signature=SIGNATURE)))
    with pytest.raises(TritonPoolError, match="unload"):
        client.unload("digits")
