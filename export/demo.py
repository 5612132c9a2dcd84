"""The default demo model's recipe, and seeded checkpoints in the Lightning layout for tests."""
from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class DemoRecipe:
    """How the default model is made: generated lesions, then the training pipeline.

    Sized for a 2-core CPU in a few minutes: one epoch on 64 px images, then a quarter of
    an epoch at the serving size (progressive resizing); the loss regresses the generator's
    latent atypia, which teaches far more per image than 1-in-10 melanoma labels; the
    held-out fold is scored, thresholded and calibrated on the 0/1 labels."""

    architecture: str = DEMO_ARCHITECTURE
    input_size: int = 128
    images: int = 4000
    render_size: int = 128
    melanoma_fraction: float = 0.10
    seed: int = DEMO_SEED
    stages: tuple[tuple[int, float], ...] = ((64, 1.0), (128, 0.25))
    batch_size: int = 32
    lr: float = 4e-3
    soft_target: str = "atypia"

    @property
    def training_data(self) -> str:
        return (f"{self.images} synthetic (computer-drawn) dermoscopy images, "
                f"{self.melanoma_fraction:.0%} melanoma, generator seed {self.seed}")
