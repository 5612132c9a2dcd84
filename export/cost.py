"""What a model costs to serve, measured on this machine and written into its spec.

A fresh process (so nothing else's memory is counted) loads the model as a server worker
does, warms it up, and answers each TTA policy's views with the heatmap's arrays: its peak
resident memory (loading parses the protobuf and copies every weight, so the peak is often
there), its resting memory, one view's activations, and each policy's latency on one thread.
`infra/deploy.py` compares the peak with the chosen instance's budget before uploading.

    python -m export.cost models/mine.onnx            # measure and record into the file
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from export.errors import ExportError  # noqa: E402
from inference.model_spec import SPEC_METADATA_KEY, read_spec_file  # noqa: E402

MIB = 1024 * 1024
REPEATS = 3


def measure(model: Path, timeout: float = 600.0) -> dict[str, Any]:
    """Measure `model` in a child process; the figures as the spec's `measured_cost`."""
    command = [sys.executable, "-m", "export.cost", "--probe", str(model.resolve())]
    root = Path(__file__).resolve().parent.parent
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    except subprocess.TimeoutExpired:
        raise ExportError(f"measuring {model.name}'s cost took over {timeout:.0f} s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["killed"])[-1]
        raise ExportError(f"measuring {model.name}'s cost failed: {last}")
    cost: dict[str, Any] = json.loads(done.stdout)
    return cost


def record(model: Path) -> dict[str, Any]:
    """Measure and write the figures into the model's spec (and its provenance file)."""
    from export.model_file import rewrite_metadata, update_provenance

    cost = measure(model)
    spec = read_spec_file(model)
    data = spec.as_dict() | {"measured_cost": cost}
    rewrite_metadata(model, {SPEC_METADATA_KEY: type(spec).from_json(json.dumps(data)).to_json()})
    update_provenance(model, {"spec": read_spec_file(model).as_dict()})
    return cost


def probe(model: Path) -> dict[str, Any]:
    """In this (fresh) process: load, warm up, and time each TTA policy with the heatmap."""
    import numpy as np

    from inference import memory, tta
    from inference.classifier import Classifier

    started = time.perf_counter()
    classifier = Classifier(model)
    load_seconds = time.perf_counter() - started
    load_peak = memory.peak_bytes()
    classifier.warm_up()
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (600, 800, 3), dtype=np.uint8)
    latency_ms = {}
    for policy in tta.POLICIES:
        views = tta.views_for(policy)
        times = []
        for _ in range(REPEATS):
            begun = time.perf_counter()
            seen, batch = classifier.preprocess(photo, views)
            logits, features = classifier.run_batch(batch)
            classifier.postprocess(logits, policy, (800, 600))
            classifier.explain(seen, features, views)
            times.append(time.perf_counter() - begun)
        latency_ms[policy] = round(1000 * statistics.median(times), 1)
    plan = classifier.chunks
    return {
        "worker_peak_mib": round(max(load_peak, memory.peak_bytes()) / MIB, 1),
        "load_peak_mib": round(load_peak / MIB, 1),
        "resting_mib": round(plan.resting_bytes / MIB, 1),
        "per_view_mib": round(plan.per_view_bytes / MIB, 1),
        "load_seconds": round(load_seconds, 2),
        "latency_ms": latency_ms, "threads": 1, "cpu": _cpu_name(),
        "machine": platform.machine(),
        "measured": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.cost",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        print(json.dumps(probe(args.model)))
        return 0
    try:
        cost = record(args.model)
    except ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(describe(cost))
    return 0


def describe(cost: dict[str, Any]) -> str:
    latency = ", ".join(f"{policy} {ms:.0f} ms" for policy, ms in cost["latency_ms"].items())
    return (f"measured cost: worker peak {cost['worker_peak_mib']:.0f} MiB (loading "
            f"{cost['load_peak_mib']:.0f}), resting {cost['resting_mib']:.0f} MiB, "
            f"{cost['per_view_mib']:.1f} MiB per view; latency with the heatmap on one thread: "
            f"{latency} ({cost['cpu']})")


if __name__ == "__main__":
    raise SystemExit(main())
