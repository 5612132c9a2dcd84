"""Check an exported model against the generator's ground truth: ranking and heatmaps.

    python -m training.truth models/default.onnx --images 500 --seed 77

Scores a freshly generated held-out set (its own seed, never trained on) as the server does,
single pass and with TTA, and asks of every melanoma whether the heatmap's peak falls on the
lesion mask, and how well the heatmap (above half its peak) overlaps the mask (IoU).
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from evaluation.metrics import roc_auc
from training.synthetic import plan_dataset, render_record

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


@dataclass(frozen=True)
class TruthReport:
    images: int
    melanomas: int
    auc_single: float
    auc_tta: float
    heatmap_hit_rate: float    # melanomas whose heatmap peak lies inside the lesion mask
    heatmap_iou: float         # mean IoU of (heatmap >= half its peak) with the mask


def check_against_truth(model: Path, images: int, seed: int, size: int = 256,
                        melanoma_fraction: float = 0.1, policy: str = "dihedral",
                        ) -> TruthReport:
    """Generate `images` lesions (true labels, no label noise) and score them."""
    from inference import preprocess, tta
    from inference.classifier import Classifier

    classifier = Classifier(model)
    views = tta.views_for(policy)
    targets, single, merged, hits, ious = [], [], [], [], []
    for record in plan_dataset(images, seed, melanoma_fraction, label_noise=0.0):
        rgb, mask = render_record(record, size)
        seen = preprocess.fit_to_input(rgb, classifier.spec)
        batch = preprocess.to_model_input(tta.make_batch(seen, views), classifier.spec)
        logits, features = classifier.run_batch(batch)
        probabilities = classifier.probabilities(logits)
        targets.append(int(record.melanoma))
        single.append(float(probabilities[0]))
        merged.append(tta.merge_probabilities(probabilities))
        if record.melanoma:
            cam = classifier.activation_map(features, views)
            hit, iou = heatmap_agreement(cam, mask)
            hits.append(hit)
            ious.append(iou)
    labels = np.asarray(targets)
    return TruthReport(len(targets), int(labels.sum()), roc_auc(labels, np.asarray(single)),
                       roc_auc(labels, np.asarray(merged)), float(np.mean(hits)),
                       float(np.mean(ious)))


def heatmap_agreement(cam: np.ndarray, mask: np.ndarray) -> tuple[bool, float]:
    """(peak inside the mask, IoU of the map above half its peak with the mask)."""
    height, width = mask.shape
    upsampled = cv2.resize(cam.astype(np.float32), (width, height),
                           interpolation=cv2.INTER_CUBIC)
    peak = np.unravel_index(int(np.argmax(upsampled)), upsampled.shape)
    hot = upsampled >= 0.5 * float(upsampled.max())
    union = np.logical_or(hot, mask).sum()
    iou = float(np.logical_and(hot, mask).sum() / union) if union else 0.0
    return bool(mask[peak]), iou


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="exported .onnx model")
    parser.add_argument("--images", type=int, default=500, help="held-out images to draw")
    parser.add_argument("--seed", type=int, default=77, help="seed of the held-out set")
    parser.add_argument("--melanoma-fraction", type=float, default=0.1,
                        help="share of melanomas in the held-out set")
    args = parser.parse_args(argv)
    report = check_against_truth(args.model, args.images, args.seed,
                                 melanoma_fraction=args.melanoma_fraction)
    print(f"{report.images} held-out images ({report.melanomas} melanomas): AUC single pass "
          f"{report.auc_single:.4f}, TTA {report.auc_tta:.4f}; heatmap peak on the lesion "
          f"for {report.heatmap_hit_rate:.1%} of melanomas, mean IoU {report.heatmap_iou:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
