"""Command line: build the default demo model (untrained) through the normal export path.

    python export/demo_model.py            # writes models/default.onnx once, then reuses it
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from export.demo import DEMO_ARCHITECTURE, write_demo_checkpoint  # noqa: E402
from export.errors import ExportError  # noqa: E402
from export.pipeline import ExportRequest, export_checkpoint  # noqa: E402
from webapp.model_spec import SpecError, read_spec_file  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("models/default.onnx"),
                        help="where the demo model goes")
    parser.add_argument("--arch", default=DEMO_ARCHITECTURE, help="architecture of the demo")
    parser.add_argument("--input-size", type=int, default=128, help="input side in pixels")
    parser.add_argument("--force", action="store_true", help="rebuild even if a valid one exists")
    args = parser.parse_args(argv)
    if args.output.exists() and not args.force:
        try:
            spec = read_spec_file(args.output)
            print(f"{args.output} already built ({spec.display_name}); --force rebuilds it")
            return 0
        except SpecError as error:
            print(f"rebuilding {args.output}: {error}")
    checkpoint = args.output.with_name("demo-checkpoint.ckpt")
    try:
        write_demo_checkpoint(checkpoint, args.arch, args.input_size)
        result = export_checkpoint(ExportRequest(
            checkpoint=checkpoint, output=args.output, name="demo-untrained",
            version="0", demo=True))
    except ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    parity = result.spec.parity
    print(f"wrote {result.output}: {result.spec.display_name}, demo model (untrained), "
          f"parity |Δp| {parity['max_abs_diff_probability']:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
