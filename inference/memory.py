"""The memory a prediction may use, and how many views run at once to stay inside it.

A 384-512 px network's activations for eight TTA views in one batch take 0.9-1.8 GiB, more
than the 1 GiB box's 750 MiB unit limit (the worker was OOM-killed). Views run in chunks
sized from two numbers: the budget (the memory cgroup's limit where there is one, else a
setting) and the activation memory one view costs, measured at warm-up. ONNX Runtime's
arena is shrunk after every run (`shrinking_run_options`), so between predictions the
worker holds the model only, and a decode (which runs before inference, in the same
admission slot) never meets a grown arena.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from inference.runtime import ort

MIB = 1 << 20
# Not the worker's: gunicorn's master, the decoder fork server, the page cache the unit is
# charged for, and what the worker adds while it serves (Flask, the heatmap, the report):
# the tree's peak PSS less the resting worker measured 180-200 MiB on the harness.
OTHER_PROCESSES_BYTES = 192 * MIB
# Kept free under the cgroup limit: the kernel reclaims and OOM-kills near it, not at it.
CGROUP_HEADROOM = 0.9
_UNLIMITED = 1 << 60


@dataclass(frozen=True)
class ChunkPlan:
    """How many views run per call, and the figures it was worked out from."""

    views_per_run: int
    budget_bytes: int
    resting_bytes: int
    per_view_bytes: int

    @property
    def fits(self) -> bool:
        """Whether even one view fits the budget beside the model and the other processes."""
        return self.resting_bytes + OTHER_PROCESSES_BYTES + self.per_view_bytes <= \
            self.budget_bytes

    def as_dict(self) -> dict[str, float | int | bool]:
        return {"views_per_run": self.views_per_run,
                "budget_mib": round(self.budget_bytes / MIB),
                "model_resting_mib": round(self.resting_bytes / MIB),
                "per_view_mib": round(self.per_view_bytes / MIB, 1), "fits": self.fits}


def plan_chunks(views: int, budget_bytes: int, resting_bytes: int,
                per_view_bytes: int) -> ChunkPlan:
    """The most views per run whose activations fit beside the resting worker and the other
    processes; at least one (a model that does not fit at all still answers, slowly, and
    `fits` says so)."""
    room = budget_bytes - resting_bytes - OTHER_PROCESSES_BYTES
    chunk = math.floor(room / per_view_bytes) if per_view_bytes > 0 else views
    return ChunkPlan(max(1, min(views, chunk)), budget_bytes, resting_bytes, per_view_bytes)


def budget_bytes(setting_mib: int | None = None) -> int:
    """A set budget in MiB, else 90% of this process's memory cgroup limit, else unlimited."""
    if setting_mib:
        return setting_mib * MIB
    limit = cgroup_limit_bytes()
    return int(limit * CGROUP_HEADROOM) if limit is not None else _UNLIMITED


def cgroup_limit_bytes(proc_cgroup: Path = Path("/proc/self/cgroup"),
                       root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The memory limit of this process's cgroup (v2 `memory.max` or v1
    `memory.limit_in_bytes`), or None where there is none."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            mount, name = root, "memory.max"
        elif "memory" in controllers.split(","):
            mount, name = root / "memory", "memory.limit_in_bytes"
        else:
            continue
        # A container that shares the host's cgroup namespace (podman and docker on cgroup
        # v1) sees the host's path here, but has its own group mounted at the root.
        for candidate in (mount / path.lstrip("/") / name, mount / name):
            try:
                text = candidate.read_text().strip()
            except OSError:
                continue
            if text != "max" and int(text) < _UNLIMITED:
                return int(text)
            break
    return None


def resident_bytes() -> int:
    return _status_kib("VmRSS") * 1024


def peak_bytes() -> int:
    return _status_kib("VmHWM") * 1024


def reset_peak() -> None:
    """Start VmHWM again from the current RSS (Linux: clear_refs 5)."""
    try:
        Path(f"/proc/{os.getpid()}/clear_refs").write_text("5")
    except OSError:
        pass


def shrinking_run_options() -> ort.RunOptions:
    """Run options that hand the CPU arena's unused memory back at the end of each run."""
    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")
