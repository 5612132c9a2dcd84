"""Rewrite the spec embedded in an .onnx file, atomically, leaving everything else as it was."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path

import onnx

from inference.model_spec import SPEC_METADATA_KEY, ModelSpec, SpecError


def write_threshold(model_path: Path, threshold: float) -> ModelSpec:
    """Set the spec's decision threshold in place; returns the new spec.

    Only the spec's JSON value changes: graph, weights, other metadata and any external
    data references are written back as read. The new file replaces the old in one
    rename, so a server starting meanwhile sees either the old model or the new one.
    """
    model = onnx.load(str(model_path), load_external_data=False)
    props = [p for p in model.metadata_props if p.key == SPEC_METADATA_KEY]
    if len(props) != 1:
        raise SpecError(f"{model_path} carries {len(props)} model specs; expected exactly one")
    spec = dataclasses.replace(ModelSpec.from_json(props[0].value), threshold=float(threshold))
    props[0].value = spec.to_json()
    mode = model_path.stat().st_mode & 0o777
    handle, name = tempfile.mkstemp(prefix=f".{model_path.name}.", suffix=".partial",
                                    dir=model_path.parent)
    partial = Path(name)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(model.SerializeToString())
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(partial, mode)
        os.replace(partial, model_path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    _refresh_provenance(model_path, spec)
    return spec


def _refresh_provenance(model_path: Path, spec: ModelSpec) -> None:
    # The exporter's record beside the model holds its hash and spec; keep it true.
    record_path = model_path.with_name(model_path.name + ".provenance.json")
    if not record_path.is_file():
        return
    record = json.loads(record_path.read_text())
    record["onnx_sha256"] = hashlib.sha256(model_path.read_bytes()).hexdigest()
    record["spec"] = spec.as_dict()
    record_path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
