"""What a model costs to serve, measured at export and checked against the instance."""
from __future__ import annotations

from pathlib import Path

import pytest

from export import to_onnx
from infra import fit
from inference.model_spec import read_spec_file


def test_export_records_the_measured_memory_and_latency(
        tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "measured.onnx"
    assert to_onnx.main([str(tiny_checkpoint), "-o", str(output), "--input-size", "64"]) == 0
    cost = read_spec_file(output).measured_cost
    assert "measured cost: worker peak" in capsys.readouterr().out
    # A fresh worker holds numpy, OpenCV and ONNX Runtime (well over 50 MiB) before any weight.
    assert 50 < cost["resting_mib"] <= cost["worker_peak_mib"]
    assert cost["load_peak_mib"] <= cost["worker_peak_mib"]
    assert cost["per_view_mib"] >= 0
    latency = cost["latency_ms"]
    assert set(latency) == {"none", "flips", "dihedral"}
    assert 0 < latency["none"] < latency["dihedral"]
    assert cost["threads"] == 1 and cost["cpu"]


def test_the_budget_counts_the_loading_peak_and_the_rest_of_the_tree() -> None:
    loading_bound = {"load_peak_mib": 500.0, "resting_mib": 300.0, "per_view_mib": 10.0}
    assert fit.need_mib(loading_bound) == 500.0 + 192.0
    view_bound = {"load_peak_mib": 300.0, "resting_mib": 400.0, "per_view_mib": 20.0}
    assert fit.need_mib(view_bound) == 420.0 + 192.0


def test_a_model_too_big_for_the_instance_names_the_size_that_fits() -> None:
    cost = {"load_peak_mib": 1000.0, "resting_mib": 600.0, "per_view_mib": 10.0}
    verdict = fit.check(cost, "t4g.micro")
    assert not verdict.fits
    assert "t4g.small fits (deploy --instance-type t4g.small)" in verdict.sentence()
    huge = {"load_peak_mib": 5000.0, "resting_mib": 3000.0, "per_view_mib": 10.0}
    assert "no t3 size fits" in fit.check(huge, "t3.micro").sentence()


def test_where_it_fits_the_sentence_names_the_tta_policy_that_runs_in_one_batch() -> None:
    cost = {"load_peak_mib": 400.0, "resting_mib": 380.0, "per_view_mib": 15.0}
    verdict = fit.check(cost, "t3.micro")
    assert verdict.fits
    # 380 + 192 + 4 x 15 = 632 <= 675 < 380 + 192 + 8 x 15
    assert "TTA flips runs its views in one batch" in verdict.sentence()
