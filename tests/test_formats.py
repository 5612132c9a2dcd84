"""Checkpoints written the way their producers write them export with parity to the producer.

Each case saves with the producing tool's own code (timm's CheckpointSaver and ModelEmaV3,
safetensors.torch.save_file, a Lightning Trainer run, torch.save of a whole module) and
compares the exported model's probabilities with that tool's own network on the same inputs.
"""
from __future__ import annotations

import argparse
import json
import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from export.checkpoint import load_checkpoint
from export.timm_runtime import import_timm
from tests.producers import export, max_probability_gap, spread_weights

ARCH = "resnest14d"  # timm's smallest ResNeSt; detected from its weights alone
SIZE = 32
TOLERANCE = 1e-4


def _timm_model(num_classes: int = 1, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = import_timm().create_model(ARCH, pretrained=False, num_classes=num_classes)
    return spread_weights(model, SIZE, seed)


def _perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Other weights of the same network (new norm layers and head), outputs still spread."""
    return spread_weights(copy.deepcopy(model), SIZE, seed)


def test_timm_checkpoint_saver_prefers_ema_weights_and_reads_its_args(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    timm = import_timm()
    from timm.utils import CheckpointSaver, ModelEmaV3

    model = _timm_model()
    ema = ModelEmaV3(model, decay=0.5)
    ema.module.load_state_dict(_perturbed(model, 1).state_dict())
    args = argparse.Namespace(model=ARCH, img_size=SIZE, input_size=None,
                              interpolation="bicubic", mean=None, std=None)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    saver = CheckpointSaver(model, optimizer, args=args, model_ema=ema,
                            checkpoint_dir=str(tmp_path), max_history=1)
    saver.save_checkpoint(epoch=0, metric=0.9)
    checkpoint = tmp_path / "last.pth.tar"
    assert timm.__version__ and checkpoint.exists()

    spec = export(checkpoint, tmp_path / "ema.onnx")
    out = capsys.readouterr().out
    assert (spec.architecture, spec.architecture_library) == (ARCH, "timm")
    assert (spec.checkpoint_weights, spec.interpolation, spec.input_size) == ("ema", "bicubic",
                                                                               SIZE)
    assert "weights: the EMA copy (--no-ema takes the raw ones)" in out
    assert "interpolation from checkpoint hyper_parameters['interpolation']" in out
    assert max_probability_gap(tmp_path / "ema.onnx", ema.module, SIZE) <= TOLERANCE
    # The raw weights differ, so the export above really carries the EMA copy.
    assert max_probability_gap(tmp_path / "ema.onnx", model, SIZE) > 1e-3

    raw = export(checkpoint, tmp_path / "raw.onnx", "--no-ema")
    assert raw.checkpoint_weights == "raw"
    assert "weights: the raw ones" in capsys.readouterr().out
    assert max_probability_gap(tmp_path / "raw.onnx", model, SIZE) <= TOLERANCE


def test_model_ema_key_is_preferred_and_declined_on_request(tmp_path: Path) -> None:
    model = _timm_model()
    ema = _perturbed(model, 2)
    path = tmp_path / "ema.pt"
    torch.save({"model": model.state_dict(),
                "model_ema": {f"module.{k}": v for k, v in ema.state_dict().items()}}, path)
    taken = load_checkpoint(path)
    declined = load_checkpoint(path, prefer_ema=False)
    assert taken.weights == "ema" and declined.weights == "raw"
    assert torch.equal(taken.state_dict["fc.weight"], ema.state_dict()["fc.weight"])
    assert torch.equal(declined.state_dict["fc.weight"], model.state_dict()["fc.weight"])


def test_safetensors_with_metadata_exports(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import save_file

    model = _timm_model(num_classes=2)
    path = tmp_path / "model.safetensors"
    save_file(model.state_dict(), str(path),
              metadata={"format": "pt", "arch": ARCH, "img_size": str(SIZE), "interp": "area"})
    spec = export(path, tmp_path / "st.onnx")
    assert "interpolation from checkpoint hyper_parameters['interp']" in capsys.readouterr().out
    assert (spec.checkpoint_format, spec.interpolation, spec.input_size) == ("safetensors",
                                                                             "area", SIZE)
    assert (spec.output_kind, spec.melanoma_index) == ("softmax", 1)
    assert max_probability_gap(tmp_path / "st.onnx", model, SIZE) <= TOLERANCE


def test_a_corrupt_safetensors_file_is_one_clear_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from export import to_onnx

    path = tmp_path / "cut.safetensors"
    path.write_bytes(b"\x40\x00\x00\x00\x00\x00\x00\x00{\"a\": 1")
    assert to_onnx.main([str(path), "-o", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "not a readable safetensors file" in err


def test_pickled_module_needs_the_explicit_opt_in(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from export import to_onnx

    model = _timm_model()
    path = tmp_path / "whole-model.pt"
    torch.save(model, path)
    assert to_onnx.main([str(path), "-o", str(tmp_path / "refused.onnx")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--allow-unsafe-pickle" in err
    spec = export(path, tmp_path / "module.onnx", "--allow-unsafe-pickle", "--input-size",
                  str(SIZE))
    assert spec.checkpoint_format == "pickled module (ResNet)"
    assert (spec.architecture, spec.architecture_library) == (ARCH, "timm")
    assert max_probability_gap(tmp_path / "module.onnx", model, SIZE) <= TOLERANCE


def test_fp16_weights_match_the_half_precision_network_they_came_from(tmp_path: Path) -> None:
    half = _timm_model().half()
    path = tmp_path / "fp16.pth"
    torch.save(half.state_dict(), path)
    spec = export(path, tmp_path / "fp16.onnx", "--input-size", str(SIZE))
    assert float(spec.parity["max_abs_diff_probability"]) <= TOLERANCE  # type: ignore[arg-type]
    # The producer's weights, exactly as stored, widened to float32 for the CPU comparison.
    assert max_probability_gap(tmp_path / "fp16.onnx", copy.deepcopy(half).float(),
                               SIZE) <= TOLERANCE


def test_storages_tagged_for_cuda_load_on_a_cpu_only_machine(tmp_path: Path) -> None:
    model = _timm_model()
    path = tmp_path / "cuda.pth"
    _save_tagged_as_cuda(model.state_dict(), path)
    assert b"cuda:0" in path.read_bytes()
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(path, weights_only=True)  # what a GPU-saved file does here without care
    spec = export(path, tmp_path / "cuda.onnx", "--input-size", str(SIZE))
    assert spec.architecture == ARCH
    assert max_probability_gap(tmp_path / "cuda.onnx", model, SIZE) <= TOLERANCE


def _save_tagged_as_cuda(state: dict[str, Any], path: Path) -> None:
    """torch.save as on a GPU machine: every storage's location recorded as `cuda:0`."""
    registry = torch.serialization._package_registry  # noqa: SLF001

    def tag(storage: Any) -> str | None:
        return "cuda:0" if storage.device.type == "cpu" else None

    def never(storage: Any, location: str) -> None:
        return None

    entry = (-1000, tag, never)
    registry.insert(0, entry)
    try:
        torch.save(state, path)
    finally:
        registry.remove(entry)


def test_real_lightning_trainer_checkpoint_exports_with_parity(tmp_path: Path) -> None:
    lightning = _lightning()
    model = _timm_model()

    class Melanoma(lightning.LightningModule):  # type: ignore[misc,name-defined]
        def __init__(self, arch: str, image_size: int) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.model = model
            self.criterion = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([3.0]))

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.model(image)

        def training_step(self, batch: Any, _: int) -> torch.Tensor:
            image, target = batch
            loss: torch.Tensor = self.criterion(self(image)[:, 0], target)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(4, 3, SIZE, SIZE),
                                          torch.tensor([0.0, 1.0, 0.0, 1.0]))
    module = Melanoma(arch=ARCH, image_size=SIZE)
    module.train()
    trainer = lightning.Trainer(max_steps=2, accelerator="cpu", devices=1, logger=False,
                                default_root_dir=str(tmp_path), enable_progress_bar=False,
                                enable_model_summary=False)
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=2))
    (checkpoint,) = (tmp_path / "checkpoints").glob("*.ckpt")
    saved = torch.load(checkpoint, weights_only=False)
    assert saved["optimizer_states"] and "model.fc.weight" in saved["state_dict"]

    spec = export(checkpoint, tmp_path / "lightning.onnx")
    assert (spec.architecture, spec.input_size, spec.checkpoint_format) == (
        ARCH, SIZE, "lightning (prefix 'model.')")
    assert max_probability_gap(tmp_path / "lightning.onnx", module, SIZE) <= TOLERANCE


def _lightning() -> Any:
    from export.timm_runtime import make_torchvision_importable

    make_torchvision_importable()  # Lightning imports torchmetrics, which imports torchvision
    import lightning.pytorch

    return lightning.pytorch


@pytest.mark.parametrize("flags, hparams, expected", [
    ({}, {}, ("bilinear", "default")),
    ({}, {"interp": "bicubic"}, ("bicubic", "checkpoint hyper_parameters['interp']")),
    ({}, {"interpolation": "area", "interp": "bicubic"},
     ("area", "checkpoint hyper_parameters['interpolation']")),
    ({"interpolation": "nearest"}, {"interpolation": "area"}, ("nearest", "flag")),
])
def test_interpolation_comes_from_the_flag_then_timm_names_then_the_default(
        flags: dict[str, str], hparams: dict[str, str], expected: tuple[str, str]) -> None:
    from export.settings import resolve

    resolved = resolve(flags, hparams)["interpolation"]
    assert (resolved.value, resolved.source) == expected


def test_an_interpolation_the_server_cannot_do_is_refused() -> None:
    from export.errors import ExportError
    from export.settings import resolve

    with pytest.raises(ExportError, match="'lanczos' is not one of bilinear, area"):
        resolve({}, {"interpolation": "lanczos"})


def test_models_exported_before_the_library_fields_still_load() -> None:
    from inference.model_spec import ModelSpec

    old = ModelSpec(architecture="resnest50", input_size=128, output_kind="sigmoid",
                    melanoma_index=0, checkpoint_sha256="0" * 64, demo=False).as_dict()
    for field in ("architecture_library", "architecture_aliases", "checkpoint_weights"):
        del old[field]
    spec = ModelSpec.from_json(json.dumps(old))
    assert (spec.architecture_label, spec.checkpoint_weights) == ("resnest50", "")
    assert "(resnest50, 128px)" in spec.display_name


def test_page_and_api_name_the_architecture_with_its_library(
        client: Any, lesion_jpeg_bytes: bytes) -> None:
    import io

    page = client.post("/predict", data={"image": (io.BytesIO(lesion_jpeg_bytes), "l.jpg")},
                       content_type="multipart/form-data").get_data(as_text=True)
    assert "resnest14_fast_4s1x64d (resnest)" in page
    model = client.get("/api/v1/model").get_json()
    assert (model["architecture"], model["architecture_library"]) == (
        "resnest14_fast_4s1x64d", "resnest")
