"""What serving costs by input size and ensemble size, all cases in one run.

    python -m bench.model_cost --json bench/results-model-cost.json [--sizes 128 256 384 512]
        [--members 1 5]

For each input size a network seed 000's users train at it (random weights: memory and
time do not depend on what the weights learned) is exported alone and as an ensemble of
five folds, and export/cost.py measures each in a fresh process: the worker's peak (loading
or a run of views), resting memory, one view's activations, latency per TTA policy with the
heatmap, one thread. Then the same model runs 8 views in chunks of 1, 2, 4 and 8 views
(what the memory budget does on a small box): the latency cost of chunking against one
batch. Prints a Markdown table; the JSON holds every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from export import cost, to_onnx
from export.architectures import lookup

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

ARCHITECTURES = {128: "resnest50_fast_4s1x64d", 256: "tf_efficientnet_b0_ns",
                 384: "tf_efficientnet_b3_ns", 512: "tf_efficientnet_b5_ns"}
CHUNKS = (1, 2, 4, 8)
REPEATS = 3


def build_model(directory: Path, size: int, members: int) -> Path:
    name = ARCHITECTURES[size]
    checkpoints: list[Path] = []
    for seed in range(members):
        torch.manual_seed(seed)
        network = lookup(name).build(1)
        path = directory / f"{name}-{size}-fold{seed}.pth"
        torch.save({"state_dict": network.state_dict(),
                    "hyper_parameters": {"arch": name, "image_size": size}}, path)
        checkpoints.append(path)
        del network
    output = directory / f"{name}-{size}-x{members}.onnx"
    if to_onnx.main([*map(str, checkpoints), "-o", str(output), "--no-measure-cost"]) != 0:
        raise SystemExit(f"export of {output.name} failed")
    for checkpoint in checkpoints:
        checkpoint.unlink()
    return output


def chunked_latency(model: Path) -> dict[str, float]:
    """8 views through run_batch in chunks of each size, the median of a few runs, in ms."""
    import numpy as np

    from inference import memory, tta
    from inference.classifier import Classifier

    classifier = Classifier(model)
    classifier.warm_up()
    views = tta.views_for("dihedral")
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (600, 800, 3), dtype=np.uint8)
    _, batch = classifier.preprocess(photo, views)
    measured = {}
    plan = classifier.chunks
    for step in CHUNKS:
        classifier.chunks = memory.ChunkPlan(step, plan.budget_bytes, plan.resting_bytes,
                                             plan.per_view_bytes)
        times = []
        for _ in range(REPEATS):
            started = time.perf_counter()
            classifier.run_batch(batch)
            times.append(time.perf_counter() - started)
        measured[str(step)] = round(1000 * statistics.median(times), 1)
    return measured


def table(cases: list[dict[str, Any]]) -> str:
    lines = ["| model | members | weights MiB | worker peak MiB (loading) | resting MiB | "
             "per view MiB | 1 / 8 views ms | 8 views in chunks of 1, 2, 4, 8 ms |",
             "|---|---|---|---|---|---|---|---|"]
    for case in cases:
        c = case["cost"]
        chunks = " / ".join(f"{case['chunked_ms'][str(s)]:.0f}" for s in CHUNKS)
        lines.append(
            f"| {case['architecture']} @ {case['size']} px | {case['members']} | "
            f"{case['file_mib']:.0f} | {c['worker_peak_mib']:.0f} ({c['load_peak_mib']:.0f}) | "
            f"{c['resting_mib']:.0f} | {c['per_view_mib']:.1f} | "
            f"{c['latency_ms']['none']:.0f} / {c['latency_ms']['dihedral']:.0f} | {chunks} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=sorted(ARCHITECTURES),
                        choices=sorted(ARCHITECTURES))
    parser.add_argument("--members", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args(argv)
    cases = []
    with tempfile.TemporaryDirectory() as scratch:
        for size in args.sizes:
            for members in args.members:
                model = build_model(Path(scratch), size, members)
                case = {"architecture": ARCHITECTURES[size], "size": size, "members": members,
                        "file_mib": round(model.stat().st_size / 2**20, 1),
                        "cost": cost.measure(model), "chunked_ms": chunked_latency(model)}
                print(json.dumps(case), flush=True)
                cases.append(case)
                model.unlink()
    print(table(cases))
    if args.json:
        args.json.write_text(json.dumps({"cases": cases}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
