"""Triton python-backend model: runs the TorchScript model.pt of its version directory (copied there as model.py)."""

import json
import os

import numpy as np
import torch
import triton_python_backend_utils as pb_utils  # provided by Triton's python backend

INPUT_NAME = "INPUT__0"
OUTPUT_NAME = "OUTPUT__0"


class TritonPythonModel:
    """Batches every request of an execute() call through one forward pass."""

    def initialize(self, args):
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        on_gpu = args.get("model_instance_kind") == "GPU" and torch.cuda.is_available()
        self.device = torch.device(f"cuda:{args.get('model_instance_device_id', 0)}" if on_gpu else "cpu")
        self.model = torch.jit.load(os.path.join(version_dir, "model.pt"), map_location=self.device).eval()
        config = json.loads(args["model_config"])
        self.output_dtype = pb_utils.triton_string_to_numpy(config["output"][0]["data_type"])

    def execute(self, requests):
        arrays, responses = [], []
        for request in requests:
            arrays.append(pb_utils.get_input_tensor_by_name(request, INPUT_NAME).as_numpy())
        try:
            batch = torch.from_numpy(np.concatenate(arrays).astype(np.float32, copy=False)).to(self.device)
            with torch.inference_mode():
                logits = self.model(batch).float().cpu().numpy().astype(self.output_dtype, copy=False)
        except Exception as exc:  # answer every request with the error rather than crash the stub
            error = pb_utils.TritonError(f"inference failed: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        start = 0
        for array in arrays:
            part = logits[start:start + len(array)]
            start += len(array)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(OUTPUT_NAME, part)]))
        return responses

    def finalize(self):
        self.model = None
