"""Procedural abdominal anatomy on a voxel grid (used by :mod:`pimpic.data.synthetic`).

Positions are in units of ``L``, the body's lateral half-width, in RAS world axes: ``u`` toward
the patient's right, ``v`` anterior, ``t`` superior, origin at the centre of the field of view.
Every structure is an implicit shape (ellipsoid, cylinder along ``t``, or a tube around a
polyline) whose surface is perturbed by smooth random fields, and the whole body is warped by
a smooth random displacement, so no two cases share a shape. Structures are painted in order
(later ones win) into a tissue-id map and an HU map, each evaluated only inside its bounding
box so a default case stays near a second.

Between-patient variation beyond those random fields (habitus, pose, organ placement, oral
contrast) comes in a :class:`Patient`; its defaults are the ``low`` cohort. HU of enhancing
tissue comes from the case's :class:`~pimpic.data.synthetic_contrast.Contrast`.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pimpic.data.synthetic_contrast import Contrast

# tissue ids of the painted map (label volume is derived from these)
(AIR, FAT, MUSCLE, VFAT, BONE, MARROW, DISC, CSF, LUNG, LIVER, GALL, SPLEEN, STOMACH_WALL,
 LUMEN, GAS, KIDNEY, MEDULLA, SINUS, AORTA, VEIN, PANCREAS, BOWEL_WALL, STOOL, TUMOUR) = range(24)

Box = tuple[slice, slice, slice]


def smooth_field(rng: np.random.Generator, shape: Sequence[int],
                 cells: Sequence[int]) -> np.ndarray:
    """A smooth random field of unit standard deviation, ``shape`` float32.

    A ``cells``-sized Gaussian grid is interpolated with Gaussian radial weights, separably
    (three small matrix products), which is far cheaper than ``scipy.ndimage.zoom``.
    """
    field = rng.standard_normal(tuple(cells)).astype(np.float32)
    w = []
    for n, c in zip(shape, cells, strict=True):
        x = np.linspace(0, c - 1, n, dtype=np.float32)[:, None]
        wi = np.exp(-(((x - np.arange(c, dtype=np.float32)) / 0.8) ** 2))
        w.append(wi / wi.sum(1, keepdims=True))
    # contract the small axes first; the last product writes the full grid contiguously
    field = np.tensordot(w[0], field, axes=1)  # (X, c1, c2)
    field = np.matmul(w[1], field) @ w[2].T  # (X, Y, c2) → (X, Y, Z)
    normalised: np.ndarray = (field - field.mean()) / (field.std() + 1e-6)
    return normalised


class Grid:
    """World coordinates of a voxel grid, the smooth random fields and the painted maps.

    Args:
        axes: 1D coordinates (in L units) of the voxel centres along each array axis.
        rng: the case's random generator.
        warp: amplitude of the smooth random displacement (L units).
        pose: the patient's placement in the scanner, ``(shift, yaw, pitch)``: the patient's
            origin sits at ``shift`` (L units, scanner axes), turned by ``yaw`` about the
            superior axis and ``pitch`` about the left-right axis (radians). None: centred.
    """

    def __init__(self, axes: Sequence[np.ndarray], rng: np.random.Generator, warp: float = 0.03,
                 pose: tuple[Sequence[float], float, float] | None = None):
        self.axes = [np.asarray(a, np.float32) for a in axes]
        shape = tuple(len(a) for a in self.axes)
        self.shape = shape
        self.full: Box = (slice(0, shape[0]), slice(0, shape[1]), slice(0, shape[2]))
        coarse = [max(2, min(n, c)) for n, c in zip(shape, (6, 6, 4), strict=True)]
        fine = [max(2, min(n, c)) for n, c in zip(shape, (22, 22, 10), strict=True)]
        self.noise = [smooth_field(rng, shape, coarse) for _ in range(3)]
        self.fine = smooth_field(rng, shape, fine)
        grids = np.meshgrid(*self.axes, indexing="ij", sparse=True)
        # box() pads by the warp (≈ 2.6 SD of it) so no warped surface is cut by its box
        self.margin = max(0.08, 2.6 * warp)
        self._pose: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
        if pose is not None:
            rot = _rotation(pose[1], pose[2])
            shift = np.asarray(pose[0], np.float64)
            d = [g - np.float32(s) for g, s in zip(grids, shift, strict=True)]
            grids = tuple(sum(np.float32(rot[j, i]) * d[j] for j in range(3)) for i in range(3))
            extent = np.array([[float(g.min()), float(g.max())] for g in grids])
            self._pose = rot, shift, extent[:, 0], extent[:, 1]
        self.coords = [g + warp * self.noise[i] for i, g in enumerate(grids)]
        self.hu = np.full(shape, -1000.0, np.float32)
        self.tissue = np.zeros(shape, np.uint8)

    def box(self, lo: Sequence[float] | np.ndarray, hi: Sequence[float] | np.ndarray,
            margin: float | None = None) -> Box:
        """Index slices covering the world box ``[lo, hi]`` (plus a margin for the warp)."""
        margin = self.margin if margin is None else margin
        if self._pose is not None:  # the scanner-axes box around the posed patient box
            rot, shift, ext_lo, ext_hi = self._pose
            lo = np.clip(lo, ext_lo - margin, ext_hi + margin)
            hi = np.clip(hi, ext_lo - margin, ext_hi + margin)
            corners = np.array(list(itertools.product(*zip(lo, hi, strict=True))))
            scanner = corners @ rot.T + shift
            lo, hi = scanner.min(0), scanner.max(0)
        out = []
        for a, low, high in zip(self.axes, lo, hi, strict=True):
            idx = np.flatnonzero((a >= low - margin) & (a <= high + margin))
            out.append(slice(int(idx[0]), int(idx[-1]) + 1) if idx.size else slice(0, 0))
        return out[0], out[1], out[2]

    def at(self, sl: Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World coordinates (u, v, t) inside ``sl``, each of the box's full shape."""
        u, v, t = (c[sl] for c in self.coords)
        shape = tuple(s.stop - s.start for s in sl)
        return (np.broadcast_to(u, shape), np.broadcast_to(v, shape), np.broadcast_to(t, shape))

    def ellipsoid(self, c: Sequence[float] | np.ndarray, r: Sequence[float] | np.ndarray,
                  rot: float = 0.0,
                  rough: float = 0.05, field: int = 0) -> tuple[Box, np.ndarray]:
        """``(box, q)``: the normalised radius ``q`` (< 1 inside) of a rotated ellipsoid.

        ``rot`` turns the ellipsoid about the superior axis (radians); ``rough`` scales the
        surface perturbation.
        """
        ext = max(r[0], r[1]) * 1.2
        sl = self.box([c[0] - ext, c[1] - ext, c[2] - r[2] * 1.2],
                      [c[0] + ext, c[1] + ext, c[2] + r[2] * 1.2])
        u, v, t = self.at(sl)
        du, dv = u - c[0], v - c[1]
        cr, sr = np.cos(rot), np.sin(rot)
        q = np.sqrt(((cr * du + sr * dv) / r[0]) ** 2 + ((-sr * du + cr * dv) / r[1]) ** 2
                    + ((t - c[2]) / r[2]) ** 2)
        return sl, q + rough * self.noise[field][sl]

    def cylinder(self, c: Sequence[float], r: Sequence[float], t_range: Sequence[float],
                 rough: float = 0.03) -> tuple[Box, np.ndarray]:
        """``(box, q)`` of an elliptic cylinder along the superior axis, limited to ``t_range``."""
        sl = self.box([c[0] - r[0], c[1] - r[1], t_range[0]],
                      [c[0] + r[0], c[1] + r[1], t_range[1]])
        u, v, t = self.at(sl)
        q = np.sqrt(((u - c[0]) / r[0]) ** 2 + ((v - c[1]) / r[1]) ** 2)
        q = q + rough * self.noise[2][sl]
        return sl, np.where((t >= t_range[0]) & (t <= t_range[1]), q, np.inf)

    def tube(self, points: np.ndarray, radii: np.ndarray, rough: float = 0.05,
             field: int = 1) -> tuple[Box, np.ndarray]:
        """``(box, q)`` of a tube around a polyline, ``points`` (K, 3), ``radii`` (K,).

        ``q = min_k |p − c_k| / r_k`` (a union of spheres), so the polyline must be sampled
        finer than the radius; :func:`curve` does that.
        """
        ext = float(radii.max()) * 1.3
        sl = self.box(points.min(0) - ext, points.max(0) + ext)
        q = np.full(tuple(b.stop - b.start for b in sl), np.inf, np.float32)
        for p, r in zip(points, radii, strict=True):
            # each sphere only touches its own small neighbourhood of the tube's box
            local = self.box(p - 1.3 * r, p + 1.3 * r)
            sub = tuple(slice(max(a.start, b.start) - b.start, min(a.stop, b.stop) - b.start)
                        for a, b in zip(local, sl, strict=True))
            if any(x.stop <= x.start for x in sub):
                continue
            u, v, t = self.at(tuple(slice(x.start + b.start, x.stop + b.start)  # type: ignore[arg-type]
                                    for x, b in zip(sub, sl, strict=True)))
            d2 = ((u - p[0]) ** 2 + (v - p[1]) ** 2 + (t - p[2]) ** 2) / (r * r)
            np.minimum(q[sub], d2, out=q[sub])
        return sl, np.sqrt(q) + rough * self.noise[field][sl]

    def paint(self, sl: Box, mask: np.ndarray, tissue: int, hu: float | np.ndarray) -> None:
        """Set tissue and HU where ``mask`` (box-shaped) holds; ``hu`` scalar or box-shaped."""
        self.tissue[sl][mask] = tissue
        self.hu[sl][mask] = hu[mask] if isinstance(hu, np.ndarray) else hu


def _rotation(yaw: float, pitch: float) -> np.ndarray:
    """``R = R_pitch R_yaw`` (3, 3): patient axes → scanner axes (``x = R p + shift``)."""
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    rotation: np.ndarray = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]]) @ np.array(
        [[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    return rotation


@dataclasses.dataclass(frozen=True)
class Patient:
    """How one patient differs from the ``low`` cohort's anatomy (defaults: not at all).

    Attributes:
        fat: subcutaneous fat thickness as a fraction of the body outline's radius (None:
            0.05–0.13 drawn as in the ``low`` cohort); the outline grows with it so the
            abdominal cavity keeps its size.
        shift: per structure (``liver``, ``spleen``, ``stomach``, ``kidney_r``, ``kidney_l``,
            ``vessels``, ``pancreas``, ``pancreas_head``, ``pancreas_tail``), an offset (L units).
        scale: per structure (the same names, without the pancreas parts), a size factor.
        oral_contrast: HU of the bowel and stomach lumen after positive oral contrast (None:
            water-like lumen).
        spleen_moire: amplitude (HU) of the arterial phase's mottled splenic enhancement.
    """

    fat: float | None = None
    shift: Mapping[str, Sequence[float]] = dataclasses.field(default_factory=dict)
    scale: Mapping[str, float] = dataclasses.field(default_factory=dict)
    oral_contrast: float | None = None
    spleen_moire: float = 0.0

    def place(self, name: str, c: Sequence[float],
              r: Sequence[float] | None = None) -> tuple[list[float], list[float]]:
        """Centre ``c`` moved and radii ``r`` scaled for structure ``name``."""
        d = self.shift.get(name, (0.0, 0.0, 0.0))
        k = self.scale.get(name, 1.0)
        return ([float(x) + float(dx) for x, dx in zip(c, d, strict=True)],
                [float(x) * k for x in (r if r is not None else ())])


def curve(ctrl: Sequence[Sequence[float]], n: int = 24) -> np.ndarray:
    """``n`` points along the quadratic/cubic Bézier curve of control points ``ctrl``."""
    c = np.asarray(ctrl, np.float64)
    s = np.linspace(0, 1, n)[:, None]
    if len(c) == 3:
        return np.asarray((1 - s) ** 2 * c[0] + 2 * s * (1 - s) * c[1] + s**2 * c[2])
    return np.asarray((1 - s) ** 3 * c[0] + 3 * s * (1 - s) ** 2 * c[1]
                      + 3 * s**2 * (1 - s) * c[2] + s**3 * c[3])


def jitter(rng: np.random.Generator, p: Sequence[float], amount: float = 0.03) -> list[float]:
    return [float(x) + float(rng.uniform(-amount, amount)) for x in p]


def build_body(g: Grid, rng: np.random.Generator, contrast: Contrast,
               patient: Patient | None = None) -> dict[str, Any]:
    """Body wall, spine, ribs, muscles; returns the cavity description for the organs."""
    patient = patient or Patient()
    a, b = rng.uniform(0.93, 1.02), rng.uniform(0.66, 0.76)
    full = g.full
    u, v, _ = g.at(full)
    fat_t, mus_t = rng.uniform(0.05, 0.13), rng.uniform(0.04, 0.06)
    k = 1.0
    if patient.fat is not None:  # more fat: a larger outline around the same cavity
        fat_t = patient.fat
        k = (1 - 0.09 - 0.05) / (1 - fat_t - mus_t)
    r = np.sqrt((u / (a * k)) ** 2 + (v / np.where(v > 0, b * k, b * k * 0.92)) ** 2)
    r += 0.015 * g.noise[1]
    g.paint(full, r < 1.0, MUSCLE, 35.0)  # skin
    g.paint(full, r < 0.985, FAT, -100.0)
    g.paint(full, r < 1 - fat_t, MUSCLE, 50.0)
    cavity_r = 1 - fat_t - mus_t
    g.paint(full, r < cavity_r, VFAT, -90.0)
    theta = np.arctan2(v, u)
    # ribs: obliquely running bone bands cut by the axial plane, lateral and posterior only
    period, phase = rng.uniform(0.2, 0.26), rng.uniform(0, 1)
    ribs = ((r > cavity_r - 0.025) & (r < cavity_r + 0.03) & (np.abs(np.sin(theta)) < 0.85)
            & (np.cos(2 * np.pi * (g.coords[2] / period + phase + 0.35 * np.abs(theta))) > 0.55)
            & (g.coords[2] > -0.15) & np.broadcast_to(theta < 0.4, r.shape))
    g.paint(full, ribs, BONE, 550.0)
    for side in (-1, 1):  # paraspinal and psoas muscles
        sl, q = g.cylinder([side * 0.19, -0.5 * b / 0.72], [0.15, 0.11], [-9, 9])
        g.paint(sl, q < 1, MUSCLE, 55.0)
        sl, q = g.cylinder([side * 0.15, -0.33], [0.07, 0.06], [-9, -0.05])
        g.paint(sl, q < 1, MUSCLE, 55.0)
    vb = -0.36 * b / 0.72
    sl, q = g.cylinder([0.0, vb], [0.13, 0.11], [-9, 9], rough=0.01)
    tt = g.at(sl)[2]
    disc = ((tt / rng.uniform(0.19, 0.22) + rng.uniform(0, 1)) % 1.0) < 0.17
    g.paint(sl, q < 1, BONE, 650.0)
    g.paint(sl, (q < 0.85) & ~disc, MARROW, rng.uniform(180, 260))
    g.paint(sl, (q < 1) & disc, DISC, 85.0)
    sl, q = g.cylinder([0.0, vb - 0.17], [0.11, 0.1], [-9, 9], rough=0.01)
    g.paint(sl, q < 1, BONE, 450.0)  # neural arch
    g.paint(sl, q < 0.55, CSF, 15.0)
    sl, q = g.cylinder([0.0, vb - 0.3], [0.035, 0.08], [-9, 9], rough=0.01)
    g.paint(sl, q < 1, BONE, 450.0)  # spinous process
    return {"cavity_r": cavity_r, "r": r, "contrast": contrast, "patient": patient}


def build_organs(g: Grid, rng: np.random.Generator, body: dict[str, Any]) -> dict[str, Any]:
    """Abdominal organs and vessels; returns the pancreas geometry."""
    hu: Contrast = body["contrast"]
    pt: Patient = body["patient"]
    inside = body["r"] < body["cavity_r"]

    def paint_in(sl: Box, mask: np.ndarray, tissue: int, value: float | np.ndarray) -> None:
        g.paint(sl, mask & inside[sl], tissue, value)

    tex = 6.0 * g.fine  # organ parenchyma texture

    # liver (right lobe + left lobe), gallbladder, spleen, stomach
    c, r = pt.place("liver", jitter(rng, [0.42, 0.02, 0.32]), [
        rng.uniform(0.45, 0.55), rng.uniform(0.5, 0.6), rng.uniform(0.45, 0.6)])
    sl, q = g.ellipsoid(c, r, rough=0.08, field=0)
    paint_in(sl, q < 1, LIVER, hu("liver") + tex[sl])
    c, r = pt.place("liver", jitter(rng, [0.02, 0.28, 0.42]), [0.34, 0.18, 0.22])
    sl, q = g.ellipsoid(c, r, rot=0.3, rough=0.08)
    paint_in(sl, q < 1, LIVER, hu("liver") + tex[sl])
    c, _ = pt.place("liver", jitter(rng, [0.3, 0.3, 0.02]))
    sl, q = g.ellipsoid(c, [0.08, 0.1, 0.16], rough=0.03)
    paint_in(sl, q < 1, GALL, 10.0)
    c, r = pt.place("spleen", jitter(rng, [-0.62, -0.26, 0.36]),
                    [0.17, 0.28, rng.uniform(0.25, 0.35)])
    sl, q = g.ellipsoid(c, r, rot=-0.6, rough=0.06, field=1)
    moire = pt.spleen_moire * g.noise[2][sl] * g.fine[sl] if pt.spleen_moire else 0.0
    paint_in(sl, q < 1, SPLEEN, hu("spleen") + tex[sl] + moire)
    cs, r = pt.place("stomach", jitter(rng, [-0.33, 0.28, 0.36]), [0.27, 0.2, 0.28])
    sl, q = g.ellipsoid(cs, r, rot=0.4, rough=0.06, field=2)
    v = g.at(sl)[1]
    lumen = 12.0 if pt.oral_contrast is None else pt.oral_contrast
    paint_in(sl, q < 1, STOMACH_WALL, hu("stomach_wall"))
    paint_in(sl, q < 0.84, LUMEN, lumen)
    paint_in(sl, (q < 0.84) & (v > cs[1] + rng.uniform(0.0, 0.1)), GAS, -950.0)

    # kidneys: cortex, medulla, sinus fat
    for side, name, c in ((1, "kidney_r", [0.38, -0.31, -0.22]),
                          (-1, "kidney_l", [-0.38, -0.29, -0.12])):
        c, r = pt.place(name, jitter(rng, c, 0.02), [
            rng.uniform(0.11, 0.14), rng.uniform(0.14, 0.18), rng.uniform(0.28, 0.36)])
        rot = side * rng.uniform(0.4, 0.7)
        sl, q = g.ellipsoid(c, r, rot=rot, rough=0.04, field=1)
        paint_in(sl, q < 1, KIDNEY, hu("kidney") + tex[sl])
        paint_in(sl, q < 0.72, MEDULLA, hu("medulla") + tex[sl])
        sinus = [c[0] - side * 0.6 * r[0] * np.cos(rot), c[1] + 0.6 * r[0] * abs(np.sin(rot)), c[2]]
        sl, q = g.ellipsoid(sinus, [0.05, 0.06, 0.14], rough=0.05)
        paint_in(sl, q < 1, SINUS, -40.0)

    # great vessels and the mesenteric/portal veins around the pancreas
    ca, _ = pt.place("vessels", [*jitter(rng, [-0.06, -0.2], 0.02), 0.0])
    sl, q = g.cylinder(ca[:2], [0.06, 0.06], [-9, 9])
    paint_in(sl, q < 1, AORTA, hu("aorta"))
    cv, _ = pt.place("vessels", [*jitter(rng, [0.14, -0.17], 0.02), 0.0])
    sl, q = g.cylinder(cv[:2], [0.08, 0.06], [-9, 9])
    paint_in(sl, q < 1, VEIN, hu("ivc"))
    sl, q = g.cylinder([ca[0] + 0.03, ca[1] + 0.2], [0.025, 0.025], [-9, 0.0])  # SMA
    paint_in(sl, q < 1, AORTA, hu("aorta"))

    # pancreas: head by the duodenum, body over the SMA, tail toward the splenic hilum
    head = pt.place("pancreas", pt.place("pancreas_head", jitter(rng, [0.2, -0.0, -0.06]))[0])[0]
    mid = pt.place("pancreas", jitter(rng, [0.0, 0.06, 0.03]))[0]
    tail = pt.place("pancreas", pt.place("pancreas_tail", jitter(rng, [-0.46, -0.14, 0.16]))[0])[0]
    pts = curve([head, mid, tail], 28)
    radii = np.interp(np.linspace(0, 1, 28), [0, 0.35, 1], pt.place("pancreas", [0, 0, 0], [
        rng.uniform(0.09, 0.11), rng.uniform(0.06, 0.075), rng.uniform(0.05, 0.065)])[1])
    vein_pts = pts[10:] + np.array([0.0, -0.075, 0.0])
    sl, q = g.tube(vein_pts, np.full(len(vein_pts), 0.022), rough=0.01)
    paint_in(sl, q < 1, VEIN, hu("portal"))  # splenic vein
    portal = curve([pt.place("pancreas", p)[0] for p in
                    ([0.08, 0.0, -0.02], [0.12, 0.02, 0.12], [0.26, 0.04, 0.22])], 12)
    sl, q = g.tube(portal, np.full(12, 0.035), rough=0.01)
    paint_in(sl, q < 1, VEIN, hu("portal"))

    duo = curve([[head[0] + 0.02, 0.08, head[2] + 0.16], [head[0] + 0.22, 0.06, head[2] + 0.02],
                 [head[0] + 0.12, -0.02, head[2] - 0.26], [head[0] - 0.1, 0.02, head[2] - 0.2]], 28)
    sl, q = g.tube(duo, np.full(28, rng.uniform(0.045, 0.06)), rough=0.05)
    lumen_hu = rng.uniform(5, 25)
    paint_in(sl, q < 1, BOWEL_WALL, hu("duodenum"))
    paint_in(sl, q < 0.6, LUMEN, lumen_hu if pt.oral_contrast is None else pt.oral_contrast)

    sl, q = g.tube(pts, radii, rough=0.12, field=0)
    lobules = np.where(g.fine[sl] > 1.2, -30.0, 0.0)  # fatty interdigitation
    paint_in(sl, q < 1, PANCREAS, hu("pancreas") + tex[sl] + lobules)
    return {"pts": pts, "radii": radii}


def build_bowel(g: Grid, rng: np.random.Generator, body: dict[str, Any]) -> None:
    """Small bowel loops in the free lower cavity, colon frame, lung bases on top."""
    hu: Contrast = body["contrast"]
    oral: float | None = body["patient"].oral_contrast
    sl = g.box([-1, -0.25, -9], [1, 1, 0.12], margin=0)
    free = g.tissue[sl] == VFAT
    n = np.abs(g.fine[sl])
    gas = g.noise[2][sl] > 1.1
    lumen_hu = rng.uniform(0, 30)
    g.paint(sl, free & (n < 0.5), BOWEL_WALL, hu("bowel"))
    g.paint(sl, free & (n < 0.28), LUMEN, lumen_hu if oral is None else oral)
    g.paint(sl, free & (n < 0.28) & gas, GAS, -900.0)
    frame = curve([[0.62, 0.0, -0.5], [0.6, 0.1, 0.45], [-0.6, 0.15, 0.45],
                   [-0.62, -0.05, -0.5]], 40)
    sl, q = g.tube(frame, np.full(40, rng.uniform(0.08, 0.1)), rough=0.08, field=2)
    free = (g.tissue[sl] == VFAT) | (g.tissue[sl] == BOWEL_WALL) | (g.tissue[sl] == LUMEN)
    stool = np.clip(-200 + 180 * g.fine[sl], -900, 60)
    g.paint(sl, free & (q < 1), BOWEL_WALL, hu("colon"))
    g.paint(sl, free & (q < 0.8), STOOL, stool)
    # lung bases: posterior costophrenic recesses above the diaphragm domes
    inside = body["r"] < body["cavity_r"]
    for side in (1, -1):
        c = jitter(rng, [side * 0.48, -0.2, rng.uniform(0.95, 1.1)], 0.03)
        sl, q = g.ellipsoid(c, [0.42, 0.48, 0.62], rough=0.04, field=1)
        g.paint(sl, (q < 1) & inside[sl], LUNG, -860.0 + 25 * g.fine[sl])
