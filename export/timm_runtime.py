"""Import timm on a CPU-only torch, where the only torchvision wheel on offer is a CUDA build."""
from __future__ import annotations

import importlib
from types import ModuleType

import torch

# torchvision's CUDA wheel cannot load its C++ ops beside CPU torch, and its import then
# registers fake kernels for these two ops anyway, which fails because they were never
# declared. timm only needs torchvision's pure-Python parts (FrozenBatchNorm2d, transforms),
# so declaring the two schemas lets the import finish; calling the ops still fails loudly.
_UNDECLARED_OPS = ("nms", "qnms")
_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"


def make_torchvision_importable() -> None:
    """Import torchvision (timm, torchmetrics and Lightning need it) even without its C++ ops."""
    try:
        importlib.import_module("torchvision")
        return
    except RuntimeError as error:
        if "torchvision::" not in str(error):
            raise
    for op in _UNDECLARED_OPS:
        if not hasattr(torch.ops.torchvision, op):
            torch.library.define(f"torchvision::{op}", _SCHEMA)
    importlib.import_module("torchvision")


def import_timm() -> ModuleType:
    """The `timm` module."""
    make_torchvision_importable()
    return importlib.import_module("timm")
