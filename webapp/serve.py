"""`melanoma-serve`: gunicorn with the shipped gunicorn.conf.py (settings from MELANOMA_*)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

CONFIG = Path(__file__).resolve().parent.parent / "gunicorn.conf.py"


def main(argv: list[str] | None = None) -> int:
    """Replace this process with gunicorn; extra arguments go to gunicorn."""
    if not CONFIG.is_file():
        print(f"error: {CONFIG} not found: run melanoma-serve from a checkout (pip install -e .)",
              file=sys.stderr)
        return 2
    arguments = sys.argv[1:] if argv is None else argv
    os.execv(sys.executable, [sys.executable, "-m", "gunicorn", "-c", str(CONFIG), *arguments])


if __name__ == "__main__":
    raise SystemExit(main())
