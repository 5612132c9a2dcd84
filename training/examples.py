"""The drawn lesions a newcomer can try on the form: chosen by the generator's truth.

The demo model learned from drawn lesions only, so a drawn lesion is the one photo that
shows it working. Three clearly banal naevi and three clearly atypical melanomas are
picked from a seeded plan by their drawn truth (never by a model's answer) and written as
JPEGs beside an index the app reads (`webapp/examples.py`):

    python -m training.examples webapp/static/examples
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import cv2

from training.synthetic import Record, plan_dataset, render_record

SEED = 7070  # used nowhere else: not a training, held-out or test plan
SIZE = 384
PER_KIND = 3
INDEX = "index.json"


@dataclass(frozen=True)
class Example:
    file: str
    kind: str       # "benign-looking" or "melanoma-looking": the generator's truth
    atypia: float


def pick(seed: int = SEED, per_kind: int = PER_KIND) -> list[tuple[Example, Record]]:
    """The first `per_kind` clear naevi and clear melanomas of the plan, by drawn truth."""
    records = plan_dataset(400, seed, 0.3, label_noise=0.0)
    naevi = [r for r in records if not r.melanoma and r.atypia < 0.15][:per_kind]
    melanomas = [r for r in records if r.melanoma and r.atypia > 0.7][:per_kind]
    chosen = []
    for kind, group in (("benign-looking", naevi), ("melanoma-looking", melanomas)):
        for number, record in enumerate(group, start=1):
            name = f"drawn-{kind}-{number}.jpg"
            chosen.append((Example(name, kind, round(float(record.atypia), 3)), record))
    return chosen


def write(directory: Path, seed: int = SEED) -> list[Example]:
    """Render the examples into `directory` with their index; return what was written."""
    directory.mkdir(parents=True, exist_ok=True)
    examples = []
    for example, record in pick(seed):
        rgb, _ = render_record(record, SIZE)
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        (directory / example.file).write_bytes(data.tobytes())
        examples.append(example)
    index = {"seed": seed, "size": SIZE, "generator": "training.synthetic",
             "examples": [vars(example) for example in examples]}
    (directory / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return examples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="where the JPEGs and index.json go")
    parser.add_argument("--seed", type=int, default=SEED, help="the plan to pick from")
    args = parser.parse_args(argv)
    for example in write(args.directory, args.seed):
        print(f"{example.file}: {example.kind} (atypia {example.atypia})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
