"""The PyTorch checkpoint on the same images, preprocessed by the server's own code."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from inference import preprocess, tta
from inference.model_spec import ModelSpec


def score_checkpoint(checkpoint: Path, spec: ModelSpec, images: Sequence[tuple[str, Path]],
                     policy: str, allow_unsafe_pickle: bool = False) -> tuple[float, ...]:
    """Probability per image from the checkpoint in PyTorch eager, views merged as served."""
    import torch  # only this optional comparison needs torch

    from export.network import load_network

    network = load_network(
        checkpoint, spec.architecture, library=spec.architecture_library or None,
        allow_unsafe_pickle=allow_unsafe_pickle,
        prefer_ema=spec.checkpoint_weights != "raw").module
    views = tta.views_for(policy)
    merged = []
    for _, path in images:
        seen = preprocess.prepare(path.read_bytes(), spec).image
        batch = torch.from_numpy(preprocess.to_model_input(tta.make_batch(seen, views), spec))
        with torch.inference_mode():
            logits = network(batch).numpy()
        probabilities = spec.melanoma_probabilities(logits)
        merged.append(tta.merge_probabilities(np.asarray(probabilities)))
    return tuple(merged)
