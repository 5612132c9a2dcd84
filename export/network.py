"""The network a checkpoint holds: architecture chosen, built, and its weights loaded strictly.

Export, evaluation and bench all get their PyTorch network from `load_network` (or, with a
checkpoint already read, `network_from`), so they can never build it differently.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from export import architectures
from export.architectures import Architecture, Head
from export.checkpoint import LoadedCheckpoint, load_checkpoint
from export.errors import ExportError
from export.graph import LogitsAndFeatures, classifier_of

# How far the logits may stray from linear(mean(features)) before the head is not a CAM head.
_HEAD_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Network:
    """A float32 network in eval mode, with what it is and the checkpoint it came from."""

    module: torch.nn.Module
    architecture: Architecture
    head: Head
    checkpoint: LoadedCheckpoint

    @property
    def aliases(self) -> tuple[str, ...]:
        return architectures.equivalents(self.architecture)

    def cam_weights(self) -> tuple[np.ndarray, float]:
        """The classifier's melanoma row and bias: the heatmap's weights."""
        classifier = classifier_of(self.module)
        index = self.head.melanoma_index
        weight = classifier.weight.detach().numpy()[index]  # type: ignore[operator]
        return weight, float(classifier.bias.detach().numpy()[index])  # type: ignore[operator]


def load_network(path: Path, architecture: str | None = None, *, library: str | None = None,
                 allow_unsafe_pickle: bool = False, prefer_ema: bool = True) -> Network:
    """Read the checkpoint at `path` and build its network (`architecture` must fit if given)."""
    loaded = load_checkpoint(path, allow_unsafe_pickle, prefer_ema)
    return network_from(loaded, architecture, library=library)


def network_from(loaded: LoadedCheckpoint, architecture: str | None = None, *,
                 hint: str | None = None, library: str | None = None) -> Network:
    """Build the network for an already read checkpoint.

    `architecture` is a demand (it must fit); `hint` is the checkpoint's own claim, used to
    pick between networks the weights cannot tell apart.
    """
    head = architectures.read_head(loaded.state_dict)
    arch = architectures.choose(architecture, loaded.state_dict, head.num_classes,
                                hint=hint, library=library or loaded.library)
    module = arch.build(head.num_classes)
    classifier = classifier_of(module)
    if not isinstance(classifier, torch.nn.Linear):
        raise ExportError(f"{arch.label} ends in {type(classifier).__name__}, not one linear "
                          "layer; the heatmap needs global average pooling + one linear layer")
    # Half-precision weights are widened on copy: the exported graph is float32.
    module.load_state_dict(loaded.state_dict, strict=True)
    module.float().eval()
    return Network(module, arch, head, loaded)


def check_cam_head(network: Network, input_size: int) -> float:
    """Prove logits = linear(mean of the feature map) and the wrapper equals the network.

    Returns the largest logit difference; raises for heads that pool or transform otherwise
    (the server's heatmap and its load-time check rely on it).
    """
    label = network.architecture.label
    image = torch.randn(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(1))
    classifier = classifier_of(network.module)
    with torch.inference_mode():
        logits, features = LogitsAndFeatures(network.module).eval()(image)
        direct = network.module(image)
        if features.ndim != 4 or features.shape[1] != network.head.feature_channels:
            raise ExportError(f"{label}'s head is not global average pooling + one linear "
                              f"layer: its feature map {tuple(features.shape)} does not feed "
                              f"the {network.head.feature_channels}-input classifier")
        pooled = classifier(features.mean(dim=(2, 3)))
    gap = max(float((logits - direct).abs().max()), float((pooled - direct).abs().max()))
    if gap > _HEAD_TOLERANCE * max(1.0, float(direct.abs().max())):
        raise ExportError(f"{label}'s head is not global average pooling + "
                          f"one linear layer (logits differ by {gap:.2e}); its heatmap cannot "
                          "be computed from the feature map")
    return gap
