"""The tensor signature of a published model version, stored in its metadata.json."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

METADATA_FILE = "metadata.json"
INPUT_NAME = "INPUT__0"
OUTPUT_NAME = "OUTPUT__0"

# KServe v2 / Triton datatype names; config.pbtxt spells them with a TYPE_ prefix.
DATATYPES = frozenset({"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
                       "INT64", "FP16", "FP32", "FP64", "BF16", "BYTES"})


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor; dims exclude the batch dimension (-1 means variable)."""

    name: str
    datatype: str
    dims: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.datatype not in DATATYPES:
            raise ValueError(f"unknown Triton datatype {self.datatype!r} for tensor {self.name!r}")
        if any(d == 0 or d < -1 for d in self.dims):
            raise ValueError(f"bad dims {list(self.dims)} for tensor {self.name!r}")

    @property
    def config_datatype(self) -> str:
        """The datatype as config.pbtxt spells it, e.g. TYPE_FP32."""
        return "TYPE_STRING" if self.datatype == "BYTES" else f"TYPE_{self.datatype}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "dims": list(self.dims)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(name=str(data["name"]), datatype=str(data["datatype"]),
                   dims=tuple(int(d) for d in data["dims"]))


@dataclass(frozen=True)
class Signature:
    """Inputs and outputs of a classifier, its class count and the baked-in normalisation."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    num_classes: int
    normalization: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.inputs or not self.outputs:
            raise ValueError("a signature needs at least one input and one output")

    @classmethod
    def classifier(cls, input_dims: tuple[int, ...], num_classes: int,
                   normalization: dict[str, Any] | None = None) -> Signature:
        """FP32 INPUT__0 [batch, *input_dims] -> FP32 logits OUTPUT__0 [batch, num_classes]."""
        return cls(inputs=(TensorSpec(INPUT_NAME, "FP32", tuple(input_dims)),),
                   outputs=(TensorSpec(OUTPUT_NAME, "FP32", (num_classes,)),),
                   num_classes=num_classes, normalization=dict(normalization or {}))

    @classmethod
    def sequence_classifier(cls, num_classes: int) -> Signature:
        """INT64 token ids INPUT__0 [batch, -1] (any length, 0 = padding) -> FP32 logits OUTPUT__0 [batch, classes]."""
        return cls(inputs=(TensorSpec(INPUT_NAME, "INT64", (-1,)),),
                   outputs=(TensorSpec(OUTPUT_NAME, "FP32", (num_classes,)),), num_classes=num_classes)

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": [t.to_dict() for t in self.inputs],
                "outputs": [t.to_dict() for t in self.outputs],
                "numClasses": self.num_classes,
                "normalization": self.normalization}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Signature:
        return cls(inputs=tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
                   outputs=tuple(TensorSpec.from_dict(t) for t in data["outputs"]),
                   num_classes=int(data["numClasses"]),
                   normalization=dict(data.get("normalization") or {}))


def load_signature(version_dir: str | Path) -> Signature:
    """Read the signature from `<version_dir>/metadata.json` (ValueError if absent or malformed)."""
    path = Path(version_dir) / METADATA_FILE
    try:
        metadata = json.loads(path.read_text())
        return Signature.from_dict(metadata["signature"])
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} has no valid signature: {exc}") from None
