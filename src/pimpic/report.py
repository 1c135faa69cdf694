"""Results of an experiment grid: ``results.csv``, the Table 1 layout, Wilcoxon tests, report.

All statistics start from one row per (method, fraction, seed, test case). With several seeds a
case's Dice is first averaged over the seeds, so every test case counts once: the table's mean ±
SD and the paired tests are over test cases, as in the paper. Two conventions are named options
of the experiment (docs/method.md §8), both the released code's by default: a structure absent
from a test case's ground truth (Dice undefined, NaN in ``results.csv``) scores 0
(``absent="zero"``) or is left out and counted (``absent="nan"``); the SD is the population SD
(``sd_ddof=0``) or the sample SD (``sd_ddof=1``). The table says which were used.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pimpic.errors import PimpicError

if TYPE_CHECKING:
    from pimpic.experiment import ExperimentConfig

STRUCTURES = ("organ", "tumour", "whole")
STRUCTURE_NAMES = {"organ": "Organ", "tumour": "Tumour", "whole": "Whole organ"}
METHOD_NAMES = {"random": "Random + Aug", "pim": "PiM", "pic": "PiC", "pimpic": "PiMPiC",
                "voco": "VoCo", "voco-ema": "VoCo-EMA", "vox2vec": "vox2vec"}
COLUMNS = ("method", "fraction", "n_train_cases", "seed", "case",
           *(f"dice_{s}" for s in STRUCTURES), *(f"hd95_{s}" for s in STRUCTURES))


def method_name(method: str) -> str:
    return METHOD_NAMES.get(method, method)


# ---------------------------------------------------------------------------------------------
# results.csv
# ---------------------------------------------------------------------------------------------


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def collect_results(exp: Path, cfg: ExperimentConfig) -> list[dict[str, Any]]:
    """One row per test case × finished cell, read from each cell's ``per_case.csv``."""
    from pimpic.data.cache import Cache
    from pimpic.data.splits import fraction_cases
    from pimpic.experiment import cell_dir, eval_dir

    splits = Cache(cfg.cache).splits()
    rows: list[dict[str, Any]] = []
    for method in cfg.methods:
        for fraction in cfg.fractions:
            n_train = len(fraction_cases(splits, fraction))
            for seed in cfg.seeds:
                path = eval_dir(cell_dir(exp, method, fraction, seed), cfg.split) / "per_case.csv"
                if not path.is_file():
                    continue
                with open(path, newline="") as fh:
                    for rec in csv.DictReader(fh):
                        row: dict[str, Any] = {"method": method, "fraction": fraction,
                                               "n_train_cases": n_train, "seed": seed,
                                               "case": rec["case"]}
                        for col in COLUMNS[5:]:
                            row[col] = _float(rec.get(col))
                        rows.append(row)
    return rows


def write_results_csv(rows: Iterable[dict[str, Any]], path: str | Path) -> None:
    from pimpic.io import atomic_open

    with atomic_open(path, "w") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(COLUMNS), extrasaction="ignore")
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
        for rec in csv.DictReader(fh):
            row: dict[str, Any] = {"method": rec["method"]}
            for col in ("fraction", "n_train_cases", "seed"):
                row[col] = int(rec[col])
            row["case"] = rec["case"]
            for col in COLUMNS[5:]:
                row[col] = _float(rec.get(col))
            out.append(row)
    return out


# ---------------------------------------------------------------------------------------------
# Aggregation and Table 1
# ---------------------------------------------------------------------------------------------


def per_case(rows: Iterable[dict[str, Any]], method: str, fraction: int,
             structure: str, absent: str = "zero") -> tuple[dict[str, float], int]:
    """``{case: Dice averaged over seeds}`` and the count of NaN (structure-absent) case-runs.

    ``absent="zero"``: a NaN scores 0 (the released rule); ``"nan"``: it is skipped, and cases
    whose every seed is NaN are left out."""
    vals: dict[str, list[float]] = {}
    n_nan = 0
    for r in rows:
        if r["method"] != method or r["fraction"] != fraction:
            continue
        v = r[f"dice_{structure}"]
        if math.isnan(v):
            n_nan += 1
            if absent == "nan":
                continue
            v = 0.0
        vals.setdefault(r["case"], []).append(v)
    return {c: float(np.mean(v)) for c, v in vals.items()}, n_nan


def summarise(rows: Sequence[dict[str, Any]], method: str, fraction: int,
              structure: str, absent: str = "zero", ddof: int = 0) -> dict[str, Any]:
    """Mean ± SD (percent, SD with ``ddof``) of the per-case Dice; ``n`` cases, ``n_excluded``
    NaN (structure-absent) case-runs — scored 0 or left out by ``absent``."""
    cases, n_nan = per_case(rows, method, fraction, structure, absent)
    v = np.array(list(cases.values()), dtype=float) * 100
    sd = float(np.std(v, ddof=ddof)) if len(v) > ddof else math.nan
    return {"mean": float(v.mean()) if len(v) else math.nan, "sd": sd, "n": len(v),
            "n_excluded": n_nan}


def _grid(rows: Sequence[dict[str, Any]], methods: Sequence[str] | None,
          fractions: Sequence[int] | None) -> tuple[list[str], list[int]]:
    ms = list(methods) if methods else list(dict.fromkeys(r["method"] for r in rows))
    fs = list(fractions) if fractions else sorted({r["fraction"] for r in rows})
    return ms, fs


def format_table(rows: Sequence[dict[str, Any]], methods: Sequence[str] | None = None,
                 fractions: Sequence[int] | None = None, absent: str = "zero",
                 ddof: int = 0) -> str:
    """The paper's Table 1: rows = methods grouped by structure, columns = label fractions with
    their training-case counts; cells mean ± SD Dice (%) over test cases; best mean in bold;
    the footnote states the conventions (``absent`` rule, SD ``ddof``)."""
    ms, fs = _grid(rows, methods, fractions)
    n_train = {r["fraction"]: r["n_train_cases"] for r in rows}
    header = ["Method / labels", *(f"{f} % (n={n_train.get(f, '?')})" for f in fs)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    n_excl = 0
    for structure in STRUCTURES:
        lines.append(f"| **{STRUCTURE_NAMES[structure]}** |" + " |" * len(fs))
        stats = {(m, f): summarise(rows, m, f, structure, absent, ddof) for m in ms for f in fs}
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


# ---------------------------------------------------------------------------------------------
# Paired tests against the baseline
# ---------------------------------------------------------------------------------------------


def wilcoxon_tests(rows: Sequence[dict[str, Any]], baseline: str = "random",
                   methods: Sequence[str] | None = None,
                   fractions: Sequence[int] | None = None,
                   absent: str = "zero") -> list[dict[str, Any]]:
    """Wilcoxon signed-rank test of each method against ``baseline`` per fraction and
    structure, paired by test case (seed-averaged). Each result has ``method``, ``fraction``,
    ``structure``, ``n`` (pairs), ``mean_diff`` (percentage points, method − baseline),
    ``statistic``, ``p`` (two-sided; NaN when not computable) and ``reason`` (why not)."""
    from scipy.stats import wilcoxon

    ms, fs = _grid(rows, methods, fractions)
    out = []
    for structure in STRUCTURES:
        for f in fs:
            base, _ = per_case(rows, baseline, f, structure, absent)
            for m in ms:
                if m == baseline:
                    continue
                other, _ = per_case(rows, m, f, structure, absent)
                common = sorted(set(base) & set(other))
                a = np.array([other[c] for c in common]) * 100
                b = np.array([base[c] for c in common]) * 100
                res: dict[str, Any] = {"method": m, "fraction": f, "structure": structure,
                                       "n": len(common), "statistic": math.nan, "p": math.nan,
                                       "mean_diff": float((a - b).mean()) if len(a) else math.nan,
                                       "reason": ""}
                if not base:
                    res["reason"] = f"no {method_name(baseline)} results"
                elif len(common) < 2:
                    res["reason"] = "fewer than 2 paired cases"
                elif np.all(a == b):
                    res["reason"] = "all differences are zero"
                else:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        r = wilcoxon(a, b)
                    res["statistic"], res["p"] = float(r.statistic), float(r.pvalue)
                    if math.isnan(res["p"]):
                        res["reason"] = "not computable"
                out.append(res)
    _holm(out)
    return out


def format_reading(tests: Sequence[dict[str, Any]], structure: str = "organ",
                   alpha: float = 0.05) -> str:
    """One plain sentence per (method, fraction) on ``structure``: did pretraining help here?

    Says "significant" only when the Holm-corrected p-value is below ``alpha``; otherwise the
    difference is reported as measured and called not significant (or not testable)."""
    lines = []
    for t in tests:
        if t["structure"] != structure or math.isnan(t["mean_diff"]):
            continue
        p_holm = t.get("p_holm", math.nan)
        if math.isnan(t["p"]):
            verdict = f"not testable ({t['reason']})"
        elif p_holm < alpha:
            verdict = (f"a significant {'gain' if t['mean_diff'] > 0 else 'loss'} "
                       f"(p = {t['p']:.3g}, Holm {p_holm:.3g})")
        else:
            verdict = f"not significant (p = {t['p']:.3g}, Holm {p_holm:.3g})"
        lines.append(f"- {method_name(t['method'])} at {t['fraction']} % labels: "
                     f"{t['mean_diff']:+.1f} points {STRUCTURE_NAMES[structure].lower()} Dice "
                     f"vs Random + Aug over {t['n']} test cases — {verdict}.")
    return "\n".join(lines) + "\n" if lines else ""


def _holm(tests: list[dict[str, Any]]) -> None:
    """Holm–Bonferroni adjusted p-values over all computable tests (``p_holm``)."""
    valid = sorted((t for t in tests if not math.isnan(t["p"])), key=lambda t: t["p"])
    running = 0.0
    for i, t in enumerate(valid):
        running = max(running, min(1.0, (len(valid) - i) * t["p"]))
        t["p_holm"] = running
    for t in tests:
        t.setdefault("p_holm", math.nan)


def format_stats(tests: Sequence[dict[str, Any]], baseline: str = "random") -> str:
    """Markdown table of :func:`wilcoxon_tests`."""
    if not tests:
        return (f"No paired comparison: the grid has no {method_name(baseline)} baseline or no "
                "other method.\n")
    lines = [f"| Structure | Labels | Method | n | Δ Dice (pp) vs {method_name(baseline)} "
             "| p (Wilcoxon) | p (Holm) |", "|---|---|---|---|---|---|---|"]
    for t in tests:
        diff = "n/a" if math.isnan(t["mean_diff"]) else f"{t['mean_diff']:+.1f}"
        if math.isnan(t["p"]):
            p, ph = f"n/a ({t['reason']})", "n/a"
        else:
            p, ph = f"{t['p']:.3g}", f"{t['p_holm']:.3g}"
            if t["p"] < 0.05:
                p = f"**{p}**"
        lines.append(f"| {STRUCTURE_NAMES[t['structure']]} | {t['fraction']} % | "
                     f"{method_name(t['method'])} | {t['n']} | {diff} | {p} | {ph} |")
    lines += ["", "Two-sided Wilcoxon signed-rank test over test cases (paired by case, Dice "
              "averaged over seeds first; zero differences dropped, scipy's default). Δ = mean "
              f"of (method − {method_name(baseline)}) in percentage points. p < 0.05 in bold "
              "(uncorrected); p (Holm) corrects for all tests in this table."]
    return "\n".join(lines) + "\n"


#: embedding figures included in the report when present in ``EXP/figures``
EXTRA_FIGURES = ("embedding_similarity", "overlap_check")


def write_all(exp: str | Path, cfg: ExperimentConfig) -> dict[str, Path]:
    """Write results.csv, table.md, stats.md, the figures and report.md into ``exp``."""
    from pimpic.figures import write_figures
    from pimpic.io import atomic_open

    exp = Path(exp)
    rows = collect_results(exp, cfg)
    write_results_csv(rows, exp / "results.csv")
    table = (format_table(rows, cfg.methods, cfg.fractions, cfg.absent, cfg.sd_ddof)
             if rows else "No results yet.\n")
    tests = wilcoxon_tests(rows, "random", cfg.methods, cfg.fractions, cfg.absent) \
        if "random" in cfg.methods and rows else []
    stats = format_stats(tests)
    reading = format_reading(tests)
    if reading:
        stats = f"{stats}\nIn words (organ Dice):\n\n{reading}"
    with atomic_open(exp / "table.md") as fh:
        fh.write(table)
    with atomic_open(exp / "stats.md") as fh:
        fh.write(stats)
    figures = write_figures(exp, cfg, rows)
    # figures made outside the grid (`pimpic visualize embeddings --out EXP/figures`, the demo)
    for key in EXTRA_FIGURES:
        if (exp / "figures" / f"{key}.png").is_file():
            figures[key] = exp / "figures" / f"{key}.png"
    report = write_report_md(exp, cfg, rows, table, stats, figures)
    return {"results": exp / "results.csv", "table": exp / "table.md", "stats": exp / "stats.md",
            "report": report, **figures}


# ---------------------------------------------------------------------------------------------
# report.md
# ---------------------------------------------------------------------------------------------

def hardware() -> dict[str, str]:
    """CPU model and cores, GPU name, torch/python/pimpic versions of this machine."""
    import os
    import platform

    import torch

    from pimpic import __version__
    from pimpic.envinfo import cpu_model

    cpu = cpu_model()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"CPU": f"{cpu} ({os.cpu_count()} logical cores)", "GPU": gpu,
            "torch": torch.__version__, "python": platform.python_version(),
            "pimpic": __version__, "OS": platform.platform()}


def _energy(path: Path) -> dict[str, Any] | None:
    from pimpic.io import read_json

    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except PimpicError:
        return None
    return data if isinstance(data, dict) and "joules" in data else None


def energy_rows(exp: Path, cfg: ExperimentConfig) -> list[dict[str, Any]]:
    """Per method: pretraining joules and the summed fine-tuning joules over its cells."""
    from pimpic.experiment import cell_dir, pretrain_dir

    out = []
    for m in cfg.methods:
        pre = None if m == "random" else _energy(pretrain_dir(exp, m) / "energy.json")
        fts = [_energy(cell_dir(exp, m, f, s) / "energy.json")
               for f in cfg.fractions for s in cfg.seeds]
        found = [e for e in fts if e]
        sources = {e.get("source", "?") for e in ([pre] if pre else []) + found}
        out.append({"method": m, "pretrain": pre,
                    "finetune_j": sum(float(e["joules"]) for e in found) if found else None,
                    "finetune_runs": len(found), "sources": sorted(sources)})
    return out


def _mj(j: float | None, estimate: bool) -> str:
    if j is None:
        return "—"
    text = f"{j / 1e6:.3g} MJ ({j / 3.6e6:.3g} kWh)"
    if j < 1e4:  # tiny CPU runs: joules are easier to read than 1e-05 MJ
        text += f" = {j:.3g} J"
    return text + " *estimate*" if estimate else text


def _energy_md(exp: Path, cfg: ExperimentConfig) -> str:
    lines = ["| Method | Pretraining | Fine-tuning (all cells) | Source |", "|---|---|---|---|"]
    for r in energy_rows(exp, cfg):
        pre = r["pretrain"]
        est = "estimate" in r["sources"]
        lines.append(f"| {method_name(r['method'])} | "
                     f"{_mj(float(pre['joules']) if pre else None, est)} | "
                     f"{_mj(r['finetune_j'], est)} ({r['finetune_runs']} runs) | "
                     f"{', '.join(r['sources']) or '—'} |")
    # quoted as printed (24.50 MJ is 6.81 kWh; the paper rounds down)
    lines.append("| PiMPiC (paper, pretraining) | 24.50 MJ (6.80 kWh) | — | paper §5 |")
    lines += ["", "Sources: `nvml` = GPU board energy measured by NVML, `rapl` = CPU package "
              "energy measured by RAPL, `estimate` = estimated from time × assumed power (not "
              "a measurement). The paper's figure is for its full-size pretraining on a GPU."]
    return "\n".join(lines) + "\n"


def _data_md(cfg: ExperimentConfig, rows: Sequence[dict[str, Any]]) -> str:
    from pimpic.data.cache import Cache
    from pimpic.data.splits import fraction_cases

    cache = Cache(cfg.cache)
    splits = cache.splits()
    man = cache.manifest
    lines = [f"- Cache: `{cache.root}` (source `{man.get('source', '?')}`, layout "
             f"`{man.get('layout', '?')}`, {len(cache.case_ids)} cases; preprocessing "
             f"{man.get('settings', {})})",
             f"- Split (seed {splits.get('seed', '?')}): {len(splits['train'])} train "
             f"(pretraining sees only these images), {len(splits['val'])} validation, "
             f"{len(splits['test'])} test; evaluated on `{cfg.split}`",
             "- Labelled training cases per fraction: " + ", ".join(
                 f"{f} % → {len(fraction_cases(splits, f))}" for f in cfg.fractions),
             f"- Methods: {', '.join(method_name(m) for m in cfg.methods)}; seeds "
             f"{', '.join(map(str, cfg.seeds))} (every seed reported, none selected)",
             f"- Result rows: {len(rows)} (case × cell)"]
    return "\n".join(lines) + "\n"


def _timings_md(exp: Path) -> str:
    from pimpic.io import read_json

    path = exp / "timings.json"
    t = read_json(path) if path.is_file() else {}
    if not t:
        return "No stage timings recorded.\n"
    lines = ["| Stage | Wall time |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} s |" for k, v in t.items()]
    lines.append(f"| **total** | **{sum(t.values()):.1f} s** ({sum(t.values()) / 60:.1f} min) |")
    return "\n".join(lines) + "\n"


def write_report_md(exp: Path, cfg: ExperimentConfig, rows: Sequence[dict[str, Any]],
                    table: str, stats: str, figures: dict[str, Path]) -> Path:
    """``report.md``: data, table, statistics, figures, energy, hardware, timings, config."""
    import yaml

    from pimpic.config import to_dict
    from pimpic.io import atomic_open

    captions = {
        "dice_vs_fraction": "Dice vs label fraction (mean ± SD over test cases)",
        "pretrain_loss": "Pretraining loss curves (paper Fig. 3E; training loss)",
        "overlays": "Segmentations on one test case (paper Fig. 2)",
        "embedding_similarity": "PiM embedding of a reference patch against every patch of a "
                                "test volume, and a PCA of the embeddings (paper Fig. 3 A–D)",
        "overlap_check": "Predicted overlap (cosine of PiM embeddings) against the true overlap "
                         "S — the label-free check that PiM learned its target",
    }
    parts = [f"# Experiment report: `{exp.name}`", "", "## Data", "", _data_md(cfg, rows),
             "## Dice (paper Table 1 layout)", "", table,
             "## Paired comparison against Random + Aug", "", stats, "## Figures", ""]
    for key, path in figures.items():
        parts += [f"### {captions.get(key, key)}", "", f"![{key}]({path.relative_to(exp)})", ""]
    hw = hardware()
    parts += ["## Energy", "", _energy_md(exp, cfg),
              "## Hardware (machine that wrote this report)", "",
              "\n".join(f"- {k}: {v}" for k, v in hw.items()), "",
              "## Wall time per stage (this machine, stages run so far)", "", _timings_md(exp),
              "## Settings (resolved config)", "", "```yaml",
              yaml.safe_dump(to_dict(cfg), sort_keys=False).rstrip(), "```", ""]
    with atomic_open(exp / "report.md") as fh:
        fh.write("\n".join(parts))
    return exp / "report.md"
