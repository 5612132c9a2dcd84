"""Mixed precision by measured sensitivity: graft, rank, choose, and the export that uses them."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import pytest  # noqa: E402

from bench.lesion_images import write_isic_folder  # noqa: E402
from export import int8, sensitivity  # noqa: E402
from export.calibration import ImageReader, model_input, split_images  # noqa: E402
from export.fidelity import FidelityLimits  # noqa: E402
from export.quantize import QuantizeOptions, prepare, quantize_model  # noqa: E402
from inference.model_spec import read_spec_file  # noqa: E402

CALIBRATION = 8


@pytest.fixture(scope="module")
def lesions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_isic_folder(tmp_path_factory.mktemp("lesions"), CALIBRATION + 8,
                             width=96, height=96)


@pytest.fixture(scope="module")
def graphs(tiny_onnx_model: Path, lesions: Path,
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The tiny model prepared for quantisation, its QDQ graph, and a runner over 8 images."""
    root = tmp_path_factory.mktemp("graphs")
    spec = read_spec_file(tiny_onnx_model)
    calibration = split_images(lesions, CALIBRATION, 8).calibration
    prepare(tiny_onnx_model, root / "prepared.onnx")
    quantize_model(tiny_onnx_model, root / "qdq.onnx", ImageReader(calibration, spec),
                   QuantizeOptions(calibration_size=CALIBRATION))
    inputs = np.concatenate([model_input(image, spec) for image in calibration])
    return {"fp32": onnx.load(str(root / "prepared.onnx")),
            "qdq": onnx.load(str(root / "qdq.onnx")), "spec": spec,
            "run": sensitivity.session_runner(inputs, spec)}


def test_grafting_no_node_is_the_fp32_graph_and_every_node_the_qdq_graph(
        graphs: dict[str, object]) -> None:
    fp32, qdq, run = graphs["fp32"], graphs["qdq"], graphs["run"]
    assert isinstance(fp32, onnx.ModelProto) and isinstance(qdq, onnx.ModelProto)
    assert callable(run)
    everything = [n.name for n in sensitivity.quantised_nodes(qdq)]
    assert len(everything) > 20
    np.testing.assert_array_equal(run(sensitivity.graft(fp32, qdq, [])), run(fp32))
    grafted = run(sensitivity.graft(fp32, qdq, everything))
    np.testing.assert_allclose(grafted, run(qdq), atol=1e-4)
    assert np.abs(grafted - run(fp32)).max() > 1e-3  # the rounding is really there


def test_graft_refuses_a_node_the_fp32_graph_lacks(graphs: dict[str, object]) -> None:
    fp32, qdq = graphs["fp32"], graphs["qdq"]
    assert isinstance(fp32, onnx.ModelProto) and isinstance(qdq, onnx.ModelProto)
    with pytest.raises(Exception, match="not in the fp32 graph"):
        sensitivity.graft(fp32, qdq, ["/no/such/Conv"])


def test_ranking_covers_every_quantised_node_most_harmful_first(
        graphs: dict[str, object]) -> None:
    fp32, qdq, run, spec = graphs["fp32"], graphs["qdq"], graphs["run"], graphs["spec"]
    ranking = sensitivity.rank(fp32, qdq, run, spec)  # type: ignore[arg-type]
    assert {s.name for s in ranking} == {
        n.name for n in sensitivity.quantised_nodes(qdq)}  # type: ignore[arg-type]
    errors = [s.logit_error_sd for s in ranking]
    assert errors == sorted(errors, reverse=True) and errors[0] > 0


def test_choice_keeps_the_fewest_top_nodes_that_meet_the_limits(
        graphs: dict[str, object]) -> None:
    fp32, qdq, run, spec = graphs["fp32"], graphs["qdq"], graphs["run"], graphs["spec"]
    ranking = sensitivity.rank(fp32, qdq, run, spec)  # type: ignore[arg-type]
    full = next(t for t in sensitivity.choose(fp32, qdq, ranking, run, spec,  # type: ignore[arg-type]
                                              1.0, 1.0)[1] if t.kept_fp32 == 0)
    target = full.p99_abs_delta / 2
    names, tried = sensitivity.choose(fp32, qdq, ranking, run, spec,  # type: ignore[arg-type]
                                      target, 1.0)
    assert names == [s.name for s in ranking[:len(names)]] and names
    met = {t.kept_fp32: t.p99_abs_delta <= target for t in tried}
    assert met[len(names)] and not met.get(len(names) - 1, False)


def test_mixed_precision_export_keeps_the_chosen_nodes_fp32_and_records_why(
        tiny_onnx_model: Path, lesions: Path, tmp_path: Path) -> None:
    limits = FidelityLimits(max_auc_change=1.0, max_p99_abs_delta=0.002, max_flip_rate=1.0)
    result = int8.export_int8(int8.Int8Request(
        tiny_onnx_model, lesions, tmp_path / "mixed.int8.onnx",
        QuantizeOptions(calibration_size=CALIBRATION), held_out_images=8, limits=limits,
        enforce_limits=False, mixed_precision=True, measure_reduced_decode=False))
    record = result.spec.quantization
    kept = record["sensitivity"]["fp32_nodes"]
    assert kept and record["sensitivity"]["kept_fp32"] == len(kept)
    assert record["sensitivity"]["most_sensitive"][0]["node"] == kept[0]
    graph = onnx.load(str(result.output)).graph
    producer = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        if node.name in kept:
            assert all(producer.get(i) is None or producer[i].op_type != "DequantizeLinear"
                       for i in node.input)
    assert "kept fp32 by measured sensitivity" in int8.report(result)
