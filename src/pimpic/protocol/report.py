"""The experiment's report: ``results.csv``, ``table.md``, ``stats.md``, the figures and
``report.md`` (data, table, statistics, figures, energy, hardware, timings, settings)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from pimpic.config import to_dict
from pimpic.data.cache import Cache
from pimpic.data.labels import ORGAN_TUMOUR_VIEW
from pimpic.envinfo import machine
from pimpic.errors import PimpicError
from pimpic.io import atomic_open, read_json
from pimpic.paths import (
    ENERGY,
    FAILURES,
    FIGURES,
    REPORT,
    RESULTS,
    STATS,
    TABLE,
    TIMINGS,
    cell_dir,
    pretrain_dir,
)
from pimpic.protocol.figures import write_figures
from pimpic.protocol.grid import BASELINE, ExperimentConfig, transductive
from pimpic.protocol.results import (
    collect_results,
    format_results_table,
    method_name,
    write_results_csv,
)
from pimpic.protocol.statistics import format_reading, format_stats, paired_tests

#: embedding figures included in the report when present in ``EXP/figures``
EXTRA_FIGURES = ("embedding_similarity", "overlap_check")


def write_all(exp: str | Path, cfg: ExperimentConfig) -> dict[str, Path]:
    """Write results.csv, table.md, stats.md, the figures and report.md into ``exp``."""
    exp = Path(exp)
    labels = Cache(cfg.cache).require_labels()
    rows = collect_results(exp, cfg)
    write_results_csv(rows, exp / RESULTS)
    table = (format_results_table(rows, cfg.methods, cfg.fractions, cfg.absent, cfg.sd_ddof,
                                  labels.structures) if rows else "No results yet.\n")
    tests = paired_tests(rows, BASELINE, methods=cfg.methods, fractions=cfg.fractions,
                         absent=cfg.absent, structures=labels.structures,
                         ) if BASELINE in cfg.methods and rows else []
    stats = format_stats(tests)
    # in words: the organ in the organ + tumour view, every structure otherwise
    described = ([s for s in labels.structures if s.key == "organ"]
                 if labels.view == ORGAN_TUMOUR_VIEW else list(labels.structures))
    for st in described:
        reading = format_reading(tests, st.key)
        if reading:
            name = st.name.lower() if labels.view == ORGAN_TUMOUR_VIEW else st.name
            stats = f"{stats}\nIn words ({name} Dice):\n\n{reading}"
    with atomic_open(exp / TABLE) as fh:
        fh.write(table)
    with atomic_open(exp / STATS) as fh:
        fh.write(stats)
    figures = write_figures(exp, cfg, rows, labels)
    # figures made outside the grid (`pimpic visualize embeddings --out EXP/figures`, the demo)
    for key in EXTRA_FIGURES:
        if (exp / FIGURES / f"{key}.png").is_file():
            figures[key] = exp / FIGURES / f"{key}.png"
    report = write_report_md(exp, cfg, rows, table, stats, figures)
    return {"results": exp / RESULTS, "table": exp / TABLE, "stats": exp / STATS,
            "report": report, **figures}


def _energy(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except PimpicError:
        return None
    return data if isinstance(data, dict) and "joules" in data else None


def energy_rows(exp: Path, cfg: ExperimentConfig) -> list[dict[str, Any]]:
    """Per method: pretraining joules and the summed fine-tuning joules over its cells."""
    out = []
    for m in cfg.methods:
        pre = None if m == BASELINE else _energy(pretrain_dir(exp, m) / ENERGY)
        fts = [_energy(cell_dir(exp, m, f, s) / ENERGY)
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
    cache = Cache(cfg.cache)
    split = cache.split()
    man = cache.manifest
    lines = [f"- Cache: `{cache.root}` (source `{man.get('source', '?')}`, layout "
             f"`{man.get('layout', '?')}`, {len(cache.case_ids)} cases; preprocessing "
             f"{man.get('settings', {})})",
             f"- Split (seed {split.seed}): {len(split.train)} train, {len(split.val)} "
             f"validation, {len(split.test)} test; evaluated on `{cfg.split}`",
             f"- {pool_line(cfg)}",
             "- Labelled training cases per fraction: " + ", ".join(
                 f"{f} % → {len(split.fraction(f))}" for f in cfg.fractions),
             f"- Methods: {', '.join(method_name(m) for m in cfg.methods)}; seeds "
             f"{', '.join(map(str, cfg.seeds))} (every seed reported, none selected)",
             f"- Result rows: {len(rows)} (case × cell)"]
    return "\n".join(lines) + "\n"


def pool_line(cfg: ExperimentConfig) -> str:
    """What pretraining read, in one sentence (the report's header states a transductive
    pool: the evaluation patients' images, never their labels)."""
    if all(m == BASELINE for m in cfg.methods):
        return "Pretraining pool: none (no pretrained method in the grid)."
    if cfg.pretrain_cache and Path(cfg.pretrain_cache).resolve() != Path(cfg.cache).resolve():
        return (f"Pretraining pool: every case of the separate pool `{cfg.pretrain_cache}`, "
                f"checked to hold none of the {cfg.split} patients.")
    split = Cache(cfg.cache).split()
    if cfg.pretrain_pool == "train":
        return f"Pretraining pool: the {len(split.train)} training cases' images."
    if cfg.pretrain_pool == "train+unlabelled":
        return (f"Pretraining pool: the {len(split.train)} training cases and the "
                f"{len(split.unlabelled)} unlabelled cases ({len(split.pool('train+unlabelled'))}"
                " images; no evaluation patient).")
    return (f"Pretraining pool: all {len(split.pool('all'))} cached cases, including the "
            f"{len(split.part(cfg.split))} evaluation ({cfg.split}) patients' images (no "
            "labels): transductive pretraining, as configured.")


def _timings_md(exp: Path) -> str:
    path = exp / TIMINGS
    t = read_json(path) if path.is_file() else {}
    if not t:
        return "No stage timings recorded.\n"
    lines = ["| Stage | Wall time |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} s |" for k, v in t.items()]
    lines.append(f"| **total** | **{sum(t.values()):.1f} s** ({sum(t.values()) / 60:.1f} min) |")
    return "\n".join(lines) + "\n"


def _failures_md(exp: Path) -> list[str]:
    """The stages that failed (``failures.json``): their cells are missing from the table."""
    if not (exp / FAILURES).is_file():
        return []
    failed = read_json(exp / FAILURES)
    return ["## Failed stages", "", "Not in the table above; rerun the experiment after the "
            "change the reason suggests (finished stages are kept).", "",
            *(f"- **{name}**: {reason}" for name, reason in failed.items()), ""]


def write_report_md(exp: Path, cfg: ExperimentConfig, rows: Sequence[dict[str, Any]],
                    table: str, stats: str, figures: dict[str, Path]) -> Path:
    """``report.md``: data, table, statistics, figures, energy, hardware, timings, config."""
    captions = {
        "dice_vs_fraction": "Dice vs label fraction (mean ± SD over test cases)",
        "pretrain_loss": "Pretraining loss curves (paper Fig. 3E; training loss)",
        "overlays": "Segmentations on one test case (paper Fig. 2)",
        "embedding_similarity": "PiM embedding of a reference patch against every patch of a "
                                "test volume, and a PCA of the embeddings (paper Fig. 3 A–D)",
        "overlap_check": "Predicted overlap (cosine of PiM embeddings) against the true overlap "
                         "S — the label-free check that PiM learned its target",
    }
    header = [pool_line(cfg), ""] if transductive(cfg) else []
    parts = [f"# Experiment report: `{exp.name}`", "", *header, "## Data", "",
             _data_md(cfg, rows),
             "## Dice (paper Table 1 layout)", "", table, *_failures_md(exp),
             f"## Paired comparison against {method_name(BASELINE)}", "", stats, "## Figures", ""]
    for key, path in figures.items():
        parts += [f"### {captions.get(key, key)}", "", f"![{key}]({path.relative_to(exp)})", ""]
    hw = machine()
    parts += ["## Energy", "", _energy_md(exp, cfg),
              "## Hardware (machine that wrote this report)", "",
              "\n".join(f"- {k}: {v}" for k, v in hw.items()), "",
              "## Wall time per stage (this machine, stages run so far)", "", _timings_md(exp),
              "## Settings (resolved config)", "", "```yaml",
              yaml.safe_dump(to_dict(cfg), sort_keys=False).rstrip(), "```", ""]
    with atomic_open(exp / REPORT) as fh:
        fh.write("\n".join(parts))
    return exp / REPORT
