"""INT8 export: the quantiser on a shallow network, the fidelity gate, the spec, serving."""
from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnx.numpy_helper  # noqa: E402
import pytest  # noqa: E402

from bench.lesion_images import write_isic_folder  # noqa: E402
from export import fidelity, int8, reduced_decode, to_onnx  # noqa: E402
from export.calibration import SourceImage, split_images  # noqa: E402
from export.fidelity import FidelityLimits  # noqa: E402
from export.errors import ExportError  # noqa: E402
from export.quantize import QuantizeOptions, nodes_kept_fp32  # noqa: E402
from inference.classifier import Classifier  # noqa: E402
from inference.model_spec import ModelSpec, read_spec_file  # noqa: E402

CALIBRATION = 8
HELD_OUT = 24
FAST = QuantizeOptions(method="minmax", calibration_size=CALIBRATION)
LOOSE = FidelityLimits(max_auc_change=1.0, max_p99_abs_delta=1.0, max_flip_rate=1.0)


@pytest.fixture(scope="session")
def lesion_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small ISIC-layout set (train.csv + jpeg/train/) of generated lesions."""
    return write_isic_folder(tmp_path_factory.mktemp("lesions"), CALIBRATION + HELD_OUT,
                             width=160, height=120)


@pytest.fixture(scope="session")
def int8_model(tiny_onnx_model: Path, lesion_folder: Path,
               tmp_path_factory: pytest.TempPathFactory) -> int8.Int8Result:
    output = tmp_path_factory.mktemp("int8") / "tiny.int8.onnx"
    return int8.export_int8(int8.Int8Request(
        tiny_onnx_model, lesion_folder, output, FAST, held_out_images=HELD_OUT, limits=LOOSE))


def test_quantiser_writes_a_qdq_u8s8_graph_a_quarter_the_size(
        int8_model: int8.Int8Result, tiny_onnx_model: Path) -> None:
    graph = onnx.load(str(int8_model.output)).graph
    ops = [node.op_type for node in graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10
    initializers = {t.name: t for t in graph.initializer}
    weights = [initializers[n.input[0]] for n in graph.node if n.op_type == "DequantizeLinear"
               and n.input[0] in initializers and len(initializers[n.input[0]].dims) == 4]
    assert weights and all(w.data_type == onnx.TensorProto.INT8 for w in weights)
    activations = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    zero_points = [initializers[n.input[2]] for n in activations if n.input[2] in initializers]
    assert zero_points and all(z.data_type == onnx.TensorProto.UINT8 for z in zero_points)
    assert int8_model.output.stat().st_size < tiny_onnx_model.stat().st_size / 3


def test_first_conv_and_classifier_stay_fp32(int8_model: int8.Int8Result) -> None:
    graph = onnx.load(str(int8_model.output)).graph
    producer = {output: node for node in graph.node for output in node.output}
    gemm = next(node for node in graph.node if node.op_type == "Gemm")
    first_conv = next(node for node in graph.node if node.op_type == "Conv")
    assert producer.get(gemm.input[1]) is None  # fp32 weights, not a DequantizeLinear
    assert producer.get(first_conv.input[1]) is None
    later_conv = [node for node in graph.node if node.op_type == "Conv"][5]
    assert producer[later_conv.input[1]].op_type == "DequantizeLinear"


@pytest.mark.parametrize("keep, fp32_stages", [("last-stage", ("/layer4/",)),
                                               ("last-two-stages", ("/layer3/", "/layer4/"))])
def test_kept_stages_stay_fp32_and_the_stage_before_is_int8(
        tiny_onnx_model: Path, lesion_folder: Path, tmp_path: Path, keep: str,
        fp32_stages: tuple[str, ...]) -> None:
    options = QuantizeOptions(method="minmax", calibration_size=CALIBRATION,
                              keep_fp32=("first-conv", "classifier", keep))
    result = int8.export_int8(int8.Int8Request(
        tiny_onnx_model, lesion_folder, tmp_path / "kept.int8.onnx", options,
        held_out_images=4, limits=LOOSE))
    graph = onnx.load(str(result.output)).graph
    producer = {output: node for node in graph.node for output in node.output}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    kept = [node for node in convs if node.name.startswith(fp32_stages)]
    before = f"/layer{int(fp32_stages[0][6]) - 1}/"
    quantised = [node for node in convs if node.name.startswith(before)]
    assert kept and quantised
    assert all(producer.get(node.input[1]) is None for node in kept)
    assert all(producer[node.input[1]].op_type == "DequantizeLinear" for node in quantised)
    assert keep in result.spec.quantization["kept_fp32"]


def test_keeping_the_last_stage_needs_named_stages() -> None:
    conv = onnx.helper.make_node("Conv", ["x", "w"], ["y"], name="conv")
    graph = onnx.helper.make_graph(
        [conv], "unnamed", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                               [1, 1, 4, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")])
    with pytest.raises(ExportError, match="last stage"):
        nodes_kept_fp32(onnx.helper.make_model(graph), ("last-stage",), "features")


def test_fp32_answers_given_once_give_the_same_fidelity(
        int8_model: int8.Int8Result, tiny_onnx_model: Path, lesion_folder: Path) -> None:
    held_out = split_images(lesion_folder, CALIBRATION, HELD_OUT).held_out
    answers = fidelity.answer(Classifier(tiny_onnx_model), held_out)
    given = fidelity.measure(tiny_onnx_model, int8_model.output, held_out,
                             fp32_answers=answers)
    assert given == fidelity.measure(tiny_onnx_model, int8_model.output, held_out)
    with pytest.raises(ValueError, match="other images"):
        fidelity.measure(tiny_onnx_model, int8_model.output, held_out[1:], fp32_answers=answers)


def test_fidelity_against_fp32_is_in_the_spec(int8_model: int8.Int8Result) -> None:
    spec = read_spec_file(int8_model.output)
    assert spec.precision == "int8"
    measured = spec.quantization["fidelity"]
    assert measured["images"] == HELD_OUT
    assert 0 <= measured["p99_abs_delta"] <= measured["max_abs_delta"] < 1
    assert 0 <= measured["flip_rate"] <= 1 and measured["auc_fp32"] is not None
    low, high = measured["auc_change_ci95"]
    assert low <= high
    assert -1 <= measured["heatmap_correlation_mean"] <= 1
    assert spec.quantization["calibration_images"] == CALIBRATION
    assert spec.quantization["per_channel"] is True
    assert spec.quantization["bias_correction"] == "logit"
    assert spec.quantization["fp32_model"]["sha256"]


def test_spec_round_trips_with_and_without_quantization(int8_model: int8.Int8Result) -> None:
    spec = int8_model.spec
    assert ModelSpec.from_json(spec.to_json()) == spec
    old = json.loads(spec.to_json())
    del old["quantization"]  # a model exported before INT8 existed
    assert ModelSpec.from_json(json.dumps(old)).precision == "fp32"


def test_export_refuses_int8_that_misses_the_limits_and_writes_nothing(
        tiny_onnx_model: Path, lesion_folder: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "strict.int8.onnx"
    code = int8.main([str(tiny_onnx_model), "-o", str(output), "--calibration-images",
                      str(lesion_folder), "--calibration-size", str(CALIBRATION),
                      "--calibration-method", "minmax", "--held-out-images", str(HELD_OUT),
                      "--max-p99-delta", "0", "--max-flip-rate", "1", "--max-auc-change", "1"])
    error = capsys.readouterr().err
    assert code == 1
    assert error.startswith("error: INT8 model refused") and "p99 |Δp|" in error
    assert error.count("\n") == 1
    assert not output.exists() and list(tmp_path.iterdir()) == []


def test_to_onnx_int8_flag_writes_both_models(tmp_path: Path, lesion_folder: Path,
                                              tiny_checkpoint: Path) -> None:
    output = tmp_path / "both.onnx"
    assert to_onnx.main([str(tiny_checkpoint), "-o", str(output), "--int8",
                         "--calibration-images", str(lesion_folder), "--calibration-size",
                         str(CALIBRATION), "--calibration-method", "minmax",
                         "--held-out-images", "8", "--accept-low-fidelity"]) == 0
    assert read_spec_file(output).precision == "fp32"
    assert read_spec_file(tmp_path / "both.int8.onnx").precision == "int8"


def test_cli_flags_reach_the_quantiser_options(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    int8.add_arguments(parser)
    args = parser.parse_args(["--calibration-images", str(tmp_path), "--reduce-range",
                              "--keep-fp32", "first-conv", "classifier", "last-two-stages",
                              "--calibration-method", "percentile", "--per-tensor"])
    options = int8.request_from_args(tmp_path / "m.onnx", args).options
    assert options == QuantizeOptions(method="percentile", per_channel=False,
                                      keep_fp32=("first-conv", "classifier", "last-two-stages"),
                                      reduce_range=True)
    assert options.as_dict()["reduce_range"] is True
    defaults = int8.request_from_args(tmp_path / "m.onnx", parser.parse_args(
        ["--calibration-images", str(tmp_path)])).options
    assert defaults == QuantizeOptions()


def test_served_int8_model_says_so_with_its_fidelity(int8_model: int8.Int8Result,
                                                     lesion_jpeg_bytes: bytes) -> None:
    from io import BytesIO

    from webapp.app import create_app

    app = create_app({"TESTING": True, "MODEL_PATH": str(int8_model.output),
                      "WTF_CSRF_ENABLED": False})
    client = app.test_client()
    answer = client.post("/api/v1/predict", data={
        "image": (BytesIO(lesion_jpeg_bytes), "lesion.jpg")}).get_json()
    assert answer["model"]["precision"] == "int8"
    fidelity = answer["model"]["fidelity_vs_fp32"]
    assert fidelity["images"] == HELD_OUT and "p99_abs_delta" in fidelity
    described = client.get("/api/v1/model").get_json()
    assert described["precision"] == "int8"
    assert described["fidelity_vs_fp32"] == fidelity
    assert "calibration_source" not in str(described)  # a path on the exporting machine
    page = client.get("/").get_data(as_text=True)
    assert "INT8" in page and f"on {HELD_OUT} held-out images" in page


def test_int8_measures_reduced_decoding_again_where_the_fp32_spec_did(
        tiny_onnx_model: Path, lesion_folder: Path, tmp_path: Path) -> None:
    fp32 = tmp_path / "measured.onnx"
    shutil.copy(tiny_onnx_model, fp32)
    photos = reduced_decode.phone_photos(2, sizes=((1600, 1200),))
    fp32_measured = reduced_decode.measure(fp32, photos, max_delta=1.0)
    reduced_decode.record(fp32, fp32_measured)
    result = int8.export_int8(int8.Int8Request(
        fp32, lesion_folder, tmp_path / "measured.int8.onnx", FAST, held_out_images=4,
        limits=LOOSE))
    own = result.spec.jpeg_reduced_decode_fidelity
    assert own["photos"] == 2 and own["max_delta"] == 1.0
    # The INT8 graph's own probabilities, not the fp32 record copied over.
    assert own["per_min_ratio"] != fp32_measured["per_min_ratio"]
    assert read_spec_file(result.output) == result.spec
    assert result.onnx_sha256 == json.loads(result.output.with_name(
        result.output.name + ".provenance.json").read_text())["onnx_sha256"]


def test_flips_are_reported_with_their_distance_to_the_threshold() -> None:
    threshold = 0.5
    reference = np.array([0.49, 0.52, 0.9, 0.1, 0.2])
    candidate = np.array([0.51, 0.52, 0.3, 0.1, 0.2])  # one hair's-breadth flip, one far
    flat = np.zeros((5, 2, 2))
    images = [SourceImage(f"i{n}", Path(f"i{n}.jpg")) for n in range(5)]
    measured = fidelity.compare(fidelity.Answers(reference, flat),
                                fidelity.Answers(candidate, flat), images, threshold, "none")
    far = np.log(0.9 / 0.1)
    assert measured.flips == 2
    assert measured.flip_logit_distance_max == pytest.approx(far)
    assert measured.flips_within["0.05"] == 1 and measured.flips_within["1.0"] == 1
    assert measured.images_within["0.1"] == 2  # 0.49 and 0.52 lie near the threshold
    assert int8.report(int8.Int8Result(Path("x"), None, measured, (), "")).count(  # type: ignore[arg-type]
        f"within {far:.3f} log-odds") == 1


def test_no_flips_report_no_distance() -> None:
    same = fidelity.Answers(np.array([0.2, 0.8]), np.zeros((2, 2, 2)))
    images = [SourceImage(f"i{n}", Path(f"i{n}.jpg")) for n in range(2)]
    measured = fidelity.compare(same, same, images, 0.5, "none")
    assert measured.flips == 0 and measured.flip_logit_distance_max is None
    assert measured.flips_within == {str(b): 0 for b in fidelity.FLIP_BANDS}


def test_an_int8_graph_whose_feature_map_changed_shape_is_refused_in_one_line() -> None:
    # Seen on a tf_efficientnet_b3 at 384 px: the quantised graph's map was 11x11, not 12x12.
    images = [SourceImage(f"i{n}", Path(f"i{n}.jpg")) for n in range(2)]
    fp32 = fidelity.Answers(np.array([0.2, 0.8]), np.zeros((2, 12, 12)))
    quantised = fidelity.Answers(np.array([0.2, 0.8]), np.zeros((2, 11, 11)))
    with pytest.raises(ExportError, match=r"^the INT8 graph's feature map is 11x11 where the "
                                          r"fp32 graph's is 12x12"):
        fidelity.compare(fp32, quantised, images, 0.5, "none")
