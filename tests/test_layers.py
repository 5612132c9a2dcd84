"""The import graph: the inference core stands on its own, and no tool reaches into the web app.

The core (`inference/`) is what the server, the exporter, the benches and the training
pipeline all run; the web layer (`webapp/`) is HTTP on top of it. A tool that imported
`webapp` would make a change to the page a risk to the exporter.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WEB_LAYER = {"webapp", "flask", "flask_wtf", "werkzeug", "jinja2", "gunicorn"}
TOOLS = ("export", "evaluation", "bench", "training")


def imported_packages(path: Path) -> set[str]:
    """Top-level names of every package the file imports, at any depth of its code."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _sources(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def test_imported_packages_sees_nested_and_from_imports(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("import os.path\ndef f():\n    from webapp.views import x\n"
                      "    import flask as fl\nfrom . import sibling\n")
    assert imported_packages(source) == {"os", "webapp", "flask"}


@pytest.mark.parametrize("path", _sources("inference"), ids=lambda p: p.name)
def test_core_module_imports_no_web_layer(path: Path) -> None:
    assert not imported_packages(path) & WEB_LAYER


@pytest.mark.parametrize("package", TOOLS)
def test_tools_never_import_the_web_app(package: str) -> None:
    offenders = [str(path.relative_to(REPO)) for path in _sources(package)
                 if "webapp" in imported_packages(path)]
    assert offenders == []


def test_loading_the_whole_core_loads_no_web_framework() -> None:
    """Imports at run time too: a core module pulling Flask in through a third package."""
    modules = [f"inference.{path.stem}" for path in _sources("inference")
               if path.stem != "__init__"]
    code = ("import sys, importlib\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(WEB_LAYER)!r}))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert len(modules) >= 15
