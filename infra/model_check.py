"""Refuse a model before it is shipped: the host's own loader opens, checks and warms it up."""

from __future__ import annotations

import os
from pathlib import Path

from infra import fit
from infra.artifacts import ArtifactError
from infra.fit import Fit

# Set before onnxruntime is imported anywhere in this process.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


def validate_model(path: Path) -> str:
    """Load path exactly as the host will (spec, graph, CAM weights, warm-up); return its name.

    Raises ArtifactError with the loader's own message when the host would refuse the model.
    """
    # Imported here: deploy's other commands need neither onnxruntime nor numpy.
    from inference.classifier import Classifier
    from inference.errors import ModelLoadError

    try:
        classifier = Classifier(path)
        classifier.warm_up()
    except (ModelLoadError, ValueError) as exc:
        raise ArtifactError(f"the host would refuse {path.name}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        raise ArtifactError(f"onnxruntime cannot load {path.name}: {exc}") from None
    return classifier.spec.display_name


def check_fit(path: Path, instance_type: str) -> Fit:
    """The model's measured cost (from its spec, else measured here now) against the
    instance's memory budget."""
    from export.cost import measure
    from export.errors import ExportError
    from inference.model_spec import SpecError, read_spec_file

    try:
        cost = read_spec_file(path).measured_cost or measure(path)
    except (SpecError, ExportError) as exc:
        raise ArtifactError(f"cannot tell what {path.name} costs to serve: {exc}") from None
    return fit.check(cost, instance_type)
