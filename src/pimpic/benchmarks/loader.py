"""``pimpic bench loader``: patches per second through the pretraining loader.

Reads from a real cache exactly as pretraining does (memory-mapped volumes, the method's
sampler, DataLoader workers, batches of V volumes) and counts patches delivered to the main
process. A 64³ patch is 1 MiB of float32, so 1000 patches/s is about 1 GiB/s of patch data.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from pimpic.data.cache import Cache
from pimpic.data.loader import VolumeStream, make_loader
from pimpic.errors import PimpicError
from pimpic.pretraining.config import PretrainConfig
from pimpic.registry import get_method


def run(cache: str | Path, *, patch_size: int = 64, patches: int = 32, seconds: float = 10.0,
        workers: int = 2, volumes: int = 1, method: str = "pimpic", seed: int = 0
        ) -> dict[str, Any]:
    """Measure the loader for ``seconds`` (after the first batch, which includes start-up)."""
    c = Cache(cache)
    ids = c.train_ids()
    if not ids:
        raise PimpicError(f"{c.root}: no training cases")
    depth = 5
    while patch_size % 2**depth:  # the config validates divisibility; the loader does not care
        depth -= 1
    cfg = PretrainConfig(method=method, patch_size=patch_size, patches=patches, volumes=volumes,
                         depth=depth, num_workers=workers, seed=seed)
    stream = VolumeStream(c.root, ids, get_method(method).build_sampler(cfg), volumes=volumes,
                          seed=seed)
    loader = make_loader(stream, workers)
    it = iter(loader)
    t_first = time.perf_counter()
    first = next(it)
    startup = time.perf_counter() - t_first
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        batch = next(it)
        n += int(batch["patches"].shape[0] * batch["patches"].shape[1])
    dt = time.perf_counter() - t0
    del it, loader
    shape = c.image(ids[0]).shape
    return {"benchmark": "loader", "patches_per_s": n / dt, "patches": n, "seconds": dt,
            "startup_s": startup, "patch_size": patch_size, "patches_per_volume": patches,
            "volumes": volumes, "workers": workers, "cpus": os.cpu_count(),
            "method": method, "cases": len(ids), "example_shape": list(shape),
            "dtype": str(c.image(ids[0]).dtype),
            "batch_shape": list(first["patches"].shape)}
