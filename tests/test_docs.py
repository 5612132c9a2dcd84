"""The README is a short front door and every page behind it points at things that exist."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
# A repository path in backticks: a known top-level folder or file, then more path.
PATH = re.compile(r"`((?:inference|webapp|export|evaluation|training|bench|devtools|infra|"
                  r"tests|docs|scripts|models)/[\w./-]*\w|gunicorn\.conf\.py|Makefile|"
                  r"pyproject\.toml|requirements[\w.-]*\.(?:txt|lock)|system-packages\.txt)`")
# Paths the docs name that a build or a run makes, not the repository.
MADE = ("models/", "docs/evaluation-", "test-artifacts/", "tests/resources/")


def test_readme_is_a_front_door() -> None:
    assert len((REPO / "README.md").read_text().splitlines()) < 250


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path) -> None:
    text = page.read_text()
    broken = [target for target in LINK.findall(text)
              if "://" not in target and not (page.parent / target).exists()]
    assert broken == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_file_path_named_exists(page: Path) -> None:
    named = set(PATH.findall(page.read_text()))
    missing = sorted(path for path in named
                     if not path.startswith(MADE) and not (REPO / path.rstrip("/")).exists())
    assert missing == []


def test_the_checker_catches_a_missing_path(tmp_path: Path) -> None:
    assert PATH.findall("see `inference/nothing.py` and `webapp/`") == ["inference/nothing.py"]
    assert LINK.findall("[a](docs/x.md#part) [b](https://example.org)") == \
        ["docs/x.md", "https://example.org"]


def test_layout_section_matches_the_tree() -> None:
    """Every file the README's layout names exists, and every core and web module is named."""
    text = (REPO / "README.md").read_text()
    block = text[text.index("## Layout"):]
    block = block[block.index("```") + 3:]
    block = block[:block.index("```")]
    named = set(re.findall(r"\b((?:inference|webapp|export|bench|training|devtools|infra|"
                           r"evaluation|tests)/[\w./-]*\w)", block))
    assert named and [path for path in sorted(named) if not (REPO / path).exists()] == []
    for package in ("inference", "webapp"):
        modules = {f"{package}/{p.name}" for p in (REPO / package).glob("*.py")
                   if p.name != "__init__.py"}
        assert sorted(modules - named) == [], f"{package} modules missing from the layout"
