"""Train a melanoma classifier on an ISIC-layout folder with PyTorch Lightning.

    python -m training.train --labels train.csv --images jpeg --out runs/fold0

Patient-grouped stratified folds, positive-class weighting, flips/transposes/scale/colour
jitter, warm-up + cosine schedule, progressive resizing (stages may be fractions of an
epoch), AUC-based checkpointing and early stopping, mixed precision on a GPU, optional
graded targets (`--soft-target atypia` on generated data), outputs calibrated on the
held-out fold. The best checkpoint is a Lightning .ckpt that `export/to_onnx.py` exports
with no flags.
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

# training.module first: it makes Lightning importable (export/timm_runtime.py).
from training.module import MelanomaModule  # noqa: I001
import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader

from evaluation.dataset import read_labels
from training.augment import Augment
from training.data import (INTERPOLATION, LesionDataset, Normalise, StageSampler,
                           read_soft_targets)
from training.folds import assign_folds
from inference.model_spec import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class TrainConfig:
    labels: Path
    images: Path
    out_dir: Path
    arch: str = "resnest50_fast_4s1x64d"
    image_size: int = 128
    # (train size, epochs) stages: small images first, the serving size last; an epoch
    # count may be fractional (128, 0.25) for a short fine-tune.
    stages: tuple[tuple[int, float], ...] = ((128, 10),)
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-2
    warmup_fraction: float = 0.1
    folds: int = 5
    fold: int = 0
    seed: int = 0
    patience: int = 3
    target_sensitivity: float = 0.9
    max_minutes: float | None = None
    # Validate every n-th epoch (a CPU demo validates once, at the end).
    validate_every: int = 1
    # A CSV column of graded targets in [0, 1] the loss regresses instead of `target`
    # (the generator's latent `atypia`); AUC, threshold and calibration still use `target`.
    soft_target: str | None = None
    workers: int = 0
    # CPU threads torch computes with, fixed rather than one per core: a reduction split
    # over another number of threads adds its floats in another order, so two machines
    # with different core counts would train different weights from the same seed.
    threads: int = 2
    accelerator: str = "auto"
    progress: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    extra_hparams: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainResult:
    checkpoint: Path
    val_auc: float
    threshold: float
    seconds: float
    train_images: int
    val_images: int
    val_patients: int


def epoch_plan(stages: tuple[tuple[int, float], ...]) -> list[tuple[int, float]]:
    """(size, share of the training set) for each epoch: (64, 1.5) -> 64 px for one whole
    epoch, then one of half an epoch."""
    plan: list[tuple[int, float]] = []
    for size, epochs in stages:
        if epochs <= 0:
            raise ValueError(f"stage {size}:{epochs} must run a positive number of epochs")
        whole, part = int(epochs), epochs - int(epochs)
        plan += [(size, 1.0)] * whole + ([(size, part)] if part > 1e-9 else [])
    return plan


class _Stages(Callback):
    """Progressive resizing, a stage's share of the set, a fresh augmentation draw each epoch."""

    def __init__(self, dataset: LesionDataset, sampler: StageSampler,
                 plan: list[tuple[int, float]]) -> None:
        self.dataset = dataset
        self.sampler = sampler
        self.sizes = [size for size, _ in plan]

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        self.dataset.epoch = epoch
        self.dataset.size = self.sizes[min(epoch, len(self.sizes) - 1)]

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # Lightning reads the next epoch's length before any epoch-start hook runs.
        self.sampler.set_epoch(trainer.current_epoch + 1)


def fit(config: TrainConfig) -> TrainResult:
    """Train on every fold but `config.fold`, validate on it; return the best checkpoint."""
    started = time.perf_counter()
    L.seed_everything(config.seed, workers=True, verbose=False)
    torch.set_num_threads(config.threads)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    items = read_labels(config.labels, config.images)
    folds = assign_folds([i.target for i in items], [i.patient_id for i in items],
                         config.folds, config.seed)
    train_items = [i for i, f in zip(items, folds, strict=True) if f != config.fold]
    val_items = [i for i, f in zip(items, folds, strict=True) if f == config.fold]
    normalise = Normalise(config.mean, config.std)
    load_size = max([config.image_size] + [size for size, _ in config.stages])
    soft = read_soft_targets(config.labels, config.soft_target) if config.soft_target else None
    train_set = LesionDataset(train_items, load_size, normalise, Augment(), config.seed,
                              soft_targets=soft)
    val_set = LesionDataset(val_items, config.image_size, normalise)
    positives = sum(train_set.targets())
    if positives == 0 or positives == len(train_set):
        raise ValueError("the training folds need both melanomas and benign lesions")
    plan = epoch_plan(config.stages)
    sampler = StageSampler(len(train_set), [share for _, share in plan], config.seed)
    drop_last = len(train_set) >= 2 * config.batch_size
    steps = 0
    for sampler.epoch in range(len(plan)):
        steps += (len(sampler) // config.batch_size if drop_last
                  else -(-len(sampler) // config.batch_size))
    sampler.epoch = 0
    module = MelanomaModule(
        config.arch, config.image_size, config.mean, config.std,
        # Graded targets are not a rare class to up-weight.
        pos_weight=1.0 if soft else (len(train_set) - positives) / positives, lr=config.lr,
        weight_decay=config.weight_decay, warmup_steps=int(config.warmup_fraction * steps),
        total_steps=steps, target_sensitivity=config.target_sensitivity)
    # The export reads how to fit uploads from here (export/settings.py).
    module.hparams.update({"interpolation": INTERPOLATION, **config.extra_hparams})
    checkpoint = ModelCheckpoint(
        dirpath=config.out_dir, filename="epoch={epoch}-val_auc={val_auc:.4f}",
        auto_insert_metric_name=False, monitor="val_auc", mode="max", save_top_k=1,
        save_weights_only=True)
    gpu = torch.cuda.is_available() and config.accelerator in ("auto", "gpu", "cuda")
    trainer = L.Trainer(
        max_epochs=len(plan), accelerator=config.accelerator, devices=1,
        check_val_every_n_epoch=config.validate_every,
        # The sampler's length changes with the stage; Lightning re-reads it each epoch.
        reload_dataloaders_every_n_epochs=1,
        precision="16-mixed" if gpu else "32-true", deterministic="warn",
        callbacks=[checkpoint, _Stages(train_set, sampler, plan),
                   EarlyStopping(monitor="val_auc", mode="max", patience=config.patience)],
        logger=False, enable_progress_bar=config.progress, enable_model_summary=False,
        num_sanity_val_steps=0, log_every_n_steps=5,
        max_time=_duration(config.max_minutes))
    trainer.fit(module,
                DataLoader(train_set, batch_size=config.batch_size, sampler=sampler,
                           num_workers=config.workers,
                           # A last batch of one would break BatchNorm; tiny sets keep it.
                           drop_last=drop_last),
                DataLoader(val_set, batch_size=64, num_workers=config.workers))
    if not checkpoint.best_model_path:
        raise ValueError("training saved no checkpoint: no epoch reached validation")
    best = Path(checkpoint.best_model_path)
    saved = torch.load(best, map_location="cpu", weights_only=True)
    return TrainResult(best, float(checkpoint.best_model_score or 0.0),
                       float(saved["hyper_parameters"]["threshold"]),
                       time.perf_counter() - started, len(train_set), len(val_set),
                       len({i.patient_id for i in val_items}))


def _duration(minutes: float | None) -> str | None:
    """Lightning's DD:HH:MM:SS form of a wall-clock budget."""
    if not minutes:
        return None
    seconds = int(minutes * 60)
    return f"00:{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def parse_stages(text: str) -> tuple[tuple[int, float], ...]:
    """SIZE:EPOCHS,... as in 64:1,128:0.25."""
    pairs = [part.split(":") for part in text.split(",") if part]
    return tuple((int(size), float(epochs)) for size, epochs in pairs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=Path, required=True, help="ISIC train.csv")
    parser.add_argument("--images", type=Path, required=True, help="folder of the images")
    parser.add_argument("--out", type=Path, required=True, help="folder for checkpoints")
    parser.add_argument("--arch", default=TrainConfig.arch, help="ResNeSt architecture")
    parser.add_argument("--image-size", type=int, default=TrainConfig.image_size,
                        help="input side the model will be served at")
    parser.add_argument("--stages", type=parse_stages, default=None,
                        help="progressive resizing as SIZE:EPOCHS,... (default: "
                             "image-size for --epochs)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs when --stages is unset")
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size,
                        help="batch size")
    parser.add_argument("--lr", type=float, default=TrainConfig.lr, help="peak learning rate")
    parser.add_argument("--folds", type=int, default=TrainConfig.folds, help="number of folds")
    parser.add_argument("--fold", type=int, default=TrainConfig.fold, help="held-out fold")
    parser.add_argument("--seed", type=int, default=TrainConfig.seed, help="seed")
    parser.add_argument("--patience", type=int, default=TrainConfig.patience,
                        help="epochs without a better val AUC before stopping")
    parser.add_argument("--max-minutes", type=float, default=None, help="wall-clock budget")
    parser.add_argument("--validate-every", type=int, default=1, help="validate every n epochs")
    parser.add_argument("--soft-target", default=None,
                        help="CSV column of graded targets in [0, 1] to regress (generated "
                             "data's `atypia`); AUC and threshold still use `target`")
    parser.add_argument("--workers", type=int, default=0, help="data-loading processes")
    parser.add_argument("--accelerator", default="auto", help="auto, cpu, gpu, ...")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    config = TrainConfig(
        labels=args.labels, images=args.images, out_dir=args.out, arch=args.arch,
        image_size=args.image_size, stages=args.stages or ((args.image_size, args.epochs),),
        batch_size=args.batch_size, lr=args.lr, folds=args.folds, fold=args.fold,
        seed=args.seed, patience=args.patience, max_minutes=args.max_minutes,
        workers=args.workers, accelerator=args.accelerator, progress=not args.quiet,
        validate_every=args.validate_every, soft_target=args.soft_target)
    result = fit(config)
    print(f"best checkpoint {result.checkpoint}: val AUC {result.val_auc:.4f} on "
          f"{result.val_images} images of {result.val_patients} patients, threshold "
          f"{result.threshold:.3f}, {result.seconds:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
