"""Decode uploads in a short-lived child process with hard CPU, memory and time limits.

Image decoders are C code whose cost a crafted file can inflate past anything a header
check foresees. Each upload is decoded in a process forked from a small fork server (a
fresh interpreter with NumPy and OpenCV, never the model), under RLIMIT_CPU and
RLIMIT_AS, and killed by the parent at a wall-clock deadline. Only the fitted image comes
back, as raw bytes with a JSON header (nothing the child sends is unpickled), so the
worker thread that waits is freed whatever the file does.

Every byte of an upload is parsed here, headers included (`read_headers` sizes a patient's
photos before any is decoded): the worker only moves bytes. A fork server that stops
answering (frozen, or gone) is replaced, and `responsive` tells readiness so.
"""
from __future__ import annotations

import dataclasses
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from inference.decode_messages import WarningLog, capture_stderr, read_messages
from inference.errors import ClientError, DecoderUnavailable, InvalidImage
from inference.image_header import ImageHeader, read_header
from inference.model_spec import ModelSpec
from inference.preprocess import (DEFAULT_MAX_DECODED_BYTES, PHOTO_MAX_SIDE, DecodeLimits,
                               ModelView, prepare)

Task = Callable[[bytes, ModelSpec, DecodeLimits], ModelView]
_SERVER = "import sys, inference.decode_sandbox as s; s.serve(int(sys.argv[1]))"
# A fork takes milliseconds; a server that has not forked in this long is frozen.
_FORK_SECONDS = 2.0
# Its imports (NumPy, OpenCV) on a slow, throttled vCPU.
_START_SECONDS = 30.0
_READY, _PING, _FORK = b"R", b"p", b"r"


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
        self._started = False  # the server has said it is ready
        self._started_at = 0.0
        self._warnings = WarningLog()

    def start(self) -> None:
        """Start the fork server unless it is running; its imports go on in the background
        (the first request waits for them)."""
        with self._lock:
            self._start_locked()

    def restart(self) -> None:
        """Kill the fork server, whatever state it is in, and start a new one."""
        with self._lock:
            self._replace_locked()

    def health(self) -> str:
        """'' while the fork server answers; else why not. One that stopped answering is
        replaced here, so the service heals without anyone restarting it."""
        if self.responsive():
            return ""
        with self._lock:
            starting = (not self._started and self._server is not None
                        and self._server.poll() is None
                        and time.monotonic() - self._started_at < _START_SECONDS)
            if starting:
                return "the image decoder is starting"
            self._replace_locked()
        return "the image decoder stopped answering; it is being restarted"

    def responsive(self, timeout: float = 1.0) -> bool:
        """Whether the fork server answers a ping within `timeout` seconds."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with self._lock:
                self._send_locked(_PING, theirs, timeout)
            theirs.close()
            ours.settimeout(timeout)
            return ours.recv(1) == _PING
        except (OSError, AssertionError):
            return False
        finally:
            theirs.close()
            ours.close()

    def prepare(self, data: bytes, spec: ModelSpec, limits: DecodeLimits) -> ModelView:
        """preprocess.prepare(data, spec, limits), run in a confined child."""
        header, pixels, photo = self._run(("prepare", self.task, data, spec, limits),
                                          spec.input_size ** 2 * 3, PHOTO_MAX_SIDE ** 2 * 3)
        if header["status"] == "refused":
            raise InvalidImage(header["message"], code=header["code"], status=header["http"])
        image = np.frombuffer(pixels, np.uint8).reshape(spec.input_size, spec.input_size, 3)
        shown = np.frombuffer(photo, np.uint8).reshape(*header["photo_shape"], 3)
        return ModelView(image, int(header["width"]), int(header["height"]), shown,
                         float(header["cpu_ms"]))

    def read_headers(self, uploads: Sequence[bytes]) -> list[ImageHeader | InvalidImage]:
        """Each upload's header, or the reason it is refused, read in one confined child."""
        header, _, _ = self._run(("headers", list(uploads)), 0, 0)
        return [ImageHeader(**item["header"]) if item["status"] == "ok"
                else InvalidImage(item["message"], code=item["code"], status=item["http"])
                for item in header["items"]]

    def _run(self, job: tuple[object, ...], pixel_bytes: int,
             photo_bytes: int) -> tuple[dict[str, Any], bytes, bytes]:
        """Send `job` to a forked child; its JSON header and two raw payloads."""
        for attempt in range(2):
            channel = self._open_channel()
            pid = 0
            try:
                channel.settimeout(_FORK_SECONDS)
                (pid,) = struct.unpack("<q", _receive_exactly(channel, 8))
            except (OSError, EOFError):
                channel.close()
                if attempt:
                    raise DecoderUnavailable() from None
                self.restart()  # frozen: no fork within _FORK_SECONDS
                continue
            deadline = time.monotonic() + self.limits.wall_seconds
            try:
                _send_message(channel, pickle.dumps((job, self.limits)))
                header = json.loads(_receive_message(channel, deadline, 1 << 16))
                pixels = _receive_message(channel, deadline, pixel_bytes)
                photo = _receive_message(channel, deadline, photo_bytes)
            except (OSError, EOFError, ValueError):
                _kill(pid)
                raise _stopped(self.limits, time.monotonic() > deadline - 0.05) from None
            finally:
                channel.close()
            self._warnings.record(header["messages"])
            return header, pixels, photo
        raise AssertionError("unreachable")

    def _open_channel(self) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            for attempt in range(2):
                with self._lock:
                    try:
                        self._send_locked(_FORK, theirs, _START_SECONDS)
                        return ours
                    except OSError:
                        if attempt:
                            raise DecoderUnavailable() from None
                        self._replace_locked()  # gone or never ready: a new one, once
            raise AssertionError("unreachable")
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()

    def _replace_locked(self) -> None:
        if self._server is not None:
            self._server.kill()
            self._server.wait()
            self._server = None
        self._start_locked()

    def _start_locked(self) -> None:
        if self._server is not None and self._server.poll() is None:
            return
        if self._control is not None:
            self._control.close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server = subprocess.Popen(
            [sys.executable, "-c", _SERVER, str(theirs.fileno())],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        theirs.close()
        self._control = ours
        self._started = False
        self._started_at = time.monotonic()

    def _send_locked(self, kind: bytes, channel: socket.socket, start_timeout: float) -> None:
        """Hand `channel` to the fork server (waiting, the first time, for its imports)."""
        assert self._control is not None, "start() the sandbox first"
        if not self._started:
            self._control.settimeout(start_timeout)
            try:
                if self._control.recv(1) != _READY:
                    raise OSError("the decoder fork server closed before it was ready")
            finally:
                self._control.settimeout(None)
            self._started = True
        socket.send_fds(self._control, [kind], [channel.fileno()])


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
    try:
        control.sendall(_READY)
    except OSError:
        return  # the worker is gone already (it refused to start, say)
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 16, 1)
        except OSError:
            return
        if not message or not fds:
            return
        channel = socket.socket(fileno=fds[0])
        if message == _PING:
            try:
                channel.sendall(_PING)
            except OSError:
                pass
            channel.close()
            continue
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
    job, sandbox = pickle.loads(_receive_message(channel, None, 1 << 26))
    messages = capture_stderr()
    _confine(sandbox)
    pixels = photo = b""
    header: dict[str, Any]
    if job[0] == "headers":
        header = {"status": "ok", "items": [_header_item(data) for data in job[1]]}
    else:
        _, task, data, spec, limits = job
        try:
            view = task(data, spec, limits)
            header = {"status": "ok", "width": view.width, "height": view.height,
                      "photo_shape": list(view.photo.shape[:2])}
            pixels = np.ascontiguousarray(view.image, np.uint8).tobytes()
            photo = np.ascontiguousarray(view.photo, np.uint8).tobytes()
        except (ClientError, MemoryError) as error:
            header = _refusal(error)
    header["messages"] = read_messages(messages)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    header["cpu_ms"] = (usage.ru_utime + usage.ru_stime) * 1000.0
    _send_message(channel, json.dumps(header).encode())
    _send_message(channel, pixels)
    _send_message(channel, photo)


def _header_item(data: bytes) -> dict[str, Any]:
    try:
        if not data:
            raise InvalidImage("the file is empty", code="empty_image", status=400)
        return {"status": "ok", "header": dataclasses.asdict(read_header(data))}
    except (ClientError, MemoryError) as error:
        return _refusal(error)


def _refusal(error: ClientError | MemoryError) -> dict[str, Any]:
    if isinstance(error, MemoryError):
        return {"status": "refused", "code": "image_too_large", "http": 413,
                "message": "the image needs more memory to decode than the server allows; "
                           "upload a smaller image"}
    return {"status": "refused", "message": error.message, "code": error.code,
            "http": error.status}


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
