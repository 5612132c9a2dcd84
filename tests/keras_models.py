"""Small Keras models with the seeds' layer conventions, written by TensorFlow itself.

`efficientnet_like` carries Rescaling + Normalization in its graph (0-255 pixels in), swish,
squeeze-excitation and a GAP + Dropout + Dense(1, sigmoid) head, like Keras's EfficientNet
fine-tuned as the seed did; `xception_like` has separable convolutions, no preprocessing in
the graph (preprocess_input outside) and GAP + BatchNorm + Dropout + Dense(2, softmax).
Weights are random (weights=None) but spread so predictions differ between images.
TensorFlow is imported inside the functions: collecting the suite stays fast.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from tests import images



def keras() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras as keras_module

    return keras_module


def efficientnet_like(size: int, seed: int = 0) -> Any:
    k = keras()
    layers = k.layers
    k.utils.set_random_seed(seed)
    image = k.Input((size, size, 3))
    x = layers.Rescaling(1.0 / 255.0)(image)
    x = layers.Normalization(mean=[0.485, 0.456, 0.406],
                             variance=[0.229 ** 2, 0.224 ** 2, 0.225 ** 2])(x)
    x = _conv_bn(layers, x, 16, 3, 4, "swish")
    x = layers.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False)(x)
    x = layers.Activation("swish")(layers.BatchNormalization()(x))
    squeeze = layers.GlobalAveragePooling2D(keepdims=True)(x)
    squeeze = layers.Conv2D(4, 1, activation="swish")(squeeze)
    x = layers.Multiply()([x, layers.Conv2D(16, 1, activation="sigmoid")(squeeze)])
    x = _conv_bn(layers, x, 32, 1, 1, "swish", name="top")
    x = layers.Dropout(0.3)(layers.GlobalAveragePooling2D(name="avg_pool")(x))
    return _spread(k.Model(image, layers.Dense(1, activation="sigmoid")(x)), seed,
                   preprocess_input("in-graph"))


def xception_like(size: int, convention: str = "tf", seed: int = 0) -> Any:
    """`convention`: the preprocess_input mode it is trained with (outside the graph)."""
    k = keras()
    layers = k.layers
    k.utils.set_random_seed(seed)
    image = k.Input((size, size, 3))
    x = _conv_bn(layers, image, 16, 3, 4, "relu")
    x = layers.SeparableConv2D(32, 3, padding="same", use_bias=False)(x)
    x = layers.Activation("relu")(layers.BatchNormalization()(x))
    x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
    x = layers.SeparableConv2D(48, 3, padding="same", use_bias=False)(x)
    x = layers.Activation("relu", name="top")(layers.BatchNormalization()(x))
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dropout(0.2)(layers.BatchNormalization()(x))
    return _spread(k.Model(image, layers.Dense(2, activation="softmax")(x)), seed,
                   preprocess_input(convention))


def head_model(size: int, head: Callable[[Any, Any], Any]) -> Any:
    """A small convnet ending in `head(layers, feature_map)`: for the refused heads."""
    k = keras()
    image = k.Input((size, size, 3))
    x = _conv_bn(k.layers, image, 8, 3, 4, "relu")
    return k.Model(image, head(k.layers, x))


def save(model: Any, directory: Path, name: str, fmt: str) -> Path:
    """Write `model` the way a user would: model.save for files, model.export ("savedmodel")
    or tf.saved_model.save ("tf-savedmodel") for a SavedModel folder."""
    path = directory / name
    if fmt == "savedmodel":
        model.export(str(path), verbose=False)
        return path
    if fmt == "tf-savedmodel":
        import tensorflow as tf

        tf.saved_model.save(model, str(path))
        return path
    path = directory / f"{name}.{fmt}"
    model.save(str(path))
    return path


def predict(model: Any, images: np.ndarray) -> np.ndarray:
    """Keras's own prediction (N, outputs) for NHWC float32 images."""
    return np.asarray(model.predict(images.astype(np.float32), verbose=0))


def preprocess_input(convention: str) -> Callable[[np.ndarray], np.ndarray]:
    """Keras's own preprocess_input for a convention; in-graph models take raw pixels."""
    applications = keras().applications
    functions = {"tf": applications.xception.preprocess_input,
                 "caffe": applications.resnet50.preprocess_input,
                 "torch": applications.densenet.preprocess_input}
    if convention == "in-graph":
        return lambda pixels: pixels.astype(np.float32)
    chosen = functions[convention]
    return lambda pixels: np.asarray(chosen(pixels.astype(np.float32).copy()))


def grad_cam(model: Any, images: np.ndarray, feature_layer: str, class_index: int) -> np.ndarray:
    """Grad-CAM (Selvaraju et al.) with tf.GradientTape on the class score before its sigmoid
    or softmax: ReLU(sum_c mean_hw(d score / d A_c) * A_c) at `feature_layer`'s output."""
    import tensorflow as tf

    k = keras()
    dense = model.layers[-1]
    tail = k.Model(model.inputs, [model.get_layer(feature_layer).output, dense.input])
    with tf.GradientTape() as tape:
        features, pooled = tail(tf.constant(images.astype(np.float32)), training=False)
        score = tf.matmul(pooled, dense.kernel)[:, class_index] + dense.bias[class_index]
    gradients = tape.gradient(score, features)
    alpha = tf.reduce_mean(gradients, axis=(1, 2))
    return np.maximum(np.einsum("nhwc,nc->nhw", features.numpy(), alpha.numpy()), 0.0)


def _conv_bn(layers: Any, x: Any, filters: int, kernel: int, strides: int, activation: str,
             name: str | None = None) -> Any:
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False)(x)
    return layers.Activation(activation, name=name)(layers.BatchNormalization()(x))


def photos(size: int) -> list[np.ndarray]:
    """Lesion-like RGB photos of `size` px that differ in shape, colour and brightness."""
    lesions = [images.lesion_rgb(size, size, seed=seed) for seed in range(2)]
    atypical = cv2.resize(images.atypical_lesion_rgb(), (size, size),
                          interpolation=cv2.INTER_AREA)
    return [*lesions, atypical, (lesions[0] * 0.6).astype(np.uint8)]


def _spread(model: Any, seed: int, pixels: Callable[[np.ndarray], np.ndarray]) -> Any:
    """Random BatchNorm statistics, and a classifier along the direction in which the photos'
    pooled features vary most, so different photos get clearly different answers."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape).astype(np.float32),
                               rng.normal(0, 0.2, beta.shape).astype(np.float32),
                               rng.normal(0, 0.2, mean.shape).astype(np.float32),
                               rng.uniform(0.5, 2.0, variance.shape).astype(np.float32)])
    dense = model.layers[-1]
    size = model.inputs[0].shape[1]
    pooled = keras().Model(model.inputs, dense.input).predict(
        pixels(np.stack(photos(size))), verbose=0).astype(np.float64)
    centred = pooled - pooled.mean(axis=0)
    direction = np.linalg.svd(centred, full_matrices=False)[2][0]
    # Positive evidence on average (a negative bias), so likelier photos light up the heatmap.
    direction *= np.sign(pooled.mean(axis=0) @ direction) or 1.0
    spread = float(np.std(centred @ direction)) or 1.0
    kernel, bias = dense.get_weights()
    kernel = rng.normal(0, 0.01, kernel.shape)
    kernel[:, -1] = direction * 1.5 / spread
    bias[:] = 0.0
    bias[-1] = -float(pooled.mean(axis=0) @ kernel[:, -1])
    dense.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return model
