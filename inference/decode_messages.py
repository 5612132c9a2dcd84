"""What decoders print: caught per decode in memory, summarised in the log at a bounded rate.

libpng, libjpeg and libtiff write warnings to stderr; a crafted upload can make them print
hundreds of lines. A decoder child's stderr is a small in-memory file; the worker logs
one line per noisy upload, and no more than a few a minute.
"""
from __future__ import annotations

import logging
import os
import resource
import signal
import threading
import time

MESSAGE_BYTES = 16 << 10
log = logging.getLogger("inference.decode")


def capture_stderr() -> int:
    """Point fd 2 at an in-memory file that stops growing at MESSAGE_BYTES."""
    memory = os.memfd_create("decoder-messages")
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the cap fails, not kills
    resource.setrlimit(resource.RLIMIT_FSIZE, (MESSAGE_BYTES, MESSAGE_BYTES))
    os.dup2(memory, 2)
    return memory


def read_messages(memory: int) -> tuple[int, str]:
    """How many lines the decoders printed, and the first of them."""
    text = os.pread(memory, MESSAGE_BYTES, 0).decode("utf-8", "replace")
    lines = [line for line in text.splitlines() if line.strip()]
    return len(lines), lines[0][:200] if lines else ""


class WarningLog:
    """One log line per noisy decode at most, and at most `per_minute` of them a minute."""

    def __init__(self, per_minute: int = 6) -> None:
        self.per_minute = per_minute
        self._lock = threading.Lock()
        self._window_start = time.monotonic()
        self._logged = 0
        self._suppressed = 0

    def record(self, messages: tuple[int, str] | list[object]) -> None:
        count, first = int(messages[0]), str(messages[1])  # type: ignore[call-overload]
        if not count:
            return
        with self._lock:
            now = time.monotonic()
            if now - self._window_start >= 60.0:
                if self._suppressed:
                    log.warning("decoder: %d more noisy uploads in the last minute, not logged",
                                self._suppressed)
                self._window_start, self._logged, self._suppressed = now, 0, 0
            if self._logged >= self.per_minute:
                self._suppressed += 1
                return
            self._logged += 1
        log.warning("decoder printed %d line(s) for one upload; first: %s", count, first)
