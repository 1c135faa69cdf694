"""Tumours of the synthetic cohort: size, extent and attenuation by kind and contrast phase.

A tumour is 2–4 overlapping ellipsoidal lobes with a rough surface, centred on a random voxel
of the target organ (a realistic kidney tumour: on a random point of the kidney's surface,
pushed up to 0.4 radii outwards, so a large mass is partly exophytic, as many renal cell
carcinomas are, and spares most of its kidney). In the ``low`` cohort it is small (radius
0.05–0.09 L in the pancreas, 0.06–0.13 L in the kidney, L ≈ 80 mm), confined to the organ,
hypodense in the pancreas and solid/necrotic/cystic in the kidney. In the ``realistic`` cohort
(:data:`REALISTIC`) it is drawn log-uniformly over a wider, larger range, may grow out of the
organ into the surrounding fat (an expansile or exophytic mass), and its attenuation follows
its kind and the case's phase:

* pancreas — ductal adenocarcinoma (65 %: enhances less than the parenchyma, so hypodense
  with contrast and nearly isodense without), neuroendocrine tumour (20 %: hyperenhancing),
  cystic neoplasm (15 %: 8–22 HU with an enhancing rim);
* kidney — clear-cell carcinoma (50 %: strongly, heterogeneously enhancing, half with a
  necrotic core), papillary carcinoma (20 %: hypoenhancing), cyst-like (20 %), fat-containing
  angiomyolipoma (10 %).

A realistic tumour whose mean attenuation ends up within 80 HU of its host organ's (an
adenocarcinoma without contrast, say) is pushed that far away from it: nearly isodense tumours
exist, but a from-scratch model on a CPU's budget never learns them, and a benchmark whose
tumour Dice is 0 for every method measures nothing.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from pimpic.data import anatomy as A
from pimpic.data.synthetic_contrast import Contrast, enhance


@dataclasses.dataclass(frozen=True)
class TumourStyle:
    """How tumours are drawn in one cohort preset."""

    #: fraction of cases with a tumour
    rate: float
    #: radius range (L units) per task
    pancreas_radius: tuple[float, float]
    kidney_radius: tuple[float, float]
    #: radius drawn log-uniformly (more small than large tumours) instead of uniformly
    log_radius: bool
    #: the tumour may extend from the organ into the surrounding fat
    bulge: bool
    #: attenuation by kind and phase (False: the ``low`` cohort's formulas)
    by_kind: bool
    #: least |mean tumour HU − host organ HU|: a tumour closer to its host in this phase (an
    #: adenocarcinoma without contrast, say) is moved away from it by the difference; 0 = off
    min_contrast: float = 0.0
    #: a kidney tumour is centred on the kidney's surface, pushed outwards by this share of its
    #: radius (drawn uniformly in the range; negative = inwards), so a large mass is partly
    #: exophytic and spares most of its kidney; None: centred on any organ voxel
    kidney_exophytic: tuple[float, float] | None = None


LOW = TumourStyle(rate=0.85, pancreas_radius=(0.05, 0.09), kidney_radius=(0.06, 0.13),
                  log_radius=False, bulge=False, by_kind=False)
# kidney tumours of a surgical series (log-uniform radius 0.25–0.5 L, partly exophytic, at least
# 80 HU from their kidney): the first variant tried with which a from-scratch width-4 U-Net
# learns the tumour at the demo's budget and the organ still needs many labels
# (scripts/cohort_check.py, Random + Aug only, issue #10 §1; docs/results/cpu-synthetic.md lists
# every variant tried). Smaller tumours (0.12–0.26 L, 0.2–0.45 L) were not learnt; centred
# anywhere in the kidney, tumours this large swallow it in this half-adult-scale body and the
# organ label becomes a rim; in every case (no tumour-free kidney) the network calls the whole
# kidney tumour
REALISTIC = TumourStyle(rate=0.85, pancreas_radius=(0.12, 0.24), kidney_radius=(0.25, 0.5),
                        log_radius=True, bulge=True, by_kind=True, min_contrast=80.0,
                        kidney_exophytic=(-0.1, 0.4))


def paint_tumour(g: A.Grid, rng: np.random.Generator, organ: np.ndarray, task: str,
                 contrast: Contrast, style: TumourStyle) -> None:
    """Paint a lobulated tumour (2–4 overlapping lobes) centred inside ``organ`` (X, Y, Z)."""
    idx = np.flatnonzero(organ)
    if idx.size == 0:
        return
    lo, hi = style.pancreas_radius if task == "pancreas" else style.kidney_radius
    push = style.kidney_exophytic if task == "kidney" else None
    if push is None:
        centre_idx = np.unravel_index(rng.choice(idx), organ.shape)
        centre = np.array([float(c[centre_idx]) for c in g.coords])
    if style.log_radius:
        radius = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    else:
        radius = rng.uniform(lo, hi)
    if push is not None:
        centre = _surface_centre(g, rng, organ, radius, push)
    sl = g.box(centre - 2 * radius, centre + 2 * radius, margin=0)
    q = np.full(tuple(s.stop - s.start for s in sl), np.inf, np.float32)
    for lobe in range(int(rng.integers(2, 5))):
        c = centre + (rng.normal(0, 0.35 * radius, 3) if lobe else 0)
        r = radius * rng.uniform(0.55, 0.95, 3)
        lobe_box, ql = g.ellipsoid(c, r, rot=float(rng.uniform(0, np.pi)), rough=0.0)
        np.minimum(q, _align(ql, lobe_box, sl), out=q)
    q = q + 0.12 * g.noise[int(rng.integers(0, 3))][sl]
    host = organ[sl]
    if style.bulge:
        host = host | np.isin(g.tissue[sl], (A.VFAT, A.SINUS))
    inside = (q < 1) & host
    fine = g.fine[sl]
    hu = (_hu_by_kind if style.by_kind else _hu_low)(rng, task, contrast, q, fine)
    if style.min_contrast and inside.any():
        hu = np.broadcast_to(hu, inside.shape)
        delta = float(hu[inside].mean()) - contrast(task if task == "pancreas" else "kidney")
        if abs(delta) < style.min_contrast:
            hu = hu + (1.0 if delta > 0 else -1.0) * (style.min_contrast - abs(delta))
    g.paint(sl, inside, A.TUMOUR, np.broadcast_to(hu, inside.shape).astype(np.float32))


def _surface_centre(g: A.Grid, rng: np.random.Generator, organ: np.ndarray, radius: float,
                    push: tuple[float, float]) -> np.ndarray:
    """A random surface voxel of ``organ`` moved outwards by ``U(push) × radius`` (world, L).

    Outwards = away from the centroid of the connected part of the organ the voxel lies on
    (a kidney, not the pair's midpoint).
    """
    parts, _ = ndimage.label(organ)
    surface = np.flatnonzero(organ & ~ndimage.binary_erosion(organ))
    at = np.unravel_index(rng.choice(surface), organ.shape)
    own = np.nonzero(parts == parts[at])
    point = np.array([float(c[at]) for c in g.coords])
    centroid = np.array([float(np.broadcast_to(c, organ.shape)[own].mean()) for c in g.coords])
    out = point - centroid
    out /= max(float(np.linalg.norm(out)), 1e-6)
    return np.asarray(point + float(rng.uniform(*push)) * radius * out)


def _hu_low(rng: np.random.Generator, task: str, contrast: Contrast, q: np.ndarray,
            fine: np.ndarray) -> np.ndarray:
    e = contrast.e
    if task == "pancreas":  # ductal adenocarcinoma: hypodense, mildly heterogeneous
        return contrast("pancreas") - rng.uniform(35, 65) + 12 * fine
    kind = rng.uniform()
    if kind < 0.2:  # cystic
        return 15 + 5 * fine
    # solid, heterogeneous, less enhancing than cortex, sometimes necrotic
    hu = enhance(rng.uniform(95, 140), e) + 25 * fine
    if kind > 0.6:
        hu = np.where(q < 0.55, 20.0 + 8 * fine, hu)
    return hu


def _hu_by_kind(rng: np.random.Generator, task: str, contrast: Contrast, q: np.ndarray,
                fine: np.ndarray) -> np.ndarray:
    """Tumour HU (box-shaped) by kind; enhancement relative to the host organ's in this phase."""
    kind = rng.uniform()
    cyst = 8 + rng.uniform(0, 14) + 4 * fine
    if task == "pancreas":
        native, gain = contrast.native("pancreas"), contrast.e * contrast.enhancement("pancreas")
        if kind < 0.65:  # adenocarcinoma: desmoplastic, poorly vascularised
            return native - rng.uniform(0, 8) + gain * rng.uniform(0.25, 0.55) + 12 * fine
        if kind < 0.85:  # neuroendocrine: hypervascular
            return native + gain * rng.uniform(1.3, 1.8) + 10 * fine
        return np.where(q < 0.8, cyst, native + gain)  # cystic neoplasm with an enhancing rim
    native, gain = contrast.native("kidney"), contrast.e * contrast.enhancement("kidney")
    if kind < 0.5:  # clear-cell carcinoma: hypervascular, heterogeneous, often necrotic
        hu = native + 3 + gain * rng.uniform(0.5, 0.9) + 30 * fine
        return np.where(q < 0.5, 20.0 + 8 * fine, hu) if rng.uniform() < 0.5 else hu
    if kind < 0.7:  # papillary: hypovascular
        return native + 6 + gain * rng.uniform(0.15, 0.35) + 10 * fine
    if kind < 0.9:  # cyst-like, thin enhancing wall
        return np.where(q < 0.85, cyst, native + gain)
    return np.where(fine > -0.2, -60.0 + 20 * fine, native + 0.6 * gain)  # angiomyolipoma


def _align(q: np.ndarray, src: A.Box, dst: A.Box) -> np.ndarray:
    """Re-box ``q`` (computed over ``src``) onto ``dst``; voxels outside ``src`` are ∞."""
    out = np.full(tuple(s.stop - s.start for s in dst), np.inf, np.float32)
    lo = [max(a.start, b.start) for a, b in zip(src, dst, strict=True)]
    hi = [min(a.stop, b.stop) for a, b in zip(src, dst, strict=True)]
    if any(h <= low for low, h in zip(lo, hi, strict=True)):
        return out
    o = tuple(slice(low - d.start, h - d.start) for low, h, d in zip(lo, hi, dst, strict=True))
    i = tuple(slice(low - s.start, h - s.start) for low, h, s in zip(lo, hi, src, strict=True))
    out[o] = q[i]
    return out
