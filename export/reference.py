"""Record out-of-distribution reference statistics in an exported model.

The model's own pooled features of a folder of reference images (the training images, or
any set of photos like the ones the model will be used on) go into the .onnx metadata, so
the server can warn when an upload is unlike all of them (inference/ood.py).
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import numpy as np  # noqa: E402

from export.errors import ExportError  # noqa: E402
from export.model_file import rewrite_metadata, update_provenance  # noqa: E402
from inference.runtime import ort  # noqa: E402
from inference import ood, preprocess  # noqa: E402
from inference.errors import InvalidImage  # noqa: E402
from inference.model_spec import spec_from_metadata  # noqa: E402

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
BATCH = 16


def pooled_features(model_path: Path, photos: Iterable[np.ndarray]) -> np.ndarray:
    """(N, C) spatially pooled features of RGB photos, fitted to the input as the server does."""
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    spec = spec_from_metadata(session.get_modelmeta().custom_metadata_map)
    rows: list[np.ndarray] = []
    for chunk in _chunks(photos, BATCH):
        batch = preprocess.to_model_input(
            np.stack([preprocess.fit_to_input(p, spec) for p in chunk]), spec)
        (features,) = session.run([spec.features_name], {spec.input_name: batch})
        rows.append(features.mean(axis=(2, 3)))
    if not rows:
        raise ExportError("no reference images to measure")
    return np.concatenate(rows)


def read_folder(folder: Path) -> Iterator[np.ndarray]:
    """Every decodable image under `folder`, in a stable order; unreadable files are skipped."""
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ExportError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}")
    for path in paths:
        try:
            yield preprocess.decode_image(path.read_bytes())
        except InvalidImage:
            continue


def embed(model_path: Path, reference: ood.OodReference) -> None:
    """Write the statistics into the model's metadata (atomically) and its provenance file."""
    rewrite_metadata(model_path, {ood.METADATA_KEY: reference.to_json()})
    update_provenance(model_path, {"ood_reference": {
        "images": reference.images, "threshold": reference.threshold,
        "components": int(reference.components.shape[0])}})


def embed_from_folder(model_path: Path, folder: Path) -> ood.OodReference:
    """Measure the images under `folder` with the model and record their statistics in it."""
    try:
        reference = ood.fit(pooled_features(model_path, read_folder(folder)))
    except ood.ReferenceError as error:
        raise ExportError(f"reference images in {folder}: {error}") from None
    embed(model_path, reference)
    return reference


def _chunks(items: Iterable[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    chunk: list[np.ndarray] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
