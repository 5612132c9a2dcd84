"""Checkpoint loading: every layout people save, strict keys, and no silent unsafe pickle."""
from __future__ import annotations

import collections
from pathlib import Path

import pytest
import torch

from export.checkpoint import load_checkpoint
from export.demo import build_demo_state
from export.errors import ExportError
from tests.conftest import TINY_ARCH


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return build_demo_state(TINY_ARCH, seed=3)


def _prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + key: value for key, value in state.items()}


@pytest.mark.parametrize("layout, expected_format", [
    ("plain", "state_dict"),
    ("module", "state_dict"),
    ("orig_mod", "state_dict"),
    ("lightning_model", "lightning (prefix 'model.')"),
    ("lightning_net", "lightning (prefix 'net.')"),
    ("lightning_ddp_compiled", "lightning (prefix 'model._orig_mod.')"),
    ("dict_model", "dict['model']"),
])
def test_loads_every_common_layout_to_the_bare_network_keys(
        tmp_path: Path, state: dict[str, torch.Tensor], layout: str,
        expected_format: str) -> None:
    saved = {
        "plain": state,
        "module": _prefixed(state, "module."),
        "orig_mod": _prefixed(state, "_orig_mod."),
        "lightning_model": {"state_dict": _prefixed(state, "model."), "epoch": 3,
                            "pytorch-lightning_version": "2.5.0", "hyper_parameters": {}},
        "lightning_net": {"state_dict": _prefixed(state, "net."),
                          "pytorch-lightning_version": "1.9.0"},
        "lightning_ddp_compiled": {"state_dict": _prefixed(state, "module.model._orig_mod."),
                                   "hyper_parameters": {"lr": 1e-3}},
        "dict_model": {"model": state, "optimizer": {"lr": torch.tensor(0.1)}},
    }[layout]
    path = tmp_path / "weights.ckpt"
    torch.save(saved, path)
    loaded = load_checkpoint(path)
    assert set(loaded.state_dict) == set(state)
    assert torch.equal(loaded.state_dict["fc.weight"], state["fc.weight"])
    assert loaded.format == expected_format


def test_keys_outside_the_network_are_reported_not_loaded(
        tmp_path: Path, state: dict[str, torch.Tensor]) -> None:
    weights = _prefixed(state, "model.") | {"criterion.pos_weight": torch.tensor([3.0])}
    path = tmp_path / "with-loss.ckpt"
    torch.save({"state_dict": weights, "hyper_parameters": {}}, path)
    loaded = load_checkpoint(path)
    assert loaded.ignored_keys == ("criterion.pos_weight",)
    assert "criterion.pos_weight" not in loaded.state_dict


def test_lightning_hyper_parameters_are_read_including_nested_hparams(
        tmp_path: Path, state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "h.ckpt"
    torch.save({"state_dict": _prefixed(state, "model."),
                "hyper_parameters": {"hparams": {"image_size": 192}, "arch": TINY_ARCH}}, path)
    assert load_checkpoint(path).hyper_parameters == {"image_size": 192, "arch": TINY_ARCH}


def test_sha256_is_of_the_file_bytes(tmp_path: Path, state: dict[str, torch.Tensor]) -> None:
    import hashlib

    path = tmp_path / "w.pt"
    torch.save(state, path)
    assert load_checkpoint(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


class Evil:
    """Any non-allow-listed object makes weights_only loading refuse the file."""


def test_refuses_pickled_objects_without_explicit_opt_in(
        tmp_path: Path, state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "objects.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": {"callback": Evil()}}, path)
    with pytest.raises(ExportError, match="weights_only.*--allow-unsafe-pickle"):
        load_checkpoint(path)
    assert set(load_checkpoint(path, allow_unsafe_pickle=True).state_dict) == set(state)


@pytest.mark.parametrize("content, message", [
    (b"hello, I am a text file\n", "not a PyTorch checkpoint"),
    (b"", "not a PyTorch checkpoint|corrupt"),
])
def test_rejects_files_that_are_not_checkpoints(tmp_path: Path, content: bytes,
                                                message: str) -> None:
    path = tmp_path / "model.ckpt"
    path.write_bytes(content)
    with pytest.raises(ExportError, match=message):
        load_checkpoint(path)


def test_rejects_a_truncated_zip_checkpoint(tmp_path: Path,
                                            state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "cut.ckpt"
    torch.save(state, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ExportError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_rejects_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.ckpt")


def test_rejects_a_checkpoint_without_weights(tmp_path: Path) -> None:
    path = tmp_path / "empty.ckpt"
    torch.save({"epoch": 1, "state_dict": collections.OrderedDict()}, path)
    with pytest.raises(ExportError, match="no state_dict"):
        load_checkpoint(path)


def test_timm_train_checkpoint_args_namespace_loads_safely_as_hyper_parameters(
        tmp_path: Path, state: dict[str, torch.Tensor]) -> None:
    import argparse

    path = tmp_path / "last.pth.tar"
    args = argparse.Namespace(model="resnest14d", img_size=None, input_size=[3, 96, 96],
                              interpolation="bicubic")
    torch.save({"epoch": 3, "arch": "resnest14d", "state_dict": state, "args": args,
                "optimizer": {"state": {}, "param_groups": []}, "version": 2}, path)
    loaded = load_checkpoint(path)
    assert loaded.hyper_parameters["model"] == "resnest14d"
    assert loaded.hyper_parameters["input_size"] == [3, 96, 96]
    assert "img_size" not in loaded.hyper_parameters  # None means "unset" in timm's args
    assert set(loaded.state_dict) == set(state)


@pytest.mark.parametrize("prefer_ema, expected", [(True, "ema"), (False, "raw")])
def test_ema_copy_inside_a_lightning_module_is_preferred_unless_declined(
        tmp_path: Path, state: dict[str, torch.Tensor], prefer_ema: bool, expected: str) -> None:
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    path = tmp_path / "ema.ckpt"
    torch.save({"state_dict": _prefixed(state, "model.") | _prefixed(ema, "model_ema.module."),
                "pytorch-lightning_version": "2.5.0"}, path)
    loaded = load_checkpoint(path, prefer_ema=prefer_ema)
    assert loaded.weights == expected
    chosen = ema if prefer_ema else state
    assert torch.equal(loaded.state_dict["fc.weight"], chosen["fc.weight"])
    assert len(loaded.ignored_keys) == len(state)


def test_a_checkpoint_without_ema_says_so(tmp_path: Path,
                                          state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "plain.pt"
    torch.save({"state_dict": state}, path)
    assert load_checkpoint(path).weights == ""


def test_safetensors_metadata_values_are_read_as_json_where_they_are(
        tmp_path: Path, state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "weights.bin"  # detected by content, not by the suffix
    save_file(state, str(path), metadata={"format": "pt", "arch": "resnest14d",
                                          "mean": "[0.5, 0.5, 0.5]"})
    loaded = load_checkpoint(path)
    assert loaded.format == "safetensors"
    assert loaded.hyper_parameters == {"arch": "resnest14d", "mean": [0.5, 0.5, 0.5]}
    assert torch.equal(loaded.state_dict["fc.weight"], state["fc.weight"])


def test_pickled_module_under_opt_in_gives_its_weights_and_library(
        tmp_path: Path, state: dict[str, torch.Tensor]) -> None:
    from export.architectures import ARCHITECTURES

    network = ARCHITECTURES[TINY_ARCH].build(1)
    network.load_state_dict(state)
    path = tmp_path / "module.pt"
    torch.save(network, path)
    with pytest.raises(ExportError, match="--allow-unsafe-pickle"):
        load_checkpoint(path)
    loaded = load_checkpoint(path, allow_unsafe_pickle=True)
    assert (loaded.format, loaded.library) == ("pickled module (ResNet)", "resnest")
    assert torch.equal(loaded.state_dict["fc.weight"], state["fc.weight"])
