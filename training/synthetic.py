"""Synthetic dermoscopy with ground truth: labelled images and lesion masks in the ISIC layout.

    python -m training.synthetic OUT_DIR --images 2000 --seed 7

writes OUT_DIR/jpeg/<image_name>.jpg, OUT_DIR/masks/<image_name>.png (255 = lesion) and
OUT_DIR/train.csv (image_name, patient_id, sex, age_approx, anatom_site_general_challenge,
diagnosis, benign_malignant, target), the layout `evaluation/` reads. Same seed, same bytes.
"""
from __future__ import annotations

import argparse
import csv
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from training.lesion import BENIGN_COLOURS, draw_traits, paint_lesion
from training.optics import Optics, apply_optics, draw_optics
from training.skin import draw_skin_type, render_skin

CSV_COLUMNS = ("image_name", "patient_id", "sex", "age_approx",
               "anatom_site_general_challenge", "diagnosis", "benign_malignant", "target",
               "atypia")
SITES = ("torso", "lower extremity", "upper extremity", "head/neck", "palms/soles",
         "oral/genital")
SITE_WEIGHTS = (0.51, 0.25, 0.15, 0.06, 0.02, 0.01)
DEFAULT_SIZE = 256
DEFAULT_MELANOMA_FRACTION = 0.06
DEFAULT_LABEL_NOISE = 0.01


@dataclass(frozen=True)
class Patient:
    """What a patient's lesions share: skin, device habits, and their usual naevus."""

    skin_type: int
    optics: Optics
    naevus_colours: tuple[str, str]
    naevus_radius: float
    naevus_elongation: float
    sex: str
    age: int


@dataclass(frozen=True)
class Record:
    """One row of train.csv, plus the true class before label noise."""

    image_name: str
    patient_id: str
    sex: str
    age_approx: int
    site: str
    melanoma: bool
    target: int
    atypia: float            # the latent severity the traits were drawn from (ground truth)
    seed: tuple[int, ...]


@dataclass(frozen=True)
class GeneratedDataset:
    root: Path
    labels_csv: Path
    images: Path
    masks: Path
    count: int
    melanomas: int


def draw_patient(rng: np.random.Generator) -> Patient:
    first = int(rng.integers(0, len(BENIGN_COLOURS) - 1))
    colours = (BENIGN_COLOURS[first], BENIGN_COLOURS[first + int(rng.integers(0, 2))])
    return Patient(
        skin_type=draw_skin_type(rng),
        optics=draw_optics(rng),
        naevus_colours=colours,
        naevus_radius=float(rng.uniform(0.11, 0.22)),
        naevus_elongation=float(rng.uniform(1.0, 1.3)),
        sex=str(rng.choice(["male", "female"])),
        age=int(rng.integers(4, 18)) * 5,
    )


def severity(rng: np.random.Generator, melanoma: bool) -> float:
    """Latent atypia: melanomas mostly high, naevi mostly low, with tails that overlap
    (on its own it ranks melanomas above naevi with an AUC near 0.99)."""
    return float(rng.beta(6.0, 1.6) if melanoma else rng.beta(1.2, 8.5))


def render(rng: np.random.Generator, patient: Patient, atypia: float, size: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """One image of one of `patient`'s lesions: (RGB uint8, boolean lesion mask)."""
    skin = render_skin(rng, size, patient.skin_type, np.asarray(patient.optics.tint, np.float32))
    traits = draw_traits(rng, atypia, patient.naevus_colours,
                         patient.naevus_radius, patient.naevus_elongation)
    image, mask = paint_lesion(rng, skin, traits)
    image = apply_optics(rng, image, patient.optics)
    return (image * 255.0 + 0.5).astype(np.uint8), mask


def render_lesion(rng_or_seed: np.random.Generator | int, melanoma: bool,
                  size: int = DEFAULT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """One lesion of a new random patient, in memory: (H x W x 3 RGB uint8, H x W bool mask)."""
    rng = (rng_or_seed if isinstance(rng_or_seed, np.random.Generator)
           else np.random.default_rng(rng_or_seed))
    patient = draw_patient(rng)
    return render(rng, patient, severity(rng, melanoma), size)


def plan_dataset(n_images: int, seed: int, melanoma_fraction: float = DEFAULT_MELANOMA_FRACTION,
                 label_noise: float = DEFAULT_LABEL_NOISE) -> list[Record]:
    """Who the patients are and which lesion is which, before anything is drawn.

    `label_noise` is the share of melanomas labelled benign; a tenth of that share of naevi
    is labelled melanoma, as a pathologist's rare misreads would be."""
    records: list[Record] = []
    patient_index = 0
    while len(records) < n_images:
        rng = np.random.default_rng([seed, patient_index])
        patient = draw_patient(rng)
        lesions = min(10, 1 + int(rng.poisson(3.0)), n_images - len(records))
        for lesion in range(lesions):
            melanoma = bool(rng.random() < melanoma_fraction)
            flip = rng.random() < (label_noise if melanoma else label_noise / 10)
            atypia = severity(rng, melanoma)
            records.append(Record(
                image_name=f"ISIC_{seed % 1000:03d}{len(records):06d}",
                patient_id=f"IP_{seed % 1000:03d}{patient_index:05d}",
                sex=patient.sex, age_approx=patient.age,
                site=str(rng.choice(SITES, p=SITE_WEIGHTS)),
                melanoma=melanoma, target=int(melanoma != flip), atypia=atypia,
                seed=(seed, patient_index, lesion)))
        patient_index += 1
    return records


def render_record(record: Record, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The image of a planned record (its patient drawn from the same seed as in the plan)."""
    patient = draw_patient(np.random.default_rng(list(record.seed[:2])))
    return render(np.random.default_rng(list(record.seed)), patient, record.atypia, size)


def generate_dataset(out_dir: Path, n_images: int, seed: int, size: int = DEFAULT_SIZE,
                     melanoma_fraction: float = DEFAULT_MELANOMA_FRACTION,
                     label_noise: float = DEFAULT_LABEL_NOISE, workers: int = 1,
                     progress: bool = False) -> GeneratedDataset:
    """Write `n_images` images, their masks and train.csv under `out_dir` (ISIC layout)."""
    out_dir = Path(out_dir)
    images, masks = out_dir / "jpeg", out_dir / "masks"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    records = plan_dataset(n_images, seed, melanoma_fraction, label_noise)
    jobs = [(record, size, images, masks) for record in records]
    for _ in _progress(_run(jobs, workers), len(jobs), progress):
        pass
    labels_csv = out_dir / "train.csv"
    with labels_csv.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(CSV_COLUMNS)
        for r in records:
            writer.writerow([r.image_name, r.patient_id, r.sex, r.age_approx, r.site,
                             "melanoma" if r.target else "nevus",
                             "malignant" if r.target else "benign", r.target,
                             f"{r.atypia:.4f}"])
    return GeneratedDataset(out_dir, labels_csv, images, masks, len(records),
                            sum(r.target for r in records))


def _write(job: tuple[Record, int, Path, Path]) -> str:
    record, size, images, masks = job
    cv2.setNumThreads(1)
    rgb, mask = render_record(record, size)
    cv2.imwrite(str(images / f"{record.image_name}.jpg"), rgb[..., ::-1],
                [cv2.IMWRITE_JPEG_QUALITY, 92])
    cv2.imwrite(str(masks / f"{record.image_name}.png"), mask.astype(np.uint8) * 255)
    return record.image_name


def _run(jobs: list[tuple[Record, int, Path, Path]], workers: int) -> Iterator[str]:
    if workers <= 1:
        yield from map(_write, jobs)
        return
    # Spawned, not forked: a fork of a process whose torch/OpenMP threads are running can
    # hang in the child (seen when the demo build ran after other torch work in one process).
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(_write, jobs, chunksize=16)


def _progress(items: Iterator[str], total: int, enabled: bool) -> Iterator[str]:
    if not enabled:
        return items
    from tqdm import tqdm  # only the CLI needs it; the serving environment has no tqdm

    return iter(tqdm(items, total=total, desc="drawing lesions", unit="img"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder to write jpeg/, masks/, train.csv")
    parser.add_argument("--images", type=int, default=2000, help="number of images")
    parser.add_argument("--seed", type=int, default=0, help="seed; same seed, same dataset")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="image side in pixels")
    parser.add_argument("--melanoma-fraction", type=float, default=DEFAULT_MELANOMA_FRACTION,
                        help="share of lesions that are melanoma")
    parser.add_argument("--label-noise", type=float, default=DEFAULT_LABEL_NOISE,
                        help="share of melanomas labelled benign (a tenth as many naevi "
                             "are labelled melanoma)")
    parser.add_argument("--workers", type=int, default=1, help="processes drawing images")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.images < 1 or not 32 <= args.size <= 2048:
        parser.error("--images must be >= 1 and --size within 32..2048")
    result = generate_dataset(args.out_dir, args.images, args.seed, args.size,
                              args.melanoma_fraction, args.label_noise, args.workers,
                              progress=not args.quiet)
    print(f"wrote {result.count} images ({result.melanomas} labelled melanoma) to "
          f"{result.images}, masks to {result.masks}, labels to {result.labels_csv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
