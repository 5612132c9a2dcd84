"""The side-by-side benchmark runs end to end at tiny settings; nothing here is timed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import inference
from bench.flops import macs_per_image


def test_benchmark_writes_json_and_table_with_every_path(
        tiny_onnx_model: Path, tiny_checkpoint: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "results.json"
    assert inference.main([
        "--model", str(tiny_onnx_model), "--checkpoint", str(tiny_checkpoint), "--rounds", "1",
        "--repeats", "2", "--warmup", "0", "--matrix-size", "128",
        "--peak-libraries", "numpy", "--json", str(output)]) == 0
    report = json.loads(output.read_text())
    (case,) = report["cases"]
    assert set(case["paths"]) == {"ours", "torch-per-view", "torch-batched"}
    ours = case["paths"]["ours"]
    assert ours["torch_imported"] is False
    assert ours["samples"] == 2 and len(ours["view_probabilities"]) == 8
    assert 0 < ours["steady_rss_mib"] <= ours["peak_rss_mib"]
    for baseline in ("torch-per-view", "torch-batched"):
        assert case["comparison"][baseline]["max_abs_diff_probability"] < 1e-5
        assert case["paths"][baseline]["cold_start_median_s"] > 0
    assert report["peak_gflops"] > 0
    assert {t["target"] for t in case["targets"]} >= {"cold start < 1 s"}
    table = capsys.readouterr().out
    assert "| 64 px, 8 views | latency median (ms) |" in table


def test_macs_counted_from_the_graph_equal_the_pytorch_layers(tiny_onnx_model: Path) -> None:
    import torch

    from export.architectures import ARCHITECTURES
    from tests.conftest import TINY_ARCH, TINY_SIZE

    network = ARCHITECTURES[TINY_ARCH].build(1).eval()
    counted = []

    def count(module: torch.nn.Module, _: object, output: torch.Tensor) -> None:
        pixels = output.shape[2] * output.shape[3] if output.ndim == 4 else 1
        counted.append(module.weight.numel() * pixels)

    for module in network.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            module.register_forward_hook(count)
    with torch.inference_mode():
        network(torch.zeros(1, 3, TINY_SIZE, TINY_SIZE))
    assert macs_per_image(tiny_onnx_model) == sum(counted)


def test_benchmark_requires_a_checkpoint_per_model(tiny_onnx_model: Path) -> None:
    with pytest.raises(SystemExit):
        inference.main(["--model", str(tiny_onnx_model)])
