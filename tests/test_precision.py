"""Which file the server runs: fp32, or the gated INT8 model beside it where it is faster here."""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402

from bench.lesion_images import write_isic_folder  # noqa: E402
from export import int8  # noqa: E402
from export.fidelity import FidelityLimits  # noqa: E402
from export.quantize import QuantizeOptions  # noqa: E402
from inference import precision  # noqa: E402
from inference.errors import ModelLoadError  # noqa: E402
from inference.precision import CpuFeatures, Timing  # noqa: E402

VNNI = CpuFeatures("x86_64", ("avx2", "avx512f", "avx512_vnni"))
AVX2 = CpuFeatures("x86_64", ("avx2",))
LOOSE = FidelityLimits(max_auc_change=1.0, max_p99_abs_delta=1.0, max_flip_rate=1.0)
STRICT = FidelityLimits(max_auc_change=0.0, max_p99_abs_delta=0.0, max_flip_rate=0.0)


def _pair(root: Path, source: Path, lesions: Path, limits: FidelityLimits) -> Path:
    root.mkdir()
    fp32 = root / "m.onnx"
    shutil.copy(source, fp32)
    int8.export_int8(int8.Int8Request(
        fp32, lesions, None, QuantizeOptions(calibration_size=4), held_out_images=4,
        limits=limits, enforce_limits=False, measure_reduced_decode=False))
    return fp32


@pytest.fixture(scope="module")
def models(tiny_onnx_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """fp32 models with an INT8 model beside them: one gated, one that missed its gate."""
    root = tmp_path_factory.mktemp("precision")
    lesions = write_isic_folder(root / "lesions", 8, width=96, height=96)
    return {"gated": _pair(root / "gated", tiny_onnx_model, lesions, LOOSE),
            "missed": _pair(root / "missed", tiny_onnx_model, lesions, STRICT)}


class Bench:
    """A benchmark with a fixed answer that counts its calls."""

    def __init__(self, fp32_ms: float, int8_ms: float) -> None:
        self.timing, self.calls = Timing(fp32_ms, int8_ms), 0

    def __call__(self, fp32: Path, int8_model: Path) -> Timing:
        self.calls += 1
        return self.timing


def test_cpu_flags_are_read_for_x86_and_arm() -> None:
    x86 = precision.cpu_features("flags\t: fpu avx2 avx512f avx512_vnni amx_int8 sse4_2\n",
                                 "x86_64")
    assert x86.flags == ("avx2", "avx512f", "avx512_vnni", "amx_int8")
    assert x86.int8_dot_product
    arm = precision.cpu_features("Features\t: fp asimd asimddp i8mm\n", "aarch64")
    assert arm.flags == ("asimddp", "i8mm") and arm.int8_dot_product
    assert not precision.cpu_features("flags\t: fpu avx2 fma\n", "x86_64").int8_dot_product


def test_gated_int8_that_is_faster_here_is_served(models: dict[str, Path]) -> None:
    choice = precision.choose(models["gated"], benchmark=Bench(100.0, 40.0), cpu=VNNI)
    assert choice.path == precision.int8_path(models["gated"])
    assert "gated" in choice.reason and "2.50x" in choice.reason
    shown = choice.as_dict()
    assert shown["int8_speedup"] == 2.5 and shown["cpu_int8_flags"] == list(VNNI.flags)


def test_gated_int8_no_faster_here_leaves_fp32(models: dict[str, Path]) -> None:
    choice = precision.choose(models["gated"], benchmark=Bench(100.0, 95.0), cpu=AVX2)
    assert choice.path == models["gated"]
    assert choice.reason.startswith("fp32:") and "1.05x" in choice.reason


def test_int8_that_missed_its_gate_is_never_timed_nor_served(models: dict[str, Path]) -> None:
    bench = Bench(100.0, 10.0)
    choice = precision.choose(models["missed"], benchmark=bench, cpu=VNNI)
    assert choice.path == models["missed"] and "missed its fidelity gate" in choice.reason
    assert bench.calls == 0
    with pytest.raises(ModelLoadError, match="missed its fidelity gate"):
        precision.choose(models["missed"], "int8", benchmark=bench, cpu=VNNI)


def test_int8_of_another_fp32_file_is_not_served(models: dict[str, Path],
                                                 tmp_path: Path) -> None:
    fp32 = tmp_path / "m.onnx"
    fp32.write_bytes(models["gated"].read_bytes() + b"\0")  # another file, same name
    shutil.copy(precision.int8_path(models["gated"]), precision.int8_path(fp32))
    choice = precision.choose(fp32, benchmark=Bench(100.0, 10.0), cpu=VNNI)
    assert choice.path == fp32 and "another fp32 file" in choice.reason


def test_without_int8_beside_or_when_fp32_is_asked_the_configured_file_is_served(
        tiny_onnx_model: Path, models: dict[str, Path]) -> None:
    bench = Bench(100.0, 10.0)
    alone = precision.choose(tiny_onnx_model, benchmark=bench, cpu=VNNI)
    assert alone.path == tiny_onnx_model and "no INT8 model beside it" in alone.reason
    asked = precision.choose(models["gated"], "fp32", benchmark=bench, cpu=VNNI)
    assert asked.path == models["gated"] and bench.calls == 0
    with pytest.raises(ModelLoadError, match="MODEL_PRECISION"):
        precision.choose(tiny_onnx_model, "fast", cpu=VNNI)


def test_benchmark_is_kept_per_model_pair_and_cpu(models: dict[str, Path],
                                                  tmp_path: Path) -> None:
    bench = Bench(100.0, 40.0)
    for _ in range(2):
        precision.choose(models["gated"], cache_dir=tmp_path, benchmark=bench, cpu=VNNI)
    assert bench.calls == 1
    other = precision.choose(models["gated"], cache_dir=tmp_path, benchmark=Bench(100.0, 99.0),
                             cpu=AVX2)
    assert other.path == models["gated"]  # its own measurement, not VNNI's
    again = precision.choose(models["gated"], cache_dir=tmp_path, benchmark=bench, cpu=VNNI)
    assert again.timing == bench.timing and bench.calls == 1


def test_real_benchmark_times_both_files(models: dict[str, Path]) -> None:
    timing = precision.measure(models["gated"], precision.int8_path(models["gated"]),
                               views=2, size=64, repeats=2)
    assert timing.fp32_ms > 0 and timing.int8_ms > 0


def test_model_api_and_log_say_which_file_is_served_and_why(
        models: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    from webapp.app import create_app

    monkeypatch.setattr(precision, "measure", lambda *args, **kwargs: Timing(100.0, 40.0))
    caplog.set_level(logging.INFO)
    app = create_app({"TESTING": True, "MODEL_PATH": str(models["gated"])})
    described = app.test_client().get("/api/v1/model").get_json()
    assert described["precision"] == "int8"
    assert described["precision_choice"]["int8_speedup"] == 2.5
    assert "gated, and 2.50x" in described["precision_choice"]["reason"]
    assert any("m.int8.onnx" in r.getMessage() and "2.50x" in r.getMessage()
               for r in caplog.records)
    fixed = create_app({"TESTING": True, "MODEL_PATH": str(models["gated"]),
                        "MODEL_PRECISION": "fp32"})
    assert fixed.test_client().get("/api/v1/model").get_json()["precision"] == "fp32"
