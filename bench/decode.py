"""Decoding bench: reduced-scale JPEG fidelity, phone-photo decode cost, sandbox overhead.

    python -m bench.decode --model models/default.onnx --images 24 --json decode.json

- Fidelity: melanoma probability (8-view TTA) from the full decode against the reduced
  decode the server uses for large JPEGs (spec `jpeg_reduced_decode_min_ratio`), on
  generated phone-sized lesion photos; max, p99 and mean |Δp|.
- A 12 MP JPEG: decode + fit time and peak RSS, full against reduced, each in a fresh
  process so its peak belongs to it alone.
- The per-request cost of decoding in a confined child against decoding in-process.
Exit status 1 when the model's own min ratio gives a max |Δp| above --max-delta.
"""
from __future__ import annotations

import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from webapp import preprocess, tta  # noqa: E402

PHONE_SIZES = ((4000, 3000), (3024, 4032), (4032, 3024), (2592, 1944), (1600, 1200))


def phone_photo(width: int, height: int, seed: int) -> bytes:
    """A lesion photo at phone size: drawn small, upscaled, with sensor-like noise."""
    rng = np.random.default_rng(seed)
    small = np.empty((height // 8, width // 8, 3), np.uint8)
    small[:] = rng.integers(120, 230, 3)
    side_y, side_x = small.shape[:2]
    centre = (int(side_x * rng.uniform(0.3, 0.7)), int(side_y * rng.uniform(0.3, 0.7)))
    axes = (int(side_x * rng.uniform(0.08, 0.25)), int(side_y * rng.uniform(0.08, 0.25)))
    colour = tuple(int(c) for c in rng.integers(20, 110, 3))
    cv2.ellipse(small, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
    for _ in range(int(rng.integers(3, 12))):
        dot = (int(rng.integers(0, side_x)), int(rng.integers(0, side_y)))
        shade = tuple(int(c) for c in rng.integers(0, 90, 3))
        cv2.circle(small, dot, int(rng.integers(1, 6)), shade, -1)
    photo = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    noise = rng.integers(-8, 9, photo.shape, dtype=np.int16)
    photo = np.clip(photo.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    ok, data = cv2.imencode(".jpg", photo, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return data.tobytes()


RATIOS = (2, 4, 8)


def fidelity(model: Path, count: int, max_delta: float) -> dict[str, Any]:
    """|Δp| of reduced against full decoding for each min ratio, and the smallest that passes."""
    from webapp.classifier import Classifier

    classifier = Classifier(model)
    spec = classifier.spec
    views = tta.views_for("dihedral")

    def probability(data: bytes, ratio: int) -> float:
        use = dataclasses.replace(spec, jpeg_reduced_decode_min_ratio=ratio)
        seen = preprocess.prepare(data, use).image
        logits, _ = classifier.run_batch(
            preprocess.to_model_input(tta.make_batch(seen, views), spec))
        return tta.merge_probabilities(classifier.probabilities(logits))

    deltas: dict[int, list[float]] = {ratio: [] for ratio in RATIOS}
    scales: dict[int, set[int]] = {ratio: set() for ratio in RATIOS}
    for index in range(count):
        width, height = PHONE_SIZES[index % len(PHONE_SIZES)]
        data = phone_photo(width, height, seed=index)
        full = probability(data, 0)
        for ratio in RATIOS:
            deltas[ratio].append(abs(probability(data, ratio) - full))
            use = dataclasses.replace(spec, jpeg_reduced_decode_min_ratio=ratio)
            scales[ratio].add(preprocess._jpeg_scale(preprocess.read_header(data), use,
                                                     preprocess.DecodeLimits()))
    per_ratio = {str(ratio): {"scales_used": sorted(scales[ratio]),
                              "max_abs_delta_p": max(deltas[ratio]),
                              "p99_abs_delta_p": float(np.percentile(deltas[ratio], 99)),
                              "mean_abs_delta_p": float(np.mean(deltas[ratio]))}
                 for ratio in RATIOS}
    passing = [ratio for ratio in RATIOS if max(deltas[ratio]) <= max_delta]
    return {"images": count, "model_demo": spec.demo, "max_delta": max_delta,
            "spec_min_ratio": spec.jpeg_reduced_decode_min_ratio, "per_min_ratio": per_ratio,
            "smallest_passing_min_ratio": passing[0] if passing else 0}


def phone_decode(repeats: int) -> dict[str, Any]:
    results = {}
    for mode in ("full", "reduced"):
        output = subprocess.run([sys.executable, "-m", "bench.decode", "--one-decode", mode,
                                 "--repeats", str(repeats)], check=True, capture_output=True,
                                text=True).stdout
        results[mode] = json.loads(output)
    results["speedup"] = results["full"]["median_ms"] / results["reduced"]["median_ms"]
    return results


def _one_decode(mode: str, repeats: int) -> dict[str, Any]:
    from webapp.model_spec import ModelSpec

    spec = ModelSpec(architecture="bench", input_size=128, output_kind="sigmoid",
                     melanoma_index=0, checkpoint_sha256="", demo=True,
                     jpeg_reduced_decode_min_ratio=2 if mode == "reduced" else 0)
    data = phone_photo(4000, 3000, seed=1)
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # restart the peak-RSS count after drawing the photo
    before = _peak_rss_mib()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        preprocess.prepare(data, spec)
        times.append((time.perf_counter() - started) * 1000)
    return {"median_ms": statistics.median(times), "peak_rss_mib": _peak_rss_mib(),
            "rss_before_mib": before, "jpeg_bytes": len(data)}


def sandbox_overhead(repeats: int) -> dict[str, Any]:
    from webapp.decode_sandbox import DecodeSandbox
    from webapp.model_spec import ModelSpec

    spec = ModelSpec(architecture="bench", input_size=128, output_kind="sigmoid",
                     melanoma_index=0, checkpoint_sha256="", demo=True)
    limits = preprocess.DecodeLimits()
    sandbox = DecodeSandbox()
    sandbox.start()
    result = {}
    for name, data in (("600x450", phone_photo(600, 450, seed=2)),
                       ("4000x3000", phone_photo(4000, 3000, seed=1))):
        sandbox.prepare(data, spec, limits)
        inside, outside, child_cpu, own_cpu = [], [], [], []
        for _ in range(repeats):  # interleaved, so load on a shared machine hits both alike
            started = time.perf_counter()
            child_cpu.append(sandbox.prepare(data, spec, limits).child_cpu_ms)
            inside.append((time.perf_counter() - started) * 1000)
            started, cpu = time.perf_counter(), time.process_time()
            preprocess.prepare(data, spec, limits)
            outside.append((time.perf_counter() - started) * 1000)
            own_cpu.append((time.process_time() - cpu) * 1000)
        result[name] = {"sandboxed_median_ms": statistics.median(inside),
                        "in_process_median_ms": statistics.median(outside),
                        "wall_overhead_ms": statistics.median(inside) - statistics.median(outside),
                        "child_cpu_median_ms": statistics.median(child_cpu),
                        "in_process_cpu_median_ms": statistics.median(own_cpu)}
    return result


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/default.onnx"),
                        help="the ONNX model whose fidelity to measure")
    parser.add_argument("--images", type=int, default=24, help="generated photos for fidelity")
    parser.add_argument("--repeats", type=int, default=10, help="timed repeats per measurement")
    parser.add_argument("--max-delta", type=float, default=0.01,
                        help="fail when max |Δp| (reduced vs full decode) exceeds this")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--one-decode", choices=("full", "reduced"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one_decode:
        print(json.dumps(_one_decode(args.one_decode, args.repeats)))
        return 0
    results: dict[str, Any] = {"fidelity": fidelity(args.model, args.images, args.max_delta),
                               "phone_jpeg_12mp": phone_decode(args.repeats),
                               "sandbox": sandbox_overhead(args.repeats),
                               "note": "shared machine: compare ratios within this run"}
    text = json.dumps(results, indent=2, sort_keys=True)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    chosen = str(results["fidelity"]["spec_min_ratio"])
    per_ratio = results["fidelity"]["per_min_ratio"]
    failed = chosen in per_ratio and per_ratio[chosen]["max_abs_delta_p"] > args.max_delta
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
