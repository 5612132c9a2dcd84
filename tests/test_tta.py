"""TTA views: the 8 symmetries of the square, each undoable, merged by the mean."""
from __future__ import annotations

import numpy as np
import pytest

from inference.errors import BadOption
from inference.tta import POLICIES, make_batch, views_for


@pytest.fixture(scope="module")
def square() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (6, 6, 3), dtype=np.uint8)


def test_policies_have_the_expected_number_of_views() -> None:
    assert {name: len(views) for name, views in POLICIES.items()} == {
        "none": 1, "flips": 4, "dihedral": 8}


def test_dihedral_views_are_eight_distinct_images(square: np.ndarray) -> None:
    batch = make_batch(square, views_for("dihedral"))
    assert batch.shape == (8, 6, 6, 3)
    assert len({view.tobytes() for view in batch}) == 8


@pytest.mark.parametrize("policy", list(POLICIES))
def test_invert_undoes_apply_for_every_view(square: np.ndarray, policy: str) -> None:
    for view in views_for(policy):
        assert np.array_equal(view.invert(view.apply(square)), square), view.name


def test_dihedral_set_is_closed_under_flipping_the_input(square: np.ndarray) -> None:
    original = {v.tobytes() for v in make_batch(square, views_for("dihedral"))}
    flipped = {v.tobytes() for v in make_batch(np.ascontiguousarray(square[:, ::-1]),
                                               views_for("dihedral"))}
    assert original == flipped


def test_named_rotations_rotate_the_way_they_say(square: np.ndarray) -> None:
    by_name = {view.name: view for view in views_for("dihedral")}
    assert np.array_equal(by_name["rotate-90"].apply(square), np.rot90(square, -1))
    assert np.array_equal(by_name["rotate-270"].apply(square), np.rot90(square, 1))
    assert np.array_equal(by_name["rotate-180"].apply(square), np.rot90(square, 2))


def test_unknown_policy_is_a_clear_client_error() -> None:
    with pytest.raises(BadOption, match="unknown TTA policy 'spin'; choose one of none"):
        views_for("spin")
