"""What every figure shares: matplotlib on the Agg backend with pimpic's style, and an atomic
PNG write."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.figure import Figure

from pimpic.io import atomic_path


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files only, no display), pimpic's font sizes.

    Imported here, not at module level: the backend must be chosen before pyplot loads."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 11, "axes.titlesize": 12, "figure.dpi": 110})
    return plt


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically (parents created) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    pyplot().close(fig)
    return path
