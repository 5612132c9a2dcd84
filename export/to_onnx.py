"""Command line: export a trained classifier (or several, as one ensemble) to a verified ONNX
model with its spec embedded.

    python export/to_onnx.py path/to/model.ckpt [--output models/x.onnx] [options]
    python export/to_onnx.py model.keras | model.h5 | saved_model_dir/   # Keras, TensorFlow
    python export/to_onnx.py fold0.ckpt fold1.ckpt ... [--weights w0 w1 ...]   # an ensemble
    python export/to_onnx.py CKPT --int8 --calibration-images DIR   # also models/x.int8.onnx
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

if __package__ in (None, ""):
    # Run as a script (`python export/to_onnx.py`): make the repository root importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from export import cost, int8, keras_pixels  # noqa: E402
from export.checkpoint import sha256_of  # noqa: E402
from export.ensemble import EnsembleRequest, export_ensemble  # noqa: E402
from export.errors import ExportError  # noqa: E402
from export.pipeline import ExportRequest, ExportResult, export_checkpoint  # noqa: E402
from inference.model_spec import (COLOR_ORDERS, DEFAULT_LABELS, INTERPOLATIONS,  # noqa: E402
                               RESIZE_POLICIES, read_spec_file)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="to_onnx.py", description=__doc__.splitlines()[0],
        epilog="Unset options come from the checkpoint's hyper_parameters, else the defaults "
               "(128 px, resize, RGB, ImageNet mean/std, threshold 0.5).")
    parser.add_argument("checkpoints", type=Path, nargs="+", metavar="checkpoint",
                        help="Lightning .ckpt, timm checkpoint, plain state_dict (.pt/.pth), "
                             ".safetensors, or a dict holding one; or a Keras .keras/.h5 file "
                             "or a TensorFlow SavedModel folder (needs requirements-keras.txt); "
                             "several checkpoints make one ensemble whose probabilities are "
                             "averaged")
    parser.add_argument("--weights", type=float, nargs="+", metavar="W",
                        help="ensemble only: each checkpoint's weight in the average "
                             "(normalised to sum 1; default equal)")
    parser.add_argument("-o", "--output", type=Path,
                        help="where to write the .onnx (default: models/<checkpoint stem>.onnx)")
    parser.add_argument("--arch", nargs="+",
                        help="network architecture as its library names it, e.g. resnest50d "
                             "(timm) or resnest50 (resnest package); default: detected. For an "
                             "ensemble: one for all members or one per checkpoint")
    parser.add_argument("--input-size", type=int, nargs="+",
                        help="square input side in pixels (ensemble: one or one per checkpoint)")
    parser.add_argument("--resize", choices=RESIZE_POLICIES,
                        help="how the server fits an image to the input size")
    parser.add_argument("--interpolation", choices=INTERPOLATIONS,
                        help="resampling the server uses when resizing (default: bilinear)")
    parser.add_argument("--color-order", choices=COLOR_ORDERS,
                        help="channel order the network was trained on")
    parser.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"),
                        help="normalisation mean on [0, 1] pixels")
    parser.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"),
                        help="normalisation std on [0, 1] pixels")
    parser.add_argument("--keras-preprocessing", choices=keras_pixels.CHOICES,
                        help="Keras models only: how pixels were prepared in training, when the "
                             "graph does not say (in-graph: 0-255, the model normalises itself; "
                             "tf/caffe/torch: keras preprocess_input's modes); see docs/keras.md")
    parser.add_argument("--threshold", type=float,
                        help="melanoma probability at or above which the label is positive")
    parser.add_argument("--labels", nargs=2, default=DEFAULT_LABELS,
                        metavar=("NEGATIVE", "POSITIVE"), help="names of the two outcomes")
    parser.add_argument("--name", help="model name shown to users (default: checkpoint stem)")
    parser.add_argument("--model-version", default="1", help="model version shown to users")
    parser.add_argument("--demo", action="store_true",
                        help="mark the model as an untrained demo in its spec and the UI")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest |Δ probability| between ONNX Runtime and PyTorch (or "
                             "Keras) accepted")
    parser.add_argument("--reference-images", type=Path, metavar="DIR",
                        help="folder of photos like the ones the model will see (e.g. its "
                             "training images); their feature statistics go into the model so "
                             "the server warns about uploads unlike all of them")
    parser.add_argument("--allow-unsafe-pickle", action="store_true",
                        help="load with weights_only=False (also whole pickled modules), or a "
                             "Keras model's Lambda layers; runs code from the file, trusted "
                             "files only")
    parser.add_argument("--no-ema", dest="prefer_ema", action="store_false",
                        help="export the raw weights even when the checkpoint has an EMA copy")
    parser.add_argument("--no-measure-cost", dest="measure_cost", action="store_false",
                        help="skip measuring the model's peak memory and latency on this "
                             "machine (recorded in the spec; deploy checks them against the "
                             "instance's memory)")
    parser.add_argument("--int8", action="store_true",
                        help="also write a calibrated static INT8 model beside the fp32 one "
                             "(needs --calibration-images; refused if fidelity misses limits)")
    int8.add_arguments(parser)
    return parser


def request_from_args(args: argparse.Namespace) -> ExportRequest:
    return ExportRequest(
        checkpoint=args.checkpoints[0], output=args.output,
        architecture=args.arch[0] if args.arch else None,
        input_size=args.input_size[0] if args.input_size else None, resize=args.resize,
        interpolation=args.interpolation, color_order=args.color_order,
        mean=tuple(args.mean) if args.mean else None, std=tuple(args.std) if args.std else None,
        threshold=args.threshold, labels=tuple(args.labels), name=args.name,
        version=args.model_version, demo=args.demo, tolerance=args.tolerance,
        allow_unsafe_pickle=args.allow_unsafe_pickle, prefer_ema=args.prefer_ema,
        keras_preprocessing=args.keras_preprocessing)


def ensemble_request_from_args(args: argparse.Namespace) -> EnsembleRequest:
    return EnsembleRequest(
        checkpoints=tuple(args.checkpoints), output=args.output,
        weights=tuple(args.weights) if args.weights else None,
        architectures=tuple(args.arch) if args.arch else (None,),
        input_sizes=tuple(args.input_size) if args.input_size else (None,),
        resize=args.resize, interpolation=args.interpolation, color_order=args.color_order,
        mean=tuple(args.mean) if args.mean else None, std=tuple(args.std) if args.std else None,
        threshold=args.threshold, labels=tuple(args.labels), name=args.name,
        version=args.model_version, tolerance=args.tolerance,
        allow_unsafe_pickle=args.allow_unsafe_pickle, prefer_ema=args.prefer_ema)


def report(result: ExportResult) -> str:
    spec = result.spec.as_dict()
    lines = [f"wrote {result.output} (sha256 {result.onnx_sha256})",
             f"parity: max |Δ probability| {spec['parity']['max_abs_diff_probability']:.2e}, "
             f"max |Δ feature| {spec['parity']['max_abs_diff_feature']:.2e} "
             f"at batch sizes {spec['parity']['batch_sizes']}",
             f"architecture: {_architecture(result)}",
             "settings: " + ", ".join(f"{k} from {v}" for k, v in sorted(result.sources.items()))]
    if result.spec.measured_cost:
        lines.append(cost.describe(dict(result.spec.measured_cost)))
    if result.ignored_keys:
        lines.append(f"ignored {len(result.ignored_keys)} keys outside the network: "
                     + ", ".join(result.ignored_keys[:5]))
    lines.append("spec: " + json.dumps(spec, indent=2, sort_keys=True))
    return "\n".join(lines)


def _architecture(result: ExportResult) -> str:
    spec = result.spec
    if spec.members:
        return spec.architecture_label + "; members: " + "; ".join(
            f"{m['checkpoint_name']} ({m['architecture']}, {m['input_size']} px, weight "
            f"{m['weight']:.3f}, {m['weights']} weights, max |Δ probability| "
            f"{m['parity']['max_abs_diff_probability']:.1e})" for m in spec.members)
    same = f" (same network as {', '.join(spec.architecture_aliases)})" \
        if spec.architecture_aliases else ""
    return f"{spec.architecture_library} {spec.architecture}{same}; weights: " \
        f"{result.sources['weights']}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.int8 and args.calibration_images is None:
        parser.error("--int8 needs --calibration-images DIR")
    ensemble = len(args.checkpoints) > 1
    if not ensemble and (args.weights or len(args.arch or ()) > 1
                         or len(args.input_size or ()) > 1):
        parser.error("--weights and several --arch or --input-size values need several "
                     "checkpoints (an ensemble)")
    if ensemble and args.demo:
        parser.error("--demo marks the single demo model, not an ensemble")
    try:
        result = export_ensemble(ensemble_request_from_args(args)) if ensemble \
            else export_checkpoint(request_from_args(args))
        if args.reference_images is not None:
            from export.reference import embed_from_folder

            reference = embed_from_folder(result.output, args.reference_images)
            print(f"recorded out-of-distribution statistics of {reference.images} reference "
                  "images")
        if args.measure_cost:
            try:
                cost.record(result.output)
            except ExportError as error:
                # The model is whole; deploy measures it again before shipping it.
                print(f"warning: {error}; the spec records no measured cost", file=sys.stderr)
        result = dataclasses.replace(result, spec=read_spec_file(result.output),
                                     onnx_sha256=sha256_of(result.output))
    except ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(report(result))
    if args.int8:
        try:
            quantised = int8.export_int8(int8.request_from_args(result.output, args))
        except ExportError as error:
            print(f"error: {error} (the fp32 model {result.output} was written)",
                  file=sys.stderr)
            return 1
        print(int8.report(quantised))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
