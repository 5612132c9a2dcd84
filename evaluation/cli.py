"""Evaluate an exported model on a labelled ISIC-layout set, or score a folder for submission.

    python -m evaluation evaluate --model models/default.onnx --labels train.csv \\
        --images train/ [--checkpoint last.ckpt] [--target-sensitivity 0.9 --write-threshold]
    python -m evaluation score --model models/default.onnx --images test/ \\
        --output submission.csv
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from evaluation import metrics
from evaluation.dataset import DatasetError, list_images, read_labels
from evaluation.model_file import write_threshold
from evaluation.scoring import (ScoringError, default_workers, open_classifier,
                                score_in_parallel, write_submission)
from inference.classifier import ModelLoadError
from inference.model_spec import SpecError
from inference.tta import DEFAULT_POLICY, POLICIES


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m evaluation",
                                     description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    evaluate = commands.add_parser("evaluate", help="AUC and operating point on a labelled set")
    evaluate.add_argument("--model", type=Path, required=True, help="the exported .onnx model")
    evaluate.add_argument("--labels", type=Path, required=True,
                          help="CSV with image_name,target[,patient_id] (ISIC layout)")
    evaluate.add_argument("--images", type=Path, required=True,
                          help="folder holding <image_name>.jpg (or .jpeg/.png)")
    evaluate.add_argument("--tta", default=DEFAULT_POLICY, choices=sorted(set(POLICIES) - {"none"}),
                          help="TTA policy compared with a single pass")
    evaluate.add_argument("--checkpoint", type=Path,
                          help="also score the PyTorch checkpoint the model came from")
    evaluate.add_argument("--allow-unsafe-pickle", action="store_true",
                          help="let --checkpoint run pickled code (only for files you trust)")
    evaluate.add_argument("--bootstrap", type=int, default=1000,
                          help="bootstrap resamples for the 95%% AUC interval")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    evaluate.add_argument("--target-sensitivity", type=float,
                          help="pick the highest threshold reaching this sensitivity (with TTA)")
    evaluate.add_argument("--write-threshold", action="store_true",
                          help="write the picked threshold into the model's embedded spec")
    evaluate.add_argument("--json", type=Path, help="also write the report here as JSON")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    evaluate.add_argument("--workers", type=int, default=default_workers(),
                          help="processes scoring images, one thread each (default: every "
                               "core); the scores do not depend on it")
    score = commands.add_parser("score", help="a folder of images to submission.csv")
    score.add_argument("--model", type=Path, required=True, help="the exported .onnx model")
    score.add_argument("--images", type=Path, required=True, help="folder of .jpg/.jpeg/.png")
    score.add_argument("--output", type=Path, default=Path("submission.csv"),
                       help="CSV to write: image_name,target")
    score.add_argument("--tta", default=DEFAULT_POLICY, choices=sorted(POLICIES),
                       help="TTA policy, as the server's `tta` option")
    score.add_argument("--quiet", action="store_true", help="no progress bar")
    score.add_argument("--workers", type=int, default=default_workers(),
                       help="processes scoring images, one thread each (default: every core); "
                            "the scores do not depend on it")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "write_threshold", False) and args.target_sensitivity is None:
        print("error: --write-threshold needs --target-sensitivity", file=sys.stderr)
        return 2
    try:
        return _evaluate(args) if args.command == "evaluate" else _score(args)
    except (DatasetError, ScoringError, ModelLoadError, SpecError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _score(args: argparse.Namespace) -> int:
    images = list_images(args.images)
    spec = open_classifier(args.model).spec  # refuses an unservable model before any work
    scores = score_in_parallel(args.model, images, [args.tta], args.workers,
                               progress=not args.quiet)
    write_submission(args.output, scores.names, scores.by_policy[args.tta])
    print(f"wrote {args.output}: {len(images)} images, TTA {args.tta}, "
          f"model {spec.display_name}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    labelled = read_labels(args.labels, args.images)
    targets = np.array([item.target for item in labelled])
    if targets.min() == targets.max():
        raise DatasetError(f"{args.labels} has only target={targets[0]}; AUC needs both classes")
    groups = [item.patient_id for item in labelled]
    files = [(item.name, item.path) for item in labelled]
    spec = open_classifier(args.model).spec  # refuses an unservable model before any work
    scores = score_in_parallel(args.model, files, ["none", args.tta], args.workers,
                               progress=not args.quiet)
    report: dict[str, Any] = {
        "model": str(args.model), "model_name": spec.display_name, "demo": spec.demo,
        "images": len(labelled), "positives": int(targets.sum()),
        "patients": len({g for g in groups if g}), "threshold": spec.threshold,
        "bootstrap": {"resamples": args.bootstrap, "seed": args.seed,
                      "unit": "patient" if all(groups) else "image"},
        "results": {}}
    for policy in ("none", args.tta):
        report["results"][f"onnx {policy}"] = _summarise(
            targets, scores.by_policy[policy], groups, spec.threshold, args)
    if args.checkpoint is not None:
        from evaluation.baseline import score_checkpoint

        torch_scores = score_checkpoint(args.checkpoint, spec, files, args.tta,
                                        args.allow_unsafe_pickle)
        report["results"][f"pytorch {args.tta}"] = _summarise(
            targets, torch_scores, groups, spec.threshold, args)
        ours = np.asarray(scores.by_policy[args.tta])
        theirs = np.asarray(torch_scores)
        report["agreement"] = {
            "max_abs_diff_probability": float(np.abs(ours - theirs).max()),
            "same_decision_fraction": float(np.mean((ours >= spec.threshold)
                                                    == (theirs >= spec.threshold))),
            "auc_difference": report["results"][f"onnx {args.tta}"]["auc"]
            - report["results"][f"pytorch {args.tta}"]["auc"]}
    if args.target_sensitivity is not None:
        picked = metrics.threshold_for_sensitivity(targets, scores.by_policy[args.tta],
                                                   args.target_sensitivity)
        point = metrics.operating_point(targets, scores.by_policy[args.tta], picked)
        report["picked_threshold"] = {"target_sensitivity": args.target_sensitivity,
                                      "tta": args.tta, **point.__dict__,
                                      "written": bool(args.write_threshold)}
        if args.write_threshold:
            write_threshold(args.model, picked)
    print(_format(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _summarise(targets: np.ndarray, scores: tuple[float, ...] | list[float], groups: list[str],
               threshold: float, args: argparse.Namespace) -> dict[str, Any]:
    low, high = metrics.bootstrap_auc_interval(targets, scores, groups, args.bootstrap,
                                               seed=args.seed)
    point = metrics.operating_point(targets, scores, threshold)
    return {"auc": metrics.roc_auc(targets, scores), "auc_ci95": [low, high],
            "sensitivity": point.sensitivity, "specificity": point.specificity,
            "confusion": {"tp": point.true_positives, "fn": point.false_negatives,
                          "tn": point.true_negatives, "fp": point.false_positives}}


def _format(report: dict[str, Any]) -> str:
    lines = [f"{report['model_name']}: {report['images']} images, {report['positives']} "
             f"melanoma, threshold {report['threshold']:.4g}"
             + (" (DEMO model: trained on synthetic lesions only)" if report["demo"] else ""),
             "", f"| scored by | ROC AUC | 95% CI (bootstrap by {report['bootstrap']['unit']}) "
             "| sensitivity | specificity |",
             "|---|---:|---|---:|---:|"]
    for name, result in report["results"].items():
        low, high = result["auc_ci95"]
        lines.append(f"| {name} | {result['auc']:.4f} | {low:.4f}-{high:.4f} | "
                     f"{result['sensitivity']:.3f} | {result['specificity']:.3f} |")
    if "agreement" in report:
        agreement = report["agreement"]
        lines.append(f"\nONNX vs PyTorch: max |Δp| {agreement['max_abs_diff_probability']:.2e}, "
                     f"same decision {agreement['same_decision_fraction']:.1%}, "
                     f"AUC difference {agreement['auc_difference']:+.2e}")
    if "picked_threshold" in report:
        picked = report["picked_threshold"]
        lines.append(f"\nthreshold {picked['threshold']:.6g} reaches sensitivity "
                     f"{picked['sensitivity']:.3f} (target {picked['target_sensitivity']}) with "
                     f"specificity {picked['specificity']:.3f}"
                     + ("; written into the model's spec" if picked["written"] else
                        "; not written (add --write-threshold)"))
    return "\n".join(lines)
