"""Supervised fine-tuning of a (pretrained or random) encoder + new decoder (docs/method.md §6.2).

The authors' released recipe by default: the released decoder, Dice loss (softmax, one-hot),
Adam lr 1e-5, 2 volumes × 16 label-balanced 64³ crops per step from foreground-cropped volumes,
light whole-volume augmentation ("Random + Aug"), validation by sliding-window inference
(overlap 0.25, constant blending) on the foreground-cropped validation volumes, the model with
the lowest validation Dice loss (background included) kept, early stopping after ``patience``
epochs without improvement. Options (:class:`~pimpic.config.FinetuneConfig`): the symmetric
decoder, DiceCE loss, cosine schedule, a frozen encoder for the first epochs, mean foreground
Dice as the criterion, per-crop or intensity augmentation, epoch/step caps.

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

import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pimpic.config import FinetuneConfig, save_config, to_dict
from pimpic.data.cache import Cache
from pimpic.errors import PimpicError
from pimpic.inference import flush_denormals, load_model, resolve_device, save_model
from pimpic.io import append_jsonl, read_json, write_json
from pimpic.models.unet import Encoder, SegmentationNet
from pimpic.training.checkpoint import load_checkpoint, restore, save_checkpoint
from pimpic.training.monitor import truncate_metrics
from pimpic.training.run_folder import RunFolder, file_sha256, json_sha256

RUN_ARTIFACTS = ("config.yaml", "run.json", "env.json", "model.safetensors", "checkpoint.pt",
                 "metrics.jsonl", "energy.json", "tb")
#: what a fine-tuning checkpoint holds
CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "state")


def build_model(cfg: FinetuneConfig, cache: Cache, encoder: str | Path | None,
                allow: Iterable[str] = ()) -> tuple[SegmentationNet, dict[str, Any] | None]:
    """Encoder (from ``encoder`` after checking its metadata, or random) + new decoder."""
    torch.manual_seed(cfg.seed)
    meta = None
    if encoder is not None:
        from pimpic.models.export import load_encoder

        settings = cache.settings
        expected = {"in_channels": 1, "spacing": settings["spacing"],
                    "window": settings["window"], "patch_size": cfg.patch_size}
        enc, meta = load_encoder(encoder, expected=expected, allow=allow)
    else:
        enc = Encoder(1, cfg.width, cfg.depth)
    check_patch(cfg.patch_size, enc.depth)
    return SegmentationNet(enc, cfg.num_classes, cfg.decoder), meta


def check_patch(patch_size: int, depth: int) -> None:
    """The bottleneck sits at ``patch / 2^depth`` and needs > 1 voxel for InstanceNorm."""
    unit = 2**depth
    if patch_size % unit or patch_size < 2 * unit:
        raise PimpicError(f"patch_size {patch_size} must be a multiple of 2^depth = {unit} and at "
                          f"least {2 * unit} (the depth-{depth} bottleneck needs ≥ 2 voxels)")


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
                              f"num_classes={num_classes} (labels 0…{num_classes - 1}); set "
                              f"num_classes={top + 1}")


def _cases(cache: Cache, fraction: float) -> tuple[list[str], list[str]]:
    from pimpic.data.splits import fraction_cases

    splits = cache.splits()
    if not splits.get("train"):
        raise PimpicError(f"{cache.root}: the split has 0 training cases")
    train = fraction_cases(splits, fraction)
    val = list(splits.get("val", []))
    for cid in [*train, *val]:
        if not (cache.case_dir(cid) / "label.npy").is_file():
            raise PimpicError(f"{cache.case_dir(cid)}: case {cid!r} has no label; fine-tuning "
                              "and validation need labelled cases")
    return train, val


# ------------------------------------------------------------------------------- validation


def validate(model: nn.Module, cache: Cache, case_ids: list[str], cfg: FinetuneConfig,
             patch_size: int, device: torch.device) -> dict[str, float]:
    """Sliding-window validation on whole (with ``crop_foreground``: body-cropped) volumes.

    Returns ``{"val_dice", "val_dice_loss", "val_dice_<class>"...}``: mean over cases of the
    mean foreground Dice (classes with an empty ground truth are skipped per case), and the
    mean Dice loss (softmax, one-hot, background included: the released criterion) over the
    cropped volumes, as the released code computes it.
    """
    from monai.losses import DiceLoss

    from pimpic.inference import body_logits
    from pimpic.metrics import dice

    loss_fn = DiceLoss(to_onehot_y=True, softmax=True)
    model.eval()
    per_class: list[list[float]] = [[] for _ in range(cfg.num_classes - 1)]
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
        ds = [dice(pred == c, label == c) for c in range(1, cfg.num_classes)]
        for c, d in enumerate(ds):
            per_class[c].append(d)
        if not all(math.isnan(d) for d in ds):
            case_dice.append(float(np.nanmean(ds)))
    model.train()
    out = {"val_dice": float(np.mean(case_dice)) if case_dice else math.nan,
           "val_dice_loss": float(np.mean(losses))}
    for c, values in enumerate(per_class, start=1):
        finite = [v for v in values if not math.isnan(v)]
        out[f"val_dice_{c}"] = float(np.mean(finite)) if finite else math.nan
    return out


# ---------------------------------------------------------------------------------- training


def finetune(
    cache: str | Path | Cache,
    run_dir: str | Path,
    cfg: FinetuneConfig,
    *,
    encoder: str | Path | None = None,
    allow: Iterable[str] = (),
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
        resume: continue from ``checkpoint.pt``; refused without one, or when the config
            (beyond its caps and machinery), the cache, the cases or the encoder changed.
        overwrite: remove what an earlier fine-tuning run wrote into ``run_dir`` first
            (refused when the folder is not a pimpic fine-tuning run or holds other files).
        progress: show a progress bar.
        tensorboard: also log to ``run_dir/tb``.
    """
    cache = cache if isinstance(cache, Cache) else Cache(cache)
    run_dir = Path(run_dir)
    train_ids, val_ids = _cases(cache, cfg.fraction)
    _check_labels(cache, [*train_ids, *val_ids], cfg.num_classes)
    device = resolve_device(cfg.device)
    # validate everything before touching the run folder: a refused setup leaves no trace
    model, enc_meta = build_model(cfg, cache, encoder, allow)
    identity = _identity(cache, train_ids, val_ids, encoder)
    folder = RunFolder(run_dir, "finetune", RUN_ARTIFACTS)
    resuming = folder.check(resume=resume, overwrite=overwrite)
    resumed_info = (folder.check_resume(to_dict(cfg), identity, to_dict(FinetuneConfig()))
                    if resuming else None)
    folder.start(resuming)
    n_train = len(cache.splits()["train"])
    print(f"fine-tuning on {len(train_ids)} of {n_train} training cases ({cfg.fraction}%), "
          f"validating on {len(val_ids)}")
    if resumed_info is not None:
        info = resumed_info
    else:
        save_config(cfg, run_dir / "config.yaml")
        info = {
            "cache": str(cache.root.resolve()), "fraction": cfg.fraction, **identity,
            "encoder": str(Path(encoder).resolve()) if encoder is not None else None,
            "encoder_meta": enc_meta,
            "patch_size": cfg.patch_size, "num_classes": cfg.num_classes,
            "architecture": model.encoder.architecture(),
            "best_epoch": None, "best_score": None, "epochs": 0, "steps": 0,
            "completed": False, "stop_reason": None, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        write_json(run_dir / "run.json", info)
        from pimpic.envinfo import collect

        write_json(run_dir / "env.json", collect(device))
    with flush_denormals(device):
        return _train(model, cache, run_dir, cfg, info, train_ids, val_ids, device,
                      resuming=resuming, progress=progress, tensorboard=tensorboard)


def _better(score: float, best: float | None, criterion: str) -> bool:
    if math.isnan(score):
        return False
    if best is None:
        return True
    return score > best if criterion == "dice" else score < best


def _param_groups(model: SegmentationNet, cfg: FinetuneConfig) -> list[dict[str, Any]]:
    """One group at ``lr`` — or, with ``encoder_lr``, the encoder's parameters in a group of
    their own at that rate."""
    if cfg.encoder_lr is None:
        return [{"params": list(model.parameters())}]
    encoder = list(model.encoder.parameters())
    mine = {id(p) for p in encoder}
    return [{"params": encoder, "lr": cfg.encoder_lr},
            {"params": [p for p in model.parameters() if id(p) not in mine]}]


def segmentation_loss(cfg: FinetuneConfig) -> torch.nn.Module:
    """The training loss: MONAI Dice (released) or Dice + cross-entropy, over softmax and one-hot
    targets, per crop or (``dice_batch``) over the whole batch."""
    from monai.losses import DiceCELoss, DiceLoss

    kind = DiceLoss if cfg.loss == "dice" else DiceCELoss
    return kind(to_onehot_y=True, softmax=True, batch=cfg.dice_batch)


def _train(model: SegmentationNet, cache: Cache, run_dir: Path, cfg: FinetuneConfig,
           info: dict[str, Any], train_ids: list[str], val_ids: list[str],
           device: torch.device, *, resuming: bool, progress: bool, tensorboard: bool) -> Path:
    """The loop: epochs of ``steps_per_epoch`` Adam steps, validation, best model, checkpoint."""
    from tqdm.auto import tqdm

    from pimpic.finetune_data import epoch_loader, train_transform
    from pimpic.inference import autocast, memory_format

    layout = memory_format(cfg.channels_last)
    model.to(device, memory_format=layout).train()  # type: ignore[call-overload]
    patch = cfg.patch_size
    steps_per_epoch = cfg.steps_per_epoch or math.ceil(len(train_ids) / cfg.batch_size)
    total = cfg.max_steps or cfg.max_epochs * steps_per_epoch
    loss_fn = segmentation_loss(cfg)
    opt = torch.optim.Adam(_param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    cosine = cfg.lr_schedule == "cosine"
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)) if cosine else 1.0)
    state: dict[str, Any] = {"epoch": 0, "step": 0, "best_score": None, "best_epoch": None,
                             "elapsed_s": 0.0}
    ckpt_path = run_dir / "checkpoint.pt"
    if resuming:
        saved = load_checkpoint(ckpt_path, device, required=CHECKPOINT_KEYS)
        restore(ckpt_path, saved, model=model, optimizer=opt, scheduler=sched)
        if not isinstance(saved["state"], dict) or not set(state) <= set(saved["state"]):
            raise PimpicError(f"{ckpt_path}: not a fine-tuning checkpoint (its training state "
                              f"lacks {', '.join(sorted(state))})")
        state = saved["state"]
        truncate_metrics(run_dir / "metrics.jsonl", int(state["step"]))
        print(f"resuming at epoch {state['epoch']}, step {state['step']}")
    writer = None
    if tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"), purge_step=int(state["step"]) + 1)
    meter = _energy_meter(device)
    transform = train_transform(cfg, patch)
    bar = tqdm(total=total, initial=int(state["step"]), disable=not progress, desc="finetune",
               unit="step", dynamic_ncols=True)
    t0 = time.perf_counter() - float(state["elapsed_s"])
    stop_reason = _stop_reason(state, cfg, total, val_ids)
    if resuming:  # a kill between checkpoint and run.json leaves run.json an epoch behind
        _record(run_dir / "run.json", info, state, stop_reason)
    if meter is not None:
        meter.__enter__()
    try:
        while stop_reason is None:
            epoch = int(state["epoch"]) + 1
            frozen = epoch <= cfg.freeze_encoder_epochs
            for p in model.encoder.parameters():
                p.requires_grad_(not frozen)
            n_steps = min(steps_per_epoch, total - int(state["step"]))
            loader = epoch_loader(cache.root, train_ids, cfg, patch, n_steps, epoch, transform)
            epoch_losses, window = [], []
            for batch in loader:
                x = _plain(batch["image"]).to(device).contiguous(memory_format=layout)
                y = _plain(batch["label"]).to(device).long()
                with autocast(device, cfg.amp, cfg.cpu_bf16):
                    logits = model(x)
                loss = loss_fn(logits.float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                state["step"] = int(state["step"]) + 1
                value = float(loss.detach())
                epoch_losses.append(value)
                window.append(value)
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{value:.4f}")
                if int(state["step"]) % cfg.log_every == 0:
                    row = {"step": state["step"], "epoch": epoch, "loss": float(np.mean(window)),
                           "lr": sched.get_last_lr()[0],
                           "elapsed_s": time.perf_counter() - t0}
                    append_jsonl(run_dir / "metrics.jsonl", row)
                    if writer is not None:
                        writer.add_scalar("train/loss", row["loss"], int(state["step"]))
                        writer.add_scalar("train/lr", row["lr"], int(state["step"]))
                    window = []
            state["epoch"] = epoch
            row = {"step": state["step"], "epoch": epoch,
                   "train_loss": float(np.mean(epoch_losses)) if epoch_losses else math.nan,
                   "frozen_encoder": frozen}
            improved = False
            if val_ids and (epoch % cfg.val_every == 0 or _stop_reason(
                    state, cfg, total, val_ids) is not None):
                scores = validate(model, cache, val_ids, cfg, patch, device)
                score = scores["val_dice" if cfg.val_criterion == "dice" else "val_dice_loss"]
                row.update(scores)
                improved = _better(score, state["best_score"], cfg.val_criterion)
                if improved:
                    state["best_score"], state["best_epoch"] = score, epoch
            elif not val_ids:
                improved = True  # no validation split: the latest model is the one kept
                state["best_epoch"] = epoch
            row["best_epoch"] = state["best_epoch"]
            row["elapsed_s"] = state["elapsed_s"] = time.perf_counter() - t0
            if improved:
                save_model(run_dir / "model.safetensors", model, _model_meta(info, cfg, epoch))
            append_jsonl(run_dir / "metrics.jsonl", row)
            if writer is not None:
                for k, v in row.items():
                    if k.startswith(("val_", "train_")) and not math.isnan(v):
                        writer.add_scalar(k.replace("_", "/", 1), v, int(state["step"]))
            stop_reason = _stop_reason(state, cfg, total, val_ids)
            _checkpoint(ckpt_path, model, opt, sched, state)
            _record(run_dir / "run.json", info, state, stop_reason)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
        if meter is not None:
            meter.__exit__(None, None, None)
            _write_energy(run_dir / "energy.json", meter.result(), resuming)
    print(f"stopped: {stop_reason}; best epoch {state['best_epoch']} "
          f"({cfg.val_criterion} {state['best_score']})")
    return run_dir


def _stop_reason(state: dict[str, Any], cfg: FinetuneConfig, total: int,
                 val_ids: list[str]) -> str | None:
    epoch, step = int(state["epoch"]), int(state["step"])
    if step >= total:
        return f"reached {total} steps"
    if epoch >= cfg.max_epochs:
        return f"reached {cfg.max_epochs} epochs"
    best = state["best_epoch"]
    if val_ids and epoch - (best or 0) >= cfg.patience:
        return f"early stopping: no improvement for {cfg.patience} epochs"
    return None


def _record(path: Path, info: dict[str, Any], state: dict[str, Any],
            stop_reason: str | None) -> None:
    """``run.json`` follows the checkpoint: progress, best epoch and why training stopped."""
    info.update(best_epoch=state["best_epoch"], best_score=state["best_score"],
                epochs=state["epoch"], steps=state["step"], completed=stop_reason is not None,
                stop_reason=stop_reason)
    write_json(path, info)


def _plain(x: Any) -> torch.Tensor:
    """MONAI MetaTensor → plain tensor (metadata tracking is overhead in the loop)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


def _model_meta(info: dict[str, Any], cfg: FinetuneConfig, epoch: int) -> dict[str, Any]:
    """What the model file says about itself: only what identical runs share (no paths or
    times — those live in ``run.json``), so equal runs write equal files."""
    enc = info.get("encoder_meta") or {}
    return {"patch_size": info["patch_size"], "settings": info["settings"],
            "fraction": info["fraction"], "epoch": epoch,
            "inference": {"overlap": cfg.sw_overlap, "mode": cfg.sw_mode,
                          "crop_foreground": cfg.crop_foreground, "cpu_bf16": cfg.cpu_bf16,
                          "channels_last": cfg.channels_last},
            "encoder": {"method": enc.get("method"), "steps": enc.get("steps")}}


def _checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer, sched: Any,
                state: dict[str, Any]) -> None:
    save_checkpoint(path, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                           "scheduler": sched.state_dict(), "state": dict(state)})


def _energy_meter(device: torch.device) -> Any:
    try:
        from pimpic.energy import EnergyMeter
    except ImportError:
        return None
    return EnergyMeter(device)


def _write_energy(path: Path, result: dict[str, Any], resuming: bool) -> None:
    """A resumed run adds its energy to the previous sessions'."""
    if resuming and path.is_file():
        old = read_json(path)
        for key in ("joules", "kwh", "seconds"):
            if isinstance(old.get(key), (int, float)):
                result[key] += old[key]
    write_json(path, result)


__all__ = ["build_model", "check_patch", "finetune", "load_model", "save_model", "validate"]
