"""The export CLI: checkpoints of every layout become verified models that carry their spec."""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import onnx
from inference.runtime import ort
import pytest
import torch

from export import to_onnx
from export.architectures import ARCHITECTURES
from export.demo import build_demo_state, write_lightning_checkpoint
from export.network import load_network
from tests.conftest import TINY_ARCH
from inference.model_spec import SPEC_METADATA_KEY, ModelSpec, read_spec_file


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    return build_demo_state(TINY_ARCH, seed=11)


def _export(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = to_onnx.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _spec(path: Path) -> ModelSpec:
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    return ModelSpec.from_json(props[SPEC_METADATA_KEY])


@pytest.mark.parametrize("layout", ["plain", "module", "orig_mod", "lightning_net"])
def test_each_checkpoint_layout_exports_and_passes_parity(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_state: dict[str, torch.Tensor],
        layout: str) -> None:
    prefix = {"plain": "", "module": "module.", "orig_mod": "_orig_mod.",
              "lightning_net": "net."}[layout]
    weights = {prefix + key: value for key, value in tiny_state.items()}
    checkpoint = tmp_path / "in.ckpt"
    torch.save({"state_dict": weights, "hyper_parameters": {}} if layout == "lightning_net"
               else weights, checkpoint)
    output = tmp_path / "out.onnx"
    code, out, err = _export(capsys, str(checkpoint), "-o", str(output), "--input-size", "64")
    assert code == 0, err
    assert "max |Δ probability|" in out and "max |Δ feature|" in out
    spec = _spec(output)
    assert spec.architecture == TINY_ARCH
    assert spec.parity["max_abs_diff_probability"] <= 1e-4
    assert spec.parity["batch_sizes"] == [1, 8]


def test_exported_model_matches_pytorch_and_batch_8_equals_batch_1(
        tiny_onnx_model: Path, tiny_checkpoint: Path) -> None:
    network = load_network(tiny_checkpoint).module
    session = ort.InferenceSession(str(tiny_onnx_model), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(5).normal(size=(8, 3, 64, 64)).astype(np.float32)
    batched_logits, batched_features = session.run(None, {"image": images})
    for index in range(8):
        single_logits, single_features = session.run(None, {"image": images[index:index + 1]})
        np.testing.assert_allclose(single_logits[0], batched_logits[index], atol=1e-5)
        np.testing.assert_allclose(single_features[0], batched_features[index], atol=1e-5)
    with torch.inference_mode():
        expected = torch.sigmoid(network(torch.from_numpy(images))).numpy()[:, 0]
    got = 1 / (1 + np.exp(-batched_logits[:, 0]))
    assert np.abs(expected - got).max() < 1e-4


def test_public_app_format_exports_with_only_the_checkpoint_path(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        ) -> None:
    """Lightning, resnest50_fast_4s1x64d, fc = Linear(2048, 1), no hyper_parameters."""
    torch.manual_seed(0)
    network = ARCHITECTURES["resnest50_fast_4s1x64d"].build(1000)
    network.fc = torch.nn.Linear(2048, 1)
    checkpoint = tmp_path / "epoch=9-val_auc=0.89.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in network.state_dict().items()},
                "epoch": 9, "pytorch-lightning_version": "1.1.0"}, checkpoint)
    monkeypatch.chdir(tmp_path)
    code, out, err = _export(capsys, str(checkpoint))
    assert code == 0, err
    output = tmp_path / "models" / "epoch=9-val_auc=0.89.onnx"
    spec = read_spec_file(output)
    assert (spec.architecture, spec.input_size, spec.output_kind) == (
        "resnest50_fast_4s1x64d", 128, "sigmoid")
    assert spec.resize == "resize" and spec.color_order == "RGB" and not spec.demo
    assert "architecture from detected from the state_dict" in out
    provenance = json.loads(output.with_name(output.name + ".provenance.json").read_text())
    assert provenance["spec"]["checkpoint_sha256"] == spec.checkpoint_sha256


def test_two_class_softmax_head_uses_index_1_as_melanoma(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = write_lightning_checkpoint(
        tmp_path / "two.ckpt", build_demo_state(TINY_ARCH, seed=2, num_classes=2), {})
    code, _, err = _export(capsys, str(checkpoint), "-o", str(tmp_path / "two.onnx"),
                           "--input-size", "64")
    assert code == 0, err
    spec = _spec(tmp_path / "two.onnx")
    assert (spec.output_kind, spec.melanoma_index) == ("softmax", 1)


def test_parity_holds_at_an_odd_input_size_where_ceil_mode_pooling_matters(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_checkpoint: Path) -> None:
    code, _, err = _export(capsys, str(tiny_checkpoint), "-o", str(tmp_path / "odd.onnx"),
                           "--input-size", "100")
    assert code == 0, err
    assert _spec(tmp_path / "odd.onnx").parity["max_abs_diff_feature"] < 1e-4


def test_flags_override_checkpoint_hparams_which_override_defaults(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        tiny_state: dict[str, torch.Tensor]) -> None:
    checkpoint = write_lightning_checkpoint(
        tmp_path / "h.ckpt", tiny_state,
        {"arch": TINY_ARCH, "image_size": 96, "threshold": 0.3, "mean": [0.5, 0.5, 0.5]})
    code, out, err = _export(capsys, str(checkpoint), "-o", str(tmp_path / "h.onnx"),
                             "--threshold", "0.25", "--color-order", "BGR",
                             "--resize", "shorter-side-resize+center-crop")
    assert code == 0, err
    spec = _spec(tmp_path / "h.onnx")
    assert spec.threshold == 0.25 and spec.color_order == "BGR"  # flags
    assert spec.input_size == 96 and spec.mean == (0.5, 0.5, 0.5)  # checkpoint
    assert spec.std == (0.229, 0.224, 0.225)  # default
    assert spec.resize == "shorter-side-resize+center-crop"
    assert "threshold from flag" in out and "input_size from checkpoint" in out


def test_embedded_spec_round_trips_exactly(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           tiny_checkpoint: Path) -> None:
    output = tmp_path / "rt.onnx"
    code, out, _ = _export(capsys, str(tiny_checkpoint), "-o", str(output), "--name", "mine",
                           "--model-version", "2.1", "--labels", "nevus", "melanoma")
    assert code == 0
    printed = json.loads(out[out.index("spec: ") + len("spec: "):])
    read_back = read_spec_file(output)
    assert read_back.as_dict() == printed
    assert (read_back.name, read_back.version, read_back.labels) == (
        "mine", "2.1", ("nevus", "melanoma"))
    assert read_back.checkpoint_sha256 == hashlib.sha256(
        tiny_checkpoint.read_bytes()).hexdigest()
    assert set(read_back.tool_versions) >= {"torch", "onnx", "onnxruntime", "resnest"}


def _no_leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.suffix in (".partial", ".onnx"))


@pytest.mark.parametrize("case, message", [
    ("missing", "checkpoint not found"),
    ("not_a_checkpoint", "not a PyTorch checkpoint"),
    ("corrupt_zip", "corrupt or truncated"),
    ("wrong_arch", "does not fit resnest package resnest50_fast_4s1x64d: .*missing keys.*"
                   "looks like resnest package resnest14_fast_4s1x64d"),
    ("unsupported_head", "unsupported head: fc has 5 outputs"),
    ("unknown_net", "matches no known architecture; closest is"),
])
def test_bad_input_gives_one_line_error_and_no_model(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_state: dict[str, torch.Tensor],
        case: str, message: str) -> None:
    checkpoint = tmp_path / "bad.ckpt"
    extra: list[str] = []
    if case == "not_a_checkpoint":
        checkpoint.write_text("not a checkpoint")
    elif case == "corrupt_zip":
        torch.save(tiny_state, checkpoint)
        checkpoint.write_bytes(checkpoint.read_bytes()[:5000])
    elif case == "wrong_arch":
        torch.save(tiny_state, checkpoint)
        extra = ["--arch", "resnest50_fast_4s1x64d"]
    elif case == "unsupported_head":
        weights = dict(tiny_state)
        weights["fc.weight"] = torch.zeros(5, 2048)
        weights["fc.bias"] = torch.zeros(5)
        torch.save(weights, checkpoint)
    elif case == "unknown_net":
        weights = {k: v for k, v in tiny_state.items() if not k.startswith("layer4.0.")}
        torch.save(weights, checkpoint)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, out, err = _export(capsys, str(checkpoint), "-o", str(out_dir / "m.onnx"), *extra)
    assert code == 1
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert re.search(message, err), err
    assert _no_leftovers(out_dir) == []


def test_unwritable_output_directory_is_a_clear_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_checkpoint: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores permission bits: use a path under a file
            target = tmp_path / "a-file"
            target.write_text("")
            output, expected = target / "m.onnx", "cannot create output directory"
        else:
            output, expected = locked / "m.onnx", "not writable"
        code, _, err = _export(capsys, str(tiny_checkpoint), "-o", str(output))
    finally:
        locked.chmod(0o700)
    assert code == 1 and expected in err and "Traceback" not in err


def test_failed_parity_aborts_and_leaves_no_half_written_model(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_checkpoint: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from export import verify

    class Drifted(verify.LogitsAndFeatures):
        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits, features = super().forward(image)
            return logits + 0.05, features

    monkeypatch.setattr(verify, "LogitsAndFeatures", Drifted)
    code, _, err = _export(capsys, str(tiny_checkpoint), "-o", str(tmp_path / "m.onnx"))
    assert code == 1 and "ONNX Runtime disagrees with PyTorch" in err
    assert _no_leftovers(tmp_path) == []


def test_every_cli_option_has_help_text() -> None:
    parser = to_onnx.build_parser()
    for action in parser._actions:
        assert action.help, action.dest
