"""An exported fp32 model in, a calibrated INT8 model beside it out, only if fidelity holds.

    python -m export.int8 models/x.onnx --calibration-images DIR    # -> models/x.int8.onnx

`export/to_onnx.py CKPT --int8 --calibration-images DIR` runs the same step after the fp32
export. The INT8 file carries the fp32 spec plus a `quantization` record: the options, the
calibration source and the fidelity measured on held-out images.
"""
from __future__ import annotations

import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from export import fidelity, sensitivity  # noqa: E402
from export.calibration import ImageReader, SourceImage, model_input, split_images  # noqa: E402
from export.checkpoint import sha256_of  # noqa: E402
from export.errors import ExportError  # noqa: E402
from export.publish import embed_metadata  # noqa: E402
from export.quantize import (KEEPABLE, METHODS, PLACEMENTS, QuantizeOptions,  # noqa: E402
                             prepare, quantize_model, shift_logit_bias)
from inference import tta  # noqa: E402
from inference.precision import int8_path  # noqa: E402  (where the server looks for it)
from inference.model_spec import (CAM_WEIGHTS_METADATA_KEY, SPEC_METADATA_KEY,  # noqa: E402
                               ModelSpec, SpecError, decode_cam_weights,
                               encode_cam_weights, spec_from_metadata)


class FidelityError(ExportError):
    """The INT8 model strays from the fp32 one beyond the limits."""


@dataclass(frozen=True)
class Int8Request:
    fp32_model: Path
    calibration_images: Path
    output: Path | None = None
    options: QuantizeOptions = field(default_factory=QuantizeOptions)
    held_out_images: int = 2000
    fidelity_tta: str = "none"
    limits: fidelity.FidelityLimits = field(default_factory=fidelity.FidelityLimits)
    enforce_limits: bool = True
    bias_correction: bool = True
    threads: int = 1
    calibration_cache: Path | None = None  # activation ranges, reused across variants
    fp32_answers: fidelity.Answers | None = None  # the fp32 model on the held-out images
    # Re-measure reduced-scale JPEG decoding on the INT8 model (export/reduced_decode.py)
    # where the fp32 spec carries such a measurement: the ratio is this graph's own.
    measure_reduced_decode: bool = True
    # Measure each quantised node's share of the error and keep the fewest fp32 that meet
    # the limits on the calibration images (export/sensitivity.py), each limit scaled by
    # `selection_margin` so the held-out images have room to differ.
    mixed_precision: bool = False
    selection_margin: float = 0.8
    sensitivity_images: int = 32


@dataclass(frozen=True)
class Int8Result:
    output: Path
    spec: ModelSpec
    fidelity: fidelity.Fidelity
    failures: tuple[str, ...]
    onnx_sha256: str


def export_int8(request: Int8Request) -> Int8Result:
    """Quantise, measure on held-out images, refuse or publish with the fidelity in the spec."""
    output = request.output or int8_path(request.fp32_model)
    props = _metadata(request.fp32_model)
    spec = spec_from_metadata(props)
    if spec.quantization:
        raise ExportError(f"{request.fp32_model} is already quantised; give the fp32 model")
    tta.views_for(request.fidelity_tta)
    split = split_images(request.calibration_images, request.options.calibration_size,
                         request.held_out_images)
    handle, name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".partial",
                                    dir=output.parent)
    os.close(handle)
    partial = Path(name)
    options, selection = request.options, None
    try:
        quantize_model(request.fp32_model, partial, ImageReader(split.calibration, spec),
                       options, spec.features_name, request.calibration_cache)
        if request.mixed_precision:
            selection = _keep_sensitive_nodes_fp32(request, partial, split.calibration, spec)
        if request.bias_correction:
            props = _correct_logit_bias(request.fp32_model, partial, split.calibration,
                                        spec, props, request.threads)
        embed_metadata(partial, props)  # the fp32 spec for now, so the measurement can load it
        measured = fidelity.measure(request.fp32_model, partial, split.held_out,
                                    request.fidelity_tta, request.threads,
                                    request.fp32_answers)
        failures = tuple(measured.failures(request.limits))
        if failures and request.enforce_limits:
            raise FidelityError(
                f"INT8 model refused, fidelity vs fp32 on {measured.images} held-out images "
                f"misses its limits: {'; '.join(failures)} (widen --max-auc-change, "
                "--max-p99-delta, --max-flip-rate, or pass --accept-low-fidelity)")
        record = {**options.as_dict(), "precision": "int8",
                  "bias_correction": "logit" if request.bias_correction else "none",
                  "calibration_source": split.source, "fidelity": measured.as_dict(),
                  "limits": dataclasses.asdict(request.limits), "limits_met": not failures,
                  "fp32_model": {"name": request.fp32_model.name,
                                 "sha256": sha256_of(request.fp32_model)}}
        if selection is not None:
            record["sensitivity"] = selection.as_dict()
        spec = dataclasses.replace(spec, quantization=record, **_reduced_decode(request,
                                                                         partial, spec))
        embed_metadata(partial, {**props, SPEC_METADATA_KEY: spec.to_json()})
        if spec_from_metadata(_metadata(partial)) != spec:
            raise ExportError("the INT8 spec read back differs from the one written")
        os.chmod(partial, 0o644)
        os.replace(partial, output)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    digest = sha256_of(output)
    output.with_name(output.name + ".provenance.json").write_text(json.dumps(
        {"model": output.name, "onnx_sha256": digest, "spec": spec.as_dict()},
        indent=2, sort_keys=True) + "\n")
    return Int8Result(output, spec, measured, failures, digest)


def _keep_sensitive_nodes_fp32(request: Int8Request, qdq: Path,
                               calibration: tuple[SourceImage, ...],
                               spec: ModelSpec) -> sensitivity.Selection:
    """Find the nodes that carry the error on the calibration images and rewrite `qdq` as
    the fp32 graph with every other node's QDQ grafted on: the graph measured is the one
    shipped. (ORT's own node exclusion would still round a kept node's inputs wherever
    their producer is quantised.)"""
    inputs = np.concatenate([model_input(image, spec) for image in calibration])
    margin = request.selection_margin
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        prepare(request.fp32_model, prepared)
        selection = sensitivity.select(prepared, qdq, inputs, spec,
                                       request.limits.max_p99_abs_delta * margin,
                                       request.limits.max_flip_rate * margin,
                                       request.sensitivity_images, request.threads,
                                       _progress)
        fp32, full = onnx.load(str(prepared)), onnx.load(str(qdq))
        kept = set(selection.fp32_nodes)
        onnx.save(sensitivity.graft(fp32, full, [
            n.name for n in sensitivity.quantised_nodes(full) if n.name not in kept]), str(qdq))
    return selection


def _progress(done: int, total: int) -> None:
    if done % 50 == 0 or done == total:
        print(f"sensitivity: {done}/{total} nodes measured", file=sys.stderr, flush=True)


def _reduced_decode(request: Int8Request, int8_model: Path, spec: ModelSpec) -> dict[str, Any]:
    """The INT8 graph's own reduced-decode spec fields, where the fp32 spec was measured."""
    if not (request.measure_reduced_decode and spec.jpeg_reduced_decode_fidelity):
        return {}
    from export import reduced_decode

    earlier = spec.jpeg_reduced_decode_fidelity
    measured = reduced_decode.measure(int8_model, reduced_decode.phone_photos(earlier["photos"]),
                                      earlier["max_delta"])
    return reduced_decode.spec_fields(measured)


def _metadata(path: Path) -> dict[str, str]:
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def _correct_logit_bias(fp32_model: Path, int8_model: Path,
                        calibration: tuple[SourceImage, ...], spec: ModelSpec,
                        props: dict[str, str], threads: int) -> dict[str, str]:
    """Shift the fp32 classifier's bias by the mean logit error on the calibration images."""
    from inference.runtime import ort

    def logits(path: Path) -> np.ndarray:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return np.concatenate([session.run([spec.logits_name], {
            spec.input_name: model_input(image, spec)})[0] for image in calibration])

    shift = (logits(fp32_model) - logits(int8_model)).mean(axis=0)
    shift_logit_bias(int8_model, shift, spec.logits_name)
    weights, bias = decode_cam_weights(props[CAM_WEIGHTS_METADATA_KEY])
    index = spec.melanoma_index if spec.output_kind == "softmax" else 0
    return {**props, CAM_WEIGHTS_METADATA_KEY: encode_cam_weights(
        weights, bias + float(shift[index]))}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The INT8 options, shared by this CLI and export/to_onnx.py."""
    group = parser.add_argument_group("INT8 quantisation")
    group.add_argument("--calibration-images", type=Path,
                       help="folder of .jpg/.png, or the ISIC layout (train.csv + jpeg/); "
                            "split by name hash into calibration and held-out images")
    group.add_argument("--calibration-method", choices=sorted(METHODS),
                       default=QuantizeOptions.method, help="how activation ranges are chosen")
    group.add_argument("--calibration-size", type=int, default=QuantizeOptions.calibration_size,
                       help="images used to calibrate")
    group.add_argument("--held-out-images", type=int, default=2000,
                       help="most held-out images fidelity is measured on")
    group.add_argument("--fidelity-tta", choices=sorted(tta.POLICIES), default="none",
                       help="TTA views while measuring fidelity (one view is the strictest)")
    group.add_argument("--keep-fp32", nargs="*", choices=KEEPABLE,
                       default=list(QuantizeOptions.keep_fp32),
                       help="parts left unquantised")
    group.add_argument("--per-tensor", action="store_true",
                       help="one weight scale per tensor instead of per output channel")
    group.add_argument("--reduce-range", action="store_true",
                       help="7-bit weights, the usual cure for saturation in AVX2's u8s8 "
                            "multiply (it did not help on the demo model)")
    group.add_argument("--qdq-placement", choices=PLACEMENTS, default=QuantizeOptions.placement,
                       help="QDQ around every quantisable op, or around convolutions only")
    group.add_argument("--bias-correction", action=argparse.BooleanOptionalAction,
                       default=True,
                       help="shift the fp32 classifier's bias by the mean logit error of the "
                            "INT8 graph on the calibration images (needs the classifier fp32)")
    group.add_argument("--mixed-precision", action="store_true",
                       help="measure each quantised node's share of the error on the "
                            "calibration images and keep the fewest fp32 that meet the limits")
    group.add_argument("--selection-margin", type=float, default=Int8Request.selection_margin,
                       help="with --mixed-precision: meet this share of each limit on the "
                            "calibration images")
    group.add_argument("--sensitivity-images", type=int,
                       default=Int8Request.sensitivity_images,
                       help="with --mixed-precision: calibration images each node is ranked on")
    group.add_argument("--max-auc-change", type=float, default=0.002,
                       help="largest |AUC change| vs fp32 accepted (labelled images only)")
    group.add_argument("--max-p99-delta", type=float, default=0.02,
                       help="largest 99th percentile of |Δ probability| vs fp32 accepted")
    group.add_argument("--max-flip-rate", type=float, default=0.005,
                       help="largest share of decisions at the threshold that may flip")
    group.add_argument("--accept-low-fidelity", action="store_true",
                       help="write the INT8 model even when it misses the limits "
                            "(the spec records that it did)")
    group.add_argument("--int8-threads", type=int, default=1,
                       help="ONNX Runtime threads while measuring fidelity")


def request_from_args(fp32_model: Path, args: argparse.Namespace,
                      output: Path | None = None) -> Int8Request:
    if args.calibration_images is None:
        raise ExportError("--int8 needs --calibration-images DIR")
    options = QuantizeOptions(method=args.calibration_method, per_channel=not args.per_tensor,
                              keep_fp32=tuple(args.keep_fp32), placement=args.qdq_placement,
                              calibration_size=args.calibration_size,
                              reduce_range=args.reduce_range)
    limits = fidelity.FidelityLimits(args.max_auc_change, args.max_p99_delta,
                                     args.max_flip_rate)
    return Int8Request(fp32_model, args.calibration_images, output, options,
                       args.held_out_images, args.fidelity_tta, limits,
                       not args.accept_low_fidelity, args.bias_correction, args.int8_threads,
                       mixed_precision=args.mixed_precision,
                       selection_margin=args.selection_margin,
                       sensitivity_images=args.sensitivity_images)


def report(result: Int8Result) -> str:
    f = result.fidelity
    lines = [f"wrote {result.output} (INT8, sha256 {result.onnx_sha256})",
             f"fidelity vs fp32 on {f.images} held-out images (TTA {f.tta}): "
             f"max |Δp| {f.max_abs_delta:.4f}, p99 |Δp| {f.p99_abs_delta:.4f}, "
             f"flips {f.flips} ({f.flip_rate:.2%}), heatmap r mean {f.heatmap_correlation_mean:.3f}"
             f" p5 {f.heatmap_correlation_p5:.3f}"]
    if f.flips and f.flip_logit_distance_max is not None:
        band = "0.25"
        lines.append(f"flipped decisions lay within {f.flip_logit_distance_max:.3f} log-odds of "
                     f"the threshold (median {f.flip_logit_distance_median:.3f}); "
                     f"{f.flips_within.get(band, 0)} of {f.images_within.get(band, 0)} images "
                     f"within {band} of it flipped")
    if f.auc_change is not None and f.auc_change_ci95 is not None:
        lines.append(f"AUC fp32 {f.auc_fp32:.4f} -> int8 {f.auc_int8:.4f} "
                     f"(change {f.auc_change:+.4f}, 95% CI {f.auc_change_ci95[0]:+.4f} to "
                     f"{f.auc_change_ci95[1]:+.4f}, {f.positives} positives)")
    chosen = result.spec.quantization.get("sensitivity") if result.spec else None
    if chosen:
        lines.append(f"kept fp32 by measured sensitivity: {chosen['kept_fp32']} of "
                     f"{chosen['quantised_nodes']} quantised nodes "
                     f"({', '.join(chosen['fp32_nodes'][:8])}"
                     f"{', ...' if chosen['kept_fp32'] > 8 else ''})")
    if result.failures:
        lines.append("ACCEPTED BELOW LIMITS: " + "; ".join(result.failures))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="the exported fp32 .onnx")
    parser.add_argument("-o", "--output", type=Path,
                        help="where the INT8 model goes (default: <model>.int8.onnx)")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        result = export_int8(request_from_args(args.model, args, args.output))
    except (ExportError, SpecError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(report(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
