"""Several checkpoints (e.g. five folds) into one verified model run by one session.

The members share the server's input: the ensemble's input size is the largest member's,
and a member trained smaller sees it area-downscaled inside the graph (a box filter, as
OpenCV's INTER_AREA), recoloured and renormalised to its own statistics where those differ.
Their melanoma probabilities are averaged with the given weights. The feature output is the
members' feature maps on one common grid (the finest of theirs, resampled by area overlap,
which keeps each map's mean), side by side; the CAM weights are each member's melanoma
log-odds row times its weight, so the server's heatmap is the weighted mean of the members'
maps with no change to how it is computed, and the pooled check still holds against the
weighted mean of the members' log-odds (the `member_logits` output).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export import verify
from export.checkpoint import load_checkpoint
from export.errors import ExportError
from export.graph import LogitsAndFeatures, classifier_of, export_module
from export.network import Network, check_cam_head, network_from
from export import keras_source, publish
from export.pipeline import ExportResult, created_now
from export.settings import Resolved, resolve
from inference.runtime import ort
from inference.model_spec import (DEFAULT_LABELS, FEATURES_NAME, INPUT_NAME, LOGITS_NAME,
                                  MEMBER_LOGITS_NAME, ModelSpec)

# The averaged probability is written back as one log-odds; clamped so 0 and 1 stay finite.
PROBABILITY_EPSILON = 1e-7
# Settings every member must share: the server fits the photo once, by one policy.
SHARED_SETTINGS = ("resize",)


@dataclass(frozen=True)
class EnsembleRequest:
    """What the user asked for; per-member lists hold one value for all or one per member."""

    checkpoints: tuple[Path, ...]
    weights: tuple[float, ...] | None = None
    output: Path | None = None
    architectures: tuple[str | None, ...] = (None,)
    input_sizes: tuple[int | None, ...] = (None,)
    resize: str | None = None
    interpolation: str | None = None
    color_order: str | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    threshold: float | None = None
    labels: tuple[str, str] = DEFAULT_LABELS
    name: str | None = None
    version: str = "1"
    tolerance: float = 1e-4
    allow_unsafe_pickle: bool = False
    prefer_ema: bool = True


@dataclass(frozen=True)
class Member:
    """One checkpoint's network, its own settings, and its share of the average."""

    path: Path
    network: Network
    settings: dict[str, Resolved]
    weight: float

    @property
    def input_size(self) -> int:
        return int(self.settings["input_size"].value)

    def log_odds_weights(self) -> tuple[np.ndarray, float]:
        """The melanoma log-odds as a linear function of the pooled features: the sigmoid
        head's row, or the softmax head's melanoma row minus the other class's."""
        classifier = classifier_of(self.network.module)
        weight = classifier.weight.detach().double().numpy()  # type: ignore[operator]
        bias = classifier.bias.detach().double().numpy()  # type: ignore[operator]
        if self.network.head.output_kind == "sigmoid":
            return weight[0], float(bias[0])
        index = self.network.head.melanoma_index
        return weight[index] - weight[1 - index], float(bias[index] - bias[1 - index])


def area_matrix(size_out: int, size_in: int) -> np.ndarray:
    """(size_out, size_in) box-filter resampling along one axis: each output cell averages the
    input it overlaps, so rows sum to 1 and the mean of a resampled map is kept exactly."""
    scale = size_in / size_out
    matrix = np.zeros((size_out, size_in), dtype=np.float64)
    for row in range(size_out):
        start, end = row * scale, (row + 1) * scale
        for column in range(int(np.floor(start)), min(size_in, int(np.ceil(end)))):
            overlap = min(end, column + 1) - max(start, column)
            if overlap > 0:
                matrix[row, column] = overlap / scale
    return matrix


class MemberAdapter(torch.nn.Module):
    """The ensemble's input as one member was trained to see it, and the member's feature
    map on the common grid."""

    input_matrix: torch.Tensor
    scale: torch.Tensor
    shift: torch.Tensor
    grid_matrix: torch.Tensor

    def __init__(self, ensemble: dict[str, Any], member: dict[str, Any], grid_in: int,
                 grid_out: int) -> None:
        super().__init__()
        size_in, size_out = ensemble["input_size"], member["input_size"]
        self.resize = size_in != size_out
        self.register_buffer("input_matrix",
                             torch.tensor(area_matrix(size_out, size_in), dtype=torch.float32))
        self.flip = ensemble["color_order"] != member["color_order"]
        # x_member = (pixels - mean_m) / std_m, with pixels = x * std + mean in the ensemble's
        # order (reversed first where the member was trained on the other channel order).
        order = [2, 1, 0] if self.flip else [0, 1, 2]
        mean_in = np.asarray(ensemble["mean"], np.float64)[order]
        std_in = np.asarray(ensemble["std"], np.float64)[order]
        mean_out = np.asarray(member["mean"], np.float64)
        std_out = np.asarray(member["std"], np.float64)
        scale, shift = std_in / std_out, (mean_in - mean_out) / std_out
        self.renormalise = not (np.allclose(scale, 1.0, rtol=0, atol=1e-12)
                                and np.allclose(shift, 0.0, rtol=0, atol=1e-12))
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("shift", torch.tensor(shift, dtype=torch.float32).view(1, 3, 1, 1))
        self.regrid = grid_in != grid_out
        self.register_buffer("grid_matrix",
                             torch.tensor(area_matrix(grid_out, grid_in), dtype=torch.float32))

    def member_input(self, image: torch.Tensor) -> torch.Tensor:
        x = image
        if self.resize:
            x = torch.matmul(torch.matmul(self.input_matrix, x), self.input_matrix.T)
        if self.flip:
            x = torch.flip(x, dims=[1])
        if self.renormalise:
            x = x * self.scale + self.shift
        return x

    def on_grid(self, features: torch.Tensor) -> torch.Tensor:
        if not self.regrid:
            return features
        return torch.matmul(torch.matmul(self.grid_matrix, features), self.grid_matrix.T)


class EnsembleGraph(torch.nn.Module):
    """Image batch in; averaged probability (as log-odds), common-grid features and each
    member's melanoma log-odds out."""

    weights: torch.Tensor

    def __init__(self, members: list[Member], ensemble: dict[str, Any],
                 grids: list[int]) -> None:
        super().__init__()
        common = max(grids)
        self.networks = torch.nn.ModuleList(
            LogitsAndFeatures(m.network.module).eval() for m in members)
        self.adapters = torch.nn.ModuleList(
            MemberAdapter(ensemble, _settings_of(m), grid, common)
            for m, grid in zip(members, grids, strict=True))
        self.kinds = [(m.network.head.output_kind, m.network.head.melanoma_index)
                      for m in members]
        self.register_buffer("weights",
                             torch.tensor([m.weight for m in members], dtype=torch.float32))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        log_odds, maps = [], []
        for network, adapter, (kind, index) in zip(self.networks, self.member_adapters(),
                                                   self.kinds, strict=True):
            logits, features = network(adapter.member_input(image))
            log_odds.append(logits[:, 0] if kind == "sigmoid"
                            else logits[:, index] - logits[:, 1 - index])
            maps.append(adapter.on_grid(features))
        member_logits = torch.stack(log_odds, dim=1)
        probability = (torch.sigmoid(member_logits) * self.weights).sum(dim=1, keepdim=True)
        probability = probability.clamp(PROBABILITY_EPSILON, 1.0 - PROBABILITY_EPSILON)
        logit = torch.log(probability) - torch.log(1.0 - probability)
        return logit, torch.cat(maps, dim=1), member_logits

    def member_adapters(self) -> list[MemberAdapter]:
        return [adapter for adapter in self.adapters if isinstance(adapter, MemberAdapter)]


def export_ensemble(request: EnsembleRequest, models_dir: Path = Path("models")) -> ExportResult:
    """Load every member, build the shared graph, verify it member by member and as a whole,
    embed the spec, and only then publish the file."""
    output = request.output or models_dir / "ensemble.onnx"
    publish.check_writable(output.parent)
    members = load_members(request)
    ensemble = ensemble_settings(members, request)
    grids = [check_member(m) for m in members]
    graph = EnsembleGraph(members, ensemble, grids).eval()
    partial = publish.temporary_path(output)
    try:
        export_module(graph, ensemble["input_size"], partial,
                      (LOGITS_NAME, FEATURES_NAME, MEMBER_LOGITS_NAME))
        parity = measure_parity(graph, members, partial.read_bytes(), ensemble["input_size"],
                                request.tolerance)
        spec = ensemble_spec(request, members, ensemble, grids, parity)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    onnx_sha = publish.publish(partial, output, spec, *cam_weights(members))
    lead = lead_member(members)
    sources = {name: f"{value.source} of {lead.path.name}"
               for name, value in lead.settings.items()}
    return ExportResult(output, spec, sources, (), onnx_sha)


def load_members(request: EnsembleRequest) -> list[Member]:
    count = len(request.checkpoints)
    if count < 2:
        raise ExportError("an ensemble needs at least two checkpoints")
    weights = _normalised_weights(request.weights, count)
    architectures = _per_member(request.architectures, count, "--arch")
    sizes = _per_member(request.input_sizes, count, "--input-size")
    members = []
    for path, weight, architecture, size in zip(request.checkpoints, weights, architectures,
                                                sizes, strict=True):
        if keras_source.is_keras_model(path):
            raise ExportError(f"{path.name}: ensemble members are PyTorch checkpoints; export "
                              "a Keras or TensorFlow model on its own")
        loaded = load_checkpoint(path, request.allow_unsafe_pickle, request.prefer_ema)
        flags = {"architecture": architecture, "input_size": size, "resize": request.resize,
                 "interpolation": request.interpolation, "color_order": request.color_order,
                 "mean": request.mean, "std": request.std, "threshold": request.threshold}
        settings = resolve(flags, loaded.hyper_parameters)
        chosen = settings["architecture"]
        try:
            network = network_from(loaded, chosen.value) if chosen.source == "flag" \
                else network_from(loaded, hint=chosen.value)
        except ExportError as error:
            raise ExportError(f"{path.name}: {error}") from None
        members.append(Member(path, network, settings, weight))
    return members


def ensemble_settings(members: list[Member], request: EnsembleRequest) -> dict[str, Any]:
    """The server-side settings: the largest member's input, fit and statistics; a threshold
    the members agree on (or the flag)."""
    for name in SHARED_SETTINGS:
        values = {m.settings[name].value for m in members}
        if len(values) > 1:
            raise ExportError(f"the members fit photos differently ({name}: "
                              f"{', '.join(sorted(values))}); pass --{name} to choose one")
    thresholds = sorted({m.settings["threshold"].value for m in members})
    if len(thresholds) > 1:
        raise ExportError(f"the members' thresholds differ ({', '.join(map(str, thresholds))}); "
                          "pass --threshold, chosen on the ensemble's own held-out scores")
    return _settings_of(lead_member(members)) | {"threshold": thresholds[0]}


def lead_member(members: list[Member]) -> Member:
    """The member whose input the server prepares: the first of the largest input size."""
    return max(members, key=lambda m: m.input_size)


def check_member(member: Member) -> int:
    """Prove the member's head is a CAM head at its size; return its feature grid side."""
    try:
        check_cam_head(member.network, member.input_size)
    except ExportError as error:
        raise ExportError(f"{member.path.name}: {error}") from None
    image = torch.zeros(1, 3, member.input_size, member.input_size)
    with torch.inference_mode():
        _, features = LogitsAndFeatures(member.network.module).eval()(image)
    height, width = features.shape[2:]
    if height != width:
        raise ExportError(f"{member.path.name}: feature map {height}x{width} is not square")
    return int(height)


def cam_weights(members: list[Member]) -> tuple[np.ndarray, float]:
    """Each member's log-odds row scaled by its weight, side by side as the features are."""
    rows, bias = [], 0.0
    for member in members:
        row, member_bias = member.log_odds_weights()
        rows.append(member.weight * row)
        bias += member.weight * member_bias
    return np.concatenate(rows).astype(np.float32), bias


@dataclass(frozen=True)
class EnsembleParity:
    whole: dict[str, Any]
    members: list[dict[str, float]]


def measure_parity(graph: EnsembleGraph, members: list[Member], model_bytes: bytes,
                   input_size: int, tolerance: float) -> EnsembleParity:
    """ONNX Runtime against PyTorch at batch 1 and 8: each member against its own network
    (run by itself on the input the graph gives it), and the ensemble as a whole."""
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(verify.PARITY_SEED)
    whole = {"probability": 0.0, "feature": 0.0, "max_feature": 0.0}
    per_member = [0.0] * len(members)
    for batch in verify.PARITY_BATCH_SIZES:
        images = torch.randn(batch, 3, input_size, input_size, generator=generator)
        with torch.inference_mode():
            torch_logit, torch_features, _ = (t.numpy() for t in graph(images))
            own = [_own_probability(m, adapter.member_input(images))
                   for m, adapter in zip(members, graph.member_adapters(), strict=True)]
        onnx_logit, onnx_features, onnx_members = session.run(
            [LOGITS_NAME, FEATURES_NAME, MEMBER_LOGITS_NAME], {INPUT_NAME: images.numpy()})
        whole["probability"] = max(whole["probability"], _gap(_sigmoid(torch_logit[:, 0]),
                                                              _sigmoid(onnx_logit[:, 0])))
        whole["feature"] = max(whole["feature"], _gap(torch_features, onnx_features))
        whole["max_feature"] = max(whole["max_feature"], float(np.abs(torch_features).max()))
        for index, probabilities in enumerate(own):
            per_member[index] = max(per_member[index],
                                    _gap(probabilities, _sigmoid(onnx_members[:, index])))
    feature_tolerance = 1e-4 * max(1.0, whole["max_feature"])
    worst = max(per_member)
    if whole["probability"] > tolerance or worst > tolerance \
            or whole["feature"] > feature_tolerance:
        raise ExportError(
            f"ONNX Runtime disagrees with PyTorch: ensemble max |Δ probability| "
            f"{whole['probability']:.2e}, worst member {worst:.2e} (tolerance {tolerance:.0e}), "
            f"max |Δ feature| {whole['feature']:.2e} (tolerance {feature_tolerance:.1e})")
    return EnsembleParity(
        {"max_abs_diff_probability": whole["probability"],
         "max_abs_diff_feature": whole["feature"], "max_abs_feature": whole["max_feature"],
         "max_abs_diff_probability_worst_member": worst,
         "tolerance_probability": tolerance, "tolerance_feature": feature_tolerance,
         "batch_sizes": list(verify.PARITY_BATCH_SIZES)},
        [{"max_abs_diff_probability": gap} for gap in per_member])


def ensemble_spec(request: EnsembleRequest, members: list[Member], ensemble: dict[str, Any],
                  grids: list[int], parity: EnsembleParity) -> ModelSpec:
    records = tuple(
        {"architecture": m.network.architecture.name,
         "architecture_library": m.network.architecture.library,
         "checkpoint_name": m.path.name, "checkpoint_sha256": m.network.checkpoint.sha256,
         "checkpoint_format": m.network.checkpoint.format,
         "weights": m.network.checkpoint.weights or "only", "weight": m.weight,
         "input_size": m.input_size, "output_kind": m.network.head.output_kind,
         "feature_channels": m.network.head.feature_channels, "feature_grid": grid,
         "color_order": m.settings["color_order"].value, "mean": list(m.settings["mean"].value),
         "std": list(m.settings["std"].value), "parity": record}
        for m, grid, record in zip(members, grids, parity.members, strict=True))
    joined = "\n".join(m.network.checkpoint.sha256 for m in members).encode()
    return ModelSpec(
        name=request.name or f"ensemble-of-{len(members)}", version=request.version,
        architecture=f"ensemble of {len(members)} models", input_size=ensemble["input_size"],
        resize=ensemble["resize"], interpolation=ensemble["interpolation"],
        color_order=ensemble["color_order"], mean=ensemble["mean"], std=ensemble["std"],
        threshold=ensemble["threshold"], labels=request.labels, output_kind="sigmoid",
        melanoma_index=0, feature_channels=sum(m.network.head.feature_channels for m in members),
        input_name=INPUT_NAME, logits_name=LOGITS_NAME, features_name=FEATURES_NAME,
        # The ensemble's identity: SHA-256 of its members' checkpoint hashes, in order.
        checkpoint_sha256=hashlib.sha256(joined).hexdigest(),
        checkpoint_name=", ".join(m.path.name for m in members), checkpoint_format="ensemble",
        demo=False, tool_versions={"torch": torch.__version__, **publish.tool_versions()},
        parity=parity.whole, created=created_now(),
        provenance=f"ensemble of {len(members)} checkpoints, probabilities averaged",
        members=records)


def _settings_of(member: Member) -> dict[str, Any]:
    values = {name: member.settings[name].value
              for name in ("input_size", "resize", "interpolation", "color_order", "mean", "std")}
    return values | {"mean": tuple(values["mean"]), "std": tuple(values["std"])}


def _own_probability(member: Member, image: torch.Tensor) -> np.ndarray:
    logits = member.network.module(image).double()
    if member.network.head.output_kind == "sigmoid":
        return torch.sigmoid(logits[:, 0]).numpy()
    return torch.softmax(logits, dim=1)[:, member.network.head.melanoma_index].numpy()


def _normalised_weights(weights: tuple[float, ...] | None, count: int) -> list[float]:
    if weights is None:
        return [1.0 / count] * count
    if len(weights) != count:
        raise ExportError(f"--weights gives {len(weights)} values for {count} checkpoints")
    if any(not np.isfinite(w) or w <= 0 for w in weights):
        raise ExportError(f"--weights must all be positive, got {list(weights)}")
    total = float(sum(weights))
    return [float(w) / total for w in weights]


def _per_member(values: tuple[Any, ...], count: int, flag: str) -> tuple[Any, ...]:
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise ExportError(f"{flag} takes one value for all members or one per checkpoint "
                          f"({count}), got {len(values)}")
    return values


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(values, dtype=np.float64)))


def _gap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())
