"""The ResNeSt networks we can export, built from the `resnest` package (never torch.hub)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping

import torch
from resnest.torch.resnet import Bottleneck, ResNet

from export.errors import ExportError
from webapp.model_spec import OutputKind


@dataclass(frozen=True)
class Architecture:
    """How to build one network: `resnest` ResNet arguments, as the package's builders use."""

    name: str
    layers: tuple[int, int, int, int]
    radix: int
    groups: int
    bottleneck_width: int
    avd_first: bool

    def build(self, num_classes: int) -> ResNet:
        return ResNet(Bottleneck, list(self.layers), radix=self.radix, groups=self.groups,
                      bottleneck_width=self.bottleneck_width, deep_stem=True, stem_width=32,
                      avg_down=True, avd=True, avd_first=self.avd_first,
                      num_classes=num_classes)


_ALL = (
    Architecture("resnest50_fast_4s1x64d", (3, 4, 6, 3), 4, 1, 64, True),
    Architecture("resnest50_fast_2s1x64d", (3, 4, 6, 3), 2, 1, 64, True),
    Architecture("resnest50_fast_1s1x64d", (3, 4, 6, 3), 1, 1, 64, True),
    Architecture("resnest50", (3, 4, 6, 3), 2, 1, 64, False),
    Architecture("resnest101", (3, 4, 23, 3), 2, 1, 64, False),
    # Shallow variants of the same blocks: quick to export, used by tests and demos.
    Architecture("resnest14_fast_4s1x64d", (1, 1, 1, 1), 4, 1, 64, True),
    Architecture("resnest26_fast_4s1x64d", (2, 2, 2, 2), 4, 1, 64, True),
)
ARCHITECTURES: Mapping[str, Architecture] = {arch.name: arch for arch in _ALL}


@dataclass(frozen=True)
class Head:
    """The classifier head read off `fc.weight`: one logit (sigmoid) or two classes (softmax)."""

    num_classes: int
    feature_channels: int

    @property
    def output_kind(self) -> OutputKind:
        return "sigmoid" if self.num_classes == 1 else "softmax"

    @property
    def melanoma_index(self) -> int:
        return 0 if self.num_classes == 1 else 1


def read_head(state_dict: Mapping[str, torch.Tensor]) -> Head:
    weight = state_dict.get("fc.weight")
    if weight is None or weight.ndim != 2:
        raise ExportError("checkpoint has no classifier head: no 2-D `fc.weight` after "
                          "normalising prefixes")
    classes, channels = weight.shape
    if classes not in (1, 2):
        raise ExportError(f"unsupported head: fc has {classes} outputs; expected 1 (sigmoid "
                          "melanoma logit) or 2 (softmax, melanoma = index 1)")
    return Head(num_classes=int(classes), feature_channels=int(channels))


@lru_cache(maxsize=None)
def _shapes(arch: Architecture, num_classes: int) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        network = arch.build(num_classes)
    return {k: tuple(v.shape) for k, v in network.state_dict().items()}


def key_mismatch(arch: Architecture, state_dict: Mapping[str, torch.Tensor],
                 num_classes: int) -> tuple[list[str], list[str], list[str]]:
    """Keys the network needs but the file lacks, keys it has too many, and shape clashes."""
    expected = _shapes(arch, num_classes)
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    clashes = sorted(k for k in set(expected) & set(state_dict)
                     if tuple(state_dict[k].shape) != expected[k])
    return missing, unexpected, clashes


def detect(state_dict: Mapping[str, torch.Tensor], num_classes: int) -> list[str]:
    """Names of every known architecture whose keys and shapes match exactly."""
    return [arch.name for arch in _ALL
            if not any(key_mismatch(arch, state_dict, num_classes))]


def choose(requested: str | None, state_dict: Mapping[str, torch.Tensor],
           num_classes: int) -> Architecture:
    """The architecture to build: the requested one if it fits, else the single detected one."""
    matches = detect(state_dict, num_classes)
    looks_like = ", ".join(matches) if matches else "no known architecture"
    if requested is not None:
        if requested not in ARCHITECTURES:
            raise ExportError(f"unknown architecture {requested!r}; known: "
                              f"{', '.join(ARCHITECTURES)}")
        missing, unexpected, clashes = key_mismatch(ARCHITECTURES[requested], state_dict,
                                                    num_classes)
        if missing or unexpected or clashes:
            raise ExportError(
                f"checkpoint does not fit {requested}: {_describe(missing, unexpected, clashes)}; "
                f"the file looks like {looks_like}")
        return ARCHITECTURES[requested]
    if len(matches) == 1:
        return ARCHITECTURES[matches[0]]
    if len(matches) > 1:
        # Some variants differ only in parameter-free layers, so the weights can't tell them apart.
        raise ExportError(f"checkpoint fits several architectures ({looks_like}); "
                          "pick one with --arch")
    closest = min(_ALL, key=lambda a: sum(map(len, key_mismatch(a, state_dict, num_classes))))
    raise ExportError(
        "checkpoint matches no known architecture; closest is "
        f"{closest.name}: {_describe(*key_mismatch(closest, state_dict, num_classes))}")


def _describe(missing: list[str], unexpected: list[str], clashes: list[str]) -> str:
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected),
                        ("wrong shape", clashes)):
        if keys:
            shown = ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")
            parts.append(f"{len(keys)} {label} keys: {shown}")
    return "; ".join(parts)

