"""Does a model fit the instance it is about to be deployed to? Decided from the cost the
exporter measured (export/cost.py), before anything is uploaded.

The server's worker must reach its peak (loading, or a run of views) inside the app unit's
MemoryMax (infra/host/render.py sizes it per instance type) with the share the server keeps
free (inference/memory.py: the other processes of the tree, and headroom under the cgroup
limit, where the kernel already reclaims and kills).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from inference.memory import CGROUP_HEADROOM, MIB, OTHER_PROCESSES_BYTES
from infra.host.render import INSTANCE_MEMORY_MIB, unit_memory_max_mib

# Sizes in the order a user would step up through them.
SIZES = tuple(INSTANCE_MEMORY_MIB)


@dataclass(frozen=True)
class Fit:
    instance_type: str
    need_mib: float
    allowed_mib: float
    suggestion: str = ""

    @property
    def fits(self) -> bool:
        return self.need_mib <= self.allowed_mib

    def sentence(self) -> str:
        verdict = "fits" if self.fits else "does not fit"
        text = (f"the model {verdict} {self.instance_type}: its server needs about "
                f"{self.need_mib:.0f} MiB at peak (measured at export), the unit allows "
                f"{self.allowed_mib:.0f} MiB")
        return text + (f"; {self.suggestion}" if self.suggestion else "")


def need_mib(cost: Mapping[str, Any]) -> float:
    """The whole server's peak: the worker's larger of loading and resting plus one view
    (views run in chunks that fit; inference/memory.py), and the rest of the tree."""
    worker = max(float(cost["load_peak_mib"]),
                 float(cost["resting_mib"]) + float(cost["per_view_mib"]))
    return worker + OTHER_PROCESSES_BYTES / MIB


def allowed_mib(instance_type: str) -> float:
    return unit_memory_max_mib(instance_type) * CGROUP_HEADROOM


def check(cost: Mapping[str, Any], instance_type: str) -> Fit:
    """The verdict for `instance_type`; when it does not fit, the smallest size of the same
    family that does. Where it fits, the TTA policy whose views run in one batch."""
    need, allowed = need_mib(cost), allowed_mib(instance_type)
    if need <= allowed:
        policy = richest_single_batch_policy(cost, allowed)
        note = (f"TTA {policy} runs its views in one batch; richer policies run in chunks"
                if policy != "dihedral" else "")
        return Fit(instance_type, need, allowed, note)
    family = instance_type.rsplit(".", 1)[0]
    bigger = next((f"{family}.{size}" for size in SIZES
                   if need <= allowed_mib(f"{family}.{size}")), None)
    hint = (f"{bigger} fits (deploy --instance-type {bigger}); no TTA policy helps, since "
            "views already run in chunks and the weights alone set the peak") if bigger \
        else f"no {family} size fits: export fewer or smaller members, or an INT8 model"
    return Fit(instance_type, need, allowed, hint)


def richest_single_batch_policy(cost: Mapping[str, Any], allowed: float) -> str:
    """The TTA policy with the most views that still run in one batch beside the resting
    worker ("none" when even that needs chunks; its one view always fits)."""
    rest = float(cost["resting_mib"]) + OTHER_PROCESSES_BYTES / MIB
    for policy, views in (("dihedral", 8), ("flips", 4)):
        if rest + views * float(cost["per_view_mib"]) <= allowed:
            return policy
    return "none"
