"""Validation during fine-tuning: sliding-window inference on the validation volumes, the
released criterion (Dice loss, background included) and the mean foreground Dice."""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.losses import DiceLoss
from torch import nn

from pimpic.data.cache import Cache
from pimpic.segmentation.config import FinetuneConfig
from pimpic.segmentation.inference import body_logits
from pimpic.segmentation.metrics import dice


def validate(model: nn.Module, cache: Cache, case_ids: list[str], cfg: FinetuneConfig,
             patch_size: int, device: torch.device) -> dict[str, float]:
    """Sliding-window validation on whole (with ``crop_foreground``: body-cropped) volumes.

    Returns ``{"val_dice", "val_dice_loss", "val_dice_<class>"...}``: mean over cases of the
    mean foreground Dice (classes with an empty ground truth are skipped per case), and the
    mean Dice loss (softmax, one-hot, background included: the released criterion) over the
    cropped volumes, as the released code computes it.
    """
    loss_fn = DiceLoss(to_onehot_y=True, softmax=True)
    model.eval()
    per_class: dict[int, list[float]] = {}
    case_dice, losses = [], []
    for cid in case_ids:
        label = np.asarray(cache.label(cid), dtype=np.int64)
        box, logits = body_logits(model, cache.image(cid), patch_size,
                                  crop_foreground=cfg.crop_foreground,
                                  overlap=cfg.val_sw_overlap, mode=cfg.sw_mode,
                                  sw_batch_size=cfg.sw_batch_size, device=device, amp=cfg.amp,
                                  cpu_bf16=cfg.cpu_bf16)
        y = torch.from_numpy(np.ascontiguousarray(label[box])).to(device)[None, None]
        losses.append(float(loss_fn(logits[None], y)))
        pred = np.zeros_like(label)
        pred[box] = logits.argmax(0).cpu().numpy()
        ds = [dice(pred == c, label == c) for c in range(1, logits.shape[0])]
        for c, d in enumerate(ds, start=1):
            per_class.setdefault(c, []).append(d)
        if not all(math.isnan(d) for d in ds):
            case_dice.append(float(np.nanmean(ds)))
    model.train()
    out = {"val_dice": float(np.mean(case_dice)) if case_dice else math.nan,
           "val_dice_loss": float(np.mean(losses))}
    for c, values in per_class.items():
        finite = [v for v in values if not math.isnan(v)]
        out[f"val_dice_{c}"] = float(np.mean(finite)) if finite else math.nan
    return out


def better(score: float, best: float | None, criterion: str) -> bool:
    """Is ``score`` an improvement on ``best`` under ``criterion`` (``dice``: higher is better;
    ``dice_loss``: lower)? A NaN score never is."""
    if math.isnan(score):
        return False
    if best is None:
        return True
    return score > best if criterion == "dice" else score < best
