"""onnxruntime, imported only after its telemetry is switched off.

onnxruntime records a persistent device id and an event database under
~/.cache/Microsoft/DeveloperTools/ (and a .ses file in TMPDIR) in every process that imports
it, and uploads them when it can; ORT_DISABLE_TELEMETRY=1 in the environment before the
import switches all of that off. Every module that needs onnxruntime imports `ort` from
here (tests/test_telemetry.py holds them to it); the systemd unit sets the variable too.
"""
from __future__ import annotations

import os
from types import ModuleType

# Set, not defaulted: a service that takes photos of people's skin must never phone home.
os.environ["ORT_DISABLE_TELEMETRY"] = "1"

import onnxruntime as ort  # noqa: E402

__all__ = ["ort"]


def quantization() -> ModuleType:
    """onnxruntime.quantization, for the exporter only (it needs the onnx package, which the
    server does not install)."""
    import onnxruntime.quantization as quantization_module

    return quantization_module
