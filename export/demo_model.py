"""Command line: build the default demo model once: draw synthetic lesions, train, export.

    python export/demo_model.py            # writes models/default.onnx once, then reuses it

The model learns from computer-drawn dermoscopy images only (training/synthetic.py): it has
never seen a real lesion, and its spec says so.
"""
from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from export.demo import DemoRecipe, write_demo_checkpoint  # noqa: E402
from export.errors import ExportError  # noqa: E402
from export.pipeline import ExportRequest, export_checkpoint  # noqa: E402
from export.reduced_decode import DEFAULT_PHOTOS  # noqa: E402
from inference.model_spec import SpecError, read_spec_file  # noqa: E402

DEMO_NAME = "demo-synthetic"
UNTRAINED_NAME = "demo-untrained"
CHECKPOINT_NAME = "demo-checkpoint.ckpt"
# Drawn lesions (their own seed, apart from the training set's) whose feature statistics the
# server compares uploads with, so photos unlike any lesion get a "not a lesion" warning.
REFERENCE_IMAGES = 300
REFERENCE_SEED = 31337
REFERENCE_SIZES = (128, 192, 256)


def record_reference(output: Path, count: int = REFERENCE_IMAGES) -> int:
    """Embed out-of-distribution reference statistics of `count` drawn lesions in the model."""
    import numpy as np

    from export.reference import embed, pooled_features
    from training.synthetic import render_lesion
    from inference import ood

    rng = np.random.default_rng(REFERENCE_SEED)
    # Drawn at several resolutions, as uploads come: a trained model's features tell a
    # 128 px rendering from a 256 px one, and a single size made smaller ones look foreign.
    photos = (render_lesion(rng, bool(rng.random() < 0.1), REFERENCE_SIZES[i % 3])[0]
              for i in range(count))
    embed(output, ood.fit(pooled_features(output, photos)))
    return count


def measure_reduced_decode(output: Path, photos: int) -> dict[str, Any]:
    """Reduced-scale JPEG decoding against full, on `photos` drawn phone photos."""
    from export import reduced_decode

    return reduced_decode.measure(output, reduced_decode.phone_photos(photos))


def record_measurements(output: Path, photos: int) -> dict[str, Any]:
    """The OOD reference statistics and the reduced-decode measurement, recorded in the model.

    Both only read the model and each keeps one core busy, so the second runs in a process
    of its own beside the first (45 -> 39 s in a fresh clone's build); the writes come after.
    """
    from export import reduced_decode

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending = pool.submit(measure_reduced_decode, output, photos)
        record_reference(output)
        measured = pending.result()
    reduced_decode.record(output, measured)
    return measured


def build_untrained(output: Path, architecture: str, input_size: int) -> Path:
    """Seeded random weights through the same export path: for timing, where weights
    do not matter and training would only cost minutes."""
    checkpoint = write_demo_checkpoint(output.with_name(CHECKPOINT_NAME), architecture,
                                       input_size)
    return export_checkpoint(ExportRequest(checkpoint=checkpoint, output=output,
                                           name=UNTRAINED_NAME, version="0",
                                           demo=True)).output


def build(output: Path, recipe: DemoRecipe, progress: bool = True) -> Path:
    """Generate the training set, train with the pipeline, export to `output`."""
    from training.synthetic import generate_dataset
    from training.train import TrainConfig, epoch_plan, fit

    work = output.with_name(output.stem + "-build")
    started = time.perf_counter()
    data = generate_dataset(work / "data", recipe.images, recipe.seed, recipe.render_size,
                            recipe.melanoma_fraction, workers=2, progress=progress)
    drawn = time.perf_counter() - started
    result = fit(TrainConfig(
        labels=data.labels_csv, images=data.images, out_dir=work / "checkpoints",
        arch=recipe.architecture, image_size=recipe.input_size, stages=recipe.stages,
        batch_size=recipe.batch_size, lr=recipe.lr, seed=recipe.seed, progress=progress,
        soft_target=recipe.soft_target,
        # One validation, after the last stage: at 128 px it costs as much as 1/4 epoch.
        validate_every=len(epoch_plan(recipe.stages)),
        extra_hparams={"training_data": recipe.training_data, "demo_seed": recipe.seed}))
    held_out = {"auc": round(result.val_auc, 4), "images": result.val_images,
                "patients": result.val_patients}
    trained = time.perf_counter()
    exported = export_checkpoint(ExportRequest(
        checkpoint=result.checkpoint, output=output, name=DEMO_NAME, version="1", demo=True,
        provenance="demo: trained only on computer-drawn (synthetic) dermoscopy images; it "
                   "has never seen a real lesion",
        training_data=recipe.training_data, held_out=held_out))
    # Beside the model, where benchmarks and the evaluation CLI's --checkpoint look for it.
    result.checkpoint.replace(output.with_name(CHECKPOINT_NAME))
    print(f"drew {data.count} lesions in {drawn:.0f} s, trained in {result.seconds:.0f} s: "
          f"held-out AUC {result.val_auc:.3f} ({result.val_images} images, "
          f"{result.val_patients} patients), threshold {result.threshold:.3f}; exported and "
          f"verified in {time.perf_counter() - trained:.0f} s")
    return exported.output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = DemoRecipe()
    parser.add_argument("--output", type=Path, default=Path("models/default.onnx"),
                        help="where the demo model goes")
    parser.add_argument("--arch", default=defaults.architecture, help="architecture")
    parser.add_argument("--input-size", type=int, default=defaults.input_size,
                        help="input side in pixels")
    parser.add_argument("--images", type=int, default=defaults.images,
                        help="synthetic images to train and validate on")
    parser.add_argument("--stages", default=None,
                        help="progressive resizing as SIZE:EPOCHS,... (default "
                             + ",".join(f"{s}:{e}" for s, e in defaults.stages) + ")")
    parser.add_argument("--untrained", action="store_true",
                        help="seeded random weights, no training (benchmarks only)")
    parser.add_argument("--reduced-decode-photos", type=int, default=DEFAULT_PHOTOS,
                        help="drawn phone photos on which reduced JPEG decoding is measured")
    parser.add_argument("--force", action="store_true", help="rebuild even if a valid one exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    wanted = UNTRAINED_NAME if args.untrained else DEMO_NAME
    if args.output.exists() and not args.force:
        try:
            spec = read_spec_file(args.output)
            if spec.name == wanted:
                print(f"{args.output} already built ({spec.display_name}); --force rebuilds it")
                return 0
            print(f"rebuilding {args.output}: it holds {spec.name}, not {wanted}")
        except SpecError as error:
            print(f"rebuilding {args.output}: {error}")
    recipe = dataclasses.replace(
        defaults, architecture=args.arch, input_size=args.input_size, images=args.images,
        render_size=max(defaults.render_size, args.input_size),
        stages=_stages(args.stages) if args.stages else defaults.stages)
    try:
        if args.untrained:
            output = build_untrained(args.output, args.arch, args.input_size)
            record_reference(output)
            print(f"wrote {output}: UNTRAINED demo model (seeded random weights), with "
                  f"out-of-distribution statistics of {REFERENCE_IMAGES} drawn lesions")
            return 0
        output = build(args.output, recipe, progress=not args.quiet)
        started = time.perf_counter()
        measured = record_measurements(output, args.reduced_decode_photos)
        print(f"large JPEGs: decoded at reduced scale while the shorter side stays "
              f"{measured['min_ratio']}x the input (0: always in full), as measured on "
              f"{measured['photos']} drawn phone photos; reference statistics and this took "
              f"{time.perf_counter() - started:.0f} s")
    except ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {output}: demo model trained on synthetic lesions (not a diagnosis)")
    return 0


def _stages(text: str) -> tuple[tuple[int, float], ...]:
    from training.train import parse_stages

    return parse_stages(text)


if __name__ == "__main__":
    raise SystemExit(main())
