"""Read a frozen Keras/TensorFlow graph the way the server needs it, and convert it to ONNX.

The served graph takes NCHW images (what inference/preprocess.py feeds) and returns the
pre-activation logits and the last feature map in NCHW, like the PyTorch path's graph. Its
head must be global average pooling followed only by linear layers (Dropout, BatchNorm,
Dense) and one sigmoid or softmax: the Dense weights, measured through that linear tail, are
the heatmap's weights. Everything is read from the graph's ops, so `.keras`, `.h5` and
SavedModels are handled alike.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import ExportError
from export.graph import OPSET
from export.keras_source import import_tensorflow
from inference.model_spec import FEATURES_NAME, INPUT_NAME, LOGITS_NAME, OutputKind

# How far the logits may stray from an affine function of the pooled features, relative.
_LINEAR_TOLERANCE = 1e-4
# A first op multiplying by 1/255 .. 1/127.5 (or dividing by 127.5 .. 255) means the graph
# takes 0-255 pixels and scales them itself (Keras's Rescaling, or preprocess_input inside).
_PIXEL_SCALES = (1 / 256, 1 / 127)
_PASS_THROUGH = ("Identity", "Cast")
_ACTIVATIONS: dict[str, OutputKind] = {"Sigmoid": "sigmoid", "Softmax": "softmax"}


@dataclass(frozen=True)
class KerasHead:
    """Where the graph pools, and the affine map from pooled features to logits."""

    output_kind: OutputKind
    features: str
    pooled: str
    logits: str
    weights: np.ndarray  # (channels, classes)
    bias: np.ndarray  # (classes,)

    @property
    def feature_channels(self) -> int:
        return int(self.weights.shape[0])

    @property
    def melanoma_index(self) -> int:
        return 0 if self.output_kind == "sigmoid" else 1

    def cam_weights(self) -> tuple[np.ndarray, float]:
        """The melanoma logit's weights and bias: the heatmap's weights."""
        return self.weights[:, self.melanoma_index].copy(), float(self.bias[self.melanoma_index])


def read_head(graph_def: Any, output_name: str, label: str) -> KerasHead:
    """Find sigmoid/softmax <- linear layers <- global average pooling; measure the linear part.

    Refuses, naming why, any other head: the server's heatmap and parity checks rely on it.
    """
    tf, _ = import_tensorflow()
    graph = _imported(tf, graph_def)
    activation = _skip_pass_through(graph.get_tensor_by_name(output_name).op)
    kind = _ACTIVATIONS.get(activation.type)
    if kind is None:
        raise ExportError(f"{label} does not end in sigmoid or softmax (its last op is "
                          f"{activation.type}); the server needs the melanoma probability")
    logits = activation.inputs[0]
    classes = logits.shape[-1]
    if (kind, classes) not in (("sigmoid", 1), ("softmax", 2)):
        raise ExportError(f"unsupported head: {kind} over {classes} outputs; expected one "
                          "sigmoid output or two softmax outputs (melanoma = index 1)")
    pool = _pooling(tf, logits, label)
    features, pooled = pool.inputs[0], pool.outputs[0]
    weights, bias = _measure_linear(tf, graph, pooled, logits, label)
    return KerasHead(kind, features.name, pooled.name, logits.name, weights, bias)


def pixel_scaling(graph_def: Any, input_name: str) -> str | None:
    """How the graph scales 0-255 pixels itself (e.g. "×0.00392"), or None when it does not."""
    tf, _ = import_tensorflow()
    graph = _imported(tf, graph_def)
    tensor = graph.get_tensor_by_name(input_name)
    while True:
        consumers = tensor.consumers()
        if len(consumers) != 1:
            return None
        op = consumers[0]
        if op.type not in _PASS_THROUGH:
            break
        tensor = op.outputs[0]
    others = [t for t in op.inputs if t.name != tensor.name]
    if len(others) != 1 or others[0].op.type != "Const":
        return None
    value = np.asarray(tf.make_ndarray(others[0].op.get_attr("value")), np.float64)
    low, high = _PIXEL_SCALES
    if op.type == "Mul" and value.size and np.all((value >= low) & (value <= high)):
        return f"multiplies pixels by {float(value.ravel()[0]):.6g}"
    if op.type in ("RealDiv", "Div") and op.inputs[0].name == tensor.name and value.size and np.all(
            (value >= 1 / high) & (value <= 1 / low)):
        return f"divides pixels by {float(value.ravel()[0]):.6g}"
    return None


class ServedGraph:
    """The graph the ONNX model is converted from: NCHW image in, logits and NCHW features out,
    runnable under TensorFlow as the reference the ONNX graph is checked against."""

    def __init__(self, graph_def: Any, input_name: str, head: KerasHead, size: int) -> None:
        tf, _ = import_tensorflow()
        self.graph = tf.Graph()
        with self.graph.as_default():
            image = tf.compat.v1.placeholder(tf.float32, (None, 3, size, size), name=INPUT_NAME)
            logits, features = tf.graph_util.import_graph_def(
                graph_def, input_map={input_name: tf.transpose(image, (0, 2, 3, 1))},
                return_elements=[head.logits, head.features], name="keras")
            tf.identity(logits, name=LOGITS_NAME)
            tf.transpose(features, (0, 3, 1, 2), name=FEATURES_NAME)
        self._session = tf.compat.v1.Session(graph=self.graph)

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """TensorFlow's logits and NCHW features for NCHW images."""
        logits, features = self._session.run([f"{LOGITS_NAME}:0", f"{FEATURES_NAME}:0"],
                                             {f"{INPUT_NAME}:0": images})
        return logits, features

    def convert(self, destination: Path) -> None:
        """Write the ONNX graph (no metadata yet) with tf2onnx."""
        import tf2onnx

        logging.getLogger("tf2onnx").setLevel(logging.ERROR)
        names = {f"{name}:0": name for name in (INPUT_NAME, LOGITS_NAME, FEATURES_NAME)}
        try:
            tf2onnx.convert.from_graph_def(
                self.graph.as_graph_def(), input_names=[f"{INPUT_NAME}:0"],
                output_names=[f"{LOGITS_NAME}:0", f"{FEATURES_NAME}:0"], opset=OPSET,
                tensors_to_rename=names, output_path=str(destination))
        except Exception as error:  # tf2onnx raises many types for ops it cannot map
            text = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise ExportError(f"tf2onnx could not convert the graph: {type(error).__name__}: "
                              f"{text[:200]}") from None


def _imported(tf: Any, graph_def: Any) -> Any:
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    return graph


def _skip_pass_through(op: Any) -> Any:
    while op.type in _PASS_THROUGH:
        op = op.inputs[0].op
    return op


def _pooling(tf: Any, logits: Any, label: str) -> Any:
    """The one global average pooling every path from the logits back to the image crosses."""
    pools, stack, seen = [], [logits.op], set()
    while stack:
        op = stack.pop()
        if op.name in seen:
            continue
        seen.add(op.name)
        if op.type == "Mean":
            pools.append(op)
        elif op.type == "Placeholder":
            raise ExportError(
                f"{label}'s head is not GlobalAveragePooling2D + Dense (the output reaches the "
                "image without a global average pooling, e.g. Flatten or GlobalMaxPooling); "
                "the server's heatmap needs one, so it is not supported")
        else:
            stack.extend(t.op for t in op.inputs)
    if len(pools) != 1 or not _is_spatial_mean(tf, pools[0]):
        raise ExportError(f"{label}'s head is not one GlobalAveragePooling2D + Dense (found "
                          f"{len(pools)} averaging ops before the output); not supported")
    return pools[0]


def _is_spatial_mean(tf: Any, op: Any) -> bool:
    features, axes = op.inputs
    if features.shape.rank != 4 or axes.op.type != "Const":
        return False
    reduced = {int(a) % 4 for a in np.ravel(tf.make_ndarray(axes.op.get_attr("value")))}
    return reduced == {1, 2}


def _measure_linear(tf: Any, graph: Any, pooled: Any, logits: Any,
                    label: str) -> tuple[np.ndarray, np.ndarray]:
    """Weights and bias of pooled -> logits, measured on basis vectors, then proven affine."""
    shape = pooled.shape.as_list()
    channels = int(shape[-1])
    with tf.compat.v1.Session(graph=graph) as session:
        def run(rows: np.ndarray) -> np.ndarray:
            probe = rows.reshape((len(rows), *[1] * (len(shape) - 2), channels))
            return np.asarray(session.run(logits, {pooled: probe.astype(np.float32)}),
                              np.float64).reshape(len(rows), -1)

        bias = run(np.zeros((1, channels)))[0]
        weights = run(np.eye(channels)) - bias
        probe = np.random.default_rng(0).normal(size=(16, channels))
        expected, measured = probe @ weights + bias, run(probe)
    gap = float(np.abs(expected - measured).max())
    if gap > _LINEAR_TOLERANCE * max(1.0, float(np.abs(measured).max())):
        raise ExportError(f"{label}'s layers between global average pooling and the output are "
                          f"not linear (off by {gap:.2e}, e.g. a hidden Dense with an "
                          "activation); the heatmap needs GlobalAveragePooling2D + Dense, with "
                          "only Dropout or BatchNormalization between")
    return weights.astype(np.float32), bias.astype(np.float32)
