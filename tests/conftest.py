"""Shared fixtures: tiny checkpoints and models built through the real export path, once."""
from __future__ import annotations

import os

# Before anything imports onnxruntime, in this process and every child it starts.
os.environ["ORT_DISABLE_TELEMETRY"] = "1"

from pathlib import Path  # noqa: E402
from typing import Iterator  # noqa: E402

import pytest  # noqa: E402
from flask import Flask  # noqa: E402
from flask.testing import FlaskClient  # noqa: E402

from tests import images  # noqa: E402

TINY_ARCH = "resnest14_fast_4s1x64d"
TINY_SIZE = 64


def export_tiny(directory: Path, name: str, **overrides: object) -> Path:
    """Export a seeded shallow ResNeSt (Lightning format) to `directory/name.onnx`."""
    from export.demo import build_demo_state, write_lightning_checkpoint
    from export.pipeline import ExportRequest, export_checkpoint

    checkpoint = write_lightning_checkpoint(
        directory / f"{name}.ckpt", build_demo_state(TINY_ARCH, seed=7),
        {"arch": TINY_ARCH, "image_size": TINY_SIZE})
    request = ExportRequest(checkpoint=checkpoint, output=directory / f"{name}.onnx",
                            name=name, **overrides)  # type: ignore[arg-type]
    return export_checkpoint(request).output


@pytest.fixture(scope="session")
def tiny_onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small exported model (resnest14, 64 px, sigmoid head) with its spec embedded."""
    return export_tiny(tmp_path_factory.mktemp("tiny-model"), "tiny")


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_onnx_model: Path) -> Path:
    return tiny_onnx_model.with_suffix(".ckpt")


@pytest.fixture(scope="session")
def lesion_jpeg_bytes() -> bytes:
    return images.encode(images.lesion_rgb(), ".jpg")


@pytest.fixture(scope="session")
def full_demo_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default demo model (resnest50_fast_4s1x64d trained on drawn lesions): the one
    `make model` builds and caches in models/, built here only if missing (about 6 min)."""
    from export import demo_model

    output = Path(__file__).resolve().parent.parent / "models" / "default.onnx"
    assert demo_model.main(["--output", str(output), "--quiet"]) == 0
    return output


@pytest.fixture
def app(tiny_onnx_model: Path) -> Iterator[Flask]:
    from webapp.app import create_app

    yield create_app({"TESTING": True, "MODEL_PATH": str(tiny_onnx_model),
                      "WTF_CSRF_ENABLED": False})


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()
