"""The model: owns the ONNX Runtime session and the spec; a decoded image in, a Prediction out.

Admission, timing, PNG encoding and HTTP live in webapp/service.py, around it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from inference.runtime import ort

from inference import heatmap, insight, memory, ood, preprocess, tta
from inference.errors import ModelLoadError
from inference.model_spec import (CAM_WEIGHTS_METADATA_KEY, MEMBER_LOGITS_NAME, ModelSpec,
                                  SpecError,
                               decode_cam_weights, spec_from_metadata)
from inference.session import open_session


@dataclass(frozen=True)
class Prediction:
    """The model's answer for one image; the spec it was made under is `Classifier.spec`."""

    probability: float
    positive: bool
    label: str
    policy: str
    view_names: tuple[str, ...]
    view_probabilities: tuple[float, ...]
    spread: float
    image_width: int
    image_height: int

    @property
    def views(self) -> list[tuple[str, float]]:
        """(view name, melanoma probability) for each TTA view."""
        return list(zip(self.view_names, self.view_probabilities, strict=True))


class Classifier:
    """One per worker process: created after gunicorn forks, warmed up before serving.

    Its stages (KServe's preprocess, predict, explain, postprocess) are separate methods
    so the web layer (webapp/service.py) can admit and time them; `predict` chains them.
    """

    def __init__(self, model_path: Path, intra_op_threads: int = 1,
                 cache_dir: Path | None = None, memory_budget_mib: int | None = None) -> None:
        self.model_path = Path(model_path)
        self._session = open_session(self.model_path, intra_op_threads, cache_dir)
        self._budget_bytes = memory.budget_bytes(memory_budget_mib)
        self._run_options = memory.shrinking_run_options()
        views = len(tta.POLICIES[tta.DEFAULT_POLICY])
        # Until warm-up has measured a view's cost: all views at once, as before chunking.
        self.chunks = memory.ChunkPlan(views, self._budget_bytes, 0, 0)
        metadata = self._session.get_modelmeta().custom_metadata_map
        try:
            self.spec = spec_from_metadata(metadata)
            if CAM_WEIGHTS_METADATA_KEY not in metadata:
                raise SpecError("the model carries no CAM weights; re-export it")
            self._cam_weights, self._cam_bias = decode_cam_weights(
                metadata[CAM_WEIGHTS_METADATA_KEY])
            self.ood_reference = ood.load(metadata)
        except (SpecError, ood.ReferenceError) as error:
            raise ModelLoadError(f"{self.model_path}: {error}") from None
        _check_graph_matches_spec(self._session, self.spec, self._cam_weights,
                                  self.model_path)
        self._warmed_up = False

    @property
    def warmed_up(self) -> bool:
        """True once `warm_up` has run the largest batch and checked the CAM weights."""
        return self._warmed_up

    def warm_up(self) -> None:
        """Measure what one view costs in memory and plan the chunks views run in; run the
        largest batch once, and prove the CAM weights belong to this graph."""
        views = len(tta.POLICIES[tta.DEFAULT_POLICY])
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (views, self.spec.input_size, self.spec.input_size, 3),
                              dtype=np.uint8)
        batch = preprocess.to_model_input(images, self.spec)
        self._run(batch[:1])  # the first run also sets up kernels: not a view's cost
        memory.reset_peak()
        resting = memory.resident_bytes()
        self._run(batch[:1])
        per_view = max(0, memory.peak_bytes() - resting)
        self.chunks = memory.plan_chunks(views, self._budget_bytes, resting, per_view)
        logits, features = self.run_batch(batch)
        pooled = features.mean(axis=(2, 3)) @ self._cam_weights + self._cam_bias
        if not np.allclose(pooled, self._pooled_logits(batch, logits), rtol=1e-3, atol=1e-3):
            raise ModelLoadError(f"{self.model_path}: the CAM weights in the spec do not "
                                 "reproduce the graph's logits; the file was altered")
        self._warmed_up = True

    def _pooled_logits(self, batch: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """What the CAM weights applied to the pooled features must give: the melanoma logit,
        or for an ensemble the weighted mean of its members' log-odds (whose probabilities,
        averaged the same way, must be the graph's answer)."""
        if not self.spec.members:
            return logits[:, self.spec.melanoma_column]
        step = self.chunks.views_per_run
        members = np.concatenate([
            self._session.run([MEMBER_LOGITS_NAME], {self.spec.input_name: batch[i:i + step]},
                              self._run_options)[0] for i in range(0, len(batch), step)])
        weights = self.spec.member_weights
        averaged = (1.0 / (1.0 + np.exp(-members.astype(np.float64)))) @ weights
        if not np.allclose(averaged, self.probabilities(logits), rtol=0, atol=1e-5):
            raise ModelLoadError(f"{self.model_path}: the graph's answer is not the weighted "
                                 "mean of its members' probabilities; the file was altered")
        pooled_logits: np.ndarray = members @ weights
        return pooled_logits

    def predict(self, image: np.ndarray, policy: str = tta.DEFAULT_POLICY) -> Prediction:
        """Every stage but the explanation, for one decoded RGB image (H, W, 3)."""
        views = tta.views_for(policy)
        _, batch = self.preprocess(image, views)
        logits, _ = self.run_batch(batch)
        return self.postprocess(logits, policy, (int(image.shape[1]), int(image.shape[0])))

    def preprocess(self, image: np.ndarray,
                   views: tuple[tta.View, ...]) -> tuple[np.ndarray, np.ndarray]:
        """The square image the model sees (S, S, 3) and its batch of views (V, 3, S, S)."""
        seen = preprocess.fit_to_input(image, self.spec)
        return seen, preprocess.to_model_input(tta.make_batch(seen, views), self.spec)

    def run_batch(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits and features for an already preprocessed (N, 3, S, S) batch, run in chunks
        of `chunks.views_per_run` views so their activations fit the memory budget."""
        step = self.chunks.views_per_run
        if len(batch) <= step:
            return self._run(batch)
        parts = [self._run(batch[start:start + step]) for start in range(0, len(batch), step)]
        return (np.concatenate([logits for logits, _ in parts]),
                np.concatenate([features for _, features in parts]))

    def _run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, features = self._session.run(
            [self.spec.logits_name, self.spec.features_name], {self.spec.input_name: batch},
            self._run_options)
        return logits, features

    def postprocess(self, logits: np.ndarray, policy: str,
                    image_size: tuple[int, int]) -> Prediction:
        """Merge the views' probabilities and apply the spec's threshold and labels."""
        probabilities = self.probabilities(logits)
        probability = tta.merge_probabilities(probabilities)
        positive, label = self.spec.label_for(probability)
        return Prediction(
            probability=probability, positive=positive, label=label, policy=policy,
            view_names=tuple(v.name for v in tta.views_for(policy)),
            view_probabilities=tuple(float(p) for p in probabilities),
            spread=float(np.std(probabilities)),
            image_width=image_size[0], image_height=image_size[1])

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Melanoma probability per row of logits."""
        return self.spec.melanoma_probabilities(logits)

    def activation_map(self, features: np.ndarray, views: tuple[tta.View, ...]) -> np.ndarray:
        """The explanation: the merged, upright, [0, 1]-normalised melanoma map on the
        feature grid."""
        maps = heatmap.activation_maps(features, self._cam_weights)
        return heatmap.normalise(heatmap.merge_maps(maps, views))


    def explain(self, image: np.ndarray, features: np.ndarray,
                views: tuple[tta.View, ...]) -> insight.Insight:
        """Warnings about the photo, the honest heatmap grid and the pooled features."""
        return insight.explain(image, features, views, self._cam_weights, self._cam_bias,
                               self.ood_reference)


def _check_graph_matches_spec(session: ort.InferenceSession, spec: ModelSpec,
                              cam_weights: np.ndarray, path: Path) -> None:
    inputs = {i.name: i.shape for i in session.get_inputs()}
    outputs = {o.name: o.shape for o in session.get_outputs()}
    size = spec.input_size
    problems = []
    shape = inputs.get(spec.input_name)
    if shape is None or list(shape[1:]) != [3, size, size]:
        problems.append(f"input {spec.input_name!r} is {shape}, spec says [N, 3, {size}, {size}]")
    classes = spec.class_count
    logits = outputs.get(spec.logits_name)
    if logits is None or logits[-1] != classes:
        problems.append(f"output {spec.logits_name!r} is {logits}, spec says {classes} classes")
    features = outputs.get(spec.features_name)
    if features is None or len(features) != 4 or features[1] != spec.feature_channels:
        problems.append(f"output {spec.features_name!r} is {features}, spec says "
                        f"{spec.feature_channels} channels")
    members = outputs.get(MEMBER_LOGITS_NAME)
    if spec.members and (members is None or members[-1] != len(spec.members)):
        problems.append(f"output {MEMBER_LOGITS_NAME!r} is {members}, spec says "
                        f"{len(spec.members)} members")
    if cam_weights.shape != (spec.feature_channels,):
        problems.append(f"CAM weights have {cam_weights.shape[0]} values, spec says "
                        f"{spec.feature_channels}")
    if problems:
        raise ModelLoadError(f"{path}: the spec is inconsistent with the graph: "
                             + "; ".join(problems))
