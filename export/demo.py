"""A deterministic, untrained checkpoint in the Lightning layout, for the default demo model."""
from __future__ import annotations

from pathlib import Path

import torch

from export.architectures import ARCHITECTURES
from export.graph import classifier_of

DEMO_SEED = 2020
DEMO_ARCHITECTURE = "resnest50_fast_4s1x64d"


def build_demo_state(architecture: str = DEMO_ARCHITECTURE, seed: int = DEMO_SEED,
                     num_classes: int = 1) -> dict[str, torch.Tensor]:
    """Seeded random weights; the head is scaled so demo scores vary between images
    instead of all sitting at 0.5 (they still mean nothing)."""
    torch.manual_seed(seed)
    network = ARCHITECTURES[architecture].build(num_classes)
    head = classifier_of(network)
    assert isinstance(head, torch.nn.Linear)
    with torch.no_grad():
        head.weight.normal_(0.0, 1.5)
        head.bias.zero_()
    return network.state_dict()


def write_lightning_checkpoint(path: Path, state_dict: dict[str, torch.Tensor],
                               hyper_parameters: dict[str, object], attribute: str = "model",
                               ) -> Path:
    """Save like PyTorch Lightning does: weights under `state_dict`, keys prefixed by attribute."""
    checkpoint = {
        "epoch": 0,
        "global_step": 0,
        "pytorch-lightning_version": "2.5.0",
        "state_dict": {f"{attribute}.{key}": value for key, value in state_dict.items()},
        "hyper_parameters": dict(hyper_parameters),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def write_demo_checkpoint(path: Path, architecture: str = DEMO_ARCHITECTURE,
                          input_size: int = 128, seed: int = DEMO_SEED) -> Path:
    state = build_demo_state(architecture, seed)
    hparams = {"arch": architecture, "image_size": input_size, "demo_seed": seed}
    return write_lightning_checkpoint(path, state, hparams)
