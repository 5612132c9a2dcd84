"""The last steps every export shares: embed the spec, check, and publish the file atomically.

The PyTorch path (export/pipeline.py) and the Keras path (export/keras_export.py) write their
graph to `temporary_path(output)` and hand it here, so both are checked and published alike.
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx

from export import verify
from export.checkpoint import sha256_of
from export.errors import ExportError
from inference.model_spec import (CAM_WEIGHTS_METADATA_KEY, SPEC_METADATA_KEY, ModelSpec,
                                  encode_cam_weights)

# Packages whose versions every spec records; an export path adds its own framework's.
RECORDED_PACKAGES = ("onnx", "onnxruntime", "resnest", "timm", "safetensors", "numpy")


def check_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ExportError(f"cannot create output directory {directory}: {error.strerror}") from None
    if not os.access(directory, os.W_OK):
        raise ExportError(f"output directory {directory} is not writable")


def temporary_path(output: Path) -> Path:
    # Same directory as the target so the final rename is atomic.
    handle, name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".partial",
                                    dir=output.parent)
    os.close(handle)
    return Path(name)


def publish(partial: Path, output: Path, spec: ModelSpec, cam_weights: np.ndarray,
            cam_bias: float) -> str:
    """Embed the spec and CAM weights in `partial`, check it, rename it to `output` and write
    its provenance file; returns the published file's SHA-256. `partial` is removed on error."""
    try:
        embed_metadata(partial, {SPEC_METADATA_KEY: spec.to_json(),
                                 CAM_WEIGHTS_METADATA_KEY: encode_cam_weights(cam_weights,
                                                                              cam_bias)})
        verify.check_graph(partial)
        _check_round_trip(partial, spec)
        os.chmod(partial, 0o644)  # mkstemp makes it private; the service user must read it
        os.replace(partial, output)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    onnx_sha = sha256_of(output)
    _write_provenance(output, spec, onnx_sha)
    return onnx_sha


def embed_metadata(path: Path, props: dict[str, str]) -> None:
    """Replace the model file's metadata_props with `props` (the spec, CAM weights, ...)."""
    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name = "melanoma-export"
    onnx.save(model, str(path))


def tool_versions(*extra: str) -> dict[str, str]:
    """Python's version and each recorded package's ("unknown" when not installed)."""
    versions = {"python": platform.python_version()}
    for package in RECORDED_PACKAGES + extra:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "unknown"
    return versions


def _check_round_trip(path: Path, spec: ModelSpec) -> None:
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    if ModelSpec.from_json(props[SPEC_METADATA_KEY]) != spec:
        raise ExportError("the spec read back from the written model differs from the one written")


def _write_provenance(output: Path, spec: ModelSpec, onnx_sha: str) -> None:
    record = {"model": output.name, "onnx_sha256": onnx_sha, "spec": spec.as_dict()}
    provenance = output.with_name(output.name + ".provenance.json")
    provenance.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
