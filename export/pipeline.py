"""Checkpoint in, verified ONNX model with an embedded spec out."""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from export import graph, verify
from export.checkpoint import LoadedCheckpoint, load_checkpoint, sha256_of
from export.errors import ExportError
from export.network import Network, check_cam_head, network_from
from export.settings import Resolved, resolve
from inference.model_spec import (CAM_WEIGHTS_METADATA_KEY, DEFAULT_LABELS, SPEC_METADATA_KEY,
                               ModelSpec, encode_cam_weights)


@dataclass(frozen=True)
class ExportRequest:
    """What the user asked for; `None` means 'from the checkpoint, else the default'."""

    checkpoint: Path
    output: Path | None = None
    architecture: str | None = None
    input_size: int | None = None
    resize: str | None = None
    interpolation: str | None = None
    color_order: str | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    threshold: float | None = None
    labels: tuple[str, str] = DEFAULT_LABELS
    name: str | None = None
    version: str = "1"
    demo: bool = False
    tolerance: float = 1e-4
    allow_unsafe_pickle: bool = False
    prefer_ema: bool = True
    provenance: str | None = None
    training_data: str = ""
    held_out: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ExportResult:
    output: Path
    spec: ModelSpec
    sources: dict[str, str] = field(default_factory=dict)
    ignored_keys: tuple[str, ...] = ()
    onnx_sha256: str = ""


def export_checkpoint(request: ExportRequest, models_dir: Path = Path("models")) -> ExportResult:
    """Load, build strictly, export, verify, embed the spec, and only then publish the file."""
    output = request.output or models_dir / f"{request.checkpoint.stem}.onnx"
    check_writable(output.parent)
    loaded = load_checkpoint(request.checkpoint, request.allow_unsafe_pickle, request.prefer_ema)
    settings = resolve(_flags(request), loaded.hyper_parameters)
    built = _build(settings["architecture"], loaded)
    network, arch, head = built.module, built.architecture, built.head

    size = settings["input_size"].value
    check_cam_head(built, size)
    partial = temporary_path(output)
    try:
        graph.export_graph(network, size, partial)
        parity = verify.measure_parity(network, partial.read_bytes(), size, head.output_kind,
                                       head.melanoma_index, request.tolerance)
        spec = ModelSpec(
            name=request.name or request.checkpoint.stem, version=request.version,
            architecture=arch.name, architecture_library=arch.library,
            architecture_aliases=built.aliases, checkpoint_weights=loaded.weights,
            input_size=size, resize=settings["resize"].value,
            interpolation=settings["interpolation"].value,
            color_order=settings["color_order"].value, mean=settings["mean"].value,
            std=settings["std"].value, threshold=settings["threshold"].value,
            labels=request.labels, output_kind=head.output_kind,
            melanoma_index=head.melanoma_index, feature_channels=head.feature_channels,
            input_name=graph.INPUT_NAME, logits_name=graph.LOGITS_NAME,
            features_name=graph.FEATURES_NAME,
            checkpoint_sha256=loaded.sha256, checkpoint_name=request.checkpoint.name,
            checkpoint_format=loaded.format, demo=request.demo,
            tool_versions=tool_versions(), parity=parity.as_dict(),
            created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            provenance=request.provenance or (
                "demo: seeded random initialisation, NOT trained" if request.demo
                else f"exported from {request.checkpoint.name}"),
            training_data=request.training_data, held_out=dict(request.held_out))
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    onnx_sha = publish(partial, output, spec, *built.cam_weights())
    sources = {name: value.source for name, value in settings.items()}
    sources["architecture"] = settings["architecture"].source if (
        settings["architecture"].value == arch.name) else "detected from the state_dict"
    sources["weights"] = _weights_source(loaded.weights)
    return ExportResult(output, spec, sources, loaded.ignored_keys, onnx_sha)


def publish(partial: Path, output: Path, spec: ModelSpec, cam_weights: np.ndarray,
            cam_bias: float) -> str:
    """Embed the spec and CAM weights into the verified graph at `partial`, check it, and
    only then rename it to `output` (atomic) beside its provenance; its SHA-256."""
    try:
        embed_metadata(partial, {SPEC_METADATA_KEY: spec.to_json(),
                                 CAM_WEIGHTS_METADATA_KEY: encode_cam_weights(cam_weights,
                                                                              cam_bias)})
        verify.check_graph(partial)
        check_round_trip(partial, spec)
        os.chmod(partial, 0o644)  # mkstemp makes it private; the service user must read it
        os.replace(partial, output)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    onnx_sha = sha256_of(output)
    write_provenance(output, spec, onnx_sha)
    return onnx_sha


def _flags(request: ExportRequest) -> dict[str, Any]:
    return {"architecture": request.architecture, "input_size": request.input_size,
            "resize": request.resize, "interpolation": request.interpolation,
            "color_order": request.color_order,
            "mean": request.mean, "std": request.std, "threshold": request.threshold}


def _build(requested: Resolved, loaded: LoadedCheckpoint) -> Network:
    # A flag is a demand; a name found in the checkpoint is only its claim.
    if requested.source == "flag":
        return network_from(loaded, requested.value)
    return network_from(loaded, hint=requested.value)


def _weights_source(weights: str) -> str:
    return {"ema": "the EMA copy (--no-ema takes the raw ones)",
            "raw": "the raw ones (the EMA copy was declined)"}.get(weights, "the only set")


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


def embed_metadata(path: Path, props: dict[str, str]) -> None:
    """Replace the model file's metadata_props with `props` (the spec, CAM weights, ...)."""
    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name = "melanoma-export"
    onnx.save(model, str(path))


def check_round_trip(path: Path, spec: ModelSpec) -> None:
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    if ModelSpec.from_json(props[SPEC_METADATA_KEY]) != spec:
        raise ExportError("the spec read back from the written model differs from the one written")


def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for package in ("onnx", "onnxruntime", "resnest", "timm", "safetensors", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "unknown"
    return versions


def write_provenance(output: Path, spec: ModelSpec, onnx_sha: str) -> None:
    record = {"model": output.name, "onnx_sha256": onnx_sha, "spec": spec.as_dict()}
    provenance = output.with_name(output.name + ".provenance.json")
    provenance.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
