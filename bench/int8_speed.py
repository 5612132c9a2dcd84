"""INT8 against fp32 speed, per model pair, on this CPU, against the targets for its kind.

Each pair runs one served batch (8 TTA views) on one ONNX Runtime thread, the two models'
runs interleaved (inference/precision.py's benchmark, the one the server runs at start) so
load from other work on the machine hits both alike. The target depends on the CPU's 8-bit
dot product: >= 2.5x with VNNI or AMX, >= 1.6x on AVX2 without it.

    python -m bench.int8_speed --pair demo models/default.onnx models/default.int8.onnx \\
        --json bench/results-int8-speed.json
"""
from __future__ import annotations

import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference import precision  # noqa: E402
from inference.model_spec import read_spec_file  # noqa: E402
from inference.runtime import ort  # noqa: E402

TARGETS = {"int8 dot product (VNNI/AMX/dotprod)": 2.5, "AVX2 without VNNI": 1.6}


def target_for(cpu: precision.CpuFeatures) -> tuple[str, float]:
    """The speed-up this CPU kind must reach."""
    label = next(iter(TARGETS)) if cpu.int8_dot_product else "AVX2 without VNNI"
    return label, TARGETS[label]


def measure_pair(name: str, fp32: Path, int8: Path, views: int, threads: int,
                 repeats: int) -> dict[str, Any]:
    size = read_spec_file(fp32).input_size
    timing = precision.measure(fp32, int8, threads, views, size, repeats)
    cpu = precision.cpu_features()
    label, target = target_for(cpu)
    return {"model": name, "input_size": size, "views": views, "threads": threads,
            "repeats": repeats, "fp32_ms": round(timing.fp32_ms, 1),
            "int8_ms": round(timing.int8_ms, 1), "speedup": round(timing.speedup, 2),
            "cpu_kind": label, "target": target, "meets_target": timing.speedup >= target}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", nargs=3, action="append", required=True,
                        metavar=("NAME", "FP32", "INT8"), help="a model and its INT8 file")
    parser.add_argument("--views", type=int, default=8, help="TTA views per batch")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs of each model")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    cpu = precision.cpu_features()
    rows = [measure_pair(name, Path(fp32), Path(int8), args.views, args.threads, args.repeats)
            for name, fp32, int8 in args.pair]
    for row in rows:
        print(f"{row['model']}: fp32 {row['fp32_ms']} ms, int8 {row['int8_ms']} ms, "
              f"{row['speedup']}x (target {row['target']}x on {row['cpu_kind']}: "
              f"{'met' if row['meets_target'] else 'MISSED'})")
    if args.json:
        args.json.write_text(json.dumps({
            "cpu": {"machine": cpu.machine, "int8_flags": list(cpu.flags),
                    "processor": platform.processor()},
            "onnxruntime": ort.__version__, "timing": "median wall ms per batch, interleaved",
            "results": rows}, indent=2) + "\n")
    return 0 if all(row["meets_target"] for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
