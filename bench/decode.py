"""Decoding bench: reduced-scale JPEG fidelity, phone-photo decode cost, sandbox overhead.

    python -m bench.decode --model models/default.onnx --images 24 --json decode.json

- Fidelity: melanoma probability from the full decode against the reduced decode the
  server uses for large JPEGs (spec `jpeg_reduced_decode_min_ratio`), on drawn lesions as
  phone-sized photos (export/reduced_decode.py, which records the choice in the spec).
- A 12 MP JPEG: decode + fit time and peak RSS, full against reduced, each in a fresh
  process so its peak belongs to it alone.
- The per-request cost of decoding in a confined child against decoding in-process.
Exit status 1 when the model's own min ratio gives a max |Δp| above --max-delta or a flip.
"""
from __future__ import annotations

import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from export import reduced_decode  # noqa: E402
from inference import preprocess  # noqa: E402
from inference.model_spec import read_spec_file  # noqa: E402


def phone_photo(width: int, height: int, seed: int) -> bytes:
    """One drawn lesion as a phone-sized JPEG."""
    return reduced_decode.phone_photos(1, seed, sizes=((width, height),))[0]


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
    from inference.model_spec import ModelSpec

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
    from inference.decode_sandbox import DecodeSandbox
    from inference.model_spec import ModelSpec

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
    parser.add_argument("--images", type=int, default=reduced_decode.DEFAULT_PHOTOS,
                        help="drawn phone photos for fidelity (the export's own by default)")
    parser.add_argument("--repeats", type=int, default=10, help="timed repeats per measurement")
    parser.add_argument("--max-delta", type=float, default=reduced_decode.DEFAULT_MAX_DELTA,
                        help="fail when max |Δp| (reduced vs full decode) exceeds this")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--one-decode", choices=("full", "reduced"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one_decode:
        print(json.dumps(_one_decode(args.one_decode, args.repeats)))
        return 0
    photos = reduced_decode.phone_photos(args.images)
    measured = reduced_decode.measure(args.model, photos, args.max_delta)
    spec = read_spec_file(args.model)
    measured["spec_min_ratio"] = spec.jpeg_reduced_decode_min_ratio
    results: dict[str, Any] = {"fidelity": measured,
                               "phone_jpeg_12mp": phone_decode(args.repeats),
                               "sandbox": sandbox_overhead(args.repeats),
                               "note": "shared machine: compare ratios within this run"}
    text = json.dumps(results, indent=2, sort_keys=True)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    chosen = str(spec.jpeg_reduced_decode_min_ratio)
    per_ratio = measured["per_min_ratio"]
    failed = chosen in per_ratio and (per_ratio[chosen]["max_abs_delta"] > args.max_delta
                                      or per_ratio[chosen]["flips"] > 0)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
