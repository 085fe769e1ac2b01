"""What the operator puts in a Triton model directory: config.pbtxt, rendered (pure) from a model signature and
serving settings, and for the python backend the runtime that Triton loads as model.py."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from enum import Enum
from importlib import resources

from modelops.triton.signature import Signature, TensorSpec


PYTHON_MODEL_FILE = "model.py"
"""The file Triton's python backend loads from `<model>/<version>/`."""


class Backend(str, Enum):
    """How Triton runs a published version: TorchScript through libtorch, or our python-backend runtime."""

    PYTORCH = "pytorch"
    PYTHON = "python"

    @property
    def config_line(self) -> str:
        return 'platform: "pytorch_libtorch"' if self is Backend.PYTORCH else 'backend: "python"'


class InstanceKind(str, Enum):
    """Where Triton places model instances."""

    AUTO = "KIND_AUTO"
    CPU = "KIND_CPU"
    GPU = "KIND_GPU"


def render_config(
    model_name: str,
    signature: Signature,
    *,
    backend: Backend | str = Backend.PYTORCH,
    max_batch_size: int = 64,
    preferred_batch_sizes: Sequence[int] = (),
    max_queue_delay_us: int = 0,
    instance_count: int = 1,
    instance_kind: InstanceKind | str = InstanceKind.AUTO,
    version: int | None = None,
    cpu_cores: float | None = None,
    gpus: int = 0,
    version_directory: str | None = None,
) -> str:
    """Render config.pbtxt text for `model_name`.

    - backend "pytorch" -> `platform: "pytorch_libtorch"` (loads model.pt); "python" -> `backend: "python"` (our runtime).
    - max_batch_size > 0 enables batching with `dynamic_batching` (preferred sizes, queue delay);
      0 disables it, and the dims then carry an explicit variable batch dimension (-1).
    - version given -> `version_policy: { specific: { versions: [N] } }`; None -> Triton's default (latest).
    - cpu_cores (the pod's CPU limit) given -> `parameters` INTRA_OP_THREAD_COUNT (threads_per_instance over
      every instance of the pod: instance_count, times `gpus` for KIND_GPU, as Triton puts count instances on
      each GPU) and INTER_OP_THREAD_COUNT 1, read by the libtorch backend and by our python-backend runtime;
      without it the runtime applies the same rule to the cores it finds at run time.
    - version_directory given (python backend only) -> `parameters` VERSION_DIRECTORY: the published version
      folder whose model.pt the runtime serves; without it, the folder Triton loads model.py from.
    Raises ValueError on invalid settings. Same inputs, same text.
    """
    backend = Backend(backend)
    instance_kind = InstanceKind(instance_kind)
    if not model_name or model_name.startswith(".") or "/" in model_name:
        raise ValueError(f"invalid model name {model_name!r}")
    if max_batch_size < 0:
        raise ValueError("max_batch_size must be >= 0")
    if instance_count < 1:
        raise ValueError("instance_count must be >= 1")
    if max_queue_delay_us < 0:
        raise ValueError("max_queue_delay_us must be >= 0")
    if any(size < 1 or size > max_batch_size for size in preferred_batch_sizes):
        raise ValueError(f"preferred_batch_sizes must lie in 1..max_batch_size ({max_batch_size})")
    if version is not None and version < 1:
        raise ValueError("version must be >= 1")
    if cpu_cores is not None and cpu_cores <= 0:
        raise ValueError("cpu_cores must be > 0")
    if gpus < 0:
        raise ValueError("gpus must be >= 0")
    if version_directory is not None and (backend is not Backend.PYTHON or not version_directory.startswith("/")):
        raise ValueError("version_directory is an absolute path, for the python backend only")

    lines = [f"name: {_quote(model_name)}", backend.config_line, f"max_batch_size: {max_batch_size}"]
    if version is not None:
        lines.append(f"version_policy: {{ specific: {{ versions: [ {version} ] }} }}")
    lines += _tensors("input", signature.inputs, batched=max_batch_size > 0)
    lines += _tensors("output", signature.outputs, batched=max_batch_size > 0)
    lines += ["instance_group [", "  {", f"    count: {instance_count}", f"    kind: {instance_kind.value}", "  }", "]"]
    if max_batch_size > 0:
        lines.append("dynamic_batching {")
        if preferred_batch_sizes:
            lines.append(f"  preferred_batch_size: [ {', '.join(str(s) for s in preferred_batch_sizes)} ]")
        if max_queue_delay_us:
            lines.append(f"  max_queue_delay_microseconds: {max_queue_delay_us}")
        lines.append("}")
    if cpu_cores is not None:
        instances = instance_count * (max(1, gpus) if instance_kind is InstanceKind.GPU else 1)
        threads = threads_per_instance(cpu_cores, instances)
        lines += _parameters({"INTRA_OP_THREAD_COUNT": str(threads), "INTER_OP_THREAD_COUNT": "1"})
    if version_directory is not None:
        lines += _parameters({"VERSION_DIRECTORY": version_directory})
    return "\n".join(lines) + "\n"


@functools.cache
def python_model_source() -> str:
    """The python-backend runtime (python_model.py in this package) as text, for Triton to load as model.py.
    Read, never imported: it needs torch and numpy, which the operator has not."""
    return resources.files(__package__).joinpath("python_model.py").read_text(encoding="utf-8")


def threads_per_instance(cores: float, instances: int) -> int:
    """torch intra-op threads for each of `instances` model instances sharing `cores` (whole cores).

    One core is left to Triton's own work (HTTP/gRPC, the dynamic batcher, the python backend's IPC) from two
    cores up, the rest is split evenly, never below one thread: instances x threads <= cores whenever there
    are more cores than instances. Measured on 2 cores: torch on both cores in one instance was slower than
    on one under load, and two instances on every core each were several times slower than one instance.
    The python-backend runtime (python_model.py) carries the same rule for when the cores are only
    known at run time.
    """
    usable = max(1, math.floor(cores) - 1)
    return max(1, usable // max(1, instances))


def _parameters(values: dict[str, str]) -> list[str]:
    lines = []
    for key, value in values.items():
        lines += ["parameters {", f"  key: {_quote(key)}", f"  value: {{ string_value: {_quote(value)} }}", "}"]
    return lines


def _tensors(kind: str, tensors: Sequence[TensorSpec], *, batched: bool) -> list[str]:
    lines = [f"{kind} ["]
    for index, tensor in enumerate(tensors):
        dims = tensor.dims if batched else (-1, *tensor.dims)
        lines += ["  {",
                  f"    name: {_quote(tensor.name)}",
                  f"    data_type: {tensor.config_datatype}",
                  f"    dims: [ {', '.join(str(d) for d in dims)} ]",
                  "  }" + ("," if index < len(tensors) - 1 else "")]
    lines.append("]")
    return lines


def _quote(text: str) -> str:
    """A protobuf text-format string literal (JSON escaping is a valid subset for these names)."""
    return json.dumps(text)
