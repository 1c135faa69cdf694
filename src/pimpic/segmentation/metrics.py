"""Per-case segmentation metrics (docs/method.md §8): Dice and HD95 per structure, with NaN rules.

Structures, from a label map with 0 background, 1 organ, 2 tumour:

* ``organ``  — label 1
* ``tumour`` — label 2
* ``whole``  — labels 1 ∪ 2 (the whole organ, tumour included)

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
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance

#: structure name → the label values it covers
STRUCTURES: dict[str, tuple[int, ...]] = {"organ": (1,), "tumour": (2,), "whole": (1, 2)}
#: structure name → how tables and figures name it
STRUCTURE_NAMES = {"organ": "Organ", "tumour": "Tumour", "whole": "Whole organ"}
#: per-case CSV columns, in order
COLUMNS = ("case", *(f"dice_{s}" for s in STRUCTURES), *(f"hd95_{s}" for s in STRUCTURES))


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


def case_metrics(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Dice and HD95 (mm) of every structure for one case.

    Args:
        pred: predicted labels ``(X, Y, Z)`` (0/1/2).
        gt: ground-truth labels, same shape.
        spacing: voxel size in mm per axis.

    Returns:
        ``{"dice_organ", "dice_tumour", "dice_whole", "hd95_organ", ...}`` (NaN rules above).
    """
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} != ground-truth shape {gt.shape}")
    out: dict[str, float] = {}
    for name, labels in STRUCTURES.items():
        p = np.isin(pred, labels)
        g = np.isin(gt, labels)
        out[f"dice_{name}"] = dice(p, g)
        out[f"hd95_{name}"] = hd95(p, g, spacing)
    return out


def mean_sd(values: np.ndarray, ddof: int = 0,
            undefined_sd: float = 0.0) -> tuple[float, float]:
    """Mean and SD (``ddof``) of ``values``; both NaN without values, the SD ``undefined_sd``
    with ``ddof`` or fewer."""
    if values.size == 0:
        return math.nan, math.nan
    sd = float(values.std(ddof=ddof)) if values.size > ddof else undefined_sd
    return float(values.mean()), sd


def summarise(rows: Sequence[Mapping[str, Any]], absent: str = "zero",
              ddof: int = 0) -> dict[str, dict[str, float | int]]:
    """Mean ± SD (``ddof`` 0: population, the released convention) per structure over cases.

    Args:
        rows: per-case metrics from :func:`case_metrics`.
        absent: a structure absent from a case's ground truth (Dice NaN) scores 0 (``zero``,
            released) or is left out of the mean (``nan``); counted in ``n_excluded`` either way.
        ddof: delta degrees of freedom of the SD.

    Returns per structure ``{"dice_mean", "dice_sd", "hd95_mean", "hd95_sd", "n", "n_excluded",
    "n_missed"}``: ``n`` cases enter the Dice mean, ``n_excluded`` had an empty ground truth,
    ``n_missed`` had a ground truth but an empty prediction (Dice 0, HD95 NaN). HD95 is always
    averaged over the cases where it is defined.
    """
    out: dict[str, dict[str, float | int]] = {}
    for name in STRUCTURES:
        d = np.array([float(r[f"dice_{name}"]) for r in rows], dtype=np.float64)
        h = np.array([float(r[f"hd95_{name}"]) for r in rows], dtype=np.float64)
        scored = np.nan_to_num(d, nan=0.0) if absent == "zero" else d[~np.isnan(d)]
        dm, ds = mean_sd(scored, ddof)
        hm, hs = mean_sd(h[~np.isnan(h)], ddof)
        out[name] = {
            "dice_mean": dm, "dice_sd": ds, "hd95_mean": hm, "hd95_sd": hs,
            "n": int(scored.size),
            "n_excluded": int(np.isnan(d).sum()),
            "n_missed": int(((d == 0) & np.isnan(h)).sum()),
        }
    return out


def format_table(summary: Mapping[str, Mapping[str, float | int]]) -> str:
    """A short plain-text table: one row per structure, mean ± SD and the counts."""
    lines = [f"{'structure':<10} {'Dice':>17} {'HD95 (mm)':>19} {'n':>4} {'excl':>5} {'miss':>5}"]
    for name, s in summary.items():
        lines.append(
            f"{name:<10} {s['dice_mean']:>8.4f} ± {s['dice_sd']:<6.4f} "
            f"{s['hd95_mean']:>9.2f} ± {s['hd95_sd']:<7.2f} "
            f"{s['n']:>4} {s['n_excluded']:>5} {s.get('n_missed', 0):>5}"
        )
    return "\n".join(lines)
