"""What a run reports while it trains: ``metrics.jsonl``, TensorBoard and a tqdm bar (rank 0).

Every ``log_every`` steps one row is appended to ``metrics.jsonl``: ``step``, ``loss`` and the
module's other scalar outputs averaged over the window (e.g. ``pim``, ``pic``,
``overlap_error``, ``embedding_std``), ``lr``, ``patches_per_s`` (all ranks together, over the
window) and ``elapsed_s`` (training time, summed over resumed sessions).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from pimpic.io import append_jsonl, atomic_open, read_jsonl
from pimpic.paths import METRICS, TENSORBOARD


def truncate_metrics(path: Path, step: int) -> None:
    """Drop rows logged after ``step`` (written before a crash, redone after resuming)."""
    if not path.is_file():
        return
    rows = [r for r in read_jsonl(path) if int(r.get("step", 0)) <= step]
    with atomic_open(path) as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)


class Monitor:
    """Collects per-step scalars and writes them every ``log_every`` steps.

    Args:
        run_dir: the run folder (``metrics.jsonl`` and ``tb/`` go there).
        start_step: the step training (re)starts from.
        total_steps: the final step (for the bar's ETA).
        patches_per_step: patches consumed per optimiser step over all ranks.
        log_every: window length in steps.
        enabled: False on ranks other than 0 (then every call is a no-op).
        progress: show a tqdm bar.
        elapsed_s: training time of earlier sessions (resume).
    """

    def __init__(self, run_dir: Path, start_step: int, total_steps: int, patches_per_step: int,
                 log_every: int, *, enabled: bool = True, progress: bool = True,
                 elapsed_s: float = 0.0) -> None:
        self.enabled = enabled
        self.path = run_dir / METRICS
        self.log_every = max(1, log_every)
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
        # purge_step hides TensorBoard events logged after the checkpoint we resume from
        self.writer = SummaryWriter(str(run_dir / TENSORBOARD), purge_step=start_step or None)
        self.bar = tqdm(total=total_steps, initial=start_step, disable=not progress,
                        unit="step", dynamic_ncols=True, desc="pretrain")

    @property
    def elapsed_s(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t_start

    def update(self, step: int, scalars: dict[str, float], lr: float) -> dict[str, Any] | None:
        """Record step ``step`` (1-based, i.e. after ``step`` optimiser steps); returns the row
        when one was written."""
        if not self.enabled:
            return None
        for k, v in scalars.items():
            self._sums[k] = self._sums.get(k, 0.0) + v
        self._count += 1
        self.bar.update(1)
        if step % self.log_every:
            return None
        now = time.perf_counter()
        row: dict[str, Any] = {"step": step}
        row.update({k: v / self._count for k, v in self._sums.items()})
        row["lr"] = lr
        row["patches_per_s"] = self._count * self.patches_per_step / max(now - self._t_window,
                                                                         1e-9)
        row["elapsed_s"] = self.elapsed_s
        append_jsonl(self.path, row)
        for k, v in row.items():
            if k != "step":
                self.writer.add_scalar(f"pretrain/{k}", v, step)
        self.bar.set_postfix(loss=f"{row.get('loss', float('nan')):.4g}",
                             patches_s=f"{row['patches_per_s']:.0f}")
        self._sums, self._count, self._t_window = {}, 0, now
        return row

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.bar is not None:
            self.bar.close()
