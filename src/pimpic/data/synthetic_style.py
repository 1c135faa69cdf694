"""Cohort presets (``pimpic synth --variability``): how much two synthetic cases differ.

* ``low`` — the original cohort: one portal-venous phase (enhancement ×0.85–1.15), fixed
  spacing and field of view, a centred patient, organs jittered by a few mm, small tumours
  confined to the organ, one noise model. Two labelled cases already cover most of it.
* ``realistic`` (default) — the between-patient and between-scanner spread of multi-centre
  abdominal CT, drawn per case:

  ============================  =============================================================
  contrast                      non-contrast 20 %, late arterial 30 %, portal-venous 50 %
                                (:mod:`~pimpic.data.synthetic_contrast`); strength ×0.65–1.3;
                                positive oral contrast (150–350 HU bowel lumen) in 30 %
  habitus                       body and organ scale ×0.85–1.15; subcutaneous fat 3–22 % of
                                the body radius (the outline grows with it)
  field of view                 pixel size ×0.8–1.3 with the body's width (fixed matrix)
  slices                        1.25 / 2 / 2.5 / 3 / 5 mm (at nominal 2.5 mm), length ±10 %
  position                      shift ±8 mm left-right and anterior-posterior, ±20 mm
                                along the body; in-plane rotation σ 4° (≤ 10°), tilt ±4°
  organs                        per-organ offsets σ ≈ 3 mm (kidneys ±10 mm vertically),
                                size ×0.75–1.3 (spleen up to ×1.6), stronger surface warp
  tumour                        radius ≈ 10–21 mm log-uniform, may bulge out of the organ; kind
                                and phase set its contrast (:mod:`~pimpic.data.synthetic_tumour`)
  scanner                       kernel smooth / standard / sharp, noise 8–28 HU (more with a
                                sharp kernel and thin slices), spine streaks (60 %), surgical
                                clips with metal streaks (12 %), breathing motion (20 %)
                                (:mod:`~pimpic.data.synthetic_scanner`)
  ============================  =============================================================

Millimetres assume the default 180 mm field of view (L ≈ 79 mm).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from pimpic.data.anatomy import Patient
from pimpic.data.synthetic_contrast import PHASES, Contrast
from pimpic.data.synthetic_scanner import Acquisition, draw_acquisition
from pimpic.data.synthetic_tumour import LOW, REALISTIC, TumourStyle

VARIABILITY = ("low", "realistic")


@dataclasses.dataclass(frozen=True)
class CaseStyle:
    """Everything one case draws before its anatomy is painted (``low``: all defaults)."""

    #: body and organ size factor (multiplies L)
    length_scale: float = 1.0
    #: ``(shift (L units), yaw, pitch (rad))`` of the patient in the scanner; None: centred
    pose: tuple[tuple[float, float, float], float, float] | None = None
    #: amplitude of the smooth whole-body warp (L units)
    warp: float = 0.03
    patient: Patient = dataclasses.field(default_factory=Patient)
    #: None: the ``low`` cohort's portal-venous phase, drawn where it always was
    contrast: Contrast | None = None
    tumour: TumourStyle = LOW
    #: None: the ``low`` cohort's fixed grid, blur and noise
    acquisition: Acquisition | None = None


def draw_style(rng: np.random.Generator, variability: str, shape: Sequence[int],
               spacing: Sequence[float]) -> CaseStyle:
    """One case's style around the nominal ``shape`` (voxels) and ``spacing`` (mm)."""
    if variability == "low":
        return CaseStyle()
    if variability != "realistic":
        raise ValueError(f"variability {variability!r}: choose one of {', '.join(VARIABILITY)}")
    scale = float(rng.uniform(0.85, 1.15))
    fat = float(rng.uniform(0.03, 0.22))
    width = scale * (1 - 0.09 - 0.05) / (1 - fat - 0.05)  # body width relative to nominal
    fov = float(np.clip(width * rng.uniform(0.85, 1.1), 0.8, 1.3))  # ≈ 1 for an average body
    acquisition = draw_acquisition(rng, shape, spacing, fov)
    phase = str(rng.choice(PHASES, p=[0.2, 0.3, 0.5]))
    contrast = Contrast(phase, float(rng.uniform(0.65, 1.3)))
    pose = ((float(rng.uniform(-0.1, 0.1)), float(rng.uniform(-0.1, 0.1)),
             float(rng.uniform(-0.25, 0.25))),
            float(np.clip(rng.normal(0, 0.07), -0.17, 0.17)), float(rng.uniform(-0.07, 0.07)))
    names = ("liver", "spleen", "stomach", "kidney_r", "kidney_l", "vessels", "pancreas",
             "pancreas_head", "pancreas_tail")
    shift = {n: np.clip(rng.normal(0, 0.04, 3), -0.1, 0.1).tolist() for n in names}
    for kidney in ("kidney_r", "kidney_l"):  # renal ptosis / high kidneys
        shift[kidney][2] += float(rng.uniform(-0.12, 0.12))
    shift["vessels"] = [0.3 * d for d in shift["vessels"]]
    size = {"liver": rng.uniform(0.85, 1.2), "spleen": np.exp(rng.uniform(np.log(0.75),
                                                                          np.log(1.6))),
            "stomach": rng.uniform(0.8, 1.25), "kidney_r": rng.uniform(0.85, 1.2),
            "kidney_l": rng.uniform(0.85, 1.2), "pancreas": rng.uniform(0.75, 1.3)}
    patient = Patient(
        fat=fat, shift=shift, scale={k: float(v) for k, v in size.items()},
        oral_contrast=float(rng.uniform(150, 350)) if rng.uniform() < 0.3 else None,
        spleen_moire=float(rng.uniform(15, 35)) if phase == "arterial" else 0.0,
    )
    return CaseStyle(length_scale=scale, pose=pose, warp=float(rng.uniform(0.03, 0.06)),
                     patient=patient, contrast=contrast, tumour=REALISTIC,
                     acquisition=acquisition)
