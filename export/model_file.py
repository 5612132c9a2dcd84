"""Rewriting an exported model's metadata in place: atomically, with its provenance file."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx


def rewrite_metadata(model_path: Path, updates: Mapping[str, str]) -> None:
    """Set these metadata_props keys (the others kept), replacing the file atomically."""
    model = onnx.load(str(model_path))
    props = {p.key: p.value for p in model.metadata_props} | dict(updates)
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    handle, name = tempfile.mkstemp(prefix=f".{model_path.name}.", suffix=".partial",
                                    dir=model_path.parent)
    os.close(handle)
    partial = Path(name)
    try:
        onnx.save(model, str(partial))
        os.chmod(partial, 0o644)
        os.replace(partial, model_path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def update_provenance(model_path: Path, entries: Mapping[str, Any]) -> None:
    """Refresh the provenance file beside the model (if any): its SHA-256 and `entries`."""
    provenance = model_path.with_name(model_path.name + ".provenance.json")
    if not provenance.exists():
        return
    record = json.loads(provenance.read_text())
    with model_path.open("rb") as handle:
        record["onnx_sha256"] = hashlib.file_digest(handle, "sha256").hexdigest()
    record.update(entries)
    provenance.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
