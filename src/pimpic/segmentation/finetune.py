"""Supervised fine-tuning of a (pretrained or random) encoder + new decoder (docs/method.md §6.2).

The authors' released recipe by default: the released decoder, Dice loss (softmax, one-hot),
Adam lr 1e-5, 2 volumes × 16 label-balanced 64³ crops per step from foreground-cropped volumes,
light whole-volume augmentation ("Random + Aug"), validation by sliding-window inference
(overlap 0.25, constant blending) on the foreground-cropped validation volumes, the model with
the lowest validation Dice loss (background included) kept, early stopping after ``patience``
epochs without improvement. Options (:class:`~pimpic.segmentation.config.FinetuneConfig`):
the symmetric decoder, DiceCE loss, cosine schedule, a frozen encoder for the first epochs, mean
foreground Dice as the criterion, per-crop or intensity augmentation, epoch/step caps.

Launch::

    pimpic finetune CACHE --out runs/ft5 --fraction 5 --encoder runs/pre/encoder.safetensors
    pimpic finetune CACHE --out runs/ft5 --fraction 5 --resume        # continue after a kill

Run folder (created, resumed and overwritten by :class:`~pimpic.training.run_folder.RunFolder`,
the same policy as pretraining): ``.pimpic-run``, ``config.yaml``, ``run.json`` (with what a
resumed run must still match: cache manifest digest, training and validation cases, encoder
digest), ``env.json``, ``model.safetensors`` (best), ``checkpoint.pt`` (last epoch; resume is
bit-for-bit on CPU), ``metrics.jsonl``, ``tb/``, ``energy.json``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss, DiceLoss
from torch import nn

from pimpic.config import save_config, to_dict
from pimpic.data.cache import Cache, check_same_inputs
from pimpic.data.leakage import check_encoder_pool
from pimpic.energy import EnergyMeter, record_energy
from pimpic.envinfo import collect
from pimpic.errors import PimpicError
from pimpic.io import write_json
from pimpic.models.backbone import architecture_of, levels_of
from pimpic.models.export import load_encoder
from pimpic.models.unet import SegmentationNet, unet_architecture
from pimpic.patch import check_unet_patch
from pimpic.paths import (
    CHECKPOINT,
    CONFIG,
    ENERGY,
    ENV,
    METRICS,
    MODEL_FILE,
    RUN_INFO,
    TENSORBOARD,
)
from pimpic.pretraining.backbones import build_encoder
from pimpic.segmentation.config import FinetuneConfig
from pimpic.segmentation.finetune_data import epoch_loader, train_transform
from pimpic.segmentation.model_file import save_model
from pimpic.segmentation.run_info import FinetuneRun, Progress
from pimpic.segmentation.validation import better, validate
from pimpic.training.checkpoint import load_checkpoint, restore, save_checkpoint
from pimpic.training.device import autocast, flush_denormals, memory_format, resolve_device
from pimpic.training.guard import FINETUNE_PRECISION, check_finite, step_values
from pimpic.training.monitor import Monitor
from pimpic.training.run_folder import RunFolder, file_sha256, json_sha256

log = logging.getLogger(__name__)

RUN_ARTIFACTS = (CONFIG, RUN_INFO, ENV, MODEL_FILE, CHECKPOINT, METRICS, ENERGY, TENSORBOARD)
#: what a fine-tuning checkpoint holds
CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "state")


def build_model(cfg: FinetuneConfig, cache: Cache, encoder: str | Path | None,
                allow: Iterable[str] = ()) -> tuple[SegmentationNet, dict[str, Any] | None]:
    """Encoder (from ``encoder`` after checking its metadata, or random) + new decoder."""
    torch.manual_seed(cfg.seed)
    meta = None
    if encoder is not None:
        settings = cache.settings
        expected = {"in_channels": 1, "spacing": settings["spacing"],
                    "window": settings["window"], "patch_size": cfg.patch_size}
        enc, meta = load_encoder(encoder, build_encoder, expected=expected, allow=allow)
    else:
        enc = build_encoder(unet_architecture(1, cfg.width, cfg.depth))
    # InstanceNorm needs > 1 voxel at the bottleneck
    check_unet_patch(cfg.patch_size, len(levels_of(enc)), min_cells=2)
    return SegmentationNet(enc, num_classes(cfg, cache), cfg.decoder), meta


def num_classes(cfg: FinetuneConfig, cache: Cache) -> int:
    """One network output per label value the cache's dataset names; a ``num_classes`` set in
    the config must agree (so must ``class_ratios``, one per class)."""
    labels = cache.require_labels()
    n = labels.num_classes
    if cfg.num_classes is not None and cfg.num_classes < n:
        raise PimpicError(f"{cache.root}: label value {n - 1} does not fit "
                          f"num_classes={cfg.num_classes} (the labels {labels.names()} need {n} "
                          "classes); leave num_classes unset: it follows the labels")
    if cfg.num_classes is not None and cfg.num_classes != n:
        raise PimpicError(f"{cache.root}: num_classes={cfg.num_classes} differs from the "
                          f"{n} classes of the labels {labels.names()}; leave num_classes "
                          "unset: it follows the labels")
    if cfg.class_ratios is not None and len(cfg.class_ratios) != n:
        raise PimpicError(f"{cache.root}: class_ratios has {len(cfg.class_ratios)} values for "
                          f"the {n} classes of the labels {labels.names()} (one per class, "
                          "background first)")
    return n


# ------------------------------------------------------------------------------- run folder


def _identity(cache: Cache, train_ids: list[str], val_ids: list[str],
              encoder: str | Path | None) -> dict[str, Any]:
    """What a resumed run must share with the run it continues (recorded in ``run.json``)."""
    return {"settings": cache.settings, "cache_manifest_sha256": json_sha256(cache.manifest),
            "train_cases": train_ids, "val_cases": val_ids,
            "encoder_sha256": file_sha256(encoder) if encoder is not None else None}


def _check_labels(cache: Cache, case_ids: list[str], num_classes: int) -> None:
    """Every label value must be a class: ``0 … num_classes − 1``."""
    for cid in case_ids:
        declared = cache.meta(cid).get("label_values")  # recorded by `pimpic prepare`
        if declared:
            top = max(declared)
        else:
            label = cache.label(cid)
            top = int(np.max(label)) if label is not None and label.size else 0
        if top >= num_classes:
            raise PimpicError(f"{cache.case_dir(cid)}: label value {top} does not fit "
                              f"num_classes={num_classes} (labels 0…{num_classes - 1}); the "
                              "cache predates recorded labels: prepare the dataset again into "
                              "a new cache")


def _cases(cache: Cache, fraction: float) -> tuple[list[str], list[str]]:
    split = cache.split()
    if not split.train:
        raise PimpicError(f"{cache.root}: the split has 0 training cases")
    train = split.fraction(fraction)
    val = list(split.val)
    for cid in [*train, *val]:
        if not (cache.case_dir(cid) / "label.npy").is_file():
            raise PimpicError(f"{cache.case_dir(cid)}: case {cid!r} has no label; fine-tuning "
                              "and validation need labelled cases")
    return train, val


# ---------------------------------------------------------------------------------- training


def finetune(
    cache: str | Path | Cache,
    run_dir: str | Path,
    cfg: FinetuneConfig,
    *,
    encoder: str | Path | None = None,
    allow: Iterable[str] = (),
    allow_transductive: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    tensorboard: bool = True,
) -> Path:
    """Fine-tune on the label fraction ``cfg.fraction`` of ``cache``; returns ``run_dir``.

    Args:
        cache: a prepared cache (folder or :class:`Cache`) with a split.
        run_dir: the run folder (refused if non-empty unless ``resume``/``overwrite``).
        cfg: the fine-tuning configuration.
        encoder: an ``encoder.safetensors`` export, or None for the from-scratch baseline.
        allow: checked metadata names whose mismatch is accepted (e.g. ``patch_size``).
            An encoder pretrained on any of the cache's test cases is refused
            (:func:`pimpic.data.leakage.check_encoder_pool`), whatever is allowed.
        allow_transductive: accept an encoder pretrained on every cached case (``--pool
            all``: the test patients' images, not their labels); run.json then records
            ``transductive: true``.
        resume: continue from ``checkpoint.pt``; refused without one, or when the config
            (beyond its caps and machinery), the cache, the cases, their input files (a case
            redone by ``prepare``) or the encoder changed.
        overwrite: remove what an earlier fine-tuning run wrote into ``run_dir`` first
            (refused when the folder is not a pimpic fine-tuning run or holds other files).
        progress: show a progress bar.
        tensorboard: also log to ``run_dir/tb``.
    """
    cache = cache if isinstance(cache, Cache) else Cache(cache)
    run_dir = Path(run_dir)
    train_ids, val_ids = _cases(cache, cfg.fraction)
    # the resolved number is what config.yaml records and a resume compares
    classes = num_classes(cfg, cache)
    cfg = dataclasses.replace(cfg, num_classes=classes)
    _check_labels(cache, [*train_ids, *val_ids], classes)
    device = resolve_device(cfg.device)
    # validate everything before touching the run folder: a refused setup leaves no trace
    model, enc_meta = build_model(cfg, cache, encoder, allow)
    transductive = check_encoder_pool(encoder, enc_meta, cache, list(cache.split().test),
                                      allow_transductive=allow_transductive)
    identity = _identity(cache, train_ids, val_ids, encoder)
    folder = RunFolder(run_dir, "finetune", RUN_ARTIFACTS)
    resuming = folder.check(resume=resume, overwrite=overwrite)
    resumed_info = (folder.check_resume(to_dict(cfg), identity, to_dict(FinetuneConfig()))
                    if resuming else None)
    inputs = cache.input_sha256([*train_ids, *val_ids])
    if resumed_info is not None:
        check_same_inputs(resumed_info.get("case_inputs"), inputs, f"{run_dir}: cannot resume",
                          "start over with --overwrite, or use a new --out folder")
    folder.start(resuming)
    n_train = len(cache.split().train)
    log.info("fine-tuning on %d of %d training cases (%s%%), validating on %d",
             len(train_ids), n_train, cfg.fraction, len(val_ids))
    if resumed_info is not None:
        info = FinetuneRun.from_json(run_dir / RUN_INFO, resumed_info)
    else:
        save_config(cfg, run_dir / CONFIG)
        info = FinetuneRun(
            cache=str(cache.root.resolve()), fraction=cfg.fraction, **identity,
            case_inputs=inputs,
            encoder=str(Path(encoder).resolve()) if encoder is not None else None,
            encoder_meta=enc_meta, patch_size=cfg.patch_size, num_classes=model.num_classes,
            architecture=architecture_of(model.encoder),
            started=time.strftime("%Y-%m-%dT%H:%M:%S"),
            labels=cache.require_labels().to_json(), transductive=bool(transductive))
        info.save(run_dir)
        write_json(run_dir / ENV, collect(device))
    with flush_denormals(device):
        return _train(model, cache, run_dir, cfg, info, train_ids, val_ids, device,
                      resuming=resuming, progress=progress, tensorboard=tensorboard)


def _param_groups(model: SegmentationNet, cfg: FinetuneConfig) -> list[dict[str, Any]]:
    """One group at ``lr`` — or, with ``encoder_lr``, the encoder's parameters in a group of
    their own at that rate."""
    if cfg.encoder_lr is None:
        return [{"params": list(model.parameters())}]
    encoder = list(model.encoder.parameters())
    mine = {id(p) for p in encoder}
    return [{"params": encoder, "lr": cfg.encoder_lr},
            {"params": [p for p in model.parameters() if id(p) not in mine]}]


def segmentation_loss(cfg: FinetuneConfig) -> nn.Module:
    """The training loss: MONAI Dice (released) or Dice + cross-entropy, over softmax and one-hot
    targets, per crop or (``dice_batch``) over the whole batch."""
    kind = DiceLoss if cfg.loss == "dice" else DiceCELoss
    return kind(to_onehot_y=True, softmax=True, batch=cfg.dice_batch)


def _train(model: SegmentationNet, cache: Cache, run_dir: Path, cfg: FinetuneConfig,
           info: FinetuneRun, train_ids: list[str], val_ids: list[str],
           device: torch.device, *, resuming: bool, progress: bool, tensorboard: bool) -> Path:
    """The loop: epochs of ``steps_per_epoch`` Adam steps, validation, best model, checkpoint."""
    layout = memory_format(cfg.channels_last)
    model.to(device, memory_format=layout).train()  # type: ignore[call-overload]
    steps_per_epoch = cfg.steps_per_epoch or math.ceil(len(train_ids) / cfg.batch_size)
    total = cfg.max_steps or cfg.max_epochs * steps_per_epoch
    loss_fn = segmentation_loss(cfg)
    opt = torch.optim.Adam(_param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    cosine = cfg.lr_schedule == "cosine"
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)) if cosine else 1.0)
    ckpt_path = run_dir / CHECKPOINT
    at = Progress()
    if resuming:
        saved = load_checkpoint(ckpt_path, device, required=CHECKPOINT_KEYS)
        restore(ckpt_path, saved, model=model, optimizer=opt, scheduler=sched)
        at = Progress.from_checkpoint(ckpt_path, saved["state"])
        log.info("resuming at epoch %s, step %s", at.epoch, at.step)
    out = Monitor(run_dir, at.step, total, cfg.log_every, desc="finetune", tag="train",
                  progress=progress, tensorboard=tensorboard, elapsed_s=at.elapsed_s)
    meter = EnergyMeter(device)
    transform = train_transform(cfg, cfg.patch_size)
    stop_reason = _stop_reason(at, cfg, total, val_ids)
    last_good = f"epoch {at.epoch}, step {at.step}" if resuming else None  # the checkpoint
    if resuming:  # a kill between checkpoint and run.json leaves run.json an epoch behind
        _record(run_dir, info, at, stop_reason)
    try:
        with meter:
            while stop_reason is None:
                epoch = at.epoch + 1
                frozen = epoch <= cfg.freeze_encoder_epochs
                model.encoder.requires_grad_(not frozen)
                loader = epoch_loader(cache.root, train_ids, cfg, cfg.patch_size,
                                      min(steps_per_epoch, total - at.step), epoch, transform)
                losses = []
                for batch in loader:
                    x = _plain(batch["image"]).to(device).contiguous(memory_format=layout)
                    y = _plain(batch["label"]).to(device).long()
                    with autocast(device, cfg.amp, cfg.cpu_bf16):
                        logits = model(x)
                    loss = loss_fn(logits.float(), y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    values = step_values({"loss": loss}, model.parameters())
                    check_finite(values, run=run_dir, step=at.step + 1, last_good=last_good,
                                 precision=FINETUNE_PRECISION)
                    opt.step()
                    sched.step()
                    at.step += 1
                    losses.append(values["loss"])
                    out.update(at.step, {"loss": losses[-1]}, float(sched.get_last_lr()[0]),
                               epoch=epoch)
                at.epoch = epoch
                row: dict[str, Any] = {"step": at.step, "epoch": epoch,
                                       "train_loss": float(np.mean(losses)) if losses
                                       else math.nan, "frozen_encoder": frozen}
                improved = _select(model, cache, val_ids, cfg, device, at, total, row)
                row["best_epoch"] = at.best_epoch
                row["elapsed_s"] = at.elapsed_s = out.elapsed_s
                if improved:
                    save_model(run_dir / MODEL_FILE, model, _model_meta(info, cfg, epoch))
                out.log(row, at.step)
                stop_reason = _stop_reason(at, cfg, total, val_ids)
                save_checkpoint(ckpt_path, {
                    "model": model.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "state": dataclasses.asdict(at)})
                last_good = f"epoch {at.epoch}, step {at.step}"
                _record(run_dir, info, at, stop_reason)
    finally:
        out.close()
        record_energy(run_dir / ENERGY, meter.result(), resuming=resuming)
    log.info("stopped: %s; best epoch %s (%s %s)", stop_reason, at.best_epoch,
             cfg.val_criterion, at.best_score)
    return run_dir


def _select(model: nn.Module, cache: Cache, val_ids: list[str], cfg: FinetuneConfig,
            device: torch.device, at: Progress, total: int, row: dict[str, Any]) -> bool:
    """Validate when due (every ``val_every`` epochs and at the last) and keep the best epoch
    in ``at``; the validation scores go into ``row``. Whether this epoch's model is kept."""
    if not val_ids:
        at.best_epoch = at.epoch  # no validation split: the latest model is the one kept
        return True
    if at.epoch % cfg.val_every and _stop_reason(at, cfg, total, val_ids) is None:
        return False
    scores = validate(model, cache, val_ids, cfg, cfg.patch_size, device)
    score = scores["val_dice" if cfg.val_criterion == "dice" else "val_dice_loss"]
    row.update(scores)
    if not better(score, at.best_score, cfg.val_criterion):
        return False
    at.best_score, at.best_epoch = score, at.epoch
    return True


def _stop_reason(at: Progress, cfg: FinetuneConfig, total: int,
                 val_ids: list[str]) -> str | None:
    if at.step >= total:
        return f"reached {total} steps"
    if at.epoch >= cfg.max_epochs:
        return f"reached {cfg.max_epochs} epochs"
    if val_ids and at.epoch - (at.best_epoch or 0) >= cfg.patience:
        return f"early stopping: no improvement for {cfg.patience} epochs"
    return None


def _record(run_dir: Path, info: FinetuneRun, at: Progress, stop_reason: str | None) -> None:
    """``run.json`` follows the checkpoint: progress, best epoch and why training stopped."""
    info.best_epoch, info.best_score = at.best_epoch, at.best_score
    info.epochs, info.steps = at.epoch, at.step
    info.completed, info.stop_reason = stop_reason is not None, stop_reason
    info.save(run_dir)


def _plain(x: Any) -> torch.Tensor:
    """MONAI MetaTensor → plain tensor (metadata tracking is overhead in the loop)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


def _model_meta(info: FinetuneRun, cfg: FinetuneConfig, epoch: int) -> dict[str, Any]:
    """What the model file says about itself: only what identical runs share (no paths or
    times — those live in ``run.json``), so equal runs write equal files."""
    enc = info.encoder_meta or {}
    return {"patch_size": info.patch_size, "settings": info.settings, "labels": info.labels,
            "fraction": info.fraction, "epoch": epoch,
            "inference": {"overlap": cfg.sw_overlap, "mode": cfg.sw_mode,
                          "crop_foreground": cfg.crop_foreground, "cpu_bf16": cfg.cpu_bf16,
                          "channels_last": cfg.channels_last},
            "encoder": {"method": enc.get("method"), "steps": enc.get("steps")}}

