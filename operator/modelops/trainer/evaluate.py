"""The evaluation pod's program: send a version's held-out set through a candidate Triton (and the stable one)
and report both accuracies as JSON on the termination message.

`python -m modelops.trainer.evaluate --version-dir /models/m/3 --model m --version 3 --candidate IP:8000
 [--stable IP:8000 --stable-version 2]`

It runs in the trainer image, in the ModelService's namespace, with the repository mounted read-only, so the
operator never reads a tenant's volume; it needs numpy, never torch. Exit 0 with a report (also when the
version has no evaluation set: the report says skipped; or when Triton answers it with errors: the report says
failed), 1 with a one-line reason when the evaluation could not run.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

EVAL_FILE = "eval.npz"
METADATA_FILE = "metadata.json"
TERMINATION_LOG = "/dev/termination-log"


class EvaluationError(Exception):
    """The evaluation could not run (unreachable Triton, unreadable files): worth another attempt."""


class ModelAnsweredError(Exception):
    """Triton answered the held-out set with an error: the version fails its evaluation, definitely."""


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
            body = {"inputs": [{"name": tensor_in["name"], "datatype": tensor_in["datatype"],
                                "shape": list(batch.shape), "data": batch.reshape(-1).tolist()}],
                    "outputs": [{"name": tensor_out}]}
            conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = response.read()
            if response.status != 200:
                raise ModelAnsweredError(f"{model} version {version} at {address} answered the held-out set with "
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


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    version_dir = Path(args.version_dir)
    try:
        metadata = json.loads((version_dir / METADATA_FILE).read_text())
    except (OSError, ValueError) as error:
        raise EvaluationError(f"cannot read {version_dir / METADATA_FILE}: {error}") from None
    lineage = {**(metadata.get("lineage") if isinstance(metadata.get("lineage"), dict) else {}),
               "createdAt": metadata.get("createdAt"),
               "datasetFingerprint": (metadata.get("dataset") or {}).get("fingerprint"),
               "testAccuracy": (metadata.get("metrics") or {}).get("testAccuracy")}
    lineage = {k: v for k, v in lineage.items() if v is not None}
    described = metadata.get("evaluation") or {}
    data_file = version_dir / str(described.get("file") or EVAL_FILE)
    if not data_file.is_file():
        return {"skipped": f"version {args.version} has no evaluation set ({data_file.name})", "lineage": lineage}

    import numpy as np

    raw = data_file.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if described.get("sha256") and described["sha256"] != digest:
        raise EvaluationError(f"{data_file.name} does not match the sha256 metadata.json records")
    with np.load(data_file) as held_out:
        features, labels = held_out["x"].astype(np.float32), held_out["y"].astype(np.int64)
    signature = metadata["signature"]
    candidate = accuracy(infer_batches(args.candidate, args.model, args.version, signature, features,
                                       args.batch_size), labels)
    report: dict[str, Any] = {"accuracy": candidate, "samples": int(len(labels)), "sha256": digest,
                              "trainedAccuracy": described.get("accuracy"), "lineage": lineage}
    if args.stable:
        report["stableAccuracy"] = accuracy(infer_batches(args.stable, args.model, args.stable_version, signature,
                                                          features, args.batch_size), labels)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelops.trainer.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--version-dir", required=True, help="the version's folder (metadata.json, eval.npz)")
    parser.add_argument("--model", required=True)
    parser.add_argument("--version", type=int, required=True)
    parser.add_argument("--candidate", required=True, help="host:port of the new revision's Triton HTTP API")
    parser.add_argument("--stable", default="", help="host:port of the stable revision's Triton HTTP API")
    parser.add_argument("--stable-version", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16, help="rows per request (at most maxBatchSize)")
    parser.add_argument("--report", default=TERMINATION_LOG, help="where the JSON report goes")
    args = parser.parse_args(argv)
    try:
        report = evaluate(args)
    except ModelAnsweredError as error:
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
