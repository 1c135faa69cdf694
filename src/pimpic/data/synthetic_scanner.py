"""The acquisition of a synthetic case: reconstruction kernel, slice profile, noise, artefacts.

:func:`acquire` turns the painted HU map (:class:`pimpic.data.anatomy.Grid`) into the stored
image the way a scanner would blur and corrupt it:

* **slice profile and kernel** — Gaussian blur with an in-plane width set by the kernel
  (smooth 0.9 mm, standard 0.6 mm, sharp 0.4 mm plus edge overshoot) and a slice profile whose
  FWHM is the slice thickness;
* **noise** — spatially correlated Gaussian noise, finer-grained and stronger with a sharp
  kernel, weaker with thick slices (noise falls as 1/√thickness);
* **streaks** — beam hardening around the spine (weak, most cases) and, when the patient has
  metal (surgical clips), strong alternating bright/dark streaks radiating from it in the
  slices it lies in, decaying with distance;
* **breathing motion** — in a slab of slices, blur and a faint ghost along the
  anterior-posterior axis.

All parameters are drawn per case (:func:`draw_acquisition`); labels are never touched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from pimpic.data import anatomy as A

#: in-plane blur (mm), noise correlation (voxels) and noise factor per reconstruction kernel
KERNELS = {"smooth": (0.9, 1.1, 0.7), "standard": (0.6, 0.8, 1.0), "sharp": (0.4, 0.45, 1.7)}
#: clinical slice thicknesses (mm) at the nominal 2.5 mm, and how often each is seen
SLICES = ((1.25, 0.15), (2.0, 0.2), (2.5, 0.3), (3.0, 0.2), (5.0, 0.15))


@dataclasses.dataclass(frozen=True)
class Acquisition:
    """One case's scan: grid, kernel, noise and artefacts."""

    #: voxel size (mm) and array shape of the stored image
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    kernel: str
    #: noise standard deviation (HU) after the kernel, before 1/√thickness
    noise_hu: float
    #: beam-hardening streak amplitude around the spine (HU)
    bone_streaks: float
    #: surgical clips with metal streaks of this amplitude (HU; 0: no metal)
    metal: float
    #: breathing-motion blur (mm, along anterior-posterior; 0: none)
    motion_mm: float


def draw_acquisition(rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float],
                     fov_factor: float) -> Acquisition:
    """A case's scan around the nominal ``shape``/``spacing``.

    The in-plane matrix stays ``shape[:2]`` and its pixel size scales with ``fov_factor`` (a
    larger patient, a larger field of view, as on a scanner); the slice spacing is a clinical
    thickness scaled by ``spacing[2] / 2.5`` and the slice count covers the nominal scan length
    ±10 %.
    """
    thick, p = zip(*SLICES, strict=True)
    dz = float(rng.choice(thick, p=p)) * spacing[2] / 2.5
    length = shape[2] * spacing[2] * rng.uniform(0.9, 1.15)
    kernel = str(rng.choice(list(KERNELS), p=[0.35, 0.45, 0.2]))
    return Acquisition(
        spacing=(spacing[0] * fov_factor, spacing[1] * fov_factor, dz),
        shape=(int(shape[0]), int(shape[1]), max(8, round(length / dz))),
        kernel=kernel,
        noise_hu=float(rng.uniform(8.0, 28.0)),
        bone_streaks=float(rng.uniform(10.0, 40.0)) if rng.uniform() < 0.6 else 0.0,
        metal=float(rng.uniform(150.0, 400.0)) if rng.uniform() < 0.12 else 0.0,
        motion_mm=float(rng.uniform(1.0, 3.5)) if rng.uniform() < 0.2 else 0.0,
    )


def acquire(g: A.Grid, rng: np.random.Generator, acq: Acquisition) -> np.ndarray:
    """The scanned image (X, Y, Z) float32 HU of the painted grid ``g``."""
    from scipy.ndimage import gaussian_filter, gaussian_filter1d

    sp = np.asarray(acq.spacing)
    if acq.metal:
        _clips(g, rng)
    blur_mm, corr, noise_factor = KERNELS[acq.kernel]
    sigma_z = acq.spacing[2] / 2.355  # slice profile FWHM = thickness
    hu = gaussian_filter(g.hu, sigma=tuple(np.array([blur_mm, blur_mm, sigma_z]) / sp),
                         mode="nearest")
    if acq.kernel == "sharp":  # edge-enhancing kernel: overshoot at boundaries
        hu += 0.6 * (hu - gaussian_filter(hu, sigma=(1.2 / sp[0], 1.2 / sp[1], 0), mode="nearest"))
    if acq.motion_mm:
        z0 = int(rng.integers(0, hu.shape[2]))
        slab = slice(z0, min(hu.shape[2], z0 + max(2, hu.shape[2] // int(rng.integers(2, 5)))))
        part = gaussian_filter1d(hu[:, :, slab], acq.motion_mm / sp[1], axis=1, mode="nearest")
        ghost = np.roll(part, round(rng.uniform(3, 8) / sp[1]), axis=1)
        hu[:, :, slab] = 0.85 * part + 0.15 * ghost
    hu += _streaks(g, rng, acq)
    noise = gaussian_filter(rng.standard_normal(hu.shape, dtype=np.float32),
                            sigma=(corr, corr, 0.3))
    sd = acq.noise_hu * noise_factor * np.sqrt(2.5 / max(acq.spacing[2], 0.5))
    hu += noise * (sd / (noise.std() + 1e-6))
    out: np.ndarray = hu
    return out


def _clips(g: A.Grid, rng: np.random.Generator) -> None:
    """Paint 2–5 surgical clips (≈ 2500 HU, 3 × 3 voxels in one slice) around a point of the
    liver (as after a cholecystectomy or a resection)."""
    soft = np.flatnonzero(g.tissue == A.LIVER)
    if soft.size == 0:
        return
    centre = np.unravel_index(rng.choice(soft), g.shape)
    for _ in range(int(rng.integers(2, 6))):
        x, y, z = (int(np.clip(ci + rng.integers(-6, 7), 0, n - 1))
                   for ci, n in zip(centre, g.shape, strict=True))
        g.hu[max(0, x - 1):x + 2, max(0, y - 1):y + 2, z] = 2500.0


def _streaks(g: A.Grid, rng: np.random.Generator, acq: Acquisition) -> np.ndarray | float:
    """Streak field (X, Y, Z) HU: radial lines from the spine and from metal, decaying with r."""
    out: np.ndarray | float = 0.0
    sources: list[tuple[list[float], float, float, slice | None]] = []
    if acq.bone_streaks:
        spine = np.nonzero(g.tissue == A.MARROW)
        if spine[0].size:
            sources.append(([float(np.mean(s)) for s in spine], acq.bone_streaks, 40.0, None))
    if acq.metal:
        metal = np.nonzero(g.hu > 2000)
        if metal[0].size:
            span = slice(max(0, int(metal[2].min()) - 1), int(metal[2].max()) + 2)
            sources.append(([float(np.mean(s)) for s in metal], acq.metal, 25.0, span))
    for centre, amp, r0_mm, zs in sources:
        x = (np.arange(g.shape[0]) - centre[0])[:, None] * acq.spacing[0]
        y = (np.arange(g.shape[1]) - centre[1])[None, :] * acq.spacing[1]
        theta, r = np.arctan2(y, x), np.hypot(x, y)
        lines = np.zeros_like(theta)
        for angle in rng.uniform(0, np.pi, int(rng.integers(6, 16))):
            d = (theta - angle + np.pi / 2) % np.pi - np.pi / 2  # a line runs both ways
            lines += rng.choice([-1.0, -1.0, 1.0]) * np.exp(-0.5 * (d / 0.025) ** 2)
        field = (amp * lines * r0_mm / (r + r0_mm)).astype(np.float32)[:, :, None]
        if zs is None:  # beam hardening changes slowly along the body
            prof = 0.5 + 0.5 * np.cos(np.linspace(0, rng.uniform(2, 6), g.shape[2])
                                      + rng.uniform(0, 2 * np.pi))
            out = out + field * prof.astype(np.float32)[None, None, :]
        else:
            full = np.zeros(g.shape, np.float32)
            full[:, :, zs] = field
            out = out + full
    return out
