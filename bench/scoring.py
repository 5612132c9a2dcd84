"""Batch scoring on every core: the evaluation CLI's scorer in one process against one per
core, on the same drawn lesions, same scores required.

    python -m bench.scoring --model models/default.onnx --images 200 --json scoring.json

Each configuration runs twice, alternating, and the faster time of each is kept (this is a
shared machine); the speed-up is one process's time over the parallel one's. Exit status 1
when the scores differ in any digit.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from evaluation.scoring import default_workers, score_in_parallel
from training.synthetic import generate_dataset


def measure(model: Path, images: list[tuple[str, Path]], workers: int, policy: str,
            repeats: int) -> dict[str, Any]:
    times, scores = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        scores = score_in_parallel(model, images, [policy], workers, progress=False)
        times.append(time.perf_counter() - started)
    assert scores is not None
    return {"workers": workers, "seconds": round(min(times), 2), "scores": scores}


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/default.onnx"),
                        help="the exported model")
    parser.add_argument("--images", type=int, default=200, help="drawn lesions to score")
    parser.add_argument("--tta", default="dihedral", help="TTA policy")
    parser.add_argument("--repeats", type=int, default=2, help="runs per configuration")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        generate_dataset(Path(tmp), args.images, seed=515, size=256)
        files = sorted((path.stem, path) for path in (Path(tmp) / "jpeg").rglob("*.jpg"))
        cores = default_workers()
        single = measure(args.model, files, 1, args.tta, args.repeats)
        parallel = measure(args.model, files, cores, args.tta, args.repeats)
    same = single.pop("scores") == parallel.pop("scores")
    result = {"images": len(files), "tta": args.tta, "cpu": _cpu_model(),
              "cpus": os.cpu_count(), "one_process": single,
              "every_core": parallel, "speedup": round(single["seconds"]
                                                      / parallel["seconds"], 2),
              "same_scores": same}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
