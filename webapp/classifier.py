"""Own the ONNX Runtime session and the model spec; turn uploaded bytes into a Prediction."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import onnxruntime as ort

from webapp import heatmap, preprocess, tta
from webapp.admission import InferenceGate
from webapp.errors import ModelLoadError
from webapp.model_spec import (CAM_WEIGHTS_METADATA_KEY, ModelSpec, SpecError,
                               decode_cam_weights, melanoma_probabilities,
                               spec_from_metadata)
from webapp.session import open_session


@dataclass(frozen=True)
class Prediction:
    """One answer, shared by the HTML page and the JSON API."""

    probability: float
    label: str
    positive: bool
    threshold: float
    policy: str
    view_names: tuple[str, ...]
    view_probabilities: tuple[float, ...]
    spread: float
    image_width: int
    image_height: int
    model_name: str
    model_version: str
    architecture: str
    demo: bool
    timing_ms: Mapping[str, float] = field(default_factory=dict)
    model_input_png: bytes | None = None
    heatmap_png: bytes | None = None

    @property
    def views(self) -> list[tuple[str, float]]:
        """(view name, melanoma probability) for each TTA view."""
        return list(zip(self.view_names, self.view_probabilities, strict=True))


class Classifier:
    """One per worker process: created after gunicorn forks, warmed up before serving."""

    def __init__(self, model_path: Path, intra_op_threads: int = 1,
                 max_image_pixels: int = preprocess.DEFAULT_MAX_IMAGE_PIXELS,
                 gate: InferenceGate | None = None, cache_dir: Path | None = None) -> None:
        self.model_path = Path(model_path)
        self.max_image_pixels = max_image_pixels
        self.gate = gate or InferenceGate()
        self._session = open_session(self.model_path, intra_op_threads, cache_dir)
        metadata = self._session.get_modelmeta().custom_metadata_map
        try:
            self.spec = spec_from_metadata(metadata)
            if CAM_WEIGHTS_METADATA_KEY not in metadata:
                raise SpecError("the model carries no CAM weights; re-export it")
            self._cam_weights, self._cam_bias = decode_cam_weights(
                metadata[CAM_WEIGHTS_METADATA_KEY])
        except SpecError as error:
            raise ModelLoadError(f"{self.model_path}: {error}") from None
        _check_graph_matches_spec(self._session, self.spec, self._cam_weights,
                                  self.model_path)
        self.ready = False

    def warm_up(self) -> None:
        """Run the largest batch once, and prove the CAM weights belong to this graph."""
        views = len(tta.POLICIES[tta.DEFAULT_POLICY])
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (views, self.spec.input_size, self.spec.input_size, 3),
                              dtype=np.uint8)
        logits, features = self.run_batch(preprocess.to_model_input(images, self.spec))
        index = self.spec.melanoma_index if self.spec.output_kind == "softmax" else 0
        pooled = features.mean(axis=(2, 3)) @ self._cam_weights + self._cam_bias
        if not np.allclose(pooled, logits[:, index], rtol=1e-3, atol=1e-3):
            raise ModelLoadError(f"{self.model_path}: the CAM weights in the spec do not "
                                 "reproduce the graph's logits; the file was altered")
        self.ready = True

    def predict(self, data: bytes, policy: str = tta.DEFAULT_POLICY, want_heatmap: bool = True,
                want_input_image: bool = False) -> Prediction:
        """Decode, fit, run every TTA view in one ONNX Runtime call, merge, explain."""
        views = tta.views_for(policy)
        with self.gate.admit():
            started = time.perf_counter()
            image = preprocess.decode_image(data, self.max_image_pixels)
            decoded = time.perf_counter()
            seen = preprocess.fit_to_input(image, self.spec)
            batch = preprocess.to_model_input(tta.make_batch(seen, views), self.spec)
            prepared = time.perf_counter()
            logits, features = self.run_batch(batch)
            inferred = time.perf_counter()
            self.gate.record(inferred - started)
        probabilities = self.probabilities(logits)
        heatmap_png = self._heatmap(seen, features, views) if want_heatmap else None
        finished = time.perf_counter()
        probability = tta.merge_probabilities(probabilities)
        positive = probability >= self.spec.threshold
        return Prediction(
            probability=probability, positive=positive,
            label=self.spec.labels[1] if positive else self.spec.labels[0],
            threshold=self.spec.threshold, policy=policy,
            view_names=tuple(v.name for v in views),
            view_probabilities=tuple(float(p) for p in probabilities),
            spread=float(np.std(probabilities)),
            image_width=int(image.shape[1]), image_height=int(image.shape[0]),
            model_name=self.spec.name, model_version=self.spec.version,
            architecture=self.spec.architecture, demo=self.spec.demo,
            timing_ms={"decode": _ms(started, decoded), "preprocess": _ms(decoded, prepared),
                       "inference": _ms(prepared, inferred),
                       "heatmap": _ms(inferred, finished), "total": _ms(started, finished)},
            model_input_png=heatmap.encode_png(seen) if want_input_image else None,
            heatmap_png=heatmap_png)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Melanoma probability per row of logits."""
        return melanoma_probabilities(logits, self.spec.output_kind, self.spec.melanoma_index)

    def activation_map(self, features: np.ndarray, views: tuple[tta.View, ...]) -> np.ndarray:
        """The merged, upright, [0, 1]-normalised melanoma map on the feature grid."""
        maps = heatmap.activation_maps(features, self._cam_weights)
        return heatmap.normalise(heatmap.merge_maps(maps, views))

    def run_batch(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits and features for an already preprocessed (N, 3, S, S) batch."""
        logits, features = self._session.run(
            [self.spec.logits_name, self.spec.features_name], {self.spec.input_name: batch})
        return logits, features

    def _heatmap(self, seen: np.ndarray, features: np.ndarray,
                 views: tuple[tta.View, ...]) -> bytes:
        return heatmap.encode_png(heatmap.overlay(seen, self.activation_map(features, views)))


def _ms(start: float, end: float) -> float:
    return round((end - start) * 1000.0, 2)


def _check_graph_matches_spec(session: ort.InferenceSession, spec: ModelSpec,
                              cam_weights: np.ndarray, path: Path) -> None:
    inputs = {i.name: i.shape for i in session.get_inputs()}
    outputs = {o.name: o.shape for o in session.get_outputs()}
    size = spec.input_size
    problems = []
    shape = inputs.get(spec.input_name)
    if shape is None or list(shape[1:]) != [3, size, size]:
        problems.append(f"input {spec.input_name!r} is {shape}, spec says [N, 3, {size}, {size}]")
    classes = 1 if spec.output_kind == "sigmoid" else 2
    logits = outputs.get(spec.logits_name)
    if logits is None or logits[-1] != classes:
        problems.append(f"output {spec.logits_name!r} is {logits}, spec says {classes} classes")
    features = outputs.get(spec.features_name)
    if features is None or len(features) != 4 or features[1] != spec.feature_channels:
        problems.append(f"output {spec.features_name!r} is {features}, spec says "
                        f"{spec.feature_channels} channels")
    if cam_weights.shape != (spec.feature_channels,):
        problems.append(f"CAM weights have {cam_weights.shape[0]} values, spec says "
                        f"{spec.feature_channels}")
    if problems:
        raise ModelLoadError(f"{path}: the spec is inconsistent with the graph: "
                             + "; ".join(problems))
