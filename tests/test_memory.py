"""The memory budget: chunks of TTA views sized from the budget and a view's measured cost."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inference import memory, preprocess
from inference.classifier import Classifier

MIB = memory.MIB


def test_chunks_fill_the_room_beside_the_model_and_the_other_processes() -> None:
    plan = memory.plan_chunks(8, budget_bytes=700 * MIB, resting_bytes=200 * MIB,
                              per_view_bytes=60 * MIB)
    room = 700 - 200 - memory.OTHER_PROCESSES_BYTES // MIB
    assert plan.views_per_run == room // 60 and plan.fits


def test_small_models_run_every_view_at_once() -> None:
    plan = memory.plan_chunks(8, 700 * MIB, 200 * MIB, 4 * MIB)
    assert plan.views_per_run == 8


def test_a_model_too_large_for_the_budget_still_runs_one_view_and_says_so() -> None:
    plan = memory.plan_chunks(8, 400 * MIB, 350 * MIB, 120 * MIB)
    assert plan.views_per_run == 1 and not plan.fits
    assert plan.as_dict()["fits"] is False


@pytest.mark.parametrize(("lines", "files", "expected"), [
    ("0::/system.slice/melanoma.service\n",
     {"system.slice/melanoma.service/memory.max": "786432000\n"}, 786432000),
    ("0::/user.slice\n", {"user.slice/memory.max": "max\n"}, None),
    ("4:memory:/melanoma\n0::/\n",
     {"memory/melanoma/memory.limit_in_bytes": "786432000\n"}, 786432000),
    ("4:memory:/\n", {"memory/memory.limit_in_bytes": "9223372036854771712\n"}, None),
    # In a container sharing the host's cgroup namespace (podman and docker on cgroup v1):
    # /proc names the host's path, but the container's own group is mounted at the root.
    ("4:memory:/libpod_parent/libpod-0123\n",
     {"memory/memory.limit_in_bytes": "1073741824\n"}, 1073741824),
    ("0::/machine.slice/libpod-0123.scope\n", {"memory.max": "1073741824\n"}, 1073741824),
])
def test_cgroup_limit_is_read_from_v1_and_v2(tmp_path: Path, lines: str,
                                             files: dict[str, str],
                                             expected: int | None) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text(lines)
    for name, text in files.items():
        (tmp_path / "fs" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "fs" / name).write_text(text)
    assert memory.cgroup_limit_bytes(proc, tmp_path / "fs") == expected


def test_budget_setting_wins_over_the_cgroup() -> None:
    assert memory.budget_bytes(512) == 512 * MIB


def test_chunked_views_give_the_same_answers_as_one_batch(tiny_onnx_model: Path) -> None:
    whole = Classifier(tiny_onnx_model)
    whole.warm_up()
    chunked = Classifier(tiny_onnx_model)
    chunked.warm_up()
    chunked.chunks = memory.plan_chunks(8, 1, 0, 1)
    assert chunked.chunks.views_per_run == 1
    rng = np.random.default_rng(1)
    size = whole.spec.input_size
    batch = preprocess.to_model_input(
        rng.integers(0, 256, (8, size, size, 3), dtype=np.uint8), whole.spec)
    logits, features = whole.run_batch(batch)
    chunk_logits, chunk_features = chunked.run_batch(batch)
    np.testing.assert_allclose(chunk_logits, logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(chunk_features, features, rtol=1e-5, atol=1e-5)


def test_warm_up_measures_a_view_and_plans_within_the_budget(tiny_onnx_model: Path) -> None:
    classifier = Classifier(tiny_onnx_model, memory_budget_mib=4096)
    classifier.warm_up()
    plan = classifier.chunks
    assert plan.budget_bytes == 4096 * MIB
    assert plan.resting_bytes > 50 * MIB and plan.per_view_bytes >= 0
    assert plan.views_per_run == 8
