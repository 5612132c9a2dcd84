"""The drawn lesions a visitor can analyse with one click (written by training/examples.py).

They are files of the app's own static folder, listed in its index; a request names one by
its file name from that index, never by a path.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from inference.errors import ClientError

FOLDER = Path(__file__).resolve().parent / "static" / "examples"
_CAPTIONS = {"benign-looking": "Drawn naevus (benign-looking)",
             "melanoma-looking": "Drawn melanoma (melanoma-looking)"}


@dataclass(frozen=True)
class Example:
    file: str
    kind: str

    @property
    def caption(self) -> str:
        return _CAPTIONS.get(self.kind, "Drawn lesion")

    def read(self) -> bytes:
        return (FOLDER / self.file).read_bytes()


@cache
def all_examples() -> tuple[Example, ...]:
    """Every example of the index, in its order (benign-looking first)."""
    index = json.loads((FOLDER / "index.json").read_text())
    return tuple(Example(item["file"], item["kind"]) for item in index["examples"])


def named(file: str) -> Example:
    """The example called `file`, or a ClientError (400) saying there is none."""
    for example in all_examples():
        if example.file == file:
            return example
    raise ClientError(f"there is no example called {file[:80]!r}; choose one of the drawn "
                      "lesions on the page", code="unknown_example")
