"""What PiM learned, without labels (paper Fig. 3 A–D, docs/method.md §7).

For one volume, every patch on a regular grid (stride p/2 by default) is embedded with the
pretrained pretext module: the PiM embedding ``f(descriptor(encoder(patch)))`` (unit vectors,
docs/method.md §4) when the run has head f, else the global-average-pooled deepest encoder feature
(stated in the figure titles). Two figures:

* ``embedding_similarity.png`` — cosine similarity of a reference patch's embedding to every
  grid patch, over axial / coronal / sagittal slices through the reference (Fig. 3 A–C), and a
  2D PCA of all patch embeddings coloured by the normalised centre distance to the reference
  (Fig. 3 D). A PiM that learned overlap gives a distance-map-like heatmap.
* ``overlap_check.png`` — predicted overlap (cosine of two embeddings) against the true overlap
  ``S`` for patch pairs drawn by the reference sampler, with Pearson's r: PiM's training target.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.patches import Rectangle
from torch import Tensor, nn

from pimpic.data.cache import Cache
from pimpic.errors import PimpicError
from pimpic.io import read_json
from pimpic.patch import patch_text
from pimpic.paths import FIGURES, RUN_INFO
from pimpic.pretraining.engine import load_pretext_module
from pimpic.pretraining.geometry import overlap_matrix
from pimpic.pretraining.losses import pim_descriptor
from pimpic.pretraining.samplers.overlap import reference_boxes
from pimpic.protocol.plotting import pyplot, save_figure
from pimpic.training.device import resolve_device


def _embedder(module: nn.Module) -> tuple[Any, str]:
    """``fn(patches (B, 1, p, p, p)) -> (B, d)`` unit embeddings, and what they are."""
    encoder: nn.Module = module.encoder  # type: ignore[assignment]
    head: nn.Module | None = getattr(module, "head_f", None)
    if head is not None:
        return (lambda x: head(pim_descriptor(encoder(x)))), "PiM embedding (head f)"

    def gap(x: Tensor) -> Tensor:
        return F.normalize(encoder(x)[-1].mean(dim=(2, 3, 4)), dim=-1)

    return gap, "pooled encoder feature (no PiM head in this run)"


@torch.no_grad()
def embed_boxes(fn: Any, image: np.ndarray, boxes: np.ndarray, device: torch.device,
                batch: int = 32) -> Tensor:
    """Embeddings ``(N, d)`` (float32, CPU) of the patches ``boxes (N, 2, 3)`` of ``image``."""
    out = []
    for i in range(0, len(boxes), batch):
        chunk = np.stack([image[b[0, 0]:b[1, 0], b[0, 1]:b[1, 1], b[0, 2]:b[1, 2]]
                          for b in boxes[i:i + batch]])
        x = torch.from_numpy(chunk[:, None]).float().to(device)
        out.append(fn(x).float().cpu())
    return torch.cat(out)


def grid_starts(dim: int, patch: int, stride: int) -> np.ndarray:
    """Patch starts along one axis: every ``stride`` voxels, the last flush with the end."""
    starts = list(range(0, dim - patch + 1, stride))
    if starts[-1] != dim - patch:
        starts.append(dim - patch)
    return np.array(starts)


def _pad_to(image: np.ndarray, patch: int, value: float) -> np.ndarray:
    pad = [(0, max(0, patch - s)) for s in image.shape]
    return np.pad(image, pad, constant_values=value) if any(p[1] for p in pad) else image


def embedding_figures(
    run: str | Path,
    case: str,
    *,
    cache: str | Path | None = None,
    out: str | Path | None = None,
    ref: tuple[int, int, int] | None = None,
    stride: int | None = None,
    n_pairs: int = 256,
    device: str = "auto",
    seed: int = 0,
) -> dict[str, Path]:
    """Write the two embedding figures for ``case`` of the run's cache; returns their paths.

    Args:
        run: a finished pretraining run folder (``method.safetensors`` + ``config.yaml``).
        case: case id in the cache.
        cache: cache folder (default: the one in the run's ``run.json``).
        out: output folder (default ``run/figures``).
        ref: reference patch centre ``(x, y, z)`` in voxels (default: the volume centre).
        stride: grid stride in voxels (default ``p // 2``).
        n_pairs: patch pairs for the overlap check.
    """
    run = Path(run)
    module, cfg = load_pretext_module(run)
    if cache is None:
        info = run / RUN_INFO
        cache = read_json(info).get("cache") if info.is_file() else None
        if not cache:
            raise PimpicError(f"{run}: run.json names no cache; pass --cache")
    c = Cache(cache)
    if case not in c.case_ids:
        raise PimpicError(f"{c.root}: case {case!r} is not in the cache")
    if not isinstance(cfg.patch_size, int):
        raise PimpicError(f"{run}: patch_size {patch_text(cfg.patch_size)} is a box; the "
                          "embedding figures tile the volume with cubes (pretrain with one "
                          "edge to draw them)")
    p = cfg.patch_size
    image = _pad_to(np.asarray(c.image(case), dtype=np.float32), p, cfg.sampler.pad_value)
    dev = resolve_device(device)
    module.to(dev)
    fn, what = _embedder(module)
    stride = stride or max(1, p // 2)
    if stride < 1:
        raise PimpicError(f"--stride {stride}: must be ≥ 1")

    axes = [grid_starts(s, p, stride) for s in image.shape]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    boxes = np.stack([grid, grid + p], axis=1)
    emb = embed_boxes(fn, image, boxes, dev)  # (G, d)
    centre = np.array(ref if ref is not None else [s // 2 for s in image.shape])
    if np.any(centre < 0) or np.any(centre >= np.array(image.shape)):
        raise PimpicError(f"--ref {tuple(int(v) for v in centre)}: outside the volume "
                          f"{image.shape}")
    # the reference is the grid patch whose centre is nearest the requested point
    centres = grid + p / 2
    r = int(np.argmin(((centres - centre) ** 2).sum(1)))
    sim = (emb @ emb[r]).numpy().reshape(*[len(a) for a in axes])
    dist = np.sqrt(((centres - centres[r]) ** 2).sum(1))
    dist = dist / max(dist.max(), 1e-9)
    pca = _pca2(emb)

    rng = np.random.default_rng(seed)
    pred: list[np.ndarray] = []
    true: list[np.ndarray] = []
    while sum(int(v.size) for v in pred) < n_pairs:
        # ≥ 16 patches per draw: more pairs per forward pass, same overlap distribution
        bx = reference_boxes(image.shape, p, max(cfg.patches, 16), rng,
                             margin=cfg.sampler.overlap_margin)
        e = embed_boxes(fn, image, bx, dev)
        iu = np.triu_indices(len(bx), k=1)
        pred.append((e @ e.T).numpy()[iu])
        true.append(overlap_matrix(bx, p).numpy()[iu])
    pc, tc = np.concatenate(pred)[:n_pairs], np.concatenate(true)[:n_pairs]

    out_dir = Path(out) if out is not None else run / FIGURES
    title = f"{cfg.method} pretraining ({run.name}), case {case}: {what}"
    return {
        "similarity": _plot_similarity(image, sim, axes, grid[r], p, stride, pca, dist, title,
                                       out_dir / "embedding_similarity.png"),
        "overlap": _plot_overlap(pc, tc, title, out_dir / "overlap_check.png"),
    }


def _pca2(emb: Tensor) -> np.ndarray:
    """First two principal components ``(G, 2)`` of the embeddings (SVD of centred data)."""
    x = emb - emb.mean(dim=0, keepdim=True)
    if x.shape[0] < 2:
        return np.zeros((x.shape[0], 2))
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    comps = x @ v[:2].T
    return F.pad(comps, (0, 2 - comps.shape[1])).numpy()


#: (horizontal axis, vertical axis, fixed axis, name, flip horizontal for radiological view)
VIEWS = ((0, 1, 2, "axial", True), (0, 2, 1, "coronal", True), (1, 2, 0, "sagittal", False))


def _plot_similarity(image: np.ndarray, sim: np.ndarray, axes: list[np.ndarray],
                     ref_start: np.ndarray, p: int, stride: int, pca: np.ndarray,
                     dist: np.ndarray, title: str, path: Path) -> Path:
    plt = pyplot()
    fig, axs = plt.subplots(1, 4, figsize=(18, 4.8), layout="constrained")
    ref_idx = [int(np.searchsorted(a, s)) for a, s in zip(axes, ref_start, strict=True)]
    ref_centre = ref_start + p / 2
    im = None
    # the colour range is the observed one: similarities of a trained PiM rarely reach -1
    lo, hi = float(sim.min()), float(sim.max())
    for ax, (h, v, fixed, name, flip) in zip(axs[:3], VIEWS, strict=False):
        sl = np.take(image, int(ref_centre[fixed]), axis=fixed)  # axes (h, v) in order
        sl = sl if h < v else sl.T
        ax.imshow(sl.T, cmap="gray", origin="lower", vmin=0, vmax=1,
                  extent=(-0.5, image.shape[h] - 0.5, -0.5, image.shape[v] - 0.5))
        hm = np.take(sim, ref_idx[fixed], axis=fixed)
        hm = hm if h < v else hm.T
        ch, cv = axes[h] + p / 2, axes[v] + p / 2
        half = stride / 2
        im = ax.imshow(hm.T, cmap="turbo", origin="lower", vmin=lo, vmax=max(hi, lo + 1e-6),
                       alpha=0.55,
                       interpolation="nearest",
                       extent=(ch[0] - half, ch[-1] + half, cv[0] - half, cv[-1] + half))
        ax.add_patch(Rectangle((ref_start[h] - 0.5, ref_start[v] - 0.5), p, p, fill=False,
                               ec="white", lw=1.5, ls="--"))
        ax.set_xlim(-0.5, image.shape[h] - 0.5)
        ax.set_ylim(-0.5, image.shape[v] - 0.5)
        if flip:
            ax.invert_xaxis()
        ax.set_title(f"{name} slice through the reference")
        ax.set_xlabel("xyz"[h] + " (voxels)")
        ax.set_ylabel("xyz"[v] + " (voxels)")
    fig.colorbar(im, ax=axs[:3], shrink=0.8,
                 label="cosine similarity to the reference patch\n(one cell per patch centre)")
    sc = axs[3].scatter(pca[:, 0], pca[:, 1], c=dist, cmap="viridis", s=14)
    r = int(np.argmin(dist))
    axs[3].scatter(pca[r, 0], pca[r, 1], marker="*", s=220, c="red", ec="k", label="reference")
    axs[3].set_title(f"PCA of {len(pca)} patch embeddings")
    axs[3].set_xlabel("PC 1")
    axs[3].set_ylabel("PC 2")
    axs[3].legend(loc="best", fontsize=9)
    fig.colorbar(sc, ax=axs[3], label="centre distance to reference (normalised)")
    fig.suptitle(f"{title}\nreference patch (dashed) at voxel {tuple(int(v) for v in ref_start)}, "
                 f"{p}³ patches every {stride} voxels")
    return save_figure(fig, path)


def _plot_overlap(pred: np.ndarray, true: np.ndarray, title: str, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 5.2), layout="constrained")
    ok = np.isfinite(pred) & np.isfinite(true)
    r = (float(np.corrcoef(pred[ok], true[ok])[0, 1])
         if ok.sum() > 2 and pred[ok].std() > 0 and true[ok].std() > 0 else math.nan)
    ax.scatter(true, pred, s=10, alpha=0.5)
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect: cosine = overlap")
    ax.set_xlabel("true overlap S (intersection / patch volume)")
    ax.set_ylabel("predicted overlap (cosine of embeddings)")
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(min(-0.05, float(np.nanmin(pred)) - 0.05) if len(pred) else -0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    rtxt = "n/a" if math.isnan(r) else f"{r:.2f}"
    ax.set_title(f"{len(pred)} sampled pairs, Pearson r = {rtxt}\n{title}", fontsize=9)
    return save_figure(fig, path)
