"""Plain wording: whole percents, views counted right, spread and threshold in words."""
from __future__ import annotations

import pytest

from webapp import wording


@pytest.mark.parametrize("value, text", [(0.0004, "under 1%"), (0.256, "26%"),
                                         (0.5, "50%"), (0.9991, "over 99%")])
def test_percent_is_whole_and_bounded(value: float, text: str) -> None:
    assert wording.percent(value) == text


def test_agreement_counts_the_views_and_says_how_steady_the_score_is() -> None:
    close = wording.agreement([0.2, 0.21, 0.22, 0.2], "flips")
    assert close.startswith("The model looked at 4 views") and "agree closely" in close
    assert "between 20% and 22%" in close
    wide = wording.agreement([0.1, 0.4], "flips")
    assert "disagree noticeably" in wide
    assert "Only one view" in wording.agreement([0.3], "none")


def test_threshold_sentence_names_the_line_and_the_call() -> None:
    text = wording.threshold_sentence(False, 0.3, ("benign", "melanoma"))
    assert "“melanoma” when the probability is 30% or more" in text
    assert "below that mark, so its call is “benign”" in text


@pytest.mark.parametrize("name, stem", [("IMG_0001.JPG", "IMG_0001"),
                                        ("C:\\photos\\my mole.png", "my-mole"),
                                        ("../../etc/passwd", "passwd"),
                                        ("", "lesion"), ("...", "lesion"),
                                        ("ü" * 100 + ".jpg", "lesion")])
def test_download_names_are_safe(name: str, stem: str) -> None:
    assert wording.file_stem(name) == stem


@pytest.mark.parametrize("name, shown", [("mole.jpg", "mole.jpg"), ("../../x.JPEG", "x.JPEG"),
                                         ("<b>hi</b>.png", "b.png"), ("", "photo"),
                                         ("a\u202egpj.exe", "a-gpj.exe")])
def test_shown_names_carry_no_markup_path_or_direction_tricks(name: str, shown: str) -> None:
    assert wording.display_name(name) == shown


@pytest.mark.parametrize("demo, training_data, state", [
    (True, "", "an untrained demo"),
    (True, "synthetic: 4000 drawn lesions", "a demo trained on drawn lesions"),
    (False, "", "trained"),
])
def test_model_words_say_whether_a_demo_learned_anything(demo: bool, training_data: str,
                                                         state: str) -> None:
    from inference.model_spec import ModelSpec

    spec = ModelSpec(architecture="resnest50_fast_4s1x64d", input_size=128,
                     output_kind="sigmoid", melanoma_index=0, checkpoint_sha256="",
                     demo=demo, training_data=training_data, name="demo-synthetic")
    assert wording.model_words(spec) == f"demo-synthetic, version {spec.version} ({state})"


def _spec(demo: bool, training_data: str) -> object:
    from inference.model_spec import ModelSpec

    return ModelSpec(architecture="resnest50_fast_4s1x64d", input_size=128,
                     output_kind="sigmoid", melanoma_index=0, checkpoint_sha256="",
                     demo=demo, training_data=training_data)


def test_the_trained_demos_page_says_what_its_number_is() -> None:
    spec = _spec(True, "4000 synthetic (computer-drawn) dermoscopy images, 10% melanoma")
    assert ("calibrated on drawn lesions the model did not learn from (10% of them "
            "melanomas)") in wording.number_meaning(spec)  # type: ignore[arg-type]


@pytest.mark.parametrize("demo", [True, False])
def test_no_meaning_is_claimed_without_a_record(demo: bool) -> None:
    assert wording.number_meaning(_spec(demo, "")) == ""  # type: ignore[arg-type]
