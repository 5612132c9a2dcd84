"""How closely an INT8 model follows its fp32 original on held-out images, and the limits.

Both models see exactly what the server would feed them (decode, fit, normalise, TTA views)
and their answers are compared as the server would show them: the merged probability, the
decision at the spec's threshold, the heatmap, and the AUC where labels exist.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from evaluation.metrics import roc_auc
from export.calibration import SourceImage, model_input
from export.errors import ExportError
from inference import tta
from inference.classifier import Classifier
from inference.model_spec import melanoma_probabilities, read_spec_file


@dataclass(frozen=True)
class FidelityLimits:
    """The export refuses an INT8 model beyond these (flags can widen them)."""

    max_auc_change: float = 0.002
    max_p99_abs_delta: float = 0.02
    max_flip_rate: float = 0.005


@dataclass(frozen=True)
class Fidelity:
    images: int
    tta: str
    threshold: float
    max_abs_delta: float
    p99_abs_delta: float
    mean_abs_delta: float
    flips: int
    flip_rate: float
    heatmap_correlation_mean: float
    heatmap_correlation_p5: float
    heatmap_correlation_min: float
    auc_fp32: float | None = None
    auc_int8: float | None = None
    auc_change: float | None = None
    auc_change_ci95: tuple[float, float] | None = None
    positives: int | None = None
    # How close to the threshold the flipped decisions lay (|log-odds of the fp32
    # probability minus log-odds of the threshold|): flips all within a hair of it are
    # noise a second reader would share, one far from it is a different answer.
    flip_logit_distance_max: float | None = None
    flip_logit_distance_median: float | None = None
    # Cumulative counts per band (log-odds units): flipped images, and all images, whose
    # fp32 score lay within that distance of the threshold.
    flips_within: dict[str, int] = field(default_factory=dict)
    images_within: dict[str, int] = field(default_factory=dict)

    def failures(self, limits: FidelityLimits) -> list[str]:
        """Each limit this measurement misses, said in one short phrase."""
        missed = []
        if self.auc_change is not None and abs(self.auc_change) > limits.max_auc_change:
            missed.append(f"AUC change {self.auc_change:+.4f} beyond ±{limits.max_auc_change}")
        if self.p99_abs_delta > limits.max_p99_abs_delta:
            missed.append(f"p99 |Δp| {self.p99_abs_delta:.4f} > {limits.max_p99_abs_delta}")
        if self.flip_rate > limits.max_flip_rate:
            missed.append(f"decision flips {self.flip_rate:.2%} ({self.flips}/{self.images}) > "
                          f"{limits.max_flip_rate:.2%}")
        return missed

    def as_dict(self) -> dict[str, Any]:
        record = asdict(self)
        if self.auc_change_ci95 is not None:
            record["auc_change_ci95"] = list(self.auc_change_ci95)
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in record.items()}


@dataclass(frozen=True)
class Answers:
    """One model's merged probability and upright [0, 1] heatmap per image."""

    probabilities: np.ndarray
    heatmaps: np.ndarray


def answer(model: Classifier, images: Sequence[SourceImage], policy: str = "none",
           batch_images: int = 8) -> Answers:
    """Run `model` over `images` as the server would, several images per ONNX Runtime call."""
    views = tta.views_for(policy)
    probabilities: list[float] = []
    heatmaps: list[np.ndarray] = []
    for start in range(0, len(images), batch_images):
        chunk = images[start:start + batch_images]
        batch = np.concatenate([model_input(image, model.spec, views) for image in chunk])
        logits, features = model.run_batch(batch)
        per_view = melanoma_probabilities(logits, model.spec.output_kind,
                                          model.spec.melanoma_index).reshape(len(chunk), len(views))
        probabilities.extend(tta.merge_probabilities(row) for row in per_view)
        for index in range(len(chunk)):
            rows = slice(index * len(views), (index + 1) * len(views))
            heatmaps.append(model.activation_map(features[rows], views))
    return Answers(np.asarray(probabilities), np.stack(heatmaps))


def compare(reference: Answers, candidate: Answers, images: Sequence[SourceImage],
            threshold: float, policy: str, resamples: int = 1000) -> Fidelity:
    """Fidelity of `candidate` (INT8) against `reference` (fp32) on the same images."""
    if candidate.heatmaps.shape[1:] != reference.heatmaps.shape[1:]:
        size = "x".join(map(str, candidate.heatmaps.shape[1:]))
        expected = "x".join(map(str, reference.heatmaps.shape[1:]))
        raise ExportError(f"the INT8 graph's feature map is {size} where the fp32 graph's is "
                          f"{expected}: the quantiser changed the network's padding; "
                          "export this model in fp32")
    delta = np.abs(candidate.probabilities - reference.probabilities)
    flipped = ((candidate.probabilities >= threshold)
               != (reference.probabilities >= threshold))
    flips = int(flipped.sum())
    correlations = np.array([_correlation(a, b) for a, b in
                             zip(reference.heatmaps, candidate.heatmaps, strict=True)])
    auc: dict[str, Any] = {}
    targets = [image.target for image in images]
    if all(t is not None for t in targets) and 0 < sum(targets) < len(targets):  # type: ignore[arg-type]
        y = np.asarray(targets, dtype=np.int64)
        groups = [image.patient_id or image.name for image in images]
        before, after = roc_auc(y, reference.probabilities), roc_auc(y, candidate.probabilities)
        auc = {"auc_fp32": before, "auc_int8": after, "auc_change": after - before,
               "auc_change_ci95": paired_auc_change_interval(
                   y, reference.probabilities, candidate.probabilities, groups, resamples),
               "positives": int(y.sum())}
    return Fidelity(
        images=len(images), tta=policy, threshold=threshold,
        max_abs_delta=float(delta.max()), p99_abs_delta=float(np.percentile(delta, 99)),
        mean_abs_delta=float(delta.mean()), flips=flips, flip_rate=flips / len(images),
        heatmap_correlation_mean=float(correlations.mean()),
        heatmap_correlation_p5=float(np.percentile(correlations, 5)),
        heatmap_correlation_min=float(correlations.min()), **auc,
        **flip_distances(reference.probabilities, flipped, threshold))


FLIP_BANDS = (0.05, 0.1, 0.25, 0.5, 1.0)  # log-odds distances from the threshold


def flip_distances(reference: np.ndarray, flipped: np.ndarray,
                   threshold: float) -> dict[str, Any]:
    """Where the flipped decisions lay: their fp32 scores' log-odds distance to the threshold."""
    distance = np.abs(_log_odds(reference) - _log_odds(np.asarray([threshold]))[0])
    moved = distance[flipped]
    return {
        "flip_logit_distance_max": float(moved.max()) if moved.size else None,
        "flip_logit_distance_median": float(np.median(moved)) if moved.size else None,
        "flips_within": {str(b): int(np.sum(moved <= b)) for b in FLIP_BANDS},
        "images_within": {str(b): int(np.sum(distance <= b)) for b in FLIP_BANDS}}


def _log_odds(p: np.ndarray) -> np.ndarray:
    clipped = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    return np.log(clipped / (1 - clipped))


def measure(fp32_model: Path, int8_model: Path, images: Sequence[SourceImage],
            policy: str = "none", threads: int = 1,
            fp32_answers: Answers | None = None) -> Fidelity:
    """Both models over the held-out images; the threshold is the fp32 spec's.

    `fp32_answers`, the fp32 model already run over `images` with `policy`, saves running
    it again when several INT8 variants of one model are compared.
    """
    if fp32_answers is None:
        fp32_answers = answer(Classifier(fp32_model, intra_op_threads=threads), images, policy)
    elif len(fp32_answers.probabilities) != len(images):
        raise ValueError("fp32 answers were computed on other images")
    candidate = Classifier(int8_model, intra_op_threads=threads)
    return compare(fp32_answers, answer(candidate, images, policy),
                   images, read_spec_file(fp32_model).threshold, policy)


def paired_auc_change_interval(targets: np.ndarray, before: np.ndarray, after: np.ndarray,
                               groups: Sequence[str], resamples: int = 1000,
                               seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of AUC(after) - AUC(before), both scored on each resample.

    Whole patients are resampled, as in evaluation.metrics.bootstrap_auc_interval.
    """
    rng = np.random.default_rng(seed)
    units, members = np.unique(np.asarray(groups), return_inverse=True)
    index_of = [np.flatnonzero(members == u) for u in range(len(units))]
    changes = []
    for _ in range(resamples):
        rows = np.concatenate([index_of[u] for u in rng.integers(0, len(units), len(units))])
        if 0 < targets[rows].sum() < len(rows):
            changes.append(roc_auc(targets[rows], after[rows])
                           - roc_auc(targets[rows], before[rows]))
    low, high = np.percentile(changes, [2.5, 97.5])
    return float(low), float(high)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    # A flat map (no melanoma evidence anywhere) has no shape to correlate: agreeing flat
    # maps count as identical, a flat map against a shaped one as unrelated.
    x, y = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    if x.std() == 0 or y.std() == 0:
        return 1.0 if np.allclose(x, y) else 0.0
    return float(np.corrcoef(x, y)[0, 1])
