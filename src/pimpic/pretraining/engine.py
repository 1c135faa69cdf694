"""The pretraining loop: cache → pretext task → ``encoder.safetensors``.

Launch it

* on one process (CPU or one GPU)::

      pimpic pretrain CACHE --out RUN --method pimpic

* on the GPUs of one machine (one process per GPU; each rank reads its own volumes, losses stay
  rank-local and DistributedDataParallel averages the gradients)::

      torchrun --standalone --nproc_per_node=4 -m pimpic pretrain CACHE --out RUN
      torchrun --standalone --nproc_per_node=4 $(which pimpic) pretrain CACHE --out RUN

* on several machines (run on each node, ``--node_rank`` 0 … nnodes−1)::

      torchrun --nnodes=2 --nproc_per_node=8 --node_rank=0 \\
               --rdzv_backend=c10d --rdzv_endpoint=HOST0:29500 -m pimpic pretrain CACHE --out RUN

  (the run folder and the cache must be on a file system all nodes see).

Continue a stopped run with ``--resume``: the checkpoint holds model, optimiser, step and every
rank's RNG state, and the data stream is a pure function of the step, so on CPU the resumed run
is bit-for-bit the run that was never stopped.

Run folder (created, resumed and overwritten by :class:`~pimpic.training.run_folder.RunFolder`):
``.pimpic-run``, ``config.yaml``, ``env.json``, ``run.json`` (cache, its manifest digest, the
case ids and their image files' SHA-256, so a resume after ``prepare`` redid a case is
refused), ``metrics.jsonl``, ``tb/``, ``checkpoint.pt``, and at the end ``method.safetensors``
(the whole pretext module), ``encoder.safetensors`` (the artifact fine-tuning loads, recording
its pool's case ids and hashes, and the pool's name, for the leakage guard) and ``energy.json``.

The pool is the cache's training split unless ``pool`` (``pimpic pretrain --pool``) names
another (:data:`pimpic.data.splits.POOLS`): ``train+unlabelled`` (the training split and the
unlabelled cases, ``prepare --unlabelled``) or ``all`` (every cached case, the evaluation
patients' images included: transductive, accepted later only where the user says so,
:func:`pimpic.data.leakage.check_encoder_pool`); ``case_ids`` names the cases instead (a pool
recorded as ``null``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pimpic import envinfo, registry
from pimpic.config import build_config, plain, save_config, to_dict
from pimpic.data.cache import check_same_inputs
from pimpic.data.leakage import pool_record
from pimpic.data.loader import VolumeStream, make_loader
from pimpic.data.sources import VolumeSource
from pimpic.energy import EnergyMeter, rank_share, record_energy
from pimpic.errors import PimpicError
from pimpic.io import save_safetensors, write_json
from pimpic.models.export import save_encoder
from pimpic.paths import (
    CHECKPOINT,
    CONFIG,
    ENCODER_FILE,
    ENERGY,
    ENV,
    METHOD_FILE,
    METRICS,
    RUN_INFO,
    TENSORBOARD,
)
from pimpic.pretraining.backbones import build_backbone, resolve_patch
from pimpic.pretraining.config import PretrainConfig
from pimpic.pretraining.run_info import PretrainRun
from pimpic.pretraining.sources import open_source, pool_cases
from pimpic.registry import MethodSpec
from pimpic.training import checkpoint as ckpt
from pimpic.training.device import autocast, flush_denormals
from pimpic.training.distributed import Dist, setup
from pimpic.training.guard import PRETRAIN_PRECISION, check_finite, step_values
from pimpic.training.monitor import Monitor
from pimpic.training.run_folder import RunFolder, json_sha256

log = logging.getLogger(__name__)

#: what a pretraining run writes into its folder (and ``--overwrite`` may remove)
ARTEFACTS = (CONFIG, ENV, RUN_INFO, METRICS, TENSORBOARD, CHECKPOINT, METHOD_FILE, ENCODER_FILE,
             ENERGY)


def pretrain(
    cache: str | Path,
    run_dir: str | Path,
    cfg: PretrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    case_ids: Sequence[str] | None = None,
    pool: str = "train",
) -> Path:
    """Pretrain an encoder with ``cfg.method`` on the cache's training images.

    Args:
        cache: a prepared cache (``pimpic prepare``).
        run_dir: the run folder; must be new or empty unless ``resume``/``overwrite``.
        cfg: the resolved pretraining config.
        resume: continue from ``run_dir/checkpoint.pt`` (the config may differ only in
            :data:`pimpic.training.run_folder.RESUMABLE` fields, e.g. more ``steps``).
        overwrite: remove what an earlier pretraining run wrote into ``run_dir`` first
            (refused when the folder is not a pimpic pretraining run or holds other files).
        progress: show a progress bar (rank 0).
        case_ids: the pretraining pool's cases (the pool is then recorded as None).
        pool: the pool of the cache, when ``case_ids`` is None: ``train`` (its training
            split), ``train+unlabelled`` or ``all`` (:func:`~pimpic.pretraining.sources.
            pool_cases`); run.json and the encoder record it as ``pretrain_pool``.

    Returns:
        ``run_dir/encoder.safetensors``.
    """
    dist = setup(cfg.device)
    try:
        with flush_denormals(dist.device):
            return _pretrain(dist, Path(cache), Path(run_dir), cfg, resume, overwrite, progress,
                             case_ids, pool)
    finally:
        dist.close()


def _pretrain(dist: Dist, cache_root: Path, run_dir: Path, cfg: PretrainConfig, resume: bool,
              overwrite: bool, progress: bool, case_ids: Sequence[str] | None,
              pool: str) -> Path:
    device = dist.device
    cache = open_source(cache_root)
    cfg = resolve_patch(_with_plans(cfg, cache))  # config.yaml records the plan's patch
    ids = _pretraining_cases(cache, case_ids, pool)
    pool_name = None if case_ids is not None else pool
    folder = RunFolder(run_dir, "pretrain", ARTEFACTS)
    state, resumed = None, None
    if folder.check(resume=resume, overwrite=overwrite, lock=dist.is_main):
        resumed = PretrainRun.from_json(run_dir / RUN_INFO, folder.check_resume(
            to_dict(cfg), _identity(cache, ids), to_dict(type(cfg)())))
        check_same_inputs(resumed.case_inputs, _inputs(cache, ids),
                          f"{run_dir}: cannot resume", "start over with --overwrite, or use a "
                          "new --out folder")
        state = ckpt.load_checkpoint(run_dir / CHECKPOINT)
    start = int(state["step"]) if state else 0
    if state and start > cfg.steps:
        raise PimpicError(f"{run_dir}: checkpoint is at step {start}, beyond steps={cfg.steps}")

    spec = registry.get_method(cfg.method)
    ckpt.seed_all(cfg.seed)  # identical initial weights on every rank
    module = _build_module(spec, cfg).to(device)
    if cfg.channels_last:
        module = module.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    optimizer = torch.optim.Adam(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if state:
        ckpt.restore(run_dir / CHECKPOINT, state, model=module, optimizer=optimizer)
        rngs = state["rng"]
        if len(rngs) == dist.world_size:
            ckpt.set_rng_state(rngs[dist.rank])
        else:  # resumed on another number of ranks: fresh, still reproducible, streams
            ckpt.seed_all(cfg.seed, dist.rank, start)
    else:
        ckpt.seed_all(cfg.seed, dist.rank, 0)

    hashes: dict[str, Any] = {}
    if dist.is_main:
        folder.start(resuming=state is not None)
        _write_run_files(run_dir, cache, cfg, ids, pool_name, dist, resumed, start)
        hashes = _pool_hashes(cache, ids)
    dist.barrier()

    stream = VolumeStream(cache, ids, spec.build_sampler(cfg), volumes=cfg.volumes,
                          seed=cfg.seed, rank=dist.rank, world_size=dist.world_size,
                          start=start * cfg.volumes)
    loader = make_loader(stream, cfg.num_workers, pin_memory=device.type == "cuda")
    batches = iter(loader)

    model: nn.Module = module
    if dist.distributed:
        first = _to_device(next(batches), device)
        model = DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=_has_unused_parameters(module, first))
        batches = _chain_first(first, batches)
    if cfg.compile:
        model = torch.compile(model)  # type: ignore[assignment]
    amp = autocast(device, cfg.amp)
    after_step = getattr(module, "after_step", None)

    monitor = Monitor(run_dir, start, cfg.steps, cfg.log_every, desc="pretrain", tag="pretrain",
                      patches_per_step=spec.crops(cfg) * cfg.volumes * dist.world_size,
                      enabled=dist.is_main, progress=progress,
                      elapsed_s=float(state.get("elapsed_s", 0.0)) if state else 0.0)
    last_saved = start if state else None
    model.train()
    try:
        with EnergyMeter(device) as meter:
            for step in range(start, cfg.steps):
                batch = _to_device(next(batches), device)
                with amp:
                    out = model(batch)
                optimizer.zero_grad(set_to_none=True)
                out["loss"].backward()
                # one host sync per step: the logged scalars and the divergence guard's input
                scalars = step_values(_loss_terms(out), module.parameters())
                check_finite(scalars, run=run_dir, step=step + 1,
                             last_good=None if last_saved is None else f"step {last_saved}",
                             precision=PRETRAIN_PRECISION,
                             elsewhere=dist.any(not all(map(math.isfinite, scalars.values()))))
                optimizer.step()
                if callable(after_step):
                    after_step()
                monitor.update(step + 1, scalars, optimizer.param_groups[0]["lr"])
                if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
                    _save(run_dir, dist, module, optimizer, step + 1, cfg, monitor.elapsed_s)
                    last_saved = step + 1
    finally:
        monitor.close()
        del batches, loader  # stop DataLoader workers before the process group goes

    session = meter.result()
    session["joules"] = dist.sum(rank_share(session, dist.local_rank))
    encoder_path = run_dir / ENCODER_FILE
    if dist.is_main:
        _export(run_dir, module, cache, cfg, ids, pool_name, hashes)
        record_energy(run_dir / ENERGY, session, resuming=state is not None,
                      world_size=dist.world_size, steps=cfg.steps)
    dist.barrier()
    return encoder_path


# --------------------------------------------------------------------------- checks and files


def _with_plans(cfg: PretrainConfig, source: VolumeSource) -> PretrainConfig:
    """An nnU-Net backbone pretrained on an nnU-Net preprocessed folder takes that folder's
    plans unless ``nnunet_plans`` names a file."""
    plan = getattr(source, "plan", None)
    if cfg.backbone != "nnunet" or cfg.nnunet_plans or plan is None:
        return cfg
    return dataclasses.replace(cfg, nnunet_plans=str(plan.path.resolve()),
                               nnunet_configuration=plan.name)


def _pretraining_cases(cache: VolumeSource, case_ids: Sequence[str] | None,
                       pool: str) -> list[str]:
    ids = list(case_ids) if case_ids is not None else pool_cases(cache, pool)
    if not ids:
        raise PimpicError(f"{cache.root}: no training cases to pretrain on")
    known = set(cache.case_ids)
    unknown = [c for c in ids if c not in known]
    if unknown:
        raise PimpicError(f"{cache.root}: case(s) not in the cache: {', '.join(unknown[:5])}")
    for cid in ids:
        shape = cache.image(cid).shape  # memory-mapped: reads only the header
        if len(shape) != 3 or min(shape) < 1:
            raise PimpicError(f"{cache.root}: case {cid!r} has an image of shape {shape}, "
                              "expected 3D")
    return ids


def _identity(cache: VolumeSource, ids: list[str]) -> dict[str, Any]:
    """What a resumed run must share with the run it continues (recorded in ``run.json``)."""
    return {"cache_manifest_sha256": json_sha256(cache.manifest), "case_ids": ids}


def _inputs(cache: VolumeSource, ids: list[str]) -> dict[str, Any] | None:
    """The image file SHA-256 of each pool case (a pimpic cache; None for other sources)."""
    inputs = getattr(cache, "input_sha256", None)
    return inputs(ids, ("image",)) if callable(inputs) else None


def _write_run_files(run_dir: Path, cache: VolumeSource, cfg: PretrainConfig, ids: list[str],
                     pool: str | None, dist: Dist, resumed: PretrainRun | None,
                     start: int) -> None:
    """``config.yaml``, ``env.json`` and ``run.json`` (``resumed``: the run's record so far)."""
    save_config(cfg, run_dir / CONFIG)
    write_json(run_dir / ENV, envinfo.collect(dist.device, dist.world_size))
    PretrainRun(cache=str(cache.root.resolve()), method=cfg.method, world_size=dist.world_size,
                **_identity(cache, ids), case_inputs=_inputs(cache, ids), pretrain_pool=pool,
                resumed_from=[*resumed.resumed_from, start] if resumed else []).save(run_dir)


def _save(run_dir: Path, dist: Dist, module: nn.Module, optimizer: torch.optim.Optimizer,
          step: int, cfg: PretrainConfig, elapsed_s: float) -> None:
    rngs = dist.gather(ckpt.rng_state())  # collective: every rank's RNG goes into the file
    if dist.is_main:
        ckpt.save_checkpoint(run_dir / CHECKPOINT, {
            "step": step, "model": module.state_dict(), "optimizer": optimizer.state_dict(),
            "rng": rngs, "config": to_dict(cfg), "elapsed_s": elapsed_s})


def _pool_hashes(cache: VolumeSource, ids: list[str]) -> dict[str, Any]:
    """What the encoder records about its pool for the leakage guard (:mod:`pimpic.data.
    leakage`); says, before training, which cases it cannot identify by content."""
    hashes = pool_record(cache, ids)
    blind = sum(h["content"] is None for h in hashes.values())
    if blind:
        log.warning("%s: %d of %d pretraining case(s) have no content hash (an nnU-Net pool "
                    "without its raw images under $nnUNet_raw, or a cache made by an older "
                    "pimpic); the leakage guard can compare them by case id and input file only",
                    cache.root, blind, len(ids))
    return hashes


def _export(run_dir: Path, module: nn.Module, cache: VolumeSource, cfg: PretrainConfig,
            ids: list[str], pool: str | None, hashes: dict[str, Any]) -> None:
    # clone: safetensors refuses tensors that share storage (e.g. tied or EMA-initialised heads)
    state = {k: v.detach().cpu().clone().contiguous() for k, v in module.state_dict().items()}
    save_safetensors(state, run_dir / METHOD_FILE, {"format": "pimpic-method",
                                                    "config": json.dumps(to_dict(cfg))})
    settings = cache.settings
    save_encoder(run_dir / ENCODER_FILE, module.encoder, {
        "patch_size": plain(cfg.patch_size), "spacing": list(settings["spacing"]),
        "window": list(settings["window"]) if settings.get("window") is not None else None,
        # a pimpic cache: the HU window scaled to [0, 1]; an nnU-Net folder: its plan's schemes
        "normalization": settings.get("normalization", ["window"]),
        "method": cfg.method, "steps": cfg.steps,
        "pretrain_pool": pool, "pretrain_cases": ids, "pretrain_hashes": hashes})


# --------------------------------------------------------------------------- loop helpers


def _build_module(spec: MethodSpec, cfg: PretrainConfig) -> nn.Module:
    module: nn.Module = spec.build_module(build_backbone(cfg), cfg)
    if not hasattr(getattr(module, "encoder", None), "levels"):
        raise TypeError(f"method {cfg.method!r}: module has no .encoder backbone "
                        "(pimpic/registry.py)")
    return module


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Move a batch to ``device``; half-precision arrays (a sampler may keep the cache's
    float16 to halve copying) become float32 there, where the cast is cheap."""
    out = {}
    for k, v in batch.items():
        v = v.to(device, non_blocking=True)
        out[k] = v.float() if v.dtype == torch.float16 else v
    return out


def _chain_first(first: Any, rest: Any) -> Any:
    yield first
    yield from rest


def _loss_terms(out: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The module's scalar outputs (``loss`` and its terms, e.g. ``pim``, ``pic``)."""
    return {k: v for k, v in out.items() if isinstance(v, torch.Tensor) and v.numel() == 1}


def _has_unused_parameters(module: nn.Module, batch: dict[str, torch.Tensor]) -> bool:
    """Does one forward/backward leave trainable parameters without a gradient? (DDP must then
    be told, e.g. for a module that keeps a head it does not use.) RNG state and buffers (e.g.
    BatchNorm statistics) are restored, so the probe leaves no trace."""
    cpu_rng = torch.get_rng_state()
    buffers = {k: v.clone() for k, v in module.named_buffers()}
    out = module(batch)
    out["loss"].backward()
    unused = any(p.requires_grad and p.grad is None for p in module.parameters())
    module.zero_grad(set_to_none=True)
    with torch.no_grad():
        for k, v in module.named_buffers():
            v.copy_(buffers[k])
    torch.set_rng_state(cpu_rng)
    return unused


def load_pretext_module(run_dir: str | Path) -> tuple[nn.Module, PretrainConfig]:
    """The trained pretext module (encoder + heads) of a finished run, in eval mode on CPU."""
    run_dir = Path(run_dir)
    weights = run_dir / METHOD_FILE
    if not weights.is_file():
        raise PimpicError(f"{weights}: not found (is {run_dir} a finished pretraining run?)")
    cfg = build_config(PretrainConfig, run_dir / CONFIG)
    module = _build_module(registry.get_method(cfg.method), cfg)
    try:
        module.load_state_dict(load_file(str(weights)), strict=True)
    except RuntimeError as err:
        raise PimpicError(f"{weights}: does not fit the method in config.yaml "
                          f"({str(err).splitlines()[0]})") from None
    return module.eval(), cfg

