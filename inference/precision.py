"""Which file to serve: the INT8 model beside the fp32 one, or the fp32 model itself.

INT8 is served only where it passed its fidelity gate (recorded in its spec), was quantised
from this very fp32 file, and ran faster than fp32 on this CPU. How much faster depends on
the CPU's 8-bit dot-product instructions (VNNI and AMX on x86, dot-product on ARM): without
them the INT8 kernels can be slower than fp32. So a short benchmark runs at start, and its
result is kept on disk keyed by both files' hashes, onnxruntime's version and the CPU, so
restarts and the other workers reuse it.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from inference.errors import ModelLoadError
from inference.model_spec import ModelSpec, SpecError, read_spec_file
from inference.runtime import ort

log = logging.getLogger(__name__)

PRECISIONS: tuple[str, ...] = ("auto", "fp32", "int8")
# INT8 must beat fp32 by this much: a tie within the benchmark's noise is not worth the
# small fidelity cost.
MIN_SPEEDUP = 1.1
# The flags that decide INT8 speed: 8-bit dot products (VNNI, AMX on x86; dot-product and
# int8 matrix multiply on ARM), and AVX2 / AVX-512 as the base they extend.
_INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_tile",
               "asimddp", "i8mm", "sve")


def int8_path(fp32_model: Path) -> Path:
    """Where the INT8 model of an fp32 model lies: beside it, `<stem>.int8.onnx`."""
    return fp32_model.with_name(f"{fp32_model.stem}.int8.onnx")


@dataclass(frozen=True)
class CpuFeatures:
    machine: str
    flags: tuple[str, ...]  # those of _INT8_FLAGS this CPU has

    @property
    def int8_dot_product(self) -> bool:
        """An 8-bit dot-product instruction: VNNI or AMX on x86, dot-product on ARM."""
        return bool({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"} & set(self.flags))


def cpu_features(cpuinfo: str | None = None, machine: str | None = None) -> CpuFeatures:
    """The INT8-relevant flags of this CPU (from /proc/cpuinfo where there is one)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    present: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            present.update(value.split())
    return CpuFeatures(machine or platform.machine(),
                       tuple(f for f in _INT8_FLAGS if f in present))


@dataclass(frozen=True)
class Timing:
    """Median milliseconds of one served batch (all TTA views) for each file, interleaved."""

    fp32_ms: float
    int8_ms: float

    @property
    def speedup(self) -> float:
        return self.fp32_ms / self.int8_ms


@dataclass(frozen=True)
class Choice:
    """The file to serve and why; its precision is the one its own spec states."""

    path: Path
    reason: str
    cpu: CpuFeatures
    timing: Timing | None = None

    def as_dict(self) -> dict[str, Any]:
        """What /api/v1/model shows (no paths)."""
        record: dict[str, Any] = {"reason": self.reason, "cpu_machine": self.cpu.machine,
                                  "cpu_int8_flags": list(self.cpu.flags)}
        if self.timing is not None:
            record.update(fp32_ms=round(self.timing.fp32_ms, 1),
                          int8_ms=round(self.timing.int8_ms, 1),
                          int8_speedup=round(self.timing.speedup, 2))
        return record


Benchmark = Callable[[Path, Path], Timing]


def choose(model_path: Path, wanted: str = "auto", cache_dir: Path | None = None,
           benchmark: Benchmark | None = None, cpu: CpuFeatures | None = None,
           threads: int = 1, views: int = 8) -> Choice:
    """The file to serve for the configured `model_path`: it, or the INT8 model beside it.

    `wanted` "fp32" never takes the INT8 model, "int8" takes it whenever it is gated (and
    refuses to start otherwise), "auto" takes it only where it is also faster here.
    """
    if wanted not in PRECISIONS:
        raise ModelLoadError(f"MODEL_PRECISION {wanted!r} is not one of "
                             f"{', '.join(PRECISIONS)}")
    cpu = cpu or cpu_features()
    candidate = int8_path(model_path)
    if wanted == "fp32":
        return Choice(model_path, "the configured file (MODEL_PRECISION=fp32)", cpu)
    try:
        present = candidate.is_file() and model_path.is_file()
    except OSError:
        # A folder this user may not read: opening the model refuses it in one line.
        present = False
    if not present:
        if wanted == "int8":
            raise ModelLoadError(f"MODEL_PRECISION=int8 but there is no {candidate}")
        # No file name: /api/v1/model shows the reason, and names no files (the log does).
        return Choice(model_path, "the configured file; no INT8 model beside it", cpu)
    spec = _spec(candidate)
    record = spec.quantization
    if not record:
        raise ModelLoadError(f"{candidate} is not an INT8 model")
    fp32_sha = _sha256(model_path)
    if record.get("fp32_model", {}).get("sha256") != fp32_sha:
        return _refuse(wanted, model_path, candidate, cpu,
                       "the INT8 model beside it was quantised from another fp32 file")
    if not record.get("limits_met"):
        return _refuse(wanted, model_path, candidate, cpu,
                       "the INT8 model beside it missed its fidelity gate")
    if wanted == "int8":
        return Choice(candidate, "INT8 asked for (MODEL_PRECISION=int8) and gated", cpu)
    timing = _cached_timing(model_path, candidate, fp32_sha, cpu, cache_dir,
                            benchmark or _default_benchmark(threads, views, spec.input_size))
    if timing.speedup >= MIN_SPEEDUP:
        return Choice(candidate, f"INT8: gated, and {timing.speedup:.2f}x fp32's speed on "
                      "this CPU", cpu, timing)
    return Choice(model_path, f"fp32: the INT8 model is gated but only {timing.speedup:.2f}x "
                  f"fp32's speed on this CPU (needs {MIN_SPEEDUP}x)", cpu, timing)


def _refuse(wanted: str, fp32: Path, candidate: Path, cpu: CpuFeatures,
            why: str) -> Choice:
    if wanted == "int8":
        raise ModelLoadError(f"{candidate}: {why.replace(' beside it', '')}; refusing "
                             "MODEL_PRECISION=int8")
    return Choice(fp32, f"fp32: {why}", cpu)


def _spec(path: Path) -> ModelSpec:
    try:
        return read_spec_file(path)
    except SpecError as error:
        raise ModelLoadError(str(error)) from None


def _sha256(path: Path) -> str:
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def _cached_timing(fp32: Path, int8: Path, fp32_sha: str, cpu: CpuFeatures,
                   cache_dir: Path | None, benchmark: Benchmark) -> Timing:
    if cache_dir is None:
        return benchmark(fp32, int8)
    key = hashlib.sha256("\n".join([fp32_sha, _sha256(int8), ort.__version__, cpu.machine,
                                    *cpu.flags]).encode()).hexdigest()[:20]
    cached = cache_dir / f"precision-{key}.json"
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        lock = (cache_dir / f".precision-{key}.lock").open("w")
    except OSError as error:
        log.warning("precision benchmark cache disabled: %s", error)
        return benchmark(fp32, int8)
    with lock:
        # One worker measures while the others wait: two benchmarks at once would each
        # see half a CPU.
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return Timing(**json.loads(cached.read_text()))
        except (OSError, ValueError, TypeError):
            pass
        timing = benchmark(fp32, int8)
        partial = cached.with_name(f".{cached.name}.{os.getpid()}")
        try:
            partial.write_text(json.dumps({"fp32_ms": timing.fp32_ms,
                                           "int8_ms": timing.int8_ms}))
            os.replace(partial, cached)
        except OSError as error:
            log.warning("could not keep the precision benchmark in %s: %s", cached, error)
        return timing


def _default_benchmark(threads: int, views: int, size: int) -> Benchmark:
    return lambda fp32, int8: measure(fp32, int8, threads, views, size)


def measure(fp32: Path, int8: Path, threads: int = 1, views: int = 8, size: int = 224,
            repeats: int = 5) -> Timing:
    """Both models on one served batch, runs interleaved so load on the machine hits both."""
    from inference.session import open_session

    batch = np.random.default_rng(0).standard_normal((views, 3, size, size)).astype(np.float32)
    sessions = [open_session(path, threads) for path in (fp32, int8)]
    feeds = [{s.get_inputs()[0].name: batch} for s in sessions]
    for session, feed in zip(sessions, feeds, strict=True):
        session.run(None, feed)  # first runs allocate and pick kernels
    times: list[list[float]] = [[], []]
    for _ in range(repeats):
        for index, (session, feed) in enumerate(zip(sessions, feeds, strict=True)):
            started = time.perf_counter()
            session.run(None, feed)
            times[index].append((time.perf_counter() - started) * 1000)
    return Timing(statistics.median(times[0]), statistics.median(times[1]))
