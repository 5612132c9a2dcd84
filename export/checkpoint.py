"""Load a checkpoint safely and normalise the key prefixes training tools add.

Reads PyTorch files (`torch.save`: Lightning, timm, plain state_dicts) with `weights_only=True`,
`.safetensors` files, and, only under the explicit unsafe opt-in, whole pickled modules.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from export.errors import ExportError
from export.timm_runtime import make_torchvision_importable

# Prefixes added by wrappers around the network itself, stripped wherever they appear first.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Where people save EMA weights beside the raw ones (timm's CheckpointSaver and ModelEmaV2).
_EMA_KEYS = ("state_dict_ema", "model_ema")
# Containers people save weights under, in the order timm unwraps them.
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net")
# A network's first convolution and its classifier, in every family we export; together they
# mark where the network sits in a bigger dict.
_STEM_KEYS = ("conv1.0.weight", "conv1.weight", "conv_stem.weight")
_HEAD_KEYS = ("fc.weight", "classifier.weight")
# timm's train.py saves its argparse namespace; it holds only plain values.
_SAFE_EXTRA_GLOBALS: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [
    argparse.Namespace]


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint reduced to the network's own weights plus what it told us about itself.

    `weights` is "ema" when EMA weights were taken, "raw" when the file had EMA weights but the
    raw ones were asked for, and "" when it held one set. `library` names the library whose
    class a pickled module was ("timm", "resnest"), when known.
    """

    path: Path
    sha256: str
    format: str
    prefix: str
    state_dict: dict[str, torch.Tensor]
    ignored_keys: tuple[str, ...] = ()
    hyper_parameters: Mapping[str, Any] = field(default_factory=dict)
    weights: str = ""
    library: str | None = None


def sha256_of(path: Path) -> str:
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def load_checkpoint(path: Path, allow_unsafe_pickle: bool = False,
                    prefer_ema: bool = True) -> LoadedCheckpoint:
    """Read `path` and return the network's state_dict.

    `allow_unsafe_pickle` must be asked for explicitly: it executes code from the file.
    EMA weights are taken when the file has them (timm's convention) unless `prefer_ema`
    is false.
    """
    _check_file(path)
    if _is_safetensors(path):
        raw, container = _read_safetensors(path)
    else:
        raw, container = _read_torch(path, allow_unsafe_pickle), ""
    library = _library_of(raw)
    tensors, fmt, hparams, weights = _unwrap(raw, prefer_ema)
    fmt = container or fmt
    tensors = {_strip_wrappers(key): value for key, value in tensors.items()}
    prefix = _network_prefix(tensors, prefer_ema)
    network = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if prefix and "ema" in prefix:
        weights = "ema"
    elif prefix and any("ema" in p for p in _network_prefixes(tensors)):
        weights = "raw"
    ignored = tuple(sorted(k for k in tensors if not k.startswith(prefix)))
    fmt = fmt if not prefix else f"{fmt} (prefix {prefix!r})"
    return LoadedCheckpoint(path=path, sha256=sha256_of(path), format=fmt, prefix=prefix,
                            state_dict=network, ignored_keys=ignored, hyper_parameters=hparams,
                            weights=weights, library=library)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ExportError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise ExportError(f"checkpoint is not a file: {path}")


def _is_safetensors(path: Path) -> bool:
    # The format opens with an 8-byte little-endian header length, then a JSON object.
    with path.open("rb") as stream:
        head = stream.read(10)
    return path.suffix == ".safetensors" or (len(head) == 10 and head[8:10] == b'{"')


def _read_safetensors(path: Path) -> tuple[dict[str, Any], str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        text = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ExportError(f"{path} is not a readable safetensors file ({text})") from None
    hparams = {key: _metadata_value(value) for key, value in metadata.items() if key != "format"}
    return {"state_dict": tensors, "hyper_parameters": hparams}, "safetensors"


def _metadata_value(text: str) -> Any:
    # safetensors metadata values are strings; tools often store JSON (lists, numbers) there.
    try:
        return json.loads(text)
    except ValueError:
        return text


def _read_torch(path: Path, allow_unsafe_pickle: bool) -> Any:
    if allow_unsafe_pickle:
        make_torchvision_importable()  # unpickling a timm module imports timm
    try:
        with torch.serialization.safe_globals(_SAFE_EXTRA_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=not allow_unsafe_pickle)
    except pickle.UnpicklingError as error:
        blocked = _blocked_global(str(error))
        if blocked:
            raise ExportError(
                f"{path} holds Python objects that weights_only loading refuses ({blocked}); "
                "re-save it with plain tensors/dicts, or pass --allow-unsafe-pickle if you "
                "trust the file (it runs code from it)") from None
        raise ExportError(f"{path} is not a PyTorch checkpoint (unreadable pickle)") from None
    except Exception as error:  # torch.load surfaces arbitrary parser errors for junk input
        text = str(error).splitlines()[0] if str(error) else type(error).__name__
        if _looks_like_zip(path) or isinstance(error, (zipfile.BadZipFile, EOFError)):
            raise ExportError(f"{path} is a corrupt or truncated checkpoint ({text})") from None
        raise ExportError(f"{path} is not a PyTorch checkpoint "
                          f"({type(error).__name__}: {text})") from None


def _looks_like_zip(path: Path) -> bool:
    with path.open("rb") as stream:
        return stream.read(4) == b"PK\x03\x04"


def _blocked_global(message: str) -> str | None:
    match = re.search(r"GLOBAL ([\w.]+) was not an allowed global", message)
    return f"class {match.group(1)}" if match else None


def _library_of(raw: Any) -> str | None:
    module = type(raw).__module__ if isinstance(raw, torch.nn.Module) else ""
    return next((lib for lib in ("timm", "resnest") if module.split(".")[0] == lib), None)


def _unwrap(raw: Any, prefer_ema: bool) -> tuple[dict[str, torch.Tensor], str, dict[str, Any],
                                                 str]:
    if isinstance(raw, torch.nn.Module):
        return _module_state(raw), f"pickled module ({type(raw).__name__})", \
            _module_hparams(raw), ""
    if not isinstance(raw, Mapping):
        raise ExportError(f"checkpoint holds a {type(raw).__name__}, not a dict of weights")
    if _is_state_dict(raw):
        return dict(raw), "state_dict", {}, ""
    hparams = _hparams(raw)
    ema = next((k for k in _EMA_KEYS if _as_state_dict(raw.get(k)) is not None), None)
    keys = ((ema,) if ema and prefer_ema else ()) + _STATE_DICT_KEYS
    for key in keys:
        inner = _as_state_dict(raw.get(key))
        if inner is not None:
            is_lightning = "pytorch-lightning_version" in raw or "hyper_parameters" in raw
            fmt = "lightning" if is_lightning else f"dict[{key!r}]"
            weights = "" if ema is None else ("ema" if key == ema else "raw")
            if isinstance(raw.get(key), torch.nn.Module):
                hparams = {**_module_hparams(raw[key]), **hparams}
            return inner, fmt, hparams, weights
    raise ExportError("checkpoint has no state_dict: expected tensors at the top level "
                      f"or under one of {', '.join(_EMA_KEYS + _STATE_DICT_KEYS)}")


def _as_state_dict(value: Any) -> dict[str, torch.Tensor] | None:
    if isinstance(value, torch.nn.Module):
        return _module_state(value)
    if isinstance(value, Mapping) and _is_state_dict(value):
        return dict(value)
    return None


def _module_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in module.state_dict().items()}


def _module_hparams(module: torch.nn.Module) -> dict[str, Any]:
    # timm models carry the name they were created under.
    config = getattr(module, "pretrained_cfg", None)
    if isinstance(config, Mapping) and isinstance(config.get("architecture"), str):
        return {"arch": config["architecture"]}
    return {}


def _is_state_dict(mapping: Mapping[str, Any]) -> bool:
    return bool(mapping) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in mapping.items())


def _hparams(raw: Mapping[str, Any]) -> dict[str, Any]:
    flat = _plain_hparams(raw.get("hyper_parameters"))
    # timm's train.py: `args` is its argparse namespace, `arch` the model name it trained.
    args = raw.get("args")
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    if isinstance(args, Mapping):
        flat = {**{k: v for k, v in args.items() if v is not None}, **flat}
    if isinstance(raw.get("arch"), str):
        flat.setdefault("arch", raw["arch"])
    return flat


def _plain_hparams(hparams: Any) -> dict[str, Any]:
    if isinstance(hparams, argparse.Namespace):
        hparams = vars(hparams)
    if not isinstance(hparams, Mapping):
        return {}
    flat = dict(hparams)
    # Lightning nests `self.save_hyperparameters(hparams)` arguments one level down.
    for nested in ("hparams", "config", "cfg"):
        if isinstance(flat.get(nested), Mapping):
            flat = {**flat[nested], **{k: v for k, v in flat.items() if k != nested}}
    return flat


def _strip_wrappers(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for wrapper in _WRAPPER_PREFIXES:
            if key.startswith(wrapper):
                key, changed = key[len(wrapper):], True
    return key


def _network_prefixes(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Every attribute path (e.g. `model.`) under which a whole network's weights sit."""
    found = {key[: -len(stem)] for key in tensors for stem in _STEM_KEYS if key.endswith(stem)}
    # A nested wrapper (`model.module.`) is simply part of the prefix.
    return sorted((p for p in found if any(p + head in tensors for head in _HEAD_KEYS)),
                  key=len)


def _network_prefix(tensors: Mapping[str, torch.Tensor], prefer_ema: bool) -> str:
    prefixes = _network_prefixes(tensors)
    ema = [p for p in prefixes if "ema" in p]
    raw = [p for p in prefixes if "ema" not in p]
    ordered = (ema + raw) if prefer_ema else (raw + ema)
    return ordered[0] if ordered else ""
