"""Measure whether a model keeps its answers when large JPEGs are decoded at reduced scale,
and record in its spec what the server will do.

    python -m export.reduced_decode models/default.onnx      # measure on drawn lesions, record

A 12 MP phone photo costs about 4x less to decode at 1/8 scale (straight from the JPEG's
DCT coefficients) than in full, and 60x less memory, all to be fitted to 128 px. Whether
that changes the model's answer depends on the model and on how the spec fits photos (an
aliasing bilinear fit of a full decode sees other pixels than an area fit of a reduced one).
So it is measured: for each min ratio (the reduced photo's shorter side must stay at least
that many times the input), the melanoma probability of every photo from a reduced decode
against a full one. The smallest ratio whose max |Δp| is within the limit and that flips
no decision goes into the spec's `jpeg_reduced_decode_min_ratio`, the measurement beside it;
0 (always decode in full) when none passes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from export.model_file import rewrite_metadata, update_provenance  # noqa: E402
from inference import preprocess  # noqa: E402
from inference.model_spec import SPEC_METADATA_KEY, ModelSpec, read_spec_file  # noqa: E402

MIN_RATIOS = (2, 4, 8)
DEFAULT_MAX_DELTA = 0.01
DEFAULT_PHOTOS = 24
# Phone cameras' shapes, both ways up; the largest is 12 MP.
PHONE_SIZES = ((4032, 3024), (3024, 4032), (4000, 3000), (2592, 1944), (1600, 1200))
_DRAWN_SIZE = 384


def phone_photos(count: int, seed: int = 7,
                 sizes: Sequence[tuple[int, int]] = PHONE_SIZES) -> list[bytes]:
    """Drawn lesions (half melanomas) as phone-sized JPEGs: drawn at 384 px, enlarged to a
    camera's size with sensor noise, so every decode scale has real detail to keep."""
    from training.synthetic import render_lesion

    rng = np.random.default_rng(seed)
    photos = []
    for index in range(count):
        drawn, _ = render_lesion(rng, index % 2 == 1, _DRAWN_SIZE)
        width, height = sizes[index % len(sizes)]
        photo = cv2.resize(drawn, (width, height), interpolation=cv2.INTER_CUBIC)
        # +-6 levels of noise with saturating uint8 arithmetic: 3x faster than through int16
        # on 12 MP, and this runs in the first `make serve`.
        noise = np.asarray(rng.integers(0, 13, photo.shape, dtype=np.uint8))
        photo = cv2.subtract(cv2.add(photo, noise),
                             (6, 6, 6, 0))  # type: ignore[call-overload]  # a cv2 Scalar
        ok, data = cv2.imencode(".jpg", photo[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        photos.append(data.tobytes())
    return photos


def scale_for(data: bytes, spec: ModelSpec, min_ratio: int) -> int:
    """The decode scale (1, 2, 4 or 8) the server would use for this photo at `min_ratio`."""
    use = dataclasses.replace(spec, jpeg_reduced_decode_min_ratio=min_ratio)
    return preprocess.jpeg_scale(preprocess.read_header(data), use, preprocess.DecodeLimits())


def measure(model: Path, photos: Sequence[bytes],
            max_delta: float = DEFAULT_MAX_DELTA) -> dict[str, Any]:
    """Single-view probabilities of each photo decoded in full and at each min ratio."""
    from inference.classifier import Classifier

    classifier = Classifier(model)
    spec = classifier.spec
    full_spec = dataclasses.replace(spec, jpeg_reduced_decode_min_ratio=0)
    deltas: dict[int, list[float]] = {ratio: [] for ratio in MIN_RATIOS}
    flips = dict.fromkeys(MIN_RATIOS, 0)
    scales: dict[int, set[int]] = {ratio: set() for ratio in MIN_RATIOS}
    for data in photos:
        seen = [preprocess.prepare(data, full_spec).image]
        for ratio in MIN_RATIOS:
            seen.append(preprocess.prepare(
                data, dataclasses.replace(spec, jpeg_reduced_decode_min_ratio=ratio)).image)
            scales[ratio].add(scale_for(data, spec, ratio))
        logits, _ = classifier.run_batch(preprocess.to_model_input(np.stack(seen), spec))
        full, *reduced = (float(p) for p in classifier.probabilities(logits))
        for ratio, probability in zip(MIN_RATIOS, reduced, strict=True):
            deltas[ratio].append(abs(probability - full))
            flips[ratio] += int(spec.label_for(probability)[0] != spec.label_for(full)[0])
    per_ratio = {str(ratio): {"decode_scales": sorted(scales[ratio]),
                              "max_abs_delta": round(max(deltas[ratio]), 5),
                              "mean_abs_delta": round(float(np.mean(deltas[ratio])), 5),
                              "flips": flips[ratio]}
                 for ratio in MIN_RATIOS}
    passing = [ratio for ratio in MIN_RATIOS
               if max(deltas[ratio]) <= max_delta and flips[ratio] == 0]
    return {"photos": len(photos), "views": 1, "max_delta": max_delta,
            "interpolation": spec.interpolation, "per_min_ratio": per_ratio,
            "min_ratio": passing[0] if passing else 0}


def spec_fields(measured: dict[str, Any]) -> dict[str, Any]:
    """The spec fields that carry a measurement: the chosen min ratio and the numbers."""
    return {"jpeg_reduced_decode_min_ratio": measured["min_ratio"],
            "jpeg_reduced_decode_fidelity": measured}


def record(model: Path, measured: dict[str, Any]) -> ModelSpec:
    """Write the chosen min ratio and its measurement into the model's spec (atomically)."""
    spec = dataclasses.replace(read_spec_file(model), **spec_fields(measured))
    rewrite_metadata(model, {SPEC_METADATA_KEY: spec.to_json()})
    update_provenance(model, {"spec": spec.as_dict()})
    return spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="an exported .onnx model")
    parser.add_argument("--photos", type=int, default=DEFAULT_PHOTOS,
                        help="drawn phone-sized lesion photos to measure on")
    parser.add_argument("--max-delta", type=float, default=DEFAULT_MAX_DELTA,
                        help="largest |Δp| a reduced decode may cause")
    parser.add_argument("--dry-run", action="store_true", help="measure, record nothing")
    args = parser.parse_args(argv)
    measured = measure(args.model, phone_photos(args.photos), args.max_delta)
    print(json.dumps(measured, indent=2))
    if not args.dry_run:
        spec = record(args.model, measured)
        print(f"{args.model}: jpeg_reduced_decode_min_ratio = "
              f"{spec.jpeg_reduced_decode_min_ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
