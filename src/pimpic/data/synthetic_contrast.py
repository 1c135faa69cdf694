"""Tissue attenuation by contrast phase for the synthetic cohort (HU).

Real abdominal CT is acquired without contrast, in the late arterial phase (≈ 35 s after
injection: bright aorta, corticomedullary kidneys, a mottled spleen, peak pancreatic
enhancement) or in the portal-venous phase (≈ 70 s: the liver and veins enhanced, kidneys
homogeneous). :class:`Contrast` gives the HU of each painted structure in one case's phase, with
the enhancement (HU above the non-contrast value) scaled by a strength factor ``e`` that stands
for dose, injection rate, timing and cardiac output. Values are typical textbook attenuations
at 120 kVp, not measurements.

The ``low`` cohort keeps the original single portal-venous phase: HU above ~40 scaled by ``e``
(:func:`enhance`).
"""

from __future__ import annotations

import dataclasses

PHASES = ("non-contrast", "arterial", "portal-venous")

#: structure → HU in (non-contrast, late arterial, portal-venous) phase at strength ``e = 1``
HU_BY_PHASE: dict[str, tuple[float, float, float]] = {
    "liver": (58.0, 80.0, 115.0),
    "spleen": (48.0, 125.0, 120.0),
    "stomach_wall": (40.0, 95.0, 80.0),
    "kidney": (32.0, 195.0, 180.0),  # cortex
    "medulla": (30.0, 80.0, 155.0),
    "aorta": (42.0, 320.0, 170.0),
    "ivc": (42.0, 75.0, 145.0),  # unopacified infrarenal blood mixes in the arterial phase
    "portal": (42.0, 140.0, 170.0),
    "duodenum": (40.0, 90.0, 75.0),
    "pancreas": (42.0, 125.0, 100.0),
    "bowel": (40.0, 90.0, 70.0),
    "colon": (40.0, 80.0, 65.0),
}

#: portal-venous HU of the ``low`` cohort (before :func:`enhance`)
LOW_PV: dict[str, float] = {
    "liver": 110, "spleen": 120, "stomach_wall": 75, "kidney": 175, "medulla": 140,
    "aorta": 170, "ivc": 140, "portal": 160, "duodenum": 70, "pancreas": 105, "bowel": 65,
    "colon": 60,
}


def enhance(hu: float, e: float) -> float:
    """Scale the contrast enhancement of a tissue (its HU above ~40) by phase factor ``e``."""
    return 40.0 + (hu - 40.0) * e


@dataclasses.dataclass(frozen=True)
class Contrast:
    """One case's contrast: ``phase`` (one of :data:`PHASES`, or ``low``) and strength ``e``."""

    phase: str
    e: float

    def __call__(self, name: str) -> float:
        """HU of structure ``name`` (a key of :data:`HU_BY_PHASE`)."""
        if self.phase == "low":
            return enhance(LOW_PV[name], self.e)
        return self.native(name) + self.e * self.enhancement(name)

    def native(self, name: str) -> float:
        """Non-contrast HU of ``name``."""
        return 40.0 if self.phase == "low" else HU_BY_PHASE[name][0]

    def enhancement(self, name: str) -> float:
        """HU gained by ``name`` in this phase at strength 1 (0 without contrast)."""
        if self.phase == "low":
            return LOW_PV[name] - 40.0
        row = HU_BY_PHASE[name]
        return row[PHASES.index(self.phase)] - row[0]
