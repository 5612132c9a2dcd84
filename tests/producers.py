"""Compare an exported model with the network that produced its checkpoint, on the same images."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from export import to_onnx
from webapp.model_spec import ModelSpec, melanoma_probabilities, read_spec_file

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


def random_images(size: int, count: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, 3, size, size)).astype(np.float32)


def onnx_probabilities(model: Path, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    spec = read_spec_file(model)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (logits,) = session.run([spec.logits_name], {spec.input_name: images})
    return melanoma_probabilities(logits, spec.output_kind, spec.melanoma_index)


def torch_probabilities(network: torch.nn.Module, images: np.ndarray,
                        spec: ModelSpec) -> np.ndarray:
    """What the producing framework's own network says, in float32."""
    with torch.inference_mode():
        logits = network.eval()(torch.from_numpy(images)).float().numpy()
    return melanoma_probabilities(logits, spec.output_kind, spec.melanoma_index)


def export(checkpoint: Path, output: Path, *args: str) -> ModelSpec:
    """Run the export CLI; fail the test with its error line if it refuses."""
    code = to_onnx.main([str(checkpoint), "-o", str(output), *args])
    assert code == 0, f"export of {checkpoint.name} failed"
    return read_spec_file(output)


def max_probability_gap(model: Path, network: torch.nn.Module, size: int) -> float:
    """Largest |Δ melanoma probability| between the export and the producer's network.

    With PARITY_LOG set, each measurement is appended there as a JSON line (the README's
    "Bring your own checkpoint" table comes from such a run).
    """
    images = random_images(size)
    spec = read_spec_file(model)
    gap = float(np.abs(onnx_probabilities(model, images)
                       - torch_probabilities(network, images, spec)).max())
    if os.environ.get("PARITY_LOG"):
        record = {"test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0],
                  "architecture": spec.architecture_label, "format": spec.checkpoint_format,
                  "weights": spec.checkpoint_weights, "input_size": size,
                  "max_abs_dp_vs_producer": gap,
                  "max_abs_dp_export_check": spec.parity["max_abs_diff_probability"]}
        with open(os.environ["PARITY_LOG"], "a") as log:
            log.write(json.dumps(record) + "\n")
    return gap
