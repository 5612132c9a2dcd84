"""The networks we can export: ResNeSts from the `resnest` package, and timm CNN classifiers.

Each is named as its own library names it. Detection compares a checkpoint's keys and shapes
with networks built on the meta device (no weights are ever downloaded).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping

import torch
from resnest.torch.resnet import Bottleneck, ResNet

from export.errors import ExportError
from export.timm_runtime import import_timm
from inference.model_spec import OutputKind

RESNEST = "resnest"
TIMM = "timm"
LIBRARY_NAMES = {RESNEST: "resnest package", TIMM: "timm"}


@dataclass(frozen=True)
class ResNeStArgs:
    """The `resnest` package's ResNet arguments, as its named builders pass them."""

    layers: tuple[int, int, int, int]
    radix: int
    groups: int
    bottleneck_width: int
    avd_first: bool
    stem_width: int = 32


@dataclass(frozen=True)
class Architecture:
    """One network: its library, its name there, and (for detection) how many tensors it has."""

    name: str
    library: str
    keys: int = 0
    resnest: ResNeStArgs | None = None

    @property
    def label(self) -> str:
        """How its own library calls it, e.g. `timm resnest50d`."""
        return f"{LIBRARY_NAMES[self.library]} {self.name}"

    def build(self, num_classes: int) -> torch.nn.Module:
        if self.resnest is not None:
            args = self.resnest
            return ResNet(Bottleneck, list(args.layers), radix=args.radix, groups=args.groups,
                          bottleneck_width=args.bottleneck_width, deep_stem=True,
                          stem_width=args.stem_width, avg_down=True, avd=True,
                          avd_first=args.avd_first, num_classes=num_classes)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # timm maps the `_ns` names with a deprecation note
            return import_timm().create_model(self.name, pretrained=False,
                                              num_classes=num_classes)


def _resnest(name: str, keys: int, layers: tuple[int, int, int, int], radix: int, groups: int,
             width: int, avd_first: bool, stem: int = 32) -> Architecture:
    return Architecture(name, RESNEST, keys,
                        ResNeStArgs(layers, radix, groups, width, avd_first, stem))


_D50 = (3, 4, 6, 3)
_ALL = (
    _resnest("resnest50_fast_4s1x64d", 476, _D50, 4, 1, 64, True),
    _resnest("resnest50_fast_2s1x64d", 476, _D50, 2, 1, 64, True),
    _resnest("resnest50_fast_1s1x64d", 476, _D50, 1, 1, 64, True),
    _resnest("resnest50_fast_1s4x24d", 476, _D50, 1, 4, 24, True),
    _resnest("resnest50_fast_4s2x40d", 476, _D50, 4, 2, 40, True),
    _resnest("resnest50", 476, _D50, 2, 1, 64, False),
    _resnest("resnest101", 935, (3, 4, 23, 3), 2, 1, 64, False, stem=64),
    _resnest("resnest200", 1826, (3, 24, 36, 3), 2, 1, 64, False, stem=64),
    _resnest("resnest269", 2447, (3, 30, 48, 8), 2, 1, 64, False, stem=64),
    # Shallow variants of the same blocks: quick to export, used by tests and demos.
    _resnest("resnest14_fast_4s1x64d", 152, (1, 1, 1, 1), 4, 1, 64, True),
    _resnest("resnest26_fast_4s1x64d", 260, (2, 2, 2, 2), 4, 1, 64, True),
    Architecture("resnest14d", TIMM, 152),
    Architecture("resnest26d", TIMM, 260),
    Architecture("resnest50d", TIMM, 476),
    Architecture("resnest50d_1s4x24d", TIMM, 476),
    Architecture("resnest50d_4s2x40d", TIMM, 476),
    Architecture("resnest101e", TIMM, 935),
    Architecture("resnest200e", TIMM, 1826),
    Architecture("resnest269e", TIMM, 2447),
    *(Architecture(f"tf_efficientnet_b{i}{tag}", TIMM, keys)
      for i, keys in enumerate((360, 508, 508, 574, 706, 854, 986, 1200)) for tag in ("", "_ns")),
    *(Architecture(f"efficientnet_b{i}", TIMM, keys)
      for i, keys in enumerate((360, 508, 508, 574))),
    Architecture("seresnext50_32x4d", TIMM, 384),
    Architecture("seresnext101_32x4d", TIMM, 758),
    Architecture("resnet50d", TIMM, 332),
)
ARCHITECTURES: Mapping[str, Architecture] = {arch.name: arch for arch in _ALL}

# Networks that compute exactly the same function from the same weights under two names
# (tests/test_families.py proves each pair on random weights).
_SAME_NETWORK = (
    ("resnest50d", "resnest50"),
    ("resnest50d_1s4x24d", "resnest50_fast_1s4x24d"),
    ("resnest50d_4s2x40d", "resnest50_fast_4s2x40d"),
    ("resnest101e", "resnest101"),
    ("resnest200e", "resnest200"),
    ("resnest269e", "resnest269"),
    *((f"tf_efficientnet_b{i}", f"tf_efficientnet_b{i}_ns") for i in range(8)),
)
EQUIVALENT: Mapping[str, tuple[str, ...]] = {
    name: pair for pair in _SAME_NETWORK for name in pair}

# Keys a classifier head sits under in the families we export, to read the class count.
_HEAD_KEYS = ("fc.weight", "classifier.weight")


def lookup(name: str, library: str | None = None) -> Architecture:
    """The architecture called `name` (timm pretrained tags like `.in1k` are dropped)."""
    bare = name.removeprefix("timm/").split(".")[0]
    known = ARCHITECTURES.get(bare)
    if known is not None and library in (None, known.library):
        return known
    if library in (None, TIMM) and import_timm().is_model(bare):
        return Architecture(bare, TIMM)
    raise ExportError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}, "
                      "or any timm CNN whose head is global average pooling + one linear layer")


@dataclass(frozen=True)
class Head:
    """The classifier head: one logit (sigmoid) or two classes (softmax)."""

    num_classes: int
    feature_channels: int

    @property
    def output_kind(self) -> OutputKind:
        return "sigmoid" if self.num_classes == 1 else "softmax"

    @property
    def melanoma_index(self) -> int:
        return 0 if self.num_classes == 1 else 1


def read_head(state_dict: Mapping[str, torch.Tensor]) -> Head:
    key = next((k for k in _HEAD_KEYS if k in state_dict), None)
    if key is None or state_dict[key].ndim != 2:
        raise ExportError("checkpoint has no classifier head: no 2-D "
                          f"{' or '.join(_HEAD_KEYS)} after normalising prefixes")
    classes, channels = state_dict[key].shape
    if classes not in (1, 2):
        raise ExportError(f"unsupported head: {key.removesuffix('.weight')} has {classes} "
                          "outputs; expected 1 (sigmoid melanoma logit) or 2 (softmax, "
                          "melanoma = index 1)")
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


def fits(arch: Architecture, state_dict: Mapping[str, torch.Tensor], num_classes: int) -> bool:
    return not any(key_mismatch(arch, state_dict, num_classes))


def detect(state_dict: Mapping[str, torch.Tensor], num_classes: int) -> list[Architecture]:
    """Every known architecture whose keys and shapes match exactly."""
    # The tensor count rules out most candidates before any is built.
    return [arch for arch in _ALL
            if arch.keys == len(state_dict) and fits(arch, state_dict, num_classes)]


def choose(requested: str | None, state_dict: Mapping[str, torch.Tensor], num_classes: int,
           hint: str | None = None, library: str | None = None) -> Architecture:
    """The architecture to build.

    `requested` (a flag) must fit. Otherwise the weights decide; when several networks fit
    the same weights, `hint` (the checkpoint's own architecture name) picks one of them.
    """
    if requested is not None:
        arch = lookup(requested, library)
        missing, unexpected, clashes = key_mismatch(arch, state_dict, num_classes)
        if missing or unexpected or clashes:
            matches = detect(state_dict, num_classes)
            raise ExportError(
                f"checkpoint does not fit {arch.label}: "
                f"{_describe(missing, unexpected, clashes)}; the file looks like "
                f"{_candidates(matches) if matches else 'no known architecture'}")
        return arch
    hinted = _hinted(hint, library, state_dict, num_classes)
    if hinted is not None:
        return hinted
    matches = detect(state_dict, num_classes)
    groups = _group(matches)
    if len(groups) == 1:
        return _preferred(groups[0], library)
    if len(groups) > 1:
        # Some variants differ only in parameter-free layers, so the weights can't tell them apart.
        raise ExportError(f"checkpoint fits several architectures ({_candidates(matches)}); "
                          "pick one with --arch, or record it as the `arch` hyper-parameter")
    closest = min((a for a in _ALL if a.keys), key=lambda a: abs(a.keys - len(state_dict)))
    raise ExportError(
        "checkpoint matches no known architecture; closest is "
        f"{closest.label}: {_describe(*key_mismatch(closest, state_dict, num_classes))}")


def equivalents(arch: Architecture) -> tuple[str, ...]:
    """Labels of the other names the same network goes by (e.g. `resnest package resnest50`)."""
    return tuple(ARCHITECTURES[name].label for name in EQUIVALENT.get(arch.name, ())
                 if name != arch.name)


def _hinted(hint: str | None, library: str | None, state_dict: Mapping[str, torch.Tensor],
            num_classes: int) -> Architecture | None:
    if hint is None:
        return None
    try:
        arch = lookup(hint, library)
    except ExportError:
        return None  # a training script's own label, not a network we know: detect instead
    missing, unexpected, clashes = key_mismatch(arch, state_dict, num_classes)
    if missing or unexpected or clashes:
        raise ExportError(f"the checkpoint says it is {arch.label}, but its weights do not fit: "
                          f"{_describe(missing, unexpected, clashes)}; pass --arch to override")
    return arch


def _group(matches: list[Architecture]) -> list[list[Architecture]]:
    groups: list[list[Architecture]] = []
    for arch in matches:
        same = EQUIVALENT.get(arch.name, (arch.name,))
        for group in groups:
            if group[0].name in same:
                group.append(arch)
                break
        else:
            groups.append([arch])
    return groups


def _preferred(group: list[Architecture], library: str | None) -> Architecture:
    return next((a for a in group if a.library == library), group[0])


def _candidates(matches: list[Architecture]) -> str:
    return ", ".join(" = ".join(a.label for a in group) for group in _group(matches))


def _describe(missing: list[str], unexpected: list[str], clashes: list[str]) -> str:
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected),
                        ("wrong shape", clashes)):
        if keys:
            shown = ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")
            parts.append(f"{len(keys)} {label} keys: {shown}")
    return "; ".join(parts)
