"""What keeps INT8 fidelity: quantise the same fp32 model several ways and measure each.

Each variant changes one choice from a base (per-channel weights, calibration method,
calibration set size, parts kept fp32, QDQ placement, bias correction); all are measured
against the fp32 model on the same held-out images, and timed on one thread (CPU time of
one 8-view batch, robust to other work on a shared machine).

    python -m training.synthetic /tmp/int8/data --images 2300 --seed 99 --size 128
    python -m bench.int8_ablation models/default.onnx --images /tmp/int8/data \\
        --held-out 2000 --json bench/int8-ablation.json
"""
from __future__ import annotations

import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from export.calibration import split_images  # noqa: E402
from export.errors import ExportError  # noqa: E402
from export.fidelity import answer  # noqa: E402
from export.int8 import Int8Request, export_int8  # noqa: E402
from export.quantize import QuantizeOptions  # noqa: E402
from inference.classifier import Classifier  # noqa: E402

BASE = QuantizeOptions()  # the export's defaults


def variants(base: QuantizeOptions) -> list[tuple[str, QuantizeOptions, bool]]:
    """(label, options, bias correction), one choice changed at a time from the defaults."""
    r = dataclasses.replace
    return [
        ("defaults: minmax, per-channel, first conv + classifier fp32, "
         f"{base.calibration_size} images, logit bias correction", base, True),
        ("no bias correction", base, False),
        ("nothing kept fp32, no bias correction", r(base, keep_fp32=()), False),
        ("calibration percentile 99.999", r(base, method="percentile"), True),
        ("calibration entropy", r(base, method="entropy"), True),
        ("calibration 16 images", r(base, calibration_size=16), True),
        ("calibration 256 images", r(base, calibration_size=256), True),
        ("per-tensor weights", r(base, per_channel=False), True),
        ("QDQ around Conv only", r(base, placement="conv"), True),
        ("7-bit weights (reduce_range)", r(base, reduce_range=True), True),
        ("CAM features (last Add + Relu) fp32 too",
         r(base, keep_fp32=(*base.keep_fp32, "features")), True),
        ("last stage (layer4) fp32 too", r(base, keep_fp32=(*base.keep_fp32, "last-stage")), True),
        ("last two stages (layer3-4) fp32 too",
         r(base, keep_fp32=(*base.keep_fp32, "last-two-stages")), True),
    ]


def cpu_ms(model: Path, size: int, repeats: int) -> float:
    """Median CPU time (ms) of one 8-view batch on one ORT thread."""
    from inference.runtime import ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    batch = np.random.default_rng(0).standard_normal((8, 3, size, size)).astype(np.float32)
    feed = {session.get_inputs()[0].name: batch}
    session.run(None, feed)
    times = []
    for _ in range(repeats):
        started = time.process_time()
        session.run(None, feed)
        times.append((time.process_time() - started) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="the exported fp32 .onnx")
    parser.add_argument("--images", type=Path, required=True,
                        help="folder or ISIC layout: calibration and held-out images")
    parser.add_argument("--held-out", type=int, default=2000, help="held-out images per variant")
    parser.add_argument("--only", nargs="*", type=int, help="run only these variant indices")
    parser.add_argument("--repeats", type=int, default=5, help="timed batches per model")
    parser.add_argument("--json", type=Path, default=Path("bench/int8-ablation.json"),
                        help="where the table goes")
    parser.add_argument("--cache-dir", type=Path,
                        help="keep calibration ranges here (reused by variants and reruns)")
    args = parser.parse_args(argv)
    from inference.model_spec import read_spec_file

    size = read_spec_file(args.model).input_size
    rows: list[dict[str, Any]] = []
    fp32_ms = cpu_ms(args.model, size, args.repeats)
    # Every variant is compared on the same held-out images, so fp32 runs over them once.
    held_out = split_images(args.images, max(o.calibration_size for _, o, _ in variants(BASE)),
                            args.held_out).held_out
    fp32_answers = answer(Classifier(args.model, intra_op_threads=1), held_out)
    with tempfile.TemporaryDirectory() as scratch:
        cache = args.cache_dir or Path(scratch)
        cache.mkdir(parents=True, exist_ok=True)
        for index, (label, options, correct) in enumerate(variants(BASE)):
            if args.only and index not in args.only:
                continue
            output = Path(scratch) / f"variant-{index}.onnx"
            started = time.perf_counter()
            try:
                result = export_int8(Int8Request(
                    args.model, args.images, output, options, held_out_images=args.held_out,
                    enforce_limits=False, bias_correction=correct, fp32_answers=fp32_answers,
                    measure_reduced_decode=False,
                    calibration_cache=cache / f"ranges-{options.method}-"
                    f"{options.calibration_size}.json"))
            except ExportError as error:
                print(f"{label}: {error}", file=sys.stderr)
                continue
            measured = result.fidelity
            row = {"variant": label, "options": options.as_dict(), "bias_correction": correct,
                   "fidelity": measured.as_dict(), "cpu_ms_8_views": cpu_ms(output, size,
                                                                           args.repeats),
                   "fp32_cpu_ms_8_views": fp32_ms, "wall_s": time.perf_counter() - started}
            rows.append(row)
            print(format_row(row), file=sys.stderr, flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"model": str(args.model), "images": str(args.images),
                                     "rows": rows}, indent=2) + "\n")
    print(format_table(rows))
    return 0


def format_row(row: dict[str, Any]) -> str:
    f = row["fidelity"]
    auc = f"{f['auc_change']:+.4f}" if f.get("auc_change") is not None else "-"
    return (f"| {row['variant']} | {f['max_abs_delta']:.4f} | {f['p99_abs_delta']:.4f} | "
            f"{f['flip_rate']:.2%} | {auc} | {f['heatmap_correlation_mean']:.3f} | "
            f"{row['cpu_ms_8_views']:.0f} "
            f"({row['fp32_cpu_ms_8_views'] / row['cpu_ms_8_views']:.2f}x) |")


def format_table(rows: list[dict[str, Any]]) -> str:
    images = rows[0]["fidelity"]["images"] if rows else 0
    return "\n".join([
        f"INT8 variants vs fp32 on {images} held-out images (1 view); CPU ms per 8-view batch "
        "on one thread (speed-up vs fp32)", "",
        "| variant | max abs dp | p99 abs dp | flips | AUC change | heatmap r | CPU ms (x) |",
        "|---|---:|---:|---:|---:|---:|---:|", *(format_row(r) for r in rows)])


if __name__ == "__main__":
    raise SystemExit(main())
