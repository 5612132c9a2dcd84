"""Count the multiply-adds of an exported graph per image, from its own shapes."""
from __future__ import annotations

import math
from pathlib import Path

import onnx


def _dims(value: onnx.ValueInfoProto) -> list[int]:
    # A symbolic axis (the batch) reads as 0; per-image counts never use it.
    return [int(d.dim_value) for d in value.type.tensor_type.shape.dim]


def macs_per_image(model_path: Path) -> int:
    """Multiply-accumulates of every Conv, Gemm and MatMul for one image.

    Element-wise ops, pooling and the split-attention softmax are left out (well under
    1% here); the batch axis is symbolic, so per-image counts drop it.
    """
    model = onnx.shape_inference.infer_shapes(onnx.load(str(model_path)))
    graph = model.graph
    shapes = {v.name: _dims(v) for v in (*graph.value_info, *graph.input, *graph.output)}
    shapes.update({t.name: [int(d) for d in t.dims] for t in graph.initializer})
    total = 0
    for node in graph.node:
        if node.op_type == "Conv":
            weight, output = shapes[node.input[1]], shapes[node.output[0]]
            # weight is (C_out, C_in / groups, kH, kW): one MAC per weight per output pixel
            total += math.prod(weight) * output[2] * output[3]
        elif node.op_type in ("Gemm", "MatMul"):
            weight = shapes[node.input[1]]
            total += math.prod(weight)
    return total
