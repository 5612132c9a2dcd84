"""Static QDQ INT8 quantisation of an exported model (onnxruntime.quantization, U8S8).

Activations are unsigned 8-bit and weights signed 8-bit: the combination ONNX Runtime's
x86 kernels run fast (signed activations, or dynamic quantisation, are slow for this CNN).
Which parts stay fp32 is a choice measured in bench/int8_ablation.py: the defaults are the
fastest that keep the AUC; keeping the last two stages fp32 as well is what met every
fidelity limit on the demo model, at most of the speed.
"""
from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402
from inference import runtime  # noqa: E402,F401  (telemetry off before onnxruntime loads)
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod,  # noqa: E402
                                      QuantFormat, QuantType, quant_pre_process,
                                      quantize_static)

from export.errors import ExportError  # noqa: E402

METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
           "percentile": CalibrationMethod.Percentile}
KEEPABLE = ("first-conv", "last-stage", "last-two-stages", "classifier", "features")
PLACEMENTS = ("all", "conv")  # QDQ around every op ORT can quantize, or around Conv only


@dataclass(frozen=True)
class QuantizeOptions:
    """How to quantise; recorded in the INT8 model's spec."""

    method: str = "minmax"
    per_channel: bool = True
    keep_fp32: tuple[str, ...] = ("first-conv", "classifier")
    placement: str = "all"
    calibration_size: int = 128
    percentile: float = 99.999
    # 7-bit weights: AVX2 without VNNI multiplies u8 x s8 pairs into saturating int16
    # (vpmaddubsw), so full-range weights can overflow there. On the demo model it made
    # fidelity worse (bench/int8-ablation.json), so it is off by default.
    reduce_range: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ExportError(f"calibration method {self.method!r} not one of {sorted(METHODS)}")
        unknown = sorted(set(self.keep_fp32) - set(KEEPABLE))
        if unknown:
            raise ExportError(f"cannot keep {unknown} in fp32; choose from {KEEPABLE}")
        if self.placement not in PLACEMENTS:
            raise ExportError(f"QDQ placement {self.placement!r} not one of {PLACEMENTS}")
        if self.calibration_size < 1:
            raise ExportError("the calibration set needs at least one image")

    def as_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "format": "QDQ", "activations": "uint8", "weights": "int8",
            "per_channel": self.per_channel, "calibration_method": self.method,
            "calibration_images": self.calibration_size, "kept_fp32": list(self.keep_fp32),
            "qdq_placement": self.placement, "reduce_range": self.reduce_range}
        if self.method == "percentile":
            record["percentile"] = self.percentile
        return record


def quantize_model(fp32_path: Path, int8_path: Path, reader: CalibrationDataReader,
                   options: QuantizeOptions, features_name: str = "features",
                   calibration_cache: Path | None = None) -> None:
    """Write the QDQ INT8 graph of `fp32_path` to `int8_path` (metadata is left to the caller)."""
    extra: dict[str, Any] = {}
    if options.method == "percentile":
        extra["CalibPercentile"] = options.percentile
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        prepare(fp32_path, prepared)
        excluded = nodes_kept_fp32(onnx.load(str(prepared)), options.keep_fp32, features_name)
        try:
            quantize_static(
                str(prepared), str(int8_path), reader, quant_format=QuantFormat.QDQ,
                op_types_to_quantize=["Conv"] if options.placement == "conv" else None,
                per_channel=options.per_channel, reduce_range=options.reduce_range,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded, calibrate_method=METHODS[options.method],
                extra_options=extra, calibration_cache_path=calibration_cache)
        except (ValueError, RuntimeError) as error:
            raise ExportError(f"INT8 quantisation failed: {error}") from None


def prepare(fp32_path: Path, destination: Path) -> None:
    """The fp32 graph as the quantiser sees it (its node names are the QDQ graph's)."""
    # Folds the exporter's Identity-wrapped biases and constants: without it ORT cannot
    # fuse those convolutions into integer kernels.
    quant_pre_process(str(fp32_path), str(destination), skip_symbolic_shape=True)


def nodes_kept_fp32(model: onnx.ModelProto, keep: tuple[str, ...],
                    features_name: str) -> list[str]:
    """Names of the nodes that the chosen parts (first conv, classifier, features) cover."""
    graph = model.graph
    excluded: list[str] = []
    if "first-conv" in keep:
        inputs = {i.name for i in graph.input}
        excluded += [n.name for n in graph.node if n.op_type == "Conv" and n.input[0] in inputs]
    if "last-two-stages" in keep:
        excluded += _last_stages(graph, 2)
    elif "last-stage" in keep:
        excluded += _last_stages(graph, 1)
    if "classifier" in keep:
        excluded += [n.name for n in _downstream(graph, features_name)]
    if "features" in keep:
        # The residual Add and Relu that make layer4's output: quantising them would put
        # a Q/DQ pair on the map the heatmap is drawn from.
        producer = {o: n for n in graph.node for o in n.output}
        node = producer.get(features_name)
        while node is not None and node.op_type in ("Relu", "Add"):
            excluded.append(node.name)
            node = producer.get(node.input[0]) if node.op_type == "Relu" else None
    return excluded


_STAGE = re.compile(r"^/layer(\d+)/")  # ResNet-family stages as torch.onnx names them


def _last_stages(graph: onnx.GraphProto, count: int) -> list[str]:
    """The nodes of the `count` deepest residual stages (layer4, then layer3, in a ResNeSt)."""
    stages = sorted({int(m.group(1)) for n in graph.node if (m := _STAGE.match(n.name))})
    if not stages:
        raise ExportError("cannot keep the last stage in fp32: no /layerN/ nodes in the graph")
    prefixes = tuple(f"/layer{stage}/" for stage in stages[-count:])
    return [n.name for n in graph.node if n.name.startswith(prefixes)]


def _downstream(graph: onnx.GraphProto, tensor: str) -> list[onnx.NodeProto]:
    reached, frontier, found = {tensor}, [tensor], []
    while frontier:
        name = frontier.pop()
        for node in graph.node:
            if name in node.input and node not in found:
                found.append(node)
                for output in node.output:
                    if output not in reached:
                        reached.add(output)
                        frontier.append(output)
    return found


def shift_logit_bias(int8_path: Path, shift: np.ndarray, logits_name: str = "logits") -> None:
    """Add `shift` to the bias of the (fp32) final Gemm: an empirical bias correction."""
    model = onnx.load(str(int8_path))
    gemm = next((n for n in model.graph.node if n.op_type == "Gemm"
                 and logits_name in n.output), None)
    initializers = {t.name: t for t in model.graph.initializer}
    if gemm is None or len(gemm.input) < 3 or gemm.input[2] not in initializers:
        raise ExportError("bias correction needs the classifier kept in fp32 "
                          "(--keep-fp32 classifier)")
    tensor = initializers[gemm.input[2]]
    corrected = numpy_helper.to_array(tensor).astype(np.float32) + shift.astype(np.float32)
    tensor.CopyFrom(numpy_helper.from_array(corrected, tensor.name))
    onnx.save(model, str(int8_path))
