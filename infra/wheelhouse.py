"""The wheels the host installs from, downloaded here for the host's architecture.

Hosts run Amazon Linux 2023 (glibc 2.34) with Python 3.11 and never reach an index: pip
on the host gets --no-index --require-hashes and this folder.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from infra.artifacts import ArtifactError

PYTHON_VERSION = "3.11"
_MACHINES = {"x86_64", "aarch64"}


def machine_for(instance_type: str) -> str:
    """The CPU architecture (as `uname -m` names it) of an EC2 instance type."""
    family = instance_type.split(".", 1)[0]
    # Graviton families carry a "g" after the generation digit (t4g, m7g, c7gn).
    return "aarch64" if len(family) > 2 and family[2] == "g" else "x86_64"


def download_command(lock: Path, machine: str, dest: Path) -> list[str]:
    """The pip download that fetches every locked wheel for machine, checking its hash."""
    if machine not in _MACHINES:
        raise ArtifactError(f"no wheels for machine {machine!r}; expected one of {_MACHINES}")
    platforms = [f"manylinux_2_{minor}_{machine}" for minor in (34, 28, 17)]
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--disable-pip-version-check",
        "--require-hashes",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        PYTHON_VERSION,
        "--implementation",
        "cp",
        *[arg for p in platforms for arg in ("--platform", p)],
        "--dest",
        str(dest / machine),
        "-r",
        str(lock),
    ]


def build(lock: Path, machine: str, dest: Path) -> Path:
    """Download the locked wheels for machine into dest/machine; return dest."""
    (dest / machine).mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        download_command(lock, machine, dest), capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise ArtifactError(
            f"could not download the {machine} wheels for {lock.name}: "
            f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}"
        )
    return dest
