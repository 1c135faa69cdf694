"""Results of an experiment grid: ``results.csv`` and the paper's Table 1 layout.

The structures are the cache's (:class:`~pimpic.data.labels.LabelSet`): ``results.csv`` has a
``<metric>_<structure>`` column per entry of the metric table and structure, and the table one
block per structure, in the dataset's order (organ, tumour, whole organ for the organ + tumour
view). Rows read back without their cache name their structures by their columns.

All statistics start from one row per (method, fraction, seed, test case). With several seeds a
case's Dice is first averaged over the seeds, so every test case counts once: the table's mean ±
SD and the paired tests (:mod:`.statistics`) are over test cases, as in the paper. Two
conventions are named options of the experiment (docs/method.md §8), both the released code's by
default: a structure absent from a test case's ground truth (Dice undefined, NaN in
``results.csv``) scores 0 (``absent="zero"``) or is left out and counted (``absent="nan"``); the
SD is the population SD (``sd_ddof=0``) or the sample SD (``sd_ddof=1``). The table says which
were used.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pimpic import registry
from pimpic.data.cache import Cache
from pimpic.data.labels import Structure, structures_of
from pimpic.errors import PimpicError
from pimpic.io import atomic_open, read_json
from pimpic.paths import CONFIG, MARKER, PER_CASE, RUN_INFO, cell_dir, eval_dir
from pimpic.protocol.grid import BASELINE, ExperimentConfig
from pimpic.segmentation.metrics import COLUMNS as METRICS_COLUMNS
from pimpic.segmentation.metrics import METRICS, columns, mean_sd
from pimpic.segmentation.run_info import FinetuneRun
from pimpic.training.run_folder import saved_config

#: the cell a row of ``results.csv`` belongs to
CELL_COLUMNS = ("method", "fraction", "n_train_cases", "seed")
#: ``results.csv``: the cell, then the per-case columns of an evaluation
COLUMNS = (*CELL_COLUMNS, *METRICS_COLUMNS)
#: the metric columns of the organ + tumour view (floats; NaN where undefined)
METRIC_COLUMNS = METRICS_COLUMNS[1:]
#: how the from-scratch baseline is shown (the pretraining methods say it themselves)
BASELINE_NAME = "Random + Aug"
BASELINE_COLOUR = "#7f7f7f"


def method_name(method: str) -> str:
    """The display name of a grid row: the registry's, or the baseline's."""
    if method == BASELINE:
        return BASELINE_NAME
    return registry.get_method(method).display_name


def method_colour(method: str) -> str:
    """The figure colour of a grid row: the registry's, or the baseline's."""
    if method == BASELINE:
        return BASELINE_COLOUR
    return registry.get_method(method).colour


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def collect_results(exp: Path, cfg: ExperimentConfig) -> list[dict[str, Any]]:
    """One row per test case × finished cell, read from each cell's ``per_case.csv``; a metric
    column per structure of the cache's labels."""
    cache = Cache(cfg.cache)
    split = cache.split()
    metric_columns = columns(cache.require_labels().structures)[1:]
    rows: list[dict[str, Any]] = []
    for method in cfg.methods:
        for fraction in cfg.fractions:
            n_train = len(split.fraction(fraction))
            for seed in cfg.seeds:
                path = eval_dir(cell_dir(exp, method, fraction, seed), cfg.split) / PER_CASE
                if path.is_file():
                    cell = {"method": method, "fraction": fraction, "n_train_cases": n_train,
                            "seed": seed}
                    rows += _read_per_case(path, cell, metric_columns)
    return rows


def _read_per_case(path: Path, cell: dict[str, Any],
                   metric_columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per case of an evaluation's ``per_case.csv``: the ``cell`` it belongs to, the
    case and ``metric_columns`` (default: the file's own; NaN where a value is missing)."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if metric_columns is None:
            metric_columns = [c for c in reader.fieldnames or () if c != "case"]
        return [{**cell, "case": rec["case"], **{c: _float(rec.get(c)) for c in metric_columns}}
                for rec in reader]


def run_results(run: Path, method: str, split: str = "test") -> list[dict[str, Any]]:
    """The rows of a fine-tuning run made outside a grid, as if it were a cell of ``method``:
    its fraction (``run.json``), its seed (``config.yaml``) and the per-case scores of its
    evaluation on ``split`` (``pimpic evaluate``)."""
    cfg = saved_config(run)
    if cfg is None or not (run / RUN_INFO).is_file():
        raise PimpicError(f"{run}: not a pimpic fine-tuning run (no {MARKER}, {CONFIG} or "
                          f"{RUN_INFO})")
    info = FinetuneRun.from_json(run / RUN_INFO, read_json(run / RUN_INFO))
    path = eval_dir(run, split) / PER_CASE
    if not path.is_file():
        raise PimpicError(f"{path}: not found; evaluate the run first (`pimpic evaluate {run} "
                          f"--split {split}`)")
    cell = {"method": method, "fraction": info.fraction,
            "n_train_cases": len(info.train_cases), "seed": int(cfg["seed"])}
    return _read_per_case(path, cell)


def metric_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The metric columns of ``rows`` in their order (the organ + tumour view's without rows)."""
    if not rows:
        return list(METRIC_COLUMNS)
    return [k for k in rows[0] if k not in CELL_COLUMNS and k != "case"]


def structures_in(rows: Sequence[dict[str, Any]]) -> tuple[Structure, ...]:
    """The structures ``rows`` hold a Dice column of, in column order."""
    return structures_of([c[len("dice_"):] for c in metric_columns(rows)
                          if c.startswith("dice_")])


def write_results_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """``results.csv``: one row per test case × cell: the cell, the case and the metric columns
    of the rows (NaN where undefined; :data:`COLUMNS` for the organ + tumour view)."""
    fields = [*CELL_COLUMNS, "case", *metric_columns(rows)]
    with atomic_open(path, "w") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


def read_results_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows of ``results.csv`` with typed fields (ints for fraction/seed, floats for metrics)."""
    path = Path(path)
    if not path.is_file():
        raise PimpicError(f"{path}: results file not found")
    out = []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        metrics = [c for c in reader.fieldnames or () if c not in CELL_COLUMNS and c != "case"]
        for rec in reader:
            row: dict[str, Any] = {"method": rec["method"]}
            for col in ("fraction", "n_train_cases", "seed"):
                row[col] = int(rec[col])
            row["case"] = rec["case"]
            for col in metrics:
                row[col] = _float(rec.get(col))
            out.append(row)
    return out


def case_seed_scores(rows: Iterable[dict[str, Any]], method: str, fraction: int,
                     structure: str, absent: str = "zero", metric: str = "dice",
                     ) -> tuple[dict[tuple[str, int], float], int]:
    """``{(case, seed): score}`` of one structure in one cell of the grid, and the count of
    case-runs whose ground truth lacks the structure (Dice NaN).

    The absent rule: ``absent="zero"`` scores such a case-run the metric's ``absent_score``
    (Dice 0, the released rule); ``"nan"`` leaves it out, as is any other undefined score
    (HD95 of a missed structure)."""
    score = METRICS[metric].absent_score
    out: dict[tuple[str, int], float] = {}
    n_nan = 0
    for r in rows:
        if r["method"] != method or r["fraction"] != fraction:
            continue
        v = r[f"{metric}_{structure}"]
        if math.isnan(r[f"dice_{structure}"]):
            n_nan += 1
            if absent == "zero" and score is not None:
                v = score
        if not math.isnan(v):
            out[r["case"], r["seed"]] = v
    return out, n_nan


def by_case(scores: dict[tuple[str, int], float]) -> dict[str, float]:
    """``{case: mean over its seeds}`` of :func:`case_seed_scores`, cases in their order."""
    vals: dict[str, list[float]] = {}
    for (case, _), v in scores.items():
        vals.setdefault(case, []).append(v)
    return {c: float(np.mean(v)) for c, v in vals.items()}


def per_case(rows: Iterable[dict[str, Any]], method: str, fraction: int,
             structure: str, absent: str = "zero") -> tuple[dict[str, float], int]:
    """``{case: Dice averaged over seeds}`` and the count of NaN (structure-absent) case-runs.

    ``absent="zero"``: a NaN scores 0 (the released rule); ``"nan"``: it is skipped, and cases
    whose every seed is NaN are left out."""
    scores, n_nan = case_seed_scores(rows, method, fraction, structure, absent)
    return by_case(scores), n_nan


def summarise_cell(rows: Sequence[dict[str, Any]], method: str, fraction: int,
                   structure: str, absent: str = "zero", ddof: int = 0) -> dict[str, Any]:
    """Mean ± SD (percent, SD with ``ddof``, NaN where undefined) of the seed-averaged per-case
    Dice of one cell of the table; ``n`` cases, ``n_excluded`` NaN (structure-absent) case-runs
    — scored 0 or left out by ``absent``."""
    cases, n_nan = per_case(rows, method, fraction, structure, absent)
    mean, sd = mean_sd(np.array(list(cases.values()), dtype=float) * 100, ddof,
                       undefined_sd=math.nan)
    return {"mean": mean, "sd": sd, "n": len(cases), "n_excluded": n_nan}


def grid_axes(rows: Sequence[dict[str, Any]], methods: Sequence[str] | None,
          fractions: Sequence[int] | None) -> tuple[list[str], list[int]]:
    ms = list(methods) if methods else list(dict.fromkeys(r["method"] for r in rows))
    fs = list(fractions) if fractions else sorted({r["fraction"] for r in rows})
    return ms, fs


def format_results_table(rows: Sequence[dict[str, Any]], methods: Sequence[str] | None = None,
                 fractions: Sequence[int] | None = None, absent: str = "zero",
                 ddof: int = 0, structures: Sequence[Structure] | None = None) -> str:
    """The paper's Table 1: rows = methods grouped by structure (``structures``, default those
    of the rows' columns), columns = label fractions with their training-case counts; cells
    mean ± SD Dice (%) over test cases; best mean in bold; the footnote states the conventions
    (``absent`` rule, SD ``ddof``)."""
    ms, fs = grid_axes(rows, methods, fractions)
    n_train = {r["fraction"]: r["n_train_cases"] for r in rows}
    header = ["Method / labels", *(f"{f} % (n={n_train.get(f, '?')})" for f in fs)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    n_excl = 0
    for st in structures if structures is not None else structures_in(rows):
        structure = st.key
        lines.append(f"| **{st.name}** |" + " |" * len(fs))
        stats = {(m, f): summarise_cell(rows, m, f, structure, absent, ddof)
                 for m in ms for f in fs}
        best = {}
        for f in fs:
            means = [round(stats[m, f]["mean"], 1) for m in ms if stats[m, f]["n"]]
            best[f] = max(means) if means else None
        for m in ms:
            cells = []
            for f in fs:
                s = stats[m, f]
                if not s["n"]:
                    cells.append("—")
                    continue
                sd = "n/a" if math.isnan(s["sd"]) else f"{s['sd']:.1f}"
                text = f"{s['mean']:.1f} ± {sd}"
                if best[f] is not None and round(s["mean"], 1) == best[f] and len(ms) > 1:
                    text = f"**{text}**"
                if s["n_excluded"] and absent == "nan":
                    text += f" ({s['n_excluded']} NaN)"
                n_excl += s["n_excluded"]
                cells.append(text)
            lines.append(f"| {method_name(m)} | " + " | ".join(cells) + " |")
    n_cases = len({r["case"] for r in rows})
    n_seeds = len({r["seed"] for r in rows})
    sd_name = "population SD" if ddof == 0 else f"SD with ddof = {ddof}"
    lines += ["", f"Mean ± {sd_name} of Dice (%) over {n_cases} test cases"
              + (f" (each case averaged over {n_seeds} seeds)" if n_seeds > 1 else "")
              + "; n = labelled training cases; best mean per column and structure in bold; "
              "— = not run."]
    if n_excl and absent == "nan":
        lines += ["", "(k NaN): k case-runs (test case × seed) whose ground truth lacks the "
                  f"structure (Dice undefined) left out of that cell; {n_excl} in all."]
    elif n_excl:
        lines += ["", f"A structure absent from a test case's ground truth scores Dice 0 (the "
                  f"released rule; {n_excl} case-runs in all); `absent: nan` leaves them out."]
    return "\n".join(lines) + "\n"
