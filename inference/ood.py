"""Out-of-distribution score: how unlike the reference images the model's own features are.

The exporter records the reference statistics (from the training images, or a folder of
the user's own) in the .onnx metadata under `METADATA_KEY`; a model without them simply
gets no such warning. The score is a Mahalanobis distance in the top principal components
of the pooled features plus the distance left outside them, both relative to the reference
images; the threshold is a high percentile of reference images held out from the fit.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from inference.quality import ImageWarning

METADATA_KEY = "melanoma_ood_reference"
MAX_COMPONENTS = 32
HOLDOUT_SHARE = 0.2
PERCENTILE = 99.0


class ReferenceError(ValueError):
    """Reference statistics are missing, too few, or unreadable."""


@dataclass(frozen=True, eq=False)
class OodReference:
    mean: np.ndarray        # (C,)
    components: np.ndarray  # (K, C), orthonormal rows
    variances: np.ndarray   # (K,)
    residual_scale: float   # mean squared residual of the fit images
    threshold: float        # scores above this are out of distribution
    images: int             # how many reference images made it

    def scores(self, pooled: np.ndarray) -> np.ndarray:
        """(N, C) pooled features -> (N,) scores; about 1 for typical reference images."""
        pooled = _normalise(np.atleast_2d(pooled))
        centred = pooled - self.mean
        projected = centred @ self.components.T
        inside = (projected ** 2 / self.variances).mean(axis=1)
        residual = (centred ** 2).sum(axis=1) - (projected ** 2).sum(axis=1)
        outside = np.maximum(residual, 0.0) / self.residual_scale
        return (inside + outside) / 2.0

    def check(self, pooled: np.ndarray) -> ImageWarning | None:
        """A `not_a_lesion` warning when the image's features are unlike the references."""
        score = float(self.scores(pooled)[0])
        if score <= self.threshold:
            return None
        return ImageWarning(
            "not_a_lesion", "This image is unlike the lesion photos the model was built on "
            f"(its features are {score / self.threshold:.1f} times further from them than "
            "almost all of them are). The score below is unreliable for it.")

    def to_json(self) -> str:
        return json.dumps({
            "images": self.images, "threshold": self.threshold,
            "residual_scale": self.residual_scale, "percentile": PERCENTILE,
            "mean": _pack(self.mean), "components": _pack(self.components),
            "variances": _pack(self.variances)})

    @classmethod
    def from_json(cls, text: str) -> OodReference:
        try:
            data = json.loads(text)
            mean = _unpack(data["mean"])
            components = _unpack(data["components"]).reshape(-1, mean.size)
            variances = _unpack(data["variances"])
            reference = cls(mean, components, variances, float(data["residual_scale"]),
                            float(data["threshold"]), int(data["images"]))
        except (ValueError, KeyError, TypeError) as error:
            raise ReferenceError(f"reference statistics are unreadable: {error}") from None
        if variances.size != components.shape[0] or not np.all(variances > 0):
            raise ReferenceError("reference statistics are inconsistent")
        return reference


def fit(pooled: np.ndarray, seed: int = 0) -> OodReference:
    """Statistics of (N, C) pooled reference features; a held-out share sets the threshold."""
    pooled = _normalise(np.asarray(pooled, dtype=np.float64))
    count = pooled.shape[0]
    if count < 20:
        raise ReferenceError(f"need at least 20 reference images, got {count}")
    order = np.random.default_rng(seed).permutation(count)
    held = max(5, int(count * HOLDOUT_SHARE))
    fit_rows, held_rows = pooled[order[held:]], pooled[order[:held]]
    mean = fit_rows.mean(axis=0)
    centred = fit_rows - mean
    k = max(1, min(MAX_COMPONENTS, fit_rows.shape[0] // 4))
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    variances = singular[:k] ** 2 / max(1, fit_rows.shape[0] - 1) + 1e-12
    projected = centred @ vt[:k].T
    residual = (centred ** 2).sum(axis=1) - (projected ** 2).sum(axis=1)
    provisional = OodReference(mean, vt[:k], variances, float(max(residual.mean(), 1e-12)),
                               np.inf, count)
    threshold = float(np.percentile(provisional.scores(held_rows), PERCENTILE))
    return OodReference(mean.astype(np.float32), vt[:k].astype(np.float32),
                        variances.astype(np.float32), provisional.residual_scale,
                        threshold, count)


def load(metadata: Mapping[str, str]) -> OodReference | None:
    """The model's reference statistics, or None when it was exported without any."""
    text = metadata.get(METADATA_KEY)
    return OodReference.from_json(text) if text else None


def _normalise(pooled: np.ndarray) -> np.ndarray:
    # Unit length: exposure and contrast scale every feature together, shape does not.
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return pooled / np.maximum(norms, 1e-12)


def _pack(array: np.ndarray) -> str:
    return base64.b64encode(np.asarray(array, dtype="<f4").tobytes()).decode("ascii")


def _unpack(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text, validate=True), dtype="<f4").astype(np.float64)
