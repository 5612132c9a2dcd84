"""Errors of the web layer itself (the core's domain errors are in `inference.errors`)."""
from __future__ import annotations


class Overloaded(Exception):
    """Inference is saturated; the client should come back after `retry_after` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"server busy, retry in {retry_after} s")
        self.retry_after = retry_after
