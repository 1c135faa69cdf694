"""Kill a real training process at a random step, resume it, and get the same weights.

Each test runs the CLI in subprocesses: once straight through, once killed with SIGKILL
(no cleanup, no ``finally``) during the step after a randomly chosen one has been logged, then
resumed with ``--resume`` to the end (or restarted with ``--overwrite`` when the kill came
before the first checkpoint). The final weights must equal the uninterrupted run's, tensor by
tensor, whatever the kill interrupted (a step, a checkpoint write, a metrics line).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pimpic.io import read_jsonl

#: the CLI in a fresh interpreter (``pimpic`` itself may be another checkout's entry point)
CLI = [sys.executable, "-c", "import sys; from pimpic.cli import app; "
       "app(sys.argv[1:], prog_name='pimpic')"]


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[2] / "src")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _start(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([*CLI, *args], env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen[str]) -> None:
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]


def _kill_after(args: list[str], metrics: Path, step: int, rng: random.Random) -> int:
    """Start ``args``, SIGKILL it at a random moment of the step after ``step`` is logged;
    returns the last step logged before the kill."""
    proc = _start(args)
    deadline = time.monotonic() + 90
    first_row = None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            rows = read_jsonl(metrics) if metrics.is_file() else []
            if rows and first_row is None:
                first_row = time.monotonic()
            if any(r.get("step", 0) >= step for r in rows):
                # land anywhere in the next step: a random fraction of the mean step time
                per_step = (time.monotonic() - first_row) / max(len(rows) - 1, 1)
                time.sleep(rng.uniform(0.0, per_step))
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
    finally:
        if proc.poll() is None and time.monotonic() >= deadline:
            proc.kill()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"not killed (rc {proc.returncode}): {err[-2000:]}"
    return max(int(r.get("step", 0)) for r in read_jsonl(metrics))


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _kill_and_resume(tmp_path: Path, base: list[str], total: int, seed: int,
                     weights: Callable[[Path], dict[str, torch.Tensor]]) -> int:
    rng = random.Random(seed)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    reference = _start([*base, "--out", str(straight)])  # alongside: one process per core
    at = rng.randint(1, total - 2)
    last = _kill_after([*base, "--out", str(killed)], killed / "metrics.jsonl", at, rng)
    assert at <= last <= total  # at total: killed while exporting, before it exited
    # what a user (and the experiment) does: resume from the checkpoint, or start over when
    # the kill came before the first one (--resume refuses to start a run afresh)
    again = "--resume" if (killed / "checkpoint.pt").is_file() else "--overwrite"
    _finish(_start([*base, "--out", str(killed), again]))
    _finish(reference)
    _same_tensors(weights(straight), weights(killed))
    return at


@pytest.mark.slow
def test_pretraining_killed_at_a_random_step_resumes_to_the_same_weights(make_cache, tmp_path):
    cache = make_cache(n_cases=4, shape=(20, 20, 18), labelled=False)
    steps = 8
    base = ["pretrain", str(cache), "--steps", str(steps), "--no-progress", "--device", "cpu",
            *[a for kv in ("width=2", "depth=3", "patch_size=16", "patches=4", "proj_dim=8",
                           "num_workers=0", "log_every=1", "checkpoint_every=3", "amp=false")
              for a in ("--set", kv)]]

    def weights(run: Path) -> dict[str, torch.Tensor]:
        return load_file(str(run / "method.safetensors"))

    _kill_and_resume(tmp_path, base, steps, seed=11, weights=weights)


@pytest.mark.slow
def test_finetuning_killed_at_a_random_step_resumes_to_the_same_weights(make_cache, tmp_path):
    cache = make_cache(n_cases=5, shape=(16, 16, 16))
    epochs, per_epoch = 3, 2
    base = ["finetune", str(cache), "--no-progress",
            *[a for kv in ("width=2", "depth=3", "patch_size=16", "batch_size=1",
                           "samples_per_volume=1", "num_workers=0", "log_every=1",
                           f"steps_per_epoch={per_epoch}", f"max_epochs={epochs}",
                           "patience=100", "lr=0.01", "device=cpu", "amp=false",
                           "sw_batch_size=1")
              for a in ("--set", kv)]]

    def weights(run: Path) -> dict[str, torch.Tensor]:
        final = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
        return {**final, **{f"best.{k}": v
                            for k, v in load_file(str(run / "model.safetensors")).items()}}

    _kill_and_resume(tmp_path, base, epochs * per_epoch, seed=5, weights=weights)
