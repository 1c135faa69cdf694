"""Is the synthetic cohort label-scarce at the demo's settings?

    python scripts/cohort_check.py [--out DIR] [--variability realistic|low] [--task pancreas]
                                   [--spacing MM] [--set samples_per_volume=4 ...]
                                   [--tumour kidney_radius=[0.25,0.5] ...]

Generates the demo's cohort (``generate_cohort`` at ``pimpic.protocol.demo.SIZES["full"]``),
prepares it as the demo does, fine-tunes ``random`` (no encoder, Random + Aug) at the demo's low
label fraction and at 100 % with the demo's fine-tuning config (``demo_config(...).finetune``,
run through :func:`pimpic.protocol.experiment.run_experiment`), evaluates on the test split and
prints organ, tumour and whole-organ Dice (mean ± SD over test cases) and the two criteria:

1. organ Dice at 100 % is at least 15 points above organ Dice at the low fraction;
2. tumour Dice at 100 % is at least 20.

Only ``random`` runs: the cohort is tuned on what from-scratch training can and cannot learn,
never on what pretraining does. Everything is resumable in ``--out`` (rerun = reprint). A
measurement takes several minutes on two CPU cores; the load average and this process's CPU
time over wall time are printed, because a shared machine makes the wall time pessimistic.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

from pimpic.config import build_config, to_dict
from pimpic.data import synthetic_style
from pimpic.data.prepare import prepare
from pimpic.data.preprocess import Settings
from pimpic.data.synthetic import VARIABILITY, generate_cohort
from pimpic.data.synthetic_tumour import TumourStyle
from pimpic.errors import PimpicError
from pimpic.io import read_json
from pimpic.paths import SUMMARY, TIMINGS, cell_dir, eval_dir
from pimpic.protocol.demo import SIZES, demo_config
from pimpic.protocol.experiment import run_experiment
from pimpic.segmentation.config import FinetuneConfig

ORGAN_GAP = 15.0  # Dice points, criterion 1
TUMOUR_MIN = 20.0  # Dice points, criterion 2


def _cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _dice(summary: dict[str, Any], name: str) -> tuple[float, float, int]:
    s = summary["structures"][name]
    mean = s["dice_mean"] if s["dice_mean"] is not None else float("nan")
    sd = s["dice_sd"] if s["dice_sd"] is not None else float("nan")
    return 100 * mean, 100 * sd, int(s["n"])


def _tumour_style(base: TumourStyle, settings: list[str]) -> TumourStyle:
    """``base`` with ``FIELD=VALUE`` settings applied, typed and checked as ``--set`` values
    are (:func:`pimpic.config.build_config`)."""
    fields = sorted(f.name for f in dataclasses.fields(TumourStyle))
    style = base
    for item in settings:
        if "=" not in item:
            raise PimpicError(f"{item!r} is not FIELD=VALUE with FIELD one of {fields}")
        try:
            style = build_config(TumourStyle, None, [item], base=to_dict(style))
        except PimpicError as err:
            raise PimpicError(f"{item!r}: {err}") from None
    return style


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("cohort_check_out"))
    parser.add_argument("--variability", choices=VARIABILITY, default=None,
                        help="cohort variability (default: the generator's, as in the demo)")
    parser.add_argument("--task", default="pancreas")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", type=int, default=None, help="override the demo's case count")
    parser.add_argument("--spacing", type=float, default=None,
                        help="override the demo's preprocessing spacing (mm)")
    parser.add_argument("--full-only", action="store_true",
                        help="fine-tune at 100 %% only (criterion 2 and a quick look)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="override a field of the demo's fine-tuning config (repeatable), "
                        "to try budgets before changing the demo")
    parser.add_argument("--tumour", dest="tumour", action="append", default=[],
                        metavar="FIELD=VALUE",
                        help="replace a field of the realistic tumour preset "
                        "(pimpic.data.synthetic_tumour.REALISTIC, repeatable), e.g. "
                        "kidney_radius=[0.25,0.5], to try tumours before changing the generator")
    args = parser.parse_args()
    if args.tumour:
        try:
            synthetic_style.REALISTIC = _tumour_style(synthetic_style.REALISTIC, args.tumour)
        except PimpicError as err:
            parser.exit(2, f"cohort_check.py: --tumour: {err}\n")

    size = SIZES["full"]
    if args.cases is not None:
        size = dataclasses.replace(size, cases=args.cases)
    if args.spacing is not None:
        size = dataclasses.replace(size, spacing=args.spacing)
    t0, cpu0, load0 = time.perf_counter(), _cpu_s(), os.getloadavg()
    kw = {} if args.variability is None else {"variability": args.variability}
    generate_cohort(args.out / "data", size.cases, task=args.task, seed=args.seed,
                    shape=size.shape, progress=False, **kw)
    t_gen = time.perf_counter() - t0
    prepare(args.out / "data", args.out / "cache", settings=Settings(spacing=(size.spacing,) * 3),
            workers=2, seed=args.seed, progress=False)
    t_prep = time.perf_counter() - t0 - t_gen
    # 100 % first: it decides both criteria, and the low-fraction cell can be added later
    cfg = dataclasses.replace(demo_config(size, args.out / "cache", "cpu"), methods=("random",),
                              fractions=(100,) if args.full_only else (100, size.low_fraction))
    if args.overrides:
        finetune = build_config(FinetuneConfig, None, args.overrides, base=to_dict(cfg.finetune))
        cfg = dataclasses.replace(cfg, finetune=finetune)
    exp = run_experiment(cfg, args.out / "experiment", progress=False, report=False)
    wall = time.perf_counter() - t0
    cpu = _cpu_s() - cpu0

    low, full = size.low_fraction, 100
    res = {f: read_json(eval_dir(cell_dir(exp, "random", f, 0), cfg.split) / SUMMARY)
           for f in cfg.fractions}
    print(f"\ncohort: {size.cases} {args.task} cases, variability={args.variability or 'default'}"
          f", seed {args.seed}, prepared at {size.spacing} mm; fine-tuning "
          f"{cfg.finetune.steps_per_epoch} steps × ≤{cfg.finetune.max_epochs} epochs, "
          f"width {cfg.finetune.width}, patch {cfg.finetune.patch_size}, "
          f"{cfg.finetune.batch_size}×{cfg.finetune.samples_per_volume} crops per step"
          + (f"; overrides {' '.join(args.overrides)}" if args.overrides else "")
          + (f"; tumours {synthetic_style.REALISTIC}" if args.tumour else ""))
    print(f"{'Random + Aug':<14} {'organ':>14} {'tumour':>14} {'whole':>14}   (test Dice, %)")
    for f in sorted(cfg.fractions):
        cells = []
        for name in ("organ", "tumour", "whole"):
            m, sd, n = _dice(res[f], name)
            cells.append(f"{m:5.1f} ± {sd:4.1f}{'' if name != 'tumour' else f' n{n}':>4}")
        print(f"{f:>3} % labels   " + " ".join(f"{c:>14}" for c in cells))
    gap = _dice(res[full], "organ")[0] - _dice(res[low], "organ")[0] if low in res else math.nan
    tumour = _dice(res[full], "tumour")[0]
    ok1, ok2 = gap >= ORGAN_GAP, tumour >= TUMOUR_MIN
    print(f"criterion 1: organ Dice 100 % − {low} % = {gap:.1f} points "
          f"(≥ {ORGAN_GAP:.0f}) {'PASS' if ok1 else 'FAIL'}")
    print(f"criterion 2: tumour Dice at 100 % = {tumour:.1f} (≥ {TUMOUR_MIN:.0f}) "
          f"{'PASS' if ok2 else 'FAIL'}")
    timings = read_json(exp / TIMINGS)
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
    load1 = os.getloadavg()
    print(f"wall {wall / 60:.1f} min (synth {t_gen:.0f} s, prepare {t_prep:.0f} s; {stages}); "
          f"CPU/wall {cpu / wall:.2f} of {os.cpu_count()} cores; load average "
          f"{load0[0]:.1f} at start, {load1[0]:.1f} at end (1 min)")
    return 0 if ok1 and ok2 else 1


if __name__ == "__main__":
    sys.exit(main())
