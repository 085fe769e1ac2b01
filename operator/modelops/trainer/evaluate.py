"""The evaluation pod's program: score a candidate Triton (and the stable one) on every evaluation set the gate
names, and report each set's two accuracies as JSON on the termination message.

`python -m modelops.trainer.evaluate --version-dir /models/m/4 --model m --version 4 --candidate IP:8000
 [--stable IP:8000 --stable-version 3 --stable-dir /models/m/3] [--reference /models/ref.npz --reference-name ref.npz
 [--reference-sha256 HEX]]`

The sets: the candidate version's own held-out set (eval.npz, published by the run that trained it), the stable
version's held-out set (published with the stable version: evidence the candidate did not produce) and a fixed
reference set from the tenant's repository. Both revisions are scored on the same rows of each set; rows whose
class one of them does not know are left out (classes are matched by name where the versions record them), and
a set whose rows a model cannot take (another input shape) is reported as not comparable. This program
measures; the operator judges (rollout/evaluation.py).

It runs in the trainer image, in the ModelService's namespace, with the version folders mounted read-only, so the
operator never reads a tenant's volume; it needs numpy, never torch. Exit 0 with a report (also when no set
exists: the report says skipped; or when the candidate answers with errors or the reference set is missing or
not the pinned one: the report says failed), 1 with a one-line reason when the evaluation could not run.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

EVAL_FILE = "eval.npz"
METADATA_FILE = "metadata.json"
TERMINATION_LOG = "/dev/termination-log"


class EvaluationError(Exception):
    """The evaluation could not run (unreachable Triton, unreadable files): worth another attempt."""


class Definite(Exception):
    """The gate must fail, whatever another attempt would do."""


class ModelAnsweredError(Definite):
    """Triton answered an evaluation set with an error: that model fails on it, definitely."""


class ReferenceSetError(Definite):
    """The reference set the ModelService names is missing, unreadable or not the file its sha256 pins."""


def infer_batches(address: str, model: str, version: int, signature: dict[str, Any], features: Any,
                  batch_size: int, timeout: float = 30.0) -> Any:
    """Logits for every row of `features`, through Triton's KServe v2 HTTP API (JSON), `batch_size` rows a request."""
    import numpy as np

    host, _, port = address.rpartition(":")
    _wait_reachable(host.strip("[]"), int(port))
    conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=timeout)
    tensor_in = signature["inputs"][0]
    tensor_out = signature["outputs"][0]["name"]
    path = f"/v2/models/{quote(model, safe='')}/versions/{version}/infer"
    outputs = []
    try:
        for start in range(0, len(features), batch_size):
            batch = features[start:start + batch_size]
            if tensor_in["datatype"].startswith(("INT", "UINT")):  # token ids: JSON integers, as Triton expects
                batch = batch.astype(np.int64)
            body = {"inputs": [{"name": tensor_in["name"], "datatype": tensor_in["datatype"],
                                "shape": list(batch.shape), "data": batch.reshape(-1).tolist()}],
                    "outputs": [{"name": tensor_out}]}
            conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = response.read()
            if response.status != 200:
                raise ModelAnsweredError(f"{model} version {version} at {address} answered an evaluation set with "
                                         f"{response.status}: {payload[:300].decode(errors='replace')}")
            answer = json.loads(payload)
            out = next(o for o in answer["outputs"] if o["name"] == tensor_out)
            outputs.append(np.asarray(out["data"], dtype=np.float64).reshape(out["shape"]))
    except (OSError, http.client.HTTPException, ValueError, KeyError, StopIteration) as error:
        raise EvaluationError(f"inference on {address} failed: {error or type(error).__name__}") from None
    finally:
        conn.close()
    return np.concatenate(outputs) if outputs else np.zeros((0, 0))


def _wait_reachable(host: str, port: int, attempts: int = 8, pause: float = 2.0) -> None:
    """A pod's network may still be coming up when this one starts: retry connecting for a while."""
    for attempt in range(attempts):
        try:
            socket.create_connection((host, port), timeout=5).close()
            return
        except OSError as error:
            if attempt == attempts - 1:
                raise EvaluationError(f"cannot connect to {host}:{port}: {error}") from None
            time.sleep(pause)


def accuracy(logits: Any, labels: Any) -> float:
    return float((logits.argmax(axis=1) == labels).mean()) if len(labels) else 0.0


@dataclass(frozen=True)
class Served:
    """A revision's Triton (address "": none is ready) and what its version's metadata says of its inputs and
    classes."""

    address: str
    version: int
    signature: dict[str, Any]
    classes: list[str] | None


@dataclass(frozen=True)
class EvaluationSet:
    name: str
    """candidate, stable or reference: whose set it is."""
    source: str
    features: Any
    labels: Any
    classes: list[str] | None
    sha256: str
    recorded: float | None = None
    """The accuracy the run that published the set recorded for its own model on exactly these rows."""


def read_metadata(version_dir: Path) -> dict[str, Any]:
    try:
        metadata = json.loads((version_dir / METADATA_FILE).read_text())
    except (OSError, ValueError) as error:
        raise EvaluationError(f"cannot read {version_dir / METADATA_FILE}: {error}") from None
    if not isinstance(metadata, dict) or not isinstance(metadata.get("signature"), dict):
        raise EvaluationError(f"{version_dir / METADATA_FILE} has no signature")
    return metadata


def class_names(metadata: dict[str, Any]) -> list[str] | None:
    names = metadata.get("labels") or (metadata.get("dataset") or {}).get("classes")
    return [str(n) for n in names] if isinstance(names, list) and names else None


def load_arrays(path: Path, described_sha256: str | None, error: type[Exception]) -> tuple[Any, Any, Any, str]:
    """(features, labels, class names or None, sha256) of an .npz evaluation set."""
    import numpy as np

    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if described_sha256 and described_sha256 != digest:
        raise error(f"{path.name} has sha256 {digest[:12]}..., not the {described_sha256[:12]}... recorded for it")
    try:
        with np.load(path, allow_pickle=False) as held_out:
            features, labels = held_out["x"].astype(np.float32), held_out["y"].astype(np.int64)
            names = [str(n) for n in held_out["classes"].tolist()] if "classes" in held_out.files else None
    except (OSError, ValueError, KeyError) as problem:
        raise error(f"{path.name} is not an evaluation set (arrays x and y): {problem}") from None
    if features.ndim < 2 or labels.ndim != 1 or len(features) != len(labels):
        raise error(f"{path.name}: x {list(features.shape)} and y {list(labels.shape)} do not pair up")
    return features, labels, names, digest


def version_set(name: str, version_dir: Path, version: int, metadata: dict[str, Any]) -> EvaluationSet | dict[str, Any]:
    """The held-out set a version was published with, or the report's entry saying there is none."""
    described = metadata.get("evaluation") or {}
    data_file = version_dir / str(described.get("file") or EVAL_FILE)
    if not data_file.is_file():
        return {"name": name, "source": f"version {version}",
                "note": f"version {version} has no evaluation set ({data_file.name})"}
    features, labels, _, digest = load_arrays(data_file, described.get("sha256"), EvaluationError)
    recorded = described.get("accuracy")
    return EvaluationSet(name, f"version {version}", features, labels, class_names(metadata), digest,
                         float(recorded) if isinstance(recorded, (int, float)) else None)


def reference_set(path: Path, shown: str, sha256: str | None) -> EvaluationSet:
    if not path.is_file():
        raise ReferenceSetError(f"the reference set {shown} is not a file in the model repository")
    try:
        features, labels, names, digest = load_arrays(path, sha256, ReferenceSetError)
    except OSError as error:
        raise ReferenceSetError(f"cannot read the reference set {shown}: {error.strerror}") from None
    return EvaluationSet("reference", shown, features, labels, names, digest)


def mismatch(signature: dict[str, Any], features: Any) -> str:
    """Why rows of this shape cannot go into the model ("" when they can)."""
    dims = [int(d) for d in signature["inputs"][0]["dims"]]
    shape = list(features.shape[1:])
    if len(dims) == len(shape) and all(d in (-1, s) for d, s in zip(dims, shape)):
        return ""
    return f"takes inputs of shape {dims}, the set's rows are {shape}"


def model_labels(labels: Any, set_classes: list[str] | None, served: Served) -> Any:
    """The set's labels as the model's output indices (-1: a class the model does not know). By class name
    where both record names; else index for index."""
    import numpy as np

    outputs = int(served.signature["outputs"][0]["dims"][-1])
    if set_classes and served.classes:
        index = {name: i for i, name in enumerate(served.classes) if i < outputs}
        table = np.array([index.get(name, -1) for name in set_classes] + [-1], dtype=np.int64)
        return table[np.where((labels >= 0) & (labels < len(set_classes)), labels, len(set_classes))]
    return np.where((labels >= 0) & (labels < outputs), labels, -1)


def reordered(set_classes: list[str] | None, model_classes: list[str] | None) -> bool:
    """Whether a class both know has another index in the model than in the set."""
    index = {name: i for i, name in enumerate(model_classes or [])}
    return any(index.get(name, i) != i for i, name in enumerate(set_classes or []))


def score_set(data: EvaluationSet, candidate: Served, stable: Served | None, model: str,
              batch_size: int) -> dict[str, Any]:
    """Both revisions on the same rows of one set: the entry the report carries for it."""
    import numpy as np

    entry: dict[str, Any] = {"name": data.name, "source": data.source, "sha256": data.sha256}
    why = mismatch(candidate.signature, data.features)
    if why:
        return entry | {"note": f"not comparable: the candidate {why}"}
    notes = []
    candidate_labels = model_labels(data.labels, data.classes, candidate)
    keep = candidate_labels >= 0
    stable_labels = None
    if stable is not None:
        why = mismatch(stable.signature, data.features)
        if why:
            notes.append(f"the stable version {why}")
        else:
            stable_labels = model_labels(data.labels, data.classes, stable)
            keep &= stable_labels >= 0
    rows = np.flatnonzero(keep)
    if len(rows) < len(keep):
        whose = "the candidate" if stable_labels is None else "the candidate or the stable version"
        notes.append(f"{len(keep) - len(rows)} of {len(keep)} rows left out: their class is unknown to {whose}")
    if not len(rows):
        return entry | {"note": "; ".join(notes)}
    if reordered(data.classes, candidate.classes):
        notes.append("the candidate orders its classes differently from this set: compared by class name")
    features = data.features[rows]
    entry |= {"samples": int(len(rows)), "accuracy": accuracy(infer_batches(
        candidate.address, model, candidate.version, candidate.signature, features, batch_size),
        candidate_labels[rows])}
    if stable is not None and stable_labels is not None and stable.address:
        try:
            logits = infer_batches(stable.address, model, stable.version, stable.signature, features, batch_size)
            entry["stableAccuracy"] = accuracy(logits, stable_labels[rows])
        except ModelAnsweredError as error:  # the stable revision's trouble, not the candidate's
            notes.append(f"no stable score: {error}")
    elif stable is not None and stable_labels is not None and data.name == "stable" \
            and data.recorded is not None and len(rows) == len(keep):
        entry["stableAccuracy"] = data.recorded
        notes.append("the stable score is the one its training run recorded on this set (no ready stable pod)")
    return entry | ({"note": "; ".join(notes)} if notes else {})


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    version_dir = Path(args.version_dir)
    metadata = read_metadata(version_dir)
    recorded = metadata.get("lineage")
    lineage = {**(recorded if isinstance(recorded, dict) else {}),
               "createdAt": metadata.get("createdAt"),
               "datasetFingerprint": (metadata.get("dataset") or {}).get("fingerprint"),
               "testAccuracy": (metadata.get("metrics") or {}).get("testAccuracy")}
    lineage = {k: v for k, v in lineage.items() if v is not None}
    candidate = Served(args.candidate, args.version, metadata["signature"], class_names(metadata))
    sets = [version_set("candidate", version_dir, args.version, metadata)]
    stable = None
    stable_dir = Path(args.stable_dir) if args.stable_dir else None
    if stable_dir and (stable_dir / METADATA_FILE).is_file():
        stable_metadata = read_metadata(stable_dir)
        stable = Served(args.stable, args.stable_version, stable_metadata["signature"], class_names(stable_metadata))
        if args.stable_version != args.version:
            sets.append(version_set("stable", stable_dir, args.stable_version, stable_metadata))
    elif stable_dir or args.stable:
        # A stable version published without metadata (copied in by hand), or not mounted: it serves the
        # candidate's signature (the model check verified what it loaded); it has no set of its own to offer.
        stable = Served(args.stable, args.stable_version, candidate.signature, None)
        if stable_dir and args.stable_version != args.version:
            sets.append({"name": "stable", "source": f"version {args.stable_version}",
                         "note": f"version {args.stable_version} has no {METADATA_FILE}, so no evaluation set"})
    if args.reference:
        sets.append(reference_set(Path(args.reference), args.reference_name or args.reference,
                                  args.reference_sha256 or None))
    if not any(isinstance(s, EvaluationSet) for s in sets):
        return {"skipped": "; ".join(str(s["note"]) for s in sets if isinstance(s, dict)), "lineage": lineage}
    entries = [score_set(s, candidate, stable, args.model, args.batch_size) if isinstance(s, EvaluationSet) else s
               for s in sets]
    if not any(e.get("accuracy") is not None for e in entries):
        return {"skipped": "no set could be scored: " + "; ".join(f"{e['name']} set: {e.get('note')}" for e in entries),
                "lineage": lineage}
    return {"sets": entries, "lineage": lineage}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelops.trainer.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--version-dir", required=True, help="the version's folder (metadata.json, eval.npz)")
    parser.add_argument("--model", required=True)
    parser.add_argument("--version", type=int, required=True)
    parser.add_argument("--candidate", required=True, help="host:port of the new revision's Triton HTTP API")
    parser.add_argument("--stable", default="", help="host:port of the stable revision's Triton HTTP API")
    parser.add_argument("--stable-version", type=int, default=0)
    parser.add_argument("--stable-dir", default="", help="the stable version's folder (metadata.json, eval.npz)")
    parser.add_argument("--reference", default="", help="a fixed reference set (.npz: x, y, optional classes)")
    parser.add_argument("--reference-name", default="", help="how reports name the reference set")
    parser.add_argument("--reference-sha256", default="", help="the digest the reference set must have")
    parser.add_argument("--batch-size", type=int, default=16, help="rows per request (at most maxBatchSize)")
    parser.add_argument("--report", default=TERMINATION_LOG, help="where the JSON report goes")
    args = parser.parse_args(argv)
    try:
        report = evaluate(args)
    except Definite as error:
        print(f"evaluate: failed: {error}", file=sys.stderr)
        _write(args.report, json.dumps({"failed": str(error)[:2000]}))
        return 0
    except EvaluationError as error:
        print(f"evaluate: error: {error}", file=sys.stderr)
        _write(args.report, json.dumps({"error": str(error)[:2000]}))
        return 1
    text = json.dumps(report, sort_keys=True)
    print(text)
    _write(args.report, text)
    return 0


def _write(path: str, text: str) -> None:
    try:
        Path(path).write_text(text)
    except OSError as error:  # outside a pod there may be no termination log; stdout has it
        print(f"evaluate: report not written to {path}: {error.strerror}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
