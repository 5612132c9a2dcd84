"""Open the ONNX Runtime session: CPU options, memory behaviour, and the optimised-graph cache.

Building a session optimises the graph every time (NCHWc layout and fusions: about 0.3 s
of a 1 s cold start for resnest50). With a cache directory, the first start saves the
optimised graph in ORT format and later starts (service restarts, recycled or replaced
workers) load it with optimisation off. That graph is specific to this CPU and this
onnxruntime, so both are part of the cache key.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
from pathlib import Path

from inference.runtime import ort

from inference.errors import ModelLoadError

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
_MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own initial value, kept fixed
_ERROR_ONLY = 3  # ORT log severity: hide the "hardware-specific model" warning we key on


def open_session(path: Path, intra_op_threads: int = 1,
                 cache_dir: Path | None = None) -> ort.InferenceSession:
    """A CPU session for `path`, from the optimised-graph cache when one is usable."""
    _check_readable(path)
    _return_large_frees_to_os()
    if cache_dir is None:
        return _build(path, intra_op_threads)
    cached = cache_dir / f"{path.stem}-{cache_key(path)}.ort"
    if cached.is_file():
        try:
            return _load_optimised(cached, intra_op_threads)
        except Exception as error:  # onnxruntime raises untyped errors for unreadable files
            log.warning("ignoring unreadable optimised-graph cache %s: %s", cached, error)
            cached.unlink(missing_ok=True)
    return _build_and_cache(path, intra_op_threads, cached)


def _check_readable(path: Path) -> None:
    try:
        with path.open("rb"):
            pass
    except FileNotFoundError:
        raise ModelLoadError(f"model file not found: {path} (build the default with "
                             "`make model`, or export yours with export/to_onnx.py)") from None
    except OSError as error:
        # A mounted folder or file only its owner may read (the container runs as its own
        # user): say so rather than fail deep inside the first stat.
        raise ModelLoadError(f"cannot read the model file {path}: {error.strerror} "
                             f"(this server runs as uid {os.getuid()})") from None


def cache_key(path: Path) -> str:
    """Changes when the model file, onnxruntime or the CPU changes."""
    # The file's identity rather than its hash: hashing 115 MB would cost a third of
    # what the cache saves, and a deploy always writes a new file (new inode and mtime).
    stat = path.stat()
    parts = [ort.__version__, _cpu_signature(), str(path.resolve()), str(stat.st_size),
             str(stat.st_mtime_ns), str(stat.st_ino)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def _options(intra_op_threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def _build(path: Path, intra_op_threads: int,
           options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), options or _options(intra_op_threads),
                                    providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises untyped errors for unreadable files
        raise ModelLoadError(f"{path} is not a loadable ONNX model: "
                             f"{str(error).splitlines()[0]}") from None


def _build_and_cache(path: Path, intra_op_threads: int,
                     cached: Path) -> ort.InferenceSession:
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        log.warning("optimised-graph cache disabled: %s", error)
        return _build(path, intra_op_threads)
    partial = cached.with_name(f".{cached.name}.{os.getpid()}.partial")
    options = _options(intra_op_threads)
    options.optimized_model_filepath = str(partial)
    options.add_session_config_entry("session.save_model_format", "ORT")
    options.log_severity_level = _ERROR_ONLY
    try:
        session = _build(path, intra_op_threads, options)
    except ModelLoadError:
        # Perhaps only the cache write failed; a plain build tells the model's own story.
        partial.unlink(missing_ok=True)
        return _build(path, intra_op_threads)
    try:
        os.replace(partial, cached)  # atomic: a concurrent worker sees all of it or none
        for stale in cached.parent.glob(f"{path.stem}-*.ort"):
            if stale != cached:
                stale.unlink(missing_ok=True)
    except OSError as error:
        partial.unlink(missing_ok=True)
        log.warning("could not save the optimised graph to %s: %s", cached, error)
    return session


def _load_optimised(cached: Path, intra_op_threads: int) -> ort.InferenceSession:
    options = _options(intra_op_threads)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(cached), options, providers=["CPUExecutionProvider"])


def _cpu_signature() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown-cpu"
    wanted = [line for line in lines if line.startswith(("model name", "flags"))]
    return "\n".join(dict.fromkeys(wanted))  # one CPU's lines; all cores repeat them


def _return_large_frees_to_os() -> None:
    # Loading parses the whole protobuf (one copy of the weights) and then copies every
    # initializer into the session (a second). glibc's dynamic mmap threshold grows past
    # those sizes after the first large free, so the freed copy stays in the brk heap and
    # RSS never drops (about 360 MB instead of 170 MB for resnest50 fp32). A fixed
    # threshold gives each large buffer its own mapping, returned to the OS when freed.
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc: its allocator has its own policy
    libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
