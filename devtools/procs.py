"""Ports, process trees and memory, read from the kernel: shared by tests, bench and infra."""
from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Return once 127.0.0.1:`port` accepts connections; raise if `proc` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with socket.socket() as sock:
            if sock.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {HOST}:{port} after {timeout} s")


def memory_status(pid: int) -> dict[str, float]:
    """VmRSS, VmHWM and friends of one process, in MiB, from /proc/PID/status."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name.startswith("Vm") and rest.strip().endswith("kB"):
            values[name] = int(rest.split()[0]) / 1024.0
    return values


def rss_mib(pid: int) -> float:
    """Resident memory of one process, from /proc."""
    status = memory_status(pid)
    if "VmRSS" not in status:
        raise AssertionError(f"no VmRSS for pid {pid}")
    return status["VmRSS"]


def pss_mib(pid: int) -> float:
    """Proportional set size of one process: each shared page split among its sharers, so
    the PSS of a process tree adds up to its real footprint (RSS would count shared pages,
    such as a fork server's with its children, once per process)."""
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no Pss for pid {pid}")


def children(parent: int) -> list[int]:
    """Live direct children of `parent`."""
    return sorted(pid for pid in _all_pids() if _parent(pid) == parent)


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile (`fraction` in 0..1) of `values`; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 4)


def _all_pids() -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses; fields resume after the last ')'.
    state, parent = stat.rsplit(")", 1)[1].split()[:2]
    return None if state in ("Z", "X") else int(parent)


CGROUP_V1_MEMORY = Path("/sys/fs/cgroup/memory")


class MemoryCgroup:
    """A cgroup-v1 memory group with a hard limit, like systemd's MemoryMax on the host."""

    def __init__(self, name: str, limit_bytes: int, root: Path = CGROUP_V1_MEMORY) -> None:
        if not os.access(root, os.W_OK):
            raise AssertionError(f"the production-shaped harness needs a writable cgroup-v1 "
                                 f"memory controller at {root} (run the tests as root)")
        self.path = root / name
        self.path.mkdir()
        self.limit_bytes = limit_bytes
        (self.path / "memory.limit_in_bytes").write_text(str(limit_bytes))

    def join_prefix(self) -> list[str]:
        """A command prefix that moves the command into this group before it starts."""
        return ["sh", "-c", f'echo $$ > {self.path}/cgroup.procs && exec "$@"', "cgroup"]

    def peak_mib(self) -> float:
        """The most memory the whole group (master, workers, page cache) has held."""
        return int((self.path / "memory.max_usage_in_bytes").read_text()) / 2**20

    def usage_mib(self) -> float:
        return int((self.path / "memory.usage_in_bytes").read_text()) / 2**20

    def oom_kills(self) -> int:
        for line in (self.path / "memory.oom_control").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return 0

    def remove(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                self.path.rmdir()
                return
            except OSError:  # busy until the last process has left
                time.sleep(0.1)


def parse_size(text: str) -> int:
    """systemd's sizes (750M, 1G, 4096) in bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = text.strip()
    if text[-1:].upper() in units:
        return int(float(text[:-1]) * units[text[-1].upper()])
    return int(text)
