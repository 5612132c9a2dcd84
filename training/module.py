"""The LightningModule: one melanoma logit, weighted BCE, AUC on the held-out fold.

Its `hyper_parameters` (arch, image_size, mean, std, threshold) are what `export/to_onnx.py`
reads, so the exported model preprocesses exactly as training did. The saved head is
calibrated on the held-out fold (Platt scaling), so served scores are probabilities of the
label rather than whatever the loss's weighting or graded targets made them."""
from __future__ import annotations

import math
from typing import Any

from export.timm_runtime import make_torchvision_importable

# Lightning imports torchmetrics, which imports torchvision; see export/timm_runtime.py.
make_torchvision_importable()

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from evaluation.metrics import threshold_for_sensitivity  # noqa: E402
from export.architectures import ARCHITECTURES  # noqa: E402
from export.graph import classifier_of  # noqa: E402


def warmup_cosine(step: int, warmup: int, total: int, floor: float = 0.02) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to `floor`."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def operating_threshold(targets: np.ndarray, scores: np.ndarray, sensitivity: float) -> float:
    """The highest threshold that still flags `sensitivity` of the melanomas, kept inside
    (0, 1) as the model spec requires; 0.5 when the fold has no melanoma."""
    if not targets.any():
        return 0.5
    return float(np.clip(threshold_for_sensitivity(targets, scores, sensitivity), 1e-4,
                         1 - 1e-4))


def platt_scaling(targets: np.ndarray, logits: np.ndarray) -> tuple[float, float]:
    """(scale, shift) so that sigmoid(scale * logit + shift) matches the labels' frequency;
    (1, 0) when the fold has a single class."""
    if not 0 < targets.sum() < targets.size:
        return 1.0, 0.0
    fitted = LogisticRegression(C=1e4).fit(logits.reshape(-1, 1), targets)
    return float(fitted.coef_[0, 0]), float(fitted.intercept_[0])


class MelanomaModule(L.LightningModule):
    def __init__(self, arch: str, image_size: int, mean: tuple[float, float, float],
                 std: tuple[float, float, float], pos_weight: float = 1.0, lr: float = 1e-3,
                 weight_decay: float = 1e-2, warmup_steps: int = 50, total_steps: int = 1000,
                 target_sensitivity: float = 0.9, threshold: float = 0.5) -> None:
        super().__init__()
        self.save_hyperparameters()
        # Channels-last: oneDNN's convolutions run a 128 px training step about 20% faster
        # on a CPU this way (and tensor cores want it on a GPU).
        self.model = ARCHITECTURES[arch].build(1).to(
            memory_format=torch.channels_last)  # type: ignore[call-overload]  # stubs omit it
        _zero_init_residuals(self.model)
        self.loss = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([pos_weight]))
        self._logits: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []
        self._calibration = (1.0, 0.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.contiguous(memory_format=torch.channels_last))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        images, targets = batch
        loss = self.loss(self(images), targets)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        images, targets = batch
        logits = self(images)
        self.log("val_loss", self.loss(logits, targets), prog_bar=False)
        self._logits.append(logits.float().flatten().cpu())
        self._targets.append(targets.flatten().cpu())

    def on_validation_epoch_end(self) -> None:
        logits = torch.cat(self._logits).numpy().astype(np.float64)
        targets = torch.cat(self._targets).numpy().astype(int)
        self._logits.clear()
        self._targets.clear()
        auc = float(roc_auc_score(targets, logits)) if 0 < targets.sum() < targets.size else 0.5
        self.log("val_auc", auc, prog_bar=True)
        # Saved with the checkpoint of this epoch: calibration and operating point travel
        # with the weights.
        self._calibration = platt_scaling(targets, logits)
        scale, shift = self._calibration
        scores = 1.0 / (1.0 + np.exp(-(scale * logits + shift)))
        self.hparams["threshold"] = operating_threshold(
            targets, scores, self.hparams["target_sensitivity"])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Fold the held-out fold's calibration into the saved head (training goes on with
        the raw one)."""
        scale, shift = self._calibration
        head = next(name for name, module in self.model.named_modules()
                    if module is classifier_of(self.model))
        state = checkpoint["state_dict"]
        state[f"model.{head}.weight"] = state[f"model.{head}.weight"] * scale
        state[f"model.{head}.bias"] = state[f"model.{head}.bias"] * scale + shift
        checkpoint["hyper_parameters"]["calibration"] = {"scale": scale, "shift": shift}

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams["lr"],
                                      weight_decay=self.hparams["weight_decay"])
        warmup, total = self.hparams["warmup_steps"], self.hparams["total_steps"]
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, warmup, total))
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def _zero_init_residuals(network: torch.nn.Module) -> None:
    """Start each residual block as the identity (the last BN's scale at zero): a deep
    network trained from scratch then learns fast, as in Goyal et al. 2017."""
    for module in network.modules():
        last_bn = getattr(module, "bn3", None)
        if isinstance(last_bn, torch.nn.BatchNorm2d):
            torch.nn.init.zeros_(last_bn.weight)
