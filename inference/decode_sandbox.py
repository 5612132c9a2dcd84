"""Decode uploads in a short-lived child process with hard CPU, memory and time limits.

Image decoders are C code whose cost a crafted file can inflate past anything a header
check foresees. Each upload is decoded in a process forked from a small fork server (a
fresh interpreter with NumPy and OpenCV, never the model), under RLIMIT_CPU and
RLIMIT_AS, and killed by the parent at a wall-clock deadline. Only the fitted image comes
back, as raw bytes with a JSON header (nothing the child sends is unpickled), so the
worker thread that waits is freed whatever the file does.
"""
from __future__ import annotations

import gc
import json
import os
import pickle
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from inference.decode_messages import WarningLog, capture_stderr, read_messages
from inference.errors import ClientError, InvalidImage
from inference.model_spec import ModelSpec
from inference.preprocess import (DEFAULT_MAX_DECODED_BYTES, PHOTO_MAX_SIDE, DecodeLimits,
                               ModelView, prepare)

Task = Callable[[bytes, ModelSpec, DecodeLimits], ModelView]
_SERVER = "import sys, inference.decode_sandbox as s; s.serve(int(sys.argv[1]))"


@dataclass(frozen=True)
class SandboxLimits:
    cpu_seconds: int = 4
    wall_seconds: float = 8.0
    # Address space a decoder may add to what the fork server already maps: the budget
    # checked from the header, and slack for the decoders' own tables and row buffers.
    memory_bytes: int = DEFAULT_MAX_DECODED_BYTES + (64 << 20)


class DecodeSandbox:
    """One fork server per worker process; start() it before the model is loaded."""

    def __init__(self, limits: SandboxLimits = SandboxLimits(), task: Task = prepare) -> None:
        self.limits = limits
        # A module-level function, sent to the child by name; tests pass misbehaving ones.
        self.task = task
        self._lock = threading.Lock()
        self._control: socket.socket | None = None
        self._server: subprocess.Popen[bytes] | None = None
        self._warnings = WarningLog()

    def start(self) -> None:
        """Start the fork server (its imports take a moment) unless it is running."""
        with self._lock:
            if self._server is not None and self._server.poll() is None:
                return
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            self._server = subprocess.Popen(
                [sys.executable, "-c", _SERVER, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
            theirs.close()
            self._control = ours

    def prepare(self, data: bytes, spec: ModelSpec, limits: DecodeLimits) -> ModelView:
        """preprocess.prepare(data, spec, limits), run in a confined child."""
        channel = self._open_channel()
        deadline = time.monotonic() + self.limits.wall_seconds
        pid = 0
        try:
            channel.settimeout(self.limits.wall_seconds)
            (pid,) = struct.unpack("<q", _receive_exactly(channel, 8))
            _send_message(channel, pickle.dumps((self.task, data, spec, limits, self.limits)))
            header = json.loads(_receive_message(channel, deadline, 1 << 16))
            pixels = _receive_message(channel, deadline, spec.input_size ** 2 * 3)
            photo = _receive_message(channel, deadline, PHOTO_MAX_SIDE ** 2 * 3)
        except (OSError, EOFError, ValueError):
            if pid:
                _kill(pid)
            raise _stopped(self.limits, time.monotonic() > deadline - 0.05) from None
        finally:
            channel.close()
        self._warnings.record(header["messages"])
        if header["status"] == "refused":
            raise InvalidImage(header["message"], code=header["code"], status=header["http"])
        image = np.frombuffer(pixels, np.uint8).reshape(spec.input_size, spec.input_size, 3)
        shown = np.frombuffer(photo, np.uint8).reshape(*header["photo_shape"], 3)
        return ModelView(image, int(header["width"]), int(header["height"]), shown,
                         float(header["cpu_ms"]))

    def _open_channel(self) -> socket.socket:
        for attempt in range(2):
            if attempt:
                self.start()
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                with self._lock:
                    assert self._control is not None, "start() the sandbox first"
                    socket.send_fds(self._control, [b"r"], [theirs.fileno()])
                return ours
            except OSError:
                ours.close()
                with self._lock:
                    self._server = None  # gone (killed?): start a new one and retry once
            finally:
                theirs.close()
        raise RuntimeError("the decoder fork server cannot be started")


def _stopped(limits: SandboxLimits, timed_out: bool) -> InvalidImage:
    if timed_out:
        reason = f"it needed more than the {limits.wall_seconds:.0f} s allowed"
    else:
        reason = "the decoder stopped on it within the server's CPU and memory limits"
    return InvalidImage(f"the image could not be decoded: {reason}. Re-save it as an "
                        "ordinary JPEG or PNG", code="image_too_complex", status=422)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def serve(control_fd: int) -> None:
    """The fork server's loop: one forked child per channel received, until the worker goes."""
    control = socket.socket(fileno=control_fd)
    # Objects the children inherit stay out of the collector: it would touch (and so copy)
    # every page of them in each child.
    gc.freeze()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 16, 1)
        except OSError:
            return
        if not message or not fds:
            return
        channel = socket.socket(fileno=fds[0])
        if os.fork() == 0:
            control.close()
            try:
                _serve_one(channel)
            finally:
                os._exit(0)
        channel.close()


def _serve_one(channel: socket.socket) -> None:
    gc.disable()
    channel.sendall(struct.pack("<q", os.getpid()))
    task, data, spec, limits, sandbox = pickle.loads(_receive_message(channel, None, 1 << 26))
    messages = capture_stderr()
    _confine(sandbox)
    pixels = photo = b""
    try:
        view = task(data, spec, limits)
        header = {"status": "ok", "width": view.width, "height": view.height,
                  "photo_shape": list(view.photo.shape[:2])}
        pixels = np.ascontiguousarray(view.image, np.uint8).tobytes()
        photo = np.ascontiguousarray(view.photo, np.uint8).tobytes()
    except ClientError as error:
        header = {"status": "refused", "message": error.message, "code": error.code,
                  "http": error.status}
    except MemoryError:
        header = {"status": "refused", "code": "image_too_large", "http": 413,
                  "message": "the image needs more memory to decode than the server allows; "
                             "upload a smaller image"}
    header["messages"] = read_messages(messages)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    header["cpu_ms"] = (usage.ru_utime + usage.ru_stime) * 1000.0
    _send_message(channel, json.dumps(header).encode())
    _send_message(channel, pixels)
    _send_message(channel, photo)


def _confine(limits: SandboxLimits) -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
    mapped = _mapped_bytes()
    resource.setrlimit(resource.RLIMIT_AS, (mapped + limits.memory_bytes,
                                            mapped + limits.memory_bytes))


def _mapped_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def _send_message(channel: socket.socket, payload: bytes) -> None:
    channel.sendall(struct.pack("<Q", len(payload)) + payload)


def _receive_message(channel: socket.socket, deadline: float | None, limit: int) -> bytes:
    if deadline is not None:
        channel.settimeout(max(0.01, deadline - time.monotonic()))
    (length,) = struct.unpack("<Q", _receive_exactly(channel, 8))
    if length > limit:
        raise ValueError(f"message of {length} bytes, more than {limit}")
    return _receive_exactly(channel, length)


def _receive_exactly(channel: socket.socket, length: int) -> bytes:
    buffer = bytearray(length)
    view, received = memoryview(buffer), 0
    while received < length:
        count = channel.recv_into(view[received:])
        if not count:
            raise EOFError("the decoder closed its channel")
        received += count
    return bytes(buffer)
