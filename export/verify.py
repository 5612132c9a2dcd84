"""Prove the exported graph computes what the trained network computes (PyTorch or Keras)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from inference.runtime import ort
import torch

from export.errors import ExportError
from export.graph import FEATURES_NAME, INPUT_NAME, LOGITS_NAME, LogitsAndFeatures
from inference.model_spec import OutputKind, melanoma_probabilities

PARITY_BATCH_SIZES = (1, 8)
PARITY_SEED = 20200817  # fixed so every export is checked on the same inputs


@dataclass(frozen=True)
class Parity:
    """Largest differences between ONNX Runtime and the source framework over the parity inputs."""

    max_abs_diff_probability: float
    max_abs_diff_logit: float
    max_abs_diff_feature: float
    max_abs_feature: float
    tolerance_probability: float
    tolerance_feature: float

    def as_dict(self) -> dict[str, float | list[int]]:
        return {k: float(v) for k, v in self.__dict__.items()} | {
            "batch_sizes": list(PARITY_BATCH_SIZES)}


def check_graph(model_path: Path) -> None:
    try:
        onnx.checker.check_model(str(model_path), full_check=True)
    except onnx.checker.ValidationError as error:
        first_line = str(error).splitlines()[0]
        raise ExportError(f"exported graph failed onnx.checker: {first_line}") from None


def measure_parity(network: torch.nn.Module, model_bytes: bytes, input_size: int,
                   output_kind: OutputKind, melanoma_index: int, tolerance_probability: float,
                   feature_tolerance_relative: float = 1e-4) -> Parity:
    """Run both on fixed inputs at batch 1 and 8; fail the export above tolerance."""
    wrapped = LogitsAndFeatures(network).eval()
    generator = torch.Generator().manual_seed(PARITY_SEED)
    batches = [torch.randn(batch, 3, input_size, input_size, generator=generator).numpy()
               for batch in PARITY_BATCH_SIZES]

    def reference(images: np.ndarray) -> Outputs:
        with torch.inference_mode():
            logits, features = (t.numpy() for t in wrapped(torch.from_numpy(images)))
        return melanoma_probabilities(logits, output_kind, melanoma_index), logits, features

    return compare(reference, "PyTorch", model_bytes, batches, output_kind, melanoma_index,
                   tolerance_probability, feature_tolerance_relative)


# A reference's answer for a batch: melanoma probabilities (N,), logits and NCHW features.
Outputs = tuple[np.ndarray, np.ndarray, np.ndarray]


def compare(reference: Callable[[np.ndarray], Outputs], source: str, model_bytes: bytes,
            batches: Sequence[np.ndarray], output_kind: OutputKind, melanoma_index: int,
            tolerance_probability: float, feature_tolerance_relative: float = 1e-4) -> Parity:
    """Run ONNX Runtime and `reference` (the framework the model came from, named `source`)
    on the same NCHW batches; fail the export above tolerance."""
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    d_prob = d_logit = d_feat = max_feat = 0.0
    for images in batches:
        probabilities, logits, features = reference(images)
        onnx_logits, onnx_features = session.run(
            [LOGITS_NAME, FEATURES_NAME], {INPUT_NAME: images})
        d_prob = max(d_prob, float(np.abs(
            probabilities - melanoma_probabilities(onnx_logits, output_kind,
                                                   melanoma_index)).max()))
        d_logit = max(d_logit, float(np.abs(logits - onnx_logits).max()))
        d_feat = max(d_feat, float(np.abs(features - onnx_features).max()))
        max_feat = max(max_feat, float(np.abs(features).max()))
    feature_tolerance = feature_tolerance_relative * max(1.0, max_feat)
    parity = Parity(d_prob, d_logit, d_feat, max_feat, tolerance_probability, feature_tolerance)
    if d_prob > tolerance_probability or d_feat > feature_tolerance:
        raise ExportError(
            f"ONNX Runtime disagrees with {source}: max |Δ probability| {d_prob:.2e} "
            f"(tolerance {tolerance_probability:.0e}), max |Δ feature| {d_feat:.2e} "
            f"(tolerance {feature_tolerance:.1e}); the graph is not the trained model")
    return parity
