"""Experiment figures (matplotlib, Agg backend, PNG): Dice vs label fraction, pretraining loss
curves (paper Fig. 3E) and segmentation overlays on one test case (paper Fig. 2)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from pimpic import registry
from pimpic.data.cache import Cache
from pimpic.data.labels import ORGAN_TUMOUR, ORGAN_TUMOUR_VIEW, LabelSet, Structure
from pimpic.io import read_jsonl
from pimpic.paths import FIGURES, METRICS, PREDICTIONS, cell_dir, eval_dir, pretrain_dir
from pimpic.protocol.grid import BASELINE, ExperimentConfig
from pimpic.protocol.plotting import pyplot, save_figure
from pimpic.protocol.results import method_colour, method_name, per_case, structures_in


def plot_dice_vs_fraction(rows: Sequence[dict[str, Any]], methods: Sequence[str],
                          fractions: Sequence[int], path: Path, absent: str = "zero",
                          ddof: int = 0, structures: Sequence[Structure] | None = None) -> Path:
    """One panel per structure (``structures``, default those of the rows' columns; three to a
    row): mean ± SD Dice (%) over test cases against the label fraction (the table's
    conventions: ``absent`` rule, SD ``ddof``)."""
    plt = pyplot()
    shown = list(structures if structures is not None else structures_in(rows))
    cols = min(3, len(shown))
    nrows = math.ceil(len(shown) / cols)
    fig, grid = plt.subplots(nrows, cols, figsize=(14 * cols / 3, 4.4 * nrows), sharex=True,
                             squeeze=False)
    axes = list(grid.flat)
    for ax in axes[len(shown):]:
        ax.axis("off")
    n_train = {r["fraction"]: r["n_train_cases"] for r in rows}
    fs = sorted(fractions)
    for ax, st in zip(axes, shown, strict=False):
        structure = st.key
        for k, m in enumerate(methods):
            xs, ys, es = [], [], []
            for f in fs:
                v = np.array(list(per_case(rows, m, f, structure, absent)[0].values())) * 100
                if len(v):
                    # a small horizontal offset per method keeps overlapping error bars apart
                    xs.append(f * (1 + 0.025 * (k - (len(methods) - 1) / 2)))
                    ys.append(v.mean())
                    es.append(v.std(ddof=ddof) if len(v) > ddof else 0.0)
            if xs:
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, lw=1.6, ms=5,
                            color=method_colour(m), label=method_name(m),
                            ls="--" if m == BASELINE else "-")
        ax.set_xscale("log")
        ax.set_xticks(fs)
        ax.set_xticklabels([f"{f}%\n(n={n_train.get(f, '?')})" for f in fs])
        ax.minorticks_off()
        ax.set_title(st.name)
        ax.set_xlabel("label fraction (labelled training cases)")
        # one Dice scale for every panel: an all-zero structure reads as 0 %, not a zoomed axis
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Dice (%) — mean ± SD over test cases")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), frameon=False,
               bbox_to_anchor=(0.5, 1.06))
    fig.tight_layout()
    return save_figure(fig, path)


def _smooth(y: np.ndarray, n: int) -> np.ndarray:
    """Moving average over ~``len/n`` points (edges use what exists)."""
    w = max(1, len(y) // n)
    if w == 1:
        return y
    kernel = np.ones(w)
    num = np.convolve(np.nan_to_num(y), kernel, mode="same")
    den = np.convolve(np.isfinite(y).astype(float), kernel, mode="same")
    return num / np.maximum(den, 1)


def plot_pretrain_losses(runs: dict[str, Path], path: Path) -> Path | None:
    """Paper Fig. 3E: per method, the total loss and its named parts against the step, from
    each run's ``metrics.jsonl``. None when no run has metrics."""
    curves = {}
    for m, rd in runs.items():
        f = rd / METRICS
        rows = [r for r in read_jsonl(f) if "step" in r and "loss" in r] if f.is_file() else []
        if rows:
            curves[m] = rows
    if not curves:
        return None
    plt = pyplot()
    n = len(curves)
    cols = min(3, n)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.8 * cols, 3.6 * nrows), squeeze=False)
    for ax, (m, rows) in zip(axes.flat, curves.items(), strict=False):
        steps = np.array([r["step"] for r in rows], dtype=float)
        keys = ["loss", *sorted(registry.get_method(m).loss_names)]
        for key in keys:
            y = np.array([float(r.get(key, math.nan)) for r in rows])
            if not np.isfinite(y).any():
                continue
            style = {"lw": 2.0, "color": "black"} if key == "loss" else {"lw": 1.2}
            ax.plot(steps, _smooth(y, 50), label="total" if key == "loss" else key, **style)
        if steps.max() / max(steps.min(), 1) > 100:
            ax.set_xscale("log")
        ax.set_title(f"{method_name(m)} ({len(rows)} logged steps)", color=method_colour(m))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("Pretraining loss (moving average)", y=1.0)
    fig.tight_layout()
    return save_figure(fig, path)


def _bbox_crop(mask: np.ndarray, margin: float = 0.6, minimum: int = 24) -> tuple[slice, slice]:
    """2D crop around ``mask`` (whole image when empty), padded by ``margin`` × its size."""
    if not mask.any():
        return slice(None), slice(None)
    out = []
    for axis in range(2):
        idx = np.nonzero(mask.any(axis=1 - axis))[0]
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        pad = max(int((hi - lo) * margin), (minimum - (hi - lo)) // 2, 2)
        out.append(slice(max(0, lo - pad), min(mask.shape[axis], hi + pad)))
    return out[0], out[1]


def _palette(labels: LabelSet) -> tuple[list[tuple[float, ...]], list[tuple[str, str]]]:
    """Overlay colours per class value (background transparent) and the legend's (name,
    colour) per foreground label: green organ and red tumour in the organ + tumour view, a
    qualitative palette otherwise."""
    from matplotlib import colormaps

    if labels.view == ORGAN_TUMOUR_VIEW:
        return ([(0, 0, 0, 0), (0.1, 0.8, 0.2, 0.45), (1.0, 0.15, 0.1, 0.6)],
                [("organ", "#22dd44"), ("tumour", "#ff3322")])
    tab: Any = colormaps["tab10"]
    colours: list[tuple[float, ...]] = [(0, 0, 0, 0)]
    legend = []
    for c in range(1, labels.num_classes):
        rgb = tuple(float(x) for x in tab((c - 1) % 10)[:3])
        colours.append((*rgb, 0.55))
        name = next((n for n, vs in labels.labels if vs == (c,)), f"label {c}")
        legend.append((name, "#{:02x}{:02x}{:02x}".format(*(round(255 * x) for x in rgb))))
    return colours, legend


def overlay_structures(labels: LabelSet) -> list[Structure]:
    """The structures an overlay's titles give the Dice of: organ and tumour in the organ +
    tumour view, every structure otherwise."""
    if labels.view == ORGAN_TUMOUR_VIEW:
        return [s for s in labels.structures if s.key in ("organ", "tumour")]
    return list(labels.structures)


def plot_overlays(image: np.ndarray, label: np.ndarray, preds: dict[str, np.ndarray],
                  dice: dict[str, Sequence[float]], path: Path, title: str,
                  labels: LabelSet = ORGAN_TUMOUR) -> Path:
    """Paper Fig. 2: an axial slice (the one with the most foreground voxels), ground truth
    first, then each method's prediction as translucent masks (a colour per label) with the
    ground truth's outlines.

    Args:
        image: ``(X, Y, Z)`` intensities in [0, 1]; label/preds ``(X, Y, Z)`` uint8 label values.
        dice: per method the Dice of each of :func:`overlay_structures` (organ, tumour in the
            organ + tumour view) on this case (fractions; NaN allowed).
        labels: the dataset's labels (colours, legend, outlines).
    """
    plt = pyplot()
    z = int(np.argmax((label > 0).sum(axis=(0, 1))))

    def axial(vol: np.ndarray) -> np.ndarray:
        # (X, Y) → rows = Y (anterior up with origin="lower"), columns = X flipped: radiological
        plane: np.ndarray = np.asarray(vol[:, :, z]).T[:, ::-1]
        return plane

    img, gt = axial(image).astype(np.float32), axial(label)
    rows_sl, cols_sl = _bbox_crop(gt > 0)
    panels = [("Ground truth", gt)] + [(method_name(m), axial(p)) for m, p in preds.items()]
    colours, legend = _palette(labels)
    cmap = ListedColormap(colours)
    top = len(colours) - 1
    # outlines: the whole organ and the tumour (nested) in the organ + tumour view, else each label
    nested = labels.view == ORGAN_TUMOUR_VIEW
    shown = overlay_structures(labels)
    cols = min(4, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols, 3.8 * nrows + 0.6),
                             squeeze=False, layout="constrained")
    gt_crop = gt[rows_sl, cols_sl]
    for i, (ax, (name, seg)) in enumerate(zip(axes.flat, panels, strict=False)):
        ax.imshow(img[rows_sl, cols_sl], cmap="gray", origin="lower", vmin=0, vmax=1)
        ax.imshow(seg[rows_sl, cols_sl], cmap=cmap, vmin=0, vmax=top, origin="lower",
                  interpolation="nearest")
        if i > 0:  # the ground truth's outline on every prediction, for comparison
            for lab in range(1, top + 1):
                mask = gt_crop >= lab if nested else gt_crop == lab
                if mask.any():
                    ax.contour(mask.astype(float), levels=[0.5], colors="yellow",
                               linewidths=0.9, linestyles="--", origin="lower")
        key = next((m for m in preds if method_name(m) == name), None)
        if key is not None and key in dice:
            parts = [f"{s.key if nested else s.name} "
                     f"{f'{100 * v:.0f}' if np.isfinite(v) else 'n/a'} %"
                     for s, v in zip(shown, dice[key], strict=False)]
            if nested:
                name = f"{name}\nDice " + ", ".join(parts)
            else:  # several structures: their Dice in a box on the panel, two to a line
                ax.text(0.5, 0.02, "Dice " + "\n".join(", ".join(parts[j:j + 2])
                                                        for j in range(0, len(parts), 2)),
                        transform=ax.transAxes, ha="center", va="bottom", fontsize=8,
                        bbox={"facecolor": "white", "alpha": 0.75, "edgecolor": "none"})
        elif i == 0:
            name = f"{name}\n(axial slice z={z})"
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    alpha = 0.6 if nested else 0.55
    handles = [Patch(color=c, alpha=alpha if n != "tumour" else 0.7, label=n)
               for n, c in legend]
    fig.legend(handles=[*handles,
                        Line2D([], [], color="yellow", ls="--", label="ground-truth outline")],
               loc="outside lower center", ncol=len(handles) + 1, frameon=False)
    fig.suptitle(title)
    return save_figure(fig, path)


def _overlay_from_experiment(exp: Path, cfg: ExperimentConfig, rows: Sequence[dict[str, Any]],
                             path: Path, labels: LabelSet) -> Path | None:
    fraction = cfg.overlay_fraction or min(cfg.fractions)
    seed = cfg.seeds[0]
    cache = Cache(cfg.cache)
    preds_dirs = {m: eval_dir(cell_dir(exp, m, fraction, seed), cfg.split) / PREDICTIONS
                  for m in cfg.methods}
    candidates = [c for c in cache.split().part(cfg.split)
                  if all((d / f"{c}.npy").is_file() for d in preds_dirs.values())]
    if cfg.overlay_case is not None:
        candidates = [c for c in candidates if c == cfg.overlay_case]
    labelled = [(c, cache.label(c)) for c in candidates]
    labelled = [(c, lab) for c, lab in labelled if lab is not None]
    if not labelled:
        return None
    case, label = max(labelled, key=lambda cl: int((np.asarray(cl[1]) > 0).sum()))
    preds = {m: np.load(d / f"{case}.npy") for m, d in preds_dirs.items()}
    dice: dict[str, Sequence[float]] = {}
    for r in rows:
        if r["case"] == case and r["fraction"] == fraction and r["seed"] == seed:
            dice[r["method"]] = [r[f"dice_{s.key}"] for s in overlay_structures(labels)]
    n_train = next((r["n_train_cases"] for r in rows if r["fraction"] == fraction), "?")
    title = f"Test case {case}: {fraction} % labels (n={n_train}), seed {seed}"
    return plot_overlays(np.asarray(cache.image(case), dtype=np.float32), np.asarray(label),
                         preds, dice, path, title, labels)


def write_figures(exp: Path, cfg: ExperimentConfig, rows: Sequence[dict[str, Any]],
                  labels: LabelSet | None = None) -> dict[str, Path]:
    """All experiment figures under ``exp/figures/`` for the structures of ``labels`` (default:
    the cache's); missing inputs skip a figure."""
    labels = labels or Cache(cfg.cache).require_labels()
    out: dict[str, Path] = {}
    figdir = exp / FIGURES
    if rows:
        out["dice_vs_fraction"] = plot_dice_vs_fraction(rows, cfg.methods, cfg.fractions,
                                                        figdir / "dice_vs_fraction.png",
                                                        cfg.absent, cfg.sd_ddof,
                                                        labels.structures)
    runs = {m: pretrain_dir(exp, m) for m in cfg.methods if m != BASELINE}
    loss = plot_pretrain_losses(runs, figdir / "pretrain_loss.png")
    if loss:
        out["pretrain_loss"] = loss
    overlay = _overlay_from_experiment(exp, cfg, rows, figdir / "overlays.png", labels)
    if overlay:
        out["overlays"] = overlay
    return out
