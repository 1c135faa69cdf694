"""Where pimpic puts things: the file names of a run folder and the experiment folder's layout.

Every module that reads or writes one of these names imports it from here, so a name changes in
one place. Nothing here touches the disk.

A training run (``pimpic pretrain`` / ``pimpic finetune``)::

    RUN/.pimpic-run  config.yaml  run.json  env.json  metrics.jsonl  tb/  checkpoint.pt
        energy.json  method.safetensors + encoder.safetensors (pretraining)
        model.safetensors (fine-tuning)
        eval-<split>/.pimpic-eval  per_case.csv  summary.json  pred/<case>.npy

An experiment (``pimpic experiment``)::

    EXP/config.yaml  split.json  timings.json
        pretrain/<method>/                      a pretraining run per method
        finetune/<method>/f<fraction>/s<seed>/  a fine-tuning run per cell
        results.csv  table.md  stats.md  report.md  figures/
"""

from __future__ import annotations

from pathlib import Path

# ------------------------------------------------------------------------------ a run folder
#: marks a folder as a pimpic run (kind, version, the artefacts below)
MARKER = ".pimpic-run"
#: held (``fcntl`` lock) by the one command running in the folder
RUN_LOCK = ".pimpic-lock"
CONFIG = "config.yaml"
#: what varies between identical runs (paths, times, host) and what a resume must match
RUN_INFO = "run.json"
ENV = "env.json"
METRICS = "metrics.jsonl"
TENSORBOARD = "tb"
CHECKPOINT = "checkpoint.pt"
ENERGY = "energy.json"
#: pretraining: the whole pretext module, and the encoder that fine-tuning loads
METHOD_FILE = "method.safetensors"
ENCODER_FILE = "encoder.safetensors"
#: fine-tuning: the best segmentation network
MODEL_FILE = "model.safetensors"

# ------------------------------------------------------------------------ an evaluation folder
EVAL_MARKER = ".pimpic-eval"
PER_CASE = "per_case.csv"
SUMMARY = "summary.json"
PREDICTIONS = "pred"
#: what an evaluation writes into its folder
EVAL_OUTPUTS = (PER_CASE, SUMMARY, PREDICTIONS)

# ---------------------------------------------------------------------- an experiment folder
SPLIT_RECORD = "split.json"
TIMINGS = "timings.json"
#: stages of an experiment that failed (training diverged), with the reason
FAILURES = "failures.json"
#: an experiment's claim locks: one file per stage, held by the process running it
CLAIMS = ".claims"
RESULTS = "results.csv"
TABLE = "table.md"
STATS = "stats.md"
REPORT = "report.md"
FIGURES = "figures"


def eval_dir(run_dir: Path, split: str = "test") -> Path:
    """``RUN/eval-<split>``: one evaluation of a fine-tuning run."""
    return run_dir / f"eval-{split}"


def pretrain_dir(exp: Path, method: str) -> Path:
    """``EXP/pretrain/<method>``: the experiment's pretraining run of ``method``."""
    return exp / "pretrain" / method


def cell_dir(exp: Path, method: str, fraction: int, seed: int) -> Path:
    """``EXP/finetune/<method>/f<fraction>/s<seed>``: one fine-tuning run of the grid."""
    return exp / "finetune" / method / f"f{fraction}" / f"s{seed}"
