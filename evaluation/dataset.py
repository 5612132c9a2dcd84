"""The ISIC CSV layout (`image_name,target[,patient_id]`) and the folder of images beside it."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


class DatasetError(ValueError):
    """The labels file or the image folder cannot be used as given."""


@dataclass(frozen=True)
class LabelledImage:
    name: str
    path: Path
    target: int
    patient_id: str = ""


def find_image(folder: Path, name: str) -> Path | None:
    """`folder/name` as written, else with one of the usual extensions."""
    exact = folder / name
    if exact.suffix.lower() in IMAGE_EXTENSIONS and exact.is_file():
        return exact
    for extension in (*IMAGE_EXTENSIONS, *(e.upper() for e in IMAGE_EXTENSIONS)):
        candidate = folder / f"{name}{extension}"
        if candidate.is_file():
            return candidate
    return None


def read_labels(labels_csv: Path, image_folder: Path) -> list[LabelledImage]:
    """Every row of the CSV with its image file; refuse the set if anything is missing."""
    try:
        with labels_csv.open(newline="") as stream:
            reader = csv.DictReader(stream)
            columns = set(reader.fieldnames or ())
            rows = list(reader)
    except OSError as error:
        raise DatasetError(f"cannot read {labels_csv}: {error.strerror}") from None
    missing_columns = {"image_name", "target"} - columns
    if missing_columns:
        raise DatasetError(f"{labels_csv} lacks the column(s) {', '.join(sorted(missing_columns))}"
                           f"; the ISIC layout is image_name,target[,patient_id]")
    images, unfound = [], []
    for line, row in enumerate(rows, start=2):
        name = (row["image_name"] or "").strip()
        target = (row["target"] or "").strip()
        if target not in ("0", "1"):
            raise DatasetError(f"{labels_csv} line {line}: target must be 0 or 1, got {target!r}")
        path = find_image(image_folder, name)
        if path is None:
            unfound.append(name)
            continue
        images.append(LabelledImage(name, path, int(target),
                                    (row.get("patient_id") or "").strip()))
    if unfound:
        shown = ", ".join(unfound[:5]) + (f" (+{len(unfound) - 5} more)" if len(unfound) > 5
                                          else "")
        raise DatasetError(f"{len(unfound)} image(s) listed in {labels_csv} are not in "
                           f"{image_folder}: {shown}")
    if not images:
        raise DatasetError(f"{labels_csv} lists no images")
    return images


def list_images(folder: Path) -> list[tuple[str, Path]]:
    """(image_name, path) for every image file in `folder`, sorted by name."""
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a folder")
    found = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not found:
        raise DatasetError(f"{folder} holds no .jpg, .jpeg or .png images")
    return [(p.stem, p) for p in found]
