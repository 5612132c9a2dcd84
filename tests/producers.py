"""Compare an exported model with the network that produced its checkpoint, on the same images."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export import to_onnx
from inference.model_spec import ModelSpec, melanoma_probabilities, read_spec_file

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


def random_images(size: int, count: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, 3, size, size)).astype(np.float32)


def onnx_probabilities(model: Path, images: np.ndarray) -> np.ndarray:
    from inference.runtime import ort

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
    # The cost measurement (a fresh process per model) is tested in tests/test_cost.py.
    code = to_onnx.main([str(checkpoint), "-o", str(output), "--no-measure-cost", *args])
    assert code == 0, f"export of {checkpoint.name} failed"
    return read_spec_file(output)


def max_probability_gap(model: Path, network: torch.nn.Module, size: int) -> float:
    """Largest |Δ melanoma probability| between the export and the producer's network.

    With PARITY_LOG set, each measurement is appended there as a JSON line (the table in
    docs/export.md comes from such a run).
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


def spread_weights(model: torch.nn.Module, size: int = 32, seed: int = 0) -> torch.nn.Module:
    """Make a randomly initialised network behave like a trained one: normalised activations.

    timm initialises some layers near zero (EfficientNet's features start around 1e-6), so
    every probability would be 0.5 and any export would look exact. Setting the norm layers'
    statistics from random images, then a unit-scale head, spreads the probabilities.
    """
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for layer in norms:
            layer.reset_running_stats()
            layer.momentum = None  # a plain average over the calibration batches
            layer.weight.copy_(0.3 + 0.4 * torch.rand(layer.weight.shape, generator=generator))
            layer.bias.copy_(0.2 * torch.randn(layer.bias.shape, generator=generator))
        model.train()
        for _ in range(2):
            model(torch.randn(8, 3, size, size, generator=generator))
        model.eval()
        head: Any = model.get_classifier()  # type: ignore[operator]
        pooled = model.forward_features(  # type: ignore[operator]
            torch.randn(8, 3, size, size, generator=generator)).mean(dim=(2, 3))
        centre = pooled.mean(dim=0)
        scale = float((pooled - centre).std()) * pooled.shape[1] ** 0.5
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) / scale)
        head.bias.copy_(-head.weight @ centre)
    return model
