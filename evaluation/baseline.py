"""The PyTorch checkpoint on the same images, preprocessed by the server's own code."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from webapp import preprocess, tta
from webapp.model_spec import ModelSpec


def score_checkpoint(checkpoint: Path, spec: ModelSpec, images: Sequence[tuple[str, Path]],
                     policy: str, allow_unsafe_pickle: bool = False) -> tuple[float, ...]:
    """Probability per image from the checkpoint in PyTorch eager, views merged as served."""
    import torch  # only this optional comparison needs torch

    from export.architectures import ARCHITECTURES
    from export.checkpoint import load_checkpoint

    loaded = load_checkpoint(checkpoint, allow_unsafe_pickle)
    network = ARCHITECTURES[spec.architecture].build(spec.class_count)
    network.load_state_dict(loaded.state_dict, strict=True)
    network.eval()
    views = tta.views_for(policy)
    merged = []
    for _, path in images:
        seen = preprocess.fit_to_input(preprocess.decode_image(path.read_bytes()), spec)
        batch = torch.from_numpy(preprocess.to_model_input(tta.make_batch(seen, views), spec))
        with torch.inference_mode():
            logits = network(batch).numpy()
        probabilities = spec.melanoma_probabilities(logits)
        merged.append(tta.merge_probabilities(np.asarray(probabilities)))
    return tuple(merged)
