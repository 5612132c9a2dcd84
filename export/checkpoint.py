"""Load a checkpoint safely and normalise the key prefixes training tools add."""
from __future__ import annotations

import hashlib
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from export.errors import ExportError

# Prefixes added by wrappers around the network itself, stripped wherever they appear first.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Containers people save weights under, in the order timm unwraps them.
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net")
# Two keys every supported network has; used to find where the network sits in a bigger dict.
_ANCHOR_KEYS = ("conv1.0.weight", "fc.weight")


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint reduced to the network's own weights plus what it told us about itself."""

    path: Path
    sha256: str
    format: str
    prefix: str
    state_dict: dict[str, torch.Tensor]
    ignored_keys: tuple[str, ...] = ()
    hyper_parameters: Mapping[str, Any] = field(default_factory=dict)


def sha256_of(path: Path) -> str:
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def load_checkpoint(path: Path, allow_unsafe_pickle: bool = False) -> LoadedCheckpoint:
    """Read `path` with `weights_only=True` and return the network's state_dict.

    `allow_unsafe_pickle` must be asked for explicitly: it executes code from the file.
    """
    raw = _read(path, allow_unsafe_pickle)
    tensors, container_format, hparams = _unwrap(raw)
    tensors = {_strip_wrappers(key): value for key, value in tensors.items()}
    prefix = _network_prefix(tensors)
    network = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    ignored = tuple(sorted(k for k in tensors if not k.startswith(prefix)))
    fmt = container_format if not prefix else f"{container_format} (prefix {prefix!r})"
    return LoadedCheckpoint(path=path, sha256=sha256_of(path), format=fmt, prefix=prefix,
                            state_dict=network, ignored_keys=ignored, hyper_parameters=hparams)


def _read(path: Path, allow_unsafe_pickle: bool) -> Any:
    if not path.exists():
        raise ExportError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise ExportError(f"checkpoint is not a file: {path}")
    try:
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


def _unwrap(raw: Any) -> tuple[dict[str, torch.Tensor], str, dict[str, Any]]:
    if not isinstance(raw, Mapping):
        raise ExportError(f"checkpoint holds a {type(raw).__name__}, not a dict of weights")
    if _is_state_dict(raw):
        return dict(raw), "state_dict", {}
    for key in _STATE_DICT_KEYS:
        inner = raw.get(key)
        if isinstance(inner, Mapping) and _is_state_dict(inner):
            is_lightning = "pytorch-lightning_version" in raw or "hyper_parameters" in raw
            fmt = "lightning" if is_lightning else f"dict[{key!r}]"
            return dict(inner), fmt, _plain_hparams(raw.get("hyper_parameters"))
    raise ExportError("checkpoint has no state_dict: expected tensors at the top level "
                      f"or under one of {', '.join(_STATE_DICT_KEYS)}")


def _is_state_dict(mapping: Mapping[str, Any]) -> bool:
    return bool(mapping) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in mapping.items())


def _plain_hparams(hparams: Any) -> dict[str, Any]:
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


def _network_prefix(tensors: Mapping[str, torch.Tensor]) -> str:
    """Find the attribute path (e.g. `model.`) under which the network's weights sit."""
    candidates = sorted(
        (key[: -len(_ANCHOR_KEYS[0])] for key in tensors if key.endswith(_ANCHOR_KEYS[0])),
        key=len)
    for prefix in candidates:
        if prefix + _ANCHOR_KEYS[1] in tensors:
            # A nested wrapper (`model.module.`) is simply part of the prefix.
            return prefix
    return ""
