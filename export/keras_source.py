"""Keras and TensorFlow models: recognise the three formats, load one under TensorFlow, and
freeze its inference function into one graph.

`.keras` (Keras 3) and `.h5` files load with Keras itself (`safe_mode` keeps Lambda layers'
code from running unless asked); a SavedModel folder is read through its serving signature.
TensorFlow is imported only here and only when such a model is exported: it costs seconds
and belongs off the serving box (requirements-keras.txt).
"""
from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.checkpoint import sha256_of
from export.errors import ExportError

KERAS_PACKAGES = ("tensorflow-cpu", "keras", "tf2onnx")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_SIGNATURE = "serving_default"
_GENERIC_NAMES = ("functional", "model", "sequential")


@dataclass(frozen=True)
class KerasModel:
    """A loaded model's frozen inference graph and Keras's (or the SavedModel's) own predict.

    `predict` takes NHWC float32 images and returns what the model itself returns (N, classes);
    `input_name` and `output_name` are tensor names in `graph_def`.
    """

    path: Path
    sha256: str
    format: str
    library: str
    architecture: str
    graph_def: Any
    input_name: str
    output_name: str
    input_shape: tuple[int | None, ...]
    predict: Callable[[np.ndarray], np.ndarray]


def is_keras_model(path: Path) -> bool:
    """Whether `path` is a Keras or TensorFlow model rather than a PyTorch checkpoint."""
    if path.is_dir():
        return True  # only TensorFlow saves a model as a folder
    if path.suffix.lower() in (".keras", ".h5", ".hdf5"):
        return True
    if not path.is_file():
        return False
    with path.open("rb") as stream:
        if stream.read(8) == _HDF5_MAGIC:
            return True
    return _is_keras_zip(path)


def load_keras_model(path: Path, allow_unsafe_code: bool = False) -> KerasModel:
    """Load `path` under TensorFlow and freeze its inference function (training=False)."""
    tf, keras = import_tensorflow()
    if path.is_dir():
        return _load_saved_model(tf, path)
    if not path.is_file():
        raise ExportError(f"model not found: {path}")
    try:
        model = keras.models.load_model(path, compile=False, safe_mode=not allow_unsafe_code)
    except Exception as error:  # Keras raises many types for unreadable or hostile files
        raise _load_error(path, error) from None
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ExportError(f"{path.name} has {len(model.inputs)} inputs and {len(model.outputs)} "
                          "outputs; the server feeds one image and reads one prediction")
    shape = tuple(model.inputs[0].shape)
    _check_image_input(path, shape)
    spec = tf.TensorSpec((None, *shape[1:]), tf.float32)
    function = tf.function(lambda images: model(images, training=False))
    graph_def, input_name, output_name = _freeze(tf, function.get_concrete_function(spec))
    kind = "Keras 3 .keras" if _is_keras_zip(path) else "Keras HDF5 .h5"
    return KerasModel(path, sha256_of(path), f"{kind} (Keras {keras.__version__})", "keras",
                      _architecture(model), graph_def, input_name, output_name, shape,
                      lambda images: np.asarray(model.predict(images, verbose=0)))


def import_tensorflow() -> tuple[Any, Any]:
    """TensorFlow and Keras, imported quietly, or a one-line refusal naming what to install."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import keras
        import tensorflow as tf
    except ImportError:
        raise ExportError("Keras and TensorFlow models need the keras extra: "
                          "pip install -r requirements-keras.txt") from None
    tf.get_logger().setLevel(logging.ERROR)  # deprecation notices from tf2onnx's v1 calls
    return tf, keras


def _load_saved_model(tf: Any, path: Path) -> KerasModel:
    if not (path / "saved_model.pb").is_file():
        raise ExportError(f"{path} is a folder but not a TensorFlow SavedModel (no "
                          "saved_model.pb); give a .keras or .h5 file, a checkpoint file, or "
                          "a SavedModel folder")
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as error:  # TensorFlow raises many types for unreadable folders
        raise _load_error(path, error) from None
    signatures = dict(loaded.signatures)
    if _SIGNATURE not in signatures:
        raise ExportError(f"{path} has no {_SIGNATURE!r} signature (it has "
                          f"{', '.join(signatures) or 'none'}); save it with model.export()")
    signature = signatures[_SIGNATURE]
    arguments = signature.structured_input_signature[1]
    outputs = signature.structured_outputs
    if len(arguments) != 1 or len(outputs) != 1:
        raise ExportError(f"{path}'s {_SIGNATURE} signature takes {len(arguments)} inputs and "
                          f"gives {len(outputs)} outputs; the server feeds one image and reads "
                          "one prediction")
    (argument, tensor_spec), = arguments.items()
    (output_key,) = outputs
    if tensor_spec.dtype != tf.float32:
        raise ExportError(f"{path}'s {_SIGNATURE} signature takes {tensor_spec.dtype.name}; "
                          "only float32 images are supported")
    shape = tuple(tensor_spec.shape)
    _check_image_input(path, shape)
    graph_def, input_name, output_name = _freeze(tf, signature)

    def predict(images: np.ndarray) -> np.ndarray:
        return np.asarray(signature(**{argument: tf.constant(images)})[output_key])

    return KerasModel(path, _sha256_of_folder(path),
                      f"TensorFlow SavedModel ({_SIGNATURE} signature)", "tensorflow",
                      "TensorFlow SavedModel", graph_def, input_name, output_name, shape, predict)


def _freeze(tf: Any, function: Any) -> tuple[Any, str, str]:
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2)

    frozen = convert_variables_to_constants_v2(function)
    inputs = [t for t in frozen.inputs if t.dtype != tf.resource]
    return frozen.graph.as_graph_def(), inputs[0].name, frozen.outputs[0].name


def _architecture(model: Any) -> str:
    # A fine-tuned application is usually Functional("functional") around a nested base model
    # named for its family ("efficientnetb3", "xception"): that name tells the user more.
    if model.name.split("_")[0] not in _GENERIC_NAMES:
        return str(model.name)
    nested = [layer.name for layer in model.layers if hasattr(layer, "layers")]
    return str(nested[0]) if len(nested) == 1 else str(model.name)


def _check_image_input(path: Path, shape: tuple[int | None, ...]) -> None:
    if len(shape) != 4 or shape[-1] != 3:
        raise ExportError(f"{path.name} takes input of shape {shape}; expected channels-last "
                          "RGB images (batch, height, width, 3)")


def _is_keras_zip(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False
    return {"config.json", "model.weights.h5"} <= names


def _sha256_of_folder(folder: Path) -> str:
    # A SavedModel is several files: hash each, then their sorted (path, hash) list.
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(folder).as_posix()}\0{sha256_of(file)}\n".encode())
    return digest.hexdigest()


def _load_error(path: Path, error: Exception) -> ExportError:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if "safe_mode" in str(error):
        return ExportError(f"{path.name} holds Python code (a Lambda layer) that Keras's safe "
                           "mode refuses; pass --allow-unsafe-pickle if you trust the file "
                           "(it runs code from it)")
    return ExportError(f"{path} is not a readable Keras or TensorFlow model ({text[:200]})")
