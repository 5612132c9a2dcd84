"""Try an example: drawn lesions, chosen by the generator's truth, analysed with one click."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from training import examples as drawn
from webapp import examples

FOLDER = examples.FOLDER


def test_the_shipped_examples_are_what_the_generator_draws(tmp_path: Path) -> None:
    """Regenerated, byte for byte: a stale or hand-edited example fails here."""
    written = drawn.write(tmp_path)
    assert [e.file for e in written] == [e.file for e in examples.all_examples()]
    for example in written:
        assert (tmp_path / example.file).read_bytes() == (FOLDER / example.file).read_bytes()
    assert json.loads((tmp_path / drawn.INDEX).read_text()) == \
        json.loads((FOLDER / drawn.INDEX).read_text())


def test_examples_are_labelled_by_their_drawn_truth() -> None:
    kinds = {}
    for example, record in drawn.pick():
        kinds[example.kind] = kinds.get(example.kind, 0) + 1
        assert record.melanoma == (example.kind == "melanoma-looking")
        assert (record.atypia > 0.7) if record.melanoma else (record.atypia < 0.15)
    assert kinds == {"benign-looking": 3, "melanoma-looking": 3}


def test_form_offers_every_example_as_a_button_that_needs_no_script(
        client: FlaskClient) -> None:
    page = client.get("/").get_data(as_text=True)
    forms = re.findall(r'<form method="post" action="/example">.*?</form>', page, re.S)
    assert len(forms) == len(examples.all_examples()) == 6
    for form, example in zip(forms, examples.all_examples(), strict=True):
        assert f'value="{example.file}"' in form and 'type="submit"' in form
        assert "Drawn" in form and f"/static/examples/{example.file}" in form
    assert "computer drawings, not photos of real skin" in page


def test_an_example_is_analysed_like_an_upload(client: FlaskClient) -> None:
    example = examples.all_examples()[-1]
    response = client.post("/example", data={"example": example.file, "tta": "none"})
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert example.file in page and 'class="probability"' in page


@pytest.mark.parametrize("name", ["", "nope.jpg", "../../app.py", "index.json"])
def test_an_unknown_example_is_refused_on_the_form(client: FlaskClient, name: str) -> None:
    response = client.post("/example", data={"example": name})
    assert response.status_code == 400
    assert "no example called" in response.get_data(as_text=True)


def test_the_drawn_lesions_can_be_compared_as_one_person(client: FlaskClient) -> None:
    response = client.post("/patient/example", data={"tta": "none"})
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    for example in examples.all_examples():
        assert example.file in page
    assert 'action="/patient/example"' in client.get("/patient").get_data(as_text=True)
