"""`python -m evaluation ...`: see evaluation/cli.py."""
from __future__ import annotations

from evaluation.cli import main

raise SystemExit(main())
