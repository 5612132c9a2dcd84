"""Score image files through the server's own path: decode, then Classifier.predict.

Each image is decoded once and run once, with the widest TTA policy asked for; the
narrower policies are merged from the same per-view probabilities, since every policy's
views are among the widest policy's (the identity view is never run twice).

`score_in_parallel` spreads the files over one process per core, each with a one-thread
session (threads within a session would only oversubscribe the cores); each image is
scored by the same code on the same kind of session, so the scores are the same to the
last digit whatever the number of processes.
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tqdm import tqdm

from inference import preprocess, tta
from inference.classifier import Classifier
from inference.errors import InvalidImage


class ScoringError(RuntimeError):
    """An image could not be scored; the message names it and says why."""


@dataclass(frozen=True)
class Scores:
    """Melanoma probability of each image under each TTA policy, in input order."""

    names: tuple[str, ...]
    by_policy: dict[str, tuple[float, ...]]


def open_classifier(model_path: Path) -> Classifier:
    """The same Classifier the server builds, on one thread, warmed up and checked."""
    classifier = Classifier(model_path, intra_op_threads=1)
    classifier.warm_up()
    return classifier


def score_files(classifier: Classifier, images: Sequence[tuple[str, Path]],
                policies: Iterable[str], progress: bool = True) -> Scores:
    """Every image's probability under each policy, with a progress bar on stderr."""
    policies = tuple(policies)
    widest = max(policies, key=lambda policy: len(tta.views_for(policy)))
    names = {policy: [view.name for view in tta.views_for(policy)] for policy in policies}
    run = set(names[widest])
    if not all(run.issuperset(views) for views in names.values()):
        raise ValueError(f"the views of {', '.join(policies)} are not all in {widest!r}")
    results: dict[str, list[float]] = {policy: [] for policy in policies}
    for _, path in tqdm(images, desc="scoring", unit="image", disable=not progress):
        try:
            # What the server's decode sandbox runs, reduced-scale JPEG decoding included.
            image = preprocess.prepare(path.read_bytes(), classifier.spec).image
        except InvalidImage as error:
            raise ScoringError(f"{path}: {error}") from None
        by_view = dict(classifier.predict(image, widest).views)
        for policy in policies:
            results[policy].append(tta.merge_probabilities(
                np.array([by_view[name] for name in names[policy]])))
    return Scores(tuple(name for name, _ in images),
                  {policy: tuple(values) for policy, values in results.items()})


# Images per task handed to a process: large enough that task overhead is nothing beside
# scoring, small enough that the progress bar moves and the last tasks even out.
_CHUNK = 8
_worker_classifier: Classifier | None = None


def default_workers() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0))


def score_in_parallel(model_path: Path, images: Sequence[tuple[str, Path]],
                      policies: Iterable[str], workers: int | None = None,
                      progress: bool = True) -> Scores:
    """`score_files` over `workers` processes (default: every core), in input order."""
    policies = tuple(policies)
    workers = max(1, min(workers or default_workers(), len(images)))
    if workers == 1:
        return score_files(open_classifier(model_path), images, policies, progress)
    chunks = [images[start:start + _CHUNK] for start in range(0, len(images), _CHUNK)]
    by_policy: dict[str, list[float]] = {policy: [] for policy in policies}
    with tqdm(total=len(images), desc="scoring", unit="image", disable=not progress) as bar, \
            ProcessPoolExecutor(workers, initializer=_open_in_worker,
                                initargs=(model_path,)) as pool:
        for part in pool.map(_score_chunk, chunks, [policies] * len(chunks)):
            for policy in policies:
                by_policy[policy].extend(part.by_policy[policy])
            bar.update(len(part.names))
    return Scores(tuple(name for name, _ in images),
                  {policy: tuple(values) for policy, values in by_policy.items()})


def _open_in_worker(model_path: Path) -> None:
    global _worker_classifier
    _worker_classifier = open_classifier(model_path)


def _score_chunk(chunk: Sequence[tuple[str, Path]], policies: tuple[str, ...]) -> Scores:
    assert _worker_classifier is not None, "the pool's initializer opens the classifier"
    return score_files(_worker_classifier, chunk, policies, progress=False)


def write_submission(path: Path, names: Sequence[str], probabilities: Sequence[float]) -> None:
    """The competition's format: `image_name,target`, target a probability."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = zip(names, probabilities, strict=True)
    lines = ["image_name,target"] + [f"{name},{p:.8f}" for name, p in rows]
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text("\n".join(lines) + "\n")
    partial.replace(path)
