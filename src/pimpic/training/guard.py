"""The divergence guard shared by pretraining and fine-tuning, and the weight check of every
file a run loads.

Every optimiser step, after ``backward()`` and before ``step()``, the run reads its scalar loss
terms and the total gradient norm in one host sync (:func:`step_values`) and hands them to
:func:`check_finite`. A NaN or Inf in any of them stops the run with :class:`TrainingDiverged`:
one line naming the run, the step, the terms that were not finite, the last good checkpoint
(kept, so ``--resume`` goes on from it after a change) and what to try. The weights are never
updated with a non-finite gradient, so no NaN model is ever written.

:func:`check_weights` refuses a weight file (an encoder, a fine-tuned model) with a tensor
that is not floating point or not finite: such a file was truncated, cast or written by a run
that diverged, and a network built from it only computes NaN or nonsense.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from pimpic.errors import PimpicError

#: the precision settings to try turning off, per stage
PRETRAIN_PRECISION = ("amp",)
FINETUNE_PRECISION = ("cpu_bf16", "amp")


class TrainingDiverged(PimpicError):
    """A non-finite loss or gradient stopped a run; its last good checkpoint is kept."""


def step_values(losses: Mapping[str, torch.Tensor],
                parameters: Iterable[nn.Parameter]) -> dict[str, float]:
    """The step's scalar loss terms and ``grad_norm`` (the L2 norm over every gradient), read
    in one host sync."""
    keys = list(losses)
    values = [losses[k].detach().float().reshape(()) for k in keys]
    grads = [p.grad for p in parameters if p.grad is not None]
    if grads:
        keys.append("grad_norm")
        norm = torch.nn.utils.get_total_norm(grads, error_if_nonfinite=False)
        values.append(norm.detach().float().reshape(()).to(values[0].device))
    return dict(zip(keys, torch.stack(values).cpu().tolist(), strict=True))


def check_finite(values: Mapping[str, float], *, run: Path, step: int,
                 last_good: str | None, precision: Sequence[str], elsewhere: bool = False) -> None:
    """Raise :class:`TrainingDiverged` when a value is NaN or Inf (or ``elsewhere``: another
    rank's was). ``last_good`` describes the checkpoint kept (None: none was written yet);
    ``precision`` names the stage's reduced-precision settings, suggested first."""
    bad = [f"{k}={v}" for k, v in values.items() if not math.isfinite(v)]
    if not bad and not elsewhere:
        return
    what = ", ".join(bad) if bad else "on another rank"
    kept = (f"the last good checkpoint ({last_good}) is kept in {run}" if last_good
            else "no checkpoint had been written yet")
    settings = ", ".join(f"`--set {name}=false`" for name in precision)
    raise TrainingDiverged(f"{run}: training diverged at step {step}, not finite: {what}; "
                           f"stopped, {kept}; try {settings} or a lower `lr`, then `--resume`")


def check_weights(path: Path, state: Mapping[str, torch.Tensor]) -> None:
    """Every tensor of a loaded weight file is floating point and finite, or a one-line error
    naming the file and the first bad tensor."""
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            dtype = str(tensor.dtype).removeprefix("torch.")
            raise PimpicError(f"{path}: tensor {name!r} is {dtype}, not floating point — not "
                              "weights a run wrote (cast or truncated file?)")
        if not bool(torch.isfinite(tensor).all()):
            raise PimpicError(f"{path}: tensor {name!r} holds NaN or Inf — written by a run that "
                              "diverged; retrain it (e.g. `--set cpu_bf16=false` or a lower lr)")
