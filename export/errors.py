"""The one exception type the export CLI turns into a one-line message."""
from __future__ import annotations


class ExportError(Exception):
    """Something the user can fix: a bad checkpoint, a wrong flag, an unwritable path."""
