"""requirements.lock: what the hosts install, hash-pinned, in step with requirements.txt."""

from __future__ import annotations

import re
from pathlib import Path

from infra import wheelhouse

REPO = Path(__file__).resolve().parents[1]


def _pins(text: str) -> dict[str, str]:
    joined = text.replace("\\\n", " ")
    return {
        m[1].lower().replace("_", "-"): m[2]
        for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+)", joined, flags=re.M)
    }


def _entries(text: str) -> list[str]:
    joined = text.replace("\\\n", " ")
    return [line for line in joined.splitlines() if line and not line.startswith(("#", " "))]


def test_every_serving_requirement_is_locked_at_the_same_version() -> None:
    wanted = _pins((REPO / "requirements.txt").read_text(encoding="utf-8"))
    locked = _pins((REPO / "requirements.lock").read_text(encoding="utf-8"))
    assert wanted and {name: locked.get(name) for name in wanted} == wanted


def test_every_locked_package_carries_hashes() -> None:
    entries = _entries((REPO / "requirements.lock").read_text(encoding="utf-8"))
    assert entries
    assert [e.split()[0] for e in entries if "--hash=sha256:" not in e] == []


def test_the_lock_holds_no_training_packages() -> None:
    locked = _pins((REPO / "requirements.lock").read_text(encoding="utf-8"))
    assert not {"torch", "torchvision", "resnest", "onnx", "timm"} & locked.keys()


def test_graviton_types_get_aarch64_wheels() -> None:
    assert wheelhouse.machine_for("t4g.micro") == "aarch64"
    assert wheelhouse.machine_for("t3.micro") == "x86_64"
    assert wheelhouse.machine_for("t3a.small") == "x86_64"


def test_the_wheelhouse_download_checks_hashes_for_the_hosts_platform(tmp_path: Path) -> None:
    command = wheelhouse.download_command(REPO / "requirements.lock", "aarch64", tmp_path)
    assert "--require-hashes" in command and "--only-binary=:all:" in command
    platforms = [command[i + 1] for i, arg in enumerate(command) if arg == "--platform"]
    assert platforms and all(p.endswith("_aarch64") for p in platforms)
    assert command[command.index("--python-version") + 1] == "3.11"
