"""How a Keras model wants its pixels: read from the graph where it says, else asked for.

Keras models differ in where preprocessing happens. EfficientNet carries Rescaling and
Normalization layers and takes 0-255 pixels; Xception, ResNet50 and DenseNet expect
`keras.applications.<family>.preprocess_input` to have run outside the graph, in one of its
three modes. The spec's mean/std/colour order reproduce each exactly on the server's
[0, 1] pixels, so the server never normalises twice and never guesses.
"""
from __future__ import annotations

from dataclasses import dataclass

from export.errors import ExportError
from inference.model_spec import IMAGENET_MEAN, IMAGENET_STD, ColorOrder

Triple = tuple[float, float, float]


@dataclass(frozen=True)
class Convention:
    mean: Triple
    std: Triple
    color_order: ColorOrder
    meaning: str


_PIXELS: Triple = (1 / 255, 1 / 255, 1 / 255)
CONVENTIONS: dict[str, Convention] = {
    "in-graph": Convention((0.0, 0.0, 0.0), _PIXELS, "RGB",
                           "0-255 RGB pixels, normalised inside the graph (EfficientNet)"),
    "tf": Convention((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "RGB",
                     "preprocess_input mode 'tf': RGB scaled to [-1, 1] (Xception, Inception)"),
    "caffe": Convention((103.939 / 255, 116.779 / 255, 123.68 / 255), _PIXELS, "BGR",
                        "preprocess_input mode 'caffe': BGR 0-255 minus ImageNet means "
                        "(ResNet50, VGG)"),
    "torch": Convention(IMAGENET_MEAN, IMAGENET_STD, "RGB",
                        "preprocess_input mode 'torch': [0, 1] RGB, ImageNet mean/std "
                        "(DenseNet)"),
}
CHOICES = tuple(CONVENTIONS)
FLAG = "--keras-preprocessing"


@dataclass(frozen=True)
class Chosen:
    """The numbers the spec gets, and where they came from (for the report and provenance)."""

    mean: Triple
    std: Triple
    color_order: ColorOrder
    source: str


def choose(label: str, scaling: str | None, requested: str | None, mean: Triple | None,
           std: Triple | None, color_order: str | None) -> Chosen:
    """The pixel convention: the graph's own scaling, else the flags; never a default.

    `scaling` says how the graph scales pixels itself (None: it does not); `requested` is
    the --keras-preprocessing choice; `mean`, `std` and `color_order` the plain flags.
    """
    numbers = mean is not None or std is not None
    if requested is not None and (numbers or color_order is not None):
        raise ExportError(f"give {FLAG} or --mean/--std/--color-order, not both")
    if scaling is not None:
        if (requested not in (None, "in-graph") or numbers
                or color_order not in (None, "RGB")):
            raise ExportError(
                f"{label} normalises its input itself (its first op {scaling}) and wants "
                "0-255 RGB pixels; the normalisation asked for would be applied a second time "
                f"(drop it, or say {FLAG} in-graph)")
        return _chosen("in-graph", f"the graph (its first op {scaling})")
    if requested is not None:
        return _chosen(requested, f"{FLAG} {requested}")
    if numbers:
        if mean is None or std is None:
            raise ExportError("give both --mean and --std for a Keras model")
        return Chosen(mean, std, "BGR" if color_order == "BGR" else "RGB",
                      "--mean/--std" + (" and --color-order" if color_order else ""))
    options = "; ".join(f"{name}: {c.meaning}" for name, c in CONVENTIONS.items())
    raise ExportError(
        f"cannot tell how {label} expects its pixels (no Rescaling at the start of its graph); "
        f"pick one with {FLAG} {{{','.join(CHOICES)}}} ({options}), or give --mean and --std")


def _chosen(name: str, source: str) -> Chosen:
    convention = CONVENTIONS[name]
    return Chosen(convention.mean, convention.std, convention.color_order,
                  f"{source}: {convention.meaning}")
