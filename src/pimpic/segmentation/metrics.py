"""Per-case segmentation metrics (docs/method.md §8): a metric table, scored per structure.

The structures come from the dataset's labels (:class:`~pimpic.data.labels.LabelSet`): one per
named label or region, or — for MSD Task07, KiTS19 and the synthetic cohort — the organ +
tumour view:

* ``organ``  — label 1
* ``tumour`` — label 2
* ``whole``  — labels 1 ∪ 2 (the whole organ, tumour included)

:data:`METRICS` is the metric table: name → :class:`Metric`, a function of one structure's
predicted and ground-truth masks (the structure's one-hot channel) and the voxel spacing. Every
entry becomes a ``<name>_<structure>`` column of ``per_case.csv`` and ``results.csv`` and a
mean ± SD in the summary; adding a metric is one entry.

Edge cases are reported, never hidden:

* ground truth of a structure empty → Dice **NaN** and HD95 **NaN** per case, counted in
  ``n_excluded``; the summary then scores it 0 (``absent="zero"``, the released rule) or leaves
  it out of that structure's mean (``absent="nan"``) — it is never silently scored 1;
* ground truth non-empty, prediction empty → Dice **0** (a real miss) and HD95 **NaN** (a
  distance to nothing is undefined); counted in ``n_missed`` and excluded from the HD95 mean.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance

from pimpic.data.labels import ORGAN_TUMOUR, Structure

#: structure name → the label values it covers (the organ + tumour view)
STRUCTURES: dict[str, tuple[int, ...]] = {s.key: s.values for s in ORGAN_TUMOUR.structures}
#: structure name → how tables and figures name it (the organ + tumour view)
STRUCTURE_NAMES = {s.key: s.name for s in ORGAN_TUMOUR.structures}


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice ``2|P ∩ G| / (|P| + |G|)`` of two boolean masks; NaN when ``gt`` is empty."""
    n_gt = int(np.count_nonzero(gt))
    if n_gt == 0:
        return math.nan
    inter = int(np.count_nonzero(pred & gt))
    return 2.0 * inter / (int(np.count_nonzero(pred)) + n_gt)


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile symmetric Hausdorff distance in mm between two boolean ``(X, Y, Z)`` masks.

    Uses MONAI's surface-distance implementation with the voxel ``spacing`` (mm per axis, so
    anisotropic grids are measured correctly). NaN when either mask is empty.
    """
    if not gt.any() or not pred.any():
        return math.nan
    p = torch.from_numpy(np.ascontiguousarray(pred))[None, None]
    g = torch.from_numpy(np.ascontiguousarray(gt))[None, None]
    with warnings.catch_warnings():
        # MONAI 1.6 passes its own deprecated `always_return_as_numpy` internally: noise for
        # the user, nothing about their data
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*",
                                category=FutureWarning)
        value = compute_hausdorff_distance(
            p, g, include_background=True, percentile=95, spacing=[float(s) for s in spacing]
        )
    return float(value.reshape(-1)[0])


@dataclass(frozen=True)
class Metric:
    """One entry of the metric table.

    Args:
        fn: ``fn(pred, gt, spacing) → float`` on boolean ``(X, Y, Z)`` masks of one structure
            and the voxel size in mm; NaN where undefined.
        title: its column title in :func:`format_table`.
        cell: format specs of the mean and the SD in :func:`format_table`.
        absent_score: what a case whose ground truth lacks the structure scores under
            ``absent="zero"`` (None: it stays out of the mean, like any undefined value).
    """

    fn: Callable[[np.ndarray, np.ndarray, Sequence[float]], float]
    title: str
    cell: tuple[str, str]
    absent_score: float | None = None


#: the metric table: name → metric, in column order
METRICS: dict[str, Metric] = {
    "dice": Metric(lambda p, g, _: dice(p, g), "Dice", (">8.4f", "<6.4f"), absent_score=0.0),
    "hd95": Metric(hd95, "HD95 (mm)", (">9.2f", "<7.2f")),
}


def columns(structures: Sequence[Structure] = ORGAN_TUMOUR.structures) -> tuple[str, ...]:
    """Per-case CSV columns: ``case``, then ``<metric>_<structure>`` metric by metric."""
    return ("case", *(f"{m}_{s.key}" for m in METRICS for s in structures))


#: per-case CSV columns of the organ + tumour view, in order
COLUMNS = columns()


def case_metrics(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float],
                 structures: Sequence[Structure] = ORGAN_TUMOUR.structures) -> dict[str, float]:
    """Every metric of :data:`METRICS` for every structure of one case.

    Args:
        pred: predicted labels ``(X, Y, Z)`` (the dataset's label values).
        gt: ground-truth labels, same shape.
        spacing: voxel size in mm per axis.
        structures: what to score (default: organ, tumour, whole organ).

    Returns:
        ``{"dice_organ", "dice_tumour", "dice_whole", "hd95_organ", ...}`` (NaN rules above).
    """
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} != ground-truth shape {gt.shape}")
    out: dict[str, float] = {}
    for s in structures:
        p = np.isin(pred, s.values)
        g = np.isin(gt, s.values)
        for name, metric in METRICS.items():
            out[f"{name}_{s.key}"] = metric.fn(p, g, spacing)
    return out


def mean_sd(values: np.ndarray, ddof: int = 0,
            undefined_sd: float = 0.0) -> tuple[float, float]:
    """Mean and SD (``ddof``) of ``values``; both NaN without values, the SD ``undefined_sd``
    with ``ddof`` or fewer."""
    if values.size == 0:
        return math.nan, math.nan
    sd = float(values.std(ddof=ddof)) if values.size > ddof else undefined_sd
    return float(values.mean()), sd


def summarise(rows: Sequence[Mapping[str, Any]], absent: str = "zero", ddof: int = 0,
              structures: Sequence[Structure] = ORGAN_TUMOUR.structures,
              ) -> dict[str, dict[str, float | int]]:
    """Mean ± SD (``ddof`` 0: population, the released convention) per structure over cases.

    Args:
        rows: per-case metrics from :func:`case_metrics`.
        absent: a structure absent from a case's ground truth (Dice NaN) scores 0 (``zero``,
            released) or is left out of the mean (``nan``); counted in ``n_excluded`` either way.
        ddof: delta degrees of freedom of the SD.
        structures: the structures scored in ``rows``.

    Returns per structure key ``{"dice_mean", "dice_sd", "hd95_mean", "hd95_sd", ..., "n",
    "n_excluded", "n_missed"}`` (a mean and SD per entry of :data:`METRICS`): ``n`` cases enter
    the Dice mean, ``n_excluded`` had an empty ground truth, ``n_missed`` had a ground truth but
    an empty prediction (Dice 0, HD95 NaN). HD95 is always averaged over the cases where it is
    defined.
    """
    out: dict[str, dict[str, float | int]] = {}
    for s in structures:
        d = np.array([float(r[f"dice_{s.key}"]) for r in rows], dtype=np.float64)
        h = np.array([float(r[f"hd95_{s.key}"]) for r in rows], dtype=np.float64)
        entry: dict[str, float | int] = {}
        for name, metric in METRICS.items():
            v = np.array([float(r[f"{name}_{s.key}"]) for r in rows], dtype=np.float64)
            if metric.absent_score is not None and absent == "zero":
                v = np.where(np.isnan(d), metric.absent_score, v)
            entry[f"{name}_mean"], entry[f"{name}_sd"] = mean_sd(v[~np.isnan(v)], ddof)
        entry["n"] = int(d.size if absent == "zero" else (~np.isnan(d)).sum())
        entry["n_excluded"] = int(np.isnan(d).sum())
        entry["n_missed"] = int(((d == 0) & np.isnan(h)).sum())
        out[s.key] = entry
    return out


def format_table(summary: Mapping[str, Mapping[str, float | int]],
                 names: Mapping[str, str] | None = None) -> str:
    """A short plain-text table: one row per structure (``names`` maps keys to what is shown;
    default the keys), mean ± SD of every metric and the counts."""
    names = names or {}
    shown = {k: names.get(k, k) for k in summary}
    width = max(10, *(len(v) for v in shown.values())) if shown else 10
    cells = {m: len(format(0.0, metric.cell[0])) + 3 + len(format(0.0, metric.cell[1]))
             for m, metric in METRICS.items()}
    lines = [f"{'structure':<{width}} "
             + " ".join(f"{metric.title:>{cells[m]}}" for m, metric in METRICS.items())
             + f" {'n':>4} {'excl':>5} {'miss':>5}"]
    for key, s in summary.items():
        lines.append(
            f"{shown[key]:<{width}} "
            + " ".join(f"{s[f'{m}_mean']:{metric.cell[0]}} ± {s[f'{m}_sd']:{metric.cell[1]}}"
                       for m, metric in METRICS.items())
            + f" {s['n']:>4} {s['n_excluded']:>5} {s.get('n_missed', 0):>5}"
        )
    return "\n".join(lines)
