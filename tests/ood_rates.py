"""Measure the not-a-lesion warning: false alarms on held-out generated dermoscopy, catches
on generated non-lesion photos (landscapes, text pages, faces, objects).

    python -m tests.ood_rates MODEL.onnx [--reference 300 --held-out 200 --per-kind 50]

The model's reference statistics are fitted here from generated lesions (seeds 1000+),
as `export/to_onnx.py --reference-images` would; held-out lesions use seeds 90000+.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import numpy as np  # noqa: E402

from tests import nonlesion  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from export import reference
    from training.synthetic import render_lesion
    from inference import ood, quality

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="an exported .onnx model")
    parser.add_argument("--reference", type=int, default=300, help="reference lesions")
    parser.add_argument("--held-out", type=int, default=200, help="held-out lesions")
    parser.add_argument("--per-kind", type=int, default=50, help="photos per non-lesion kind")
    args = parser.parse_args(argv)

    def lesions(start: int, count: int) -> list[np.ndarray]:
        return [render_lesion(start + i, melanoma=i % 10 == 0, size=256)[0]
                for i in range(count)]

    fitted = ood.fit(reference.pooled_features(args.model, lesions(1000, args.reference)))

    def rates(photos: list[np.ndarray]) -> tuple[float, float, float]:
        features = fitted.scores(reference.pooled_features(args.model, photos)) > fitted.threshold
        colours = np.array([any(w.code == "not_a_lesion" for w in quality.check(p))
                            for p in photos])
        warned = np.array([bool(quality.check(p)) for p in photos]) | features
        return float(features.mean()), float((features | colours).mean()), float(warned.mean())

    print(f"{args.model}: {args.reference} reference, {args.held_out} held-out lesions, "
          f"{args.per_kind} photos per non-lesion kind")
    feature, either, anything = rates(lesions(90_000, args.held_out))
    print(f"held-out lesions  false alarms: features {feature:.3f}, not_a_lesion {either:.3f}, "
          f"any warning {anything:.3f}")
    for kind in nonlesion.KINDS:
        photos = [nonlesion.GENERATORS[kind](seed=100 + s) for s in range(args.per_kind)]
        feature, either, _ = rates(photos)
        print(f"{kind:<16} caught: features {feature:.3f}, not_a_lesion {either:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
