"""What a training run reports while it trains: ``metrics.jsonl``, TensorBoard and a tqdm bar.

One :class:`Monitor` serves pretraining and fine-tuning. Every ``log_every`` steps it appends a
row to ``metrics.jsonl``, in this order: ``step``, the loop's context (fine-tuning: ``epoch``),
each scalar the loop reported averaged over the window (``loss`` and, in pretraining, the
module's other outputs, e.g. ``pim``, ``pic``, ``overlap_error``, ``embedding_std``), ``lr``,
``patches_per_s`` (where patches are counted: all ranks together, over the window) and
``elapsed_s`` (training time, summed over resumed sessions). The row's scalars, step and
context excepted, go to TensorBoard as ``<tag>/<name>``. A loop writes rows of its own (the
per-epoch validation rows of fine-tuning) with :meth:`Monitor.log`.

On resume, the rows and TensorBoard events logged after the step training restarts from (written
before a crash, then redone) are dropped.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from pimpic.io import append_jsonl, atomic_open, read_jsonl
from pimpic.paths import METRICS, TENSORBOARD


class Monitor:
    """Collects per-step scalars and writes them every ``log_every`` steps.

    Args:
        run_dir: the run folder (``metrics.jsonl`` and ``tb/`` go there).
        start_step: the step training (re)starts from; later rows are dropped.
        total_steps: the final step (for the bar's ETA).
        log_every: window length in steps.
        desc: the bar's label (``pretrain``, ``finetune``).
        tag: the TensorBoard group of the windowed scalars (``pretrain``, ``train``).
        patches_per_step: patches consumed per optimiser step over all ranks (None: no
            ``patches_per_s``).
        enabled: False on ranks other than 0 (then nothing is written or shown).
        progress: show a tqdm bar.
        tensorboard: also log to ``run_dir/tb``.
        elapsed_s: training time of earlier sessions (resume).
    """

    def __init__(self, run_dir: Path, start_step: int, total_steps: int, log_every: int, *,
                 desc: str, tag: str, patches_per_step: int | None = None,
                 enabled: bool = True, progress: bool = True, tensorboard: bool = True,
                 elapsed_s: float = 0.0) -> None:
        self.enabled = enabled
        self.path = run_dir / METRICS
        self.log_every = max(1, log_every)
        self.tag = tag
        self.patches_per_step = patches_per_step
        self.elapsed_before = elapsed_s
        self.t_start = time.perf_counter()
        self._t_window = self.t_start
        self._sums: dict[str, float] = {}
        self._count = 0
        self.writer: Any = None
        self.bar: Any = None
        if not enabled:
            return
        _truncate(self.path, start_step)
        if tensorboard:  # purge_step hides the events logged after the resumed checkpoint
            self.writer = SummaryWriter(str(run_dir / TENSORBOARD),
                                        purge_step=start_step + 1 if start_step else None)
        self.bar = tqdm(total=total_steps, initial=start_step, disable=not progress,
                        unit="step", dynamic_ncols=True, desc=desc)

    @property
    def elapsed_s(self) -> float:
        """Training time so far, earlier sessions included (s)."""
        return self.elapsed_before + time.perf_counter() - self.t_start

    def update(self, step: int, scalars: dict[str, float], lr: float,
               **context: Any) -> dict[str, Any] | None:
        """Record step ``step`` (1-based, i.e. after ``step`` optimiser steps); ``context``
        (e.g. ``epoch``) goes into the row as it is. Returns the row when one was written."""
        if not self.enabled:
            return None
        for k, v in scalars.items():
            self._sums[k] = self._sums.get(k, 0.0) + v
        self._count += 1
        self.bar.update(1)
        if step % self.log_every:
            return None
        now = time.perf_counter()
        row: dict[str, Any] = {"step": step, **context}
        row.update({k: v / self._count for k, v in self._sums.items()})
        row["lr"] = lr
        if self.patches_per_step is not None:
            row["patches_per_s"] = (self._count * self.patches_per_step
                                    / max(now - self._t_window, 1e-9))
        row["elapsed_s"] = self.elapsed_s
        append_jsonl(self.path, row)
        if self.writer is not None:
            for k, v in row.items():
                if k != "step" and k not in context:
                    self.writer.add_scalar(f"{self.tag}/{k}", v, step)
        postfix = {**context, "loss": f"{row.get('loss', float('nan')):.4g}"}
        if "patches_per_s" in row:
            postfix["patches_s"] = f"{row['patches_per_s']:.0f}"
        self.bar.set_postfix(postfix)
        self._sums, self._count, self._t_window = {}, 0, now
        return row

    def log(self, row: dict[str, Any], step: int) -> None:
        """Append a row of the loop's own; its finite ``train_*`` and ``val_*`` scalars go to
        TensorBoard as ``train/*`` and ``val/*``."""
        if not self.enabled:
            return
        append_jsonl(self.path, row)
        if self.writer is not None:
            for k, v in row.items():
                if k.startswith(("val_", "train_")) and not math.isnan(v):
                    self.writer.add_scalar(k.replace("_", "/", 1), v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.bar is not None:
            self.bar.close()


def _truncate(path: Path, step: int) -> None:
    """Drop rows logged after ``step`` (written before a crash, redone after resuming)."""
    if not path.is_file():
        return
    rows = [r for r in read_jsonl(path) if int(r.get("step", 0)) <= step]
    with atomic_open(path) as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
