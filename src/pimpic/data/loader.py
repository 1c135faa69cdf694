"""The pretraining data stream: volumes → the method's sampler → batches of V volumes.

Why an ``IterableDataset`` with a *pure* index → sample mapping
----------------------------------------------------------------
Pretraining draws an endless stream of (volume, patches) samples. Sample ``i`` of rank ``r`` is
fully determined by ``(seed, r, i)``:

* the volume: each epoch ``e`` shuffles the case list with ``(seed, e)``; rank ``r`` owns the
  slice ``[r·L, (r+1)·L)`` of that permutation (``L = n // world_size``, at least 1), so ranks
  read different volumes; sample ``i`` is entry ``i mod L`` of epoch ``i // L``;
* the patches: the sampler gets ``numpy.random.default_rng((seed, r, i))``.

So resuming at optimiser step ``s`` simply starts the stream at ``i = s · V`` — nothing is
replayed — and the stream does not depend on the number of DataLoader workers: worker ``w`` of
``W`` produces the batches ``b ≡ w (mod W)`` and the DataLoader hands them out in order.

Volumes are opened memory-mapped (:class:`~pimpic.data.cache.Cache`), so a sampler reads only
the voxels of its patches.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pimpic.data.cache import Cache
from pimpic.data.sources import VolumeSource

#: a method's per-volume sampler ``(image (X, Y, Z), rng) -> arrays of one volume`` (picklable;
#: see :mod:`pimpic.registry`)
Sampler = Callable[[np.ndarray, np.random.Generator], dict[str, np.ndarray]]

#: memory maps kept open per worker (cheap, but bounded for caches with thousands of cases)
_OPEN_VOLUMES = 64


def shard_size(n_cases: int, world_size: int) -> int:
    """Samples per rank and epoch: equal for all ranks so epochs stay aligned."""
    return max(1, n_cases // world_size)


def case_for_sample(n_cases: int, seed: int, rank: int, world_size: int, index: int) -> int:
    """Index into the case list of sample ``index`` of ``rank`` (see the module docstring)."""
    size = shard_size(n_cases, world_size)
    epoch, k = divmod(index, size)
    perm = np.random.default_rng((seed, epoch)).permutation(n_cases)
    return int(perm[(rank * size + k) % n_cases])


def sample_rng(seed: int, rank: int, index: int) -> np.random.Generator:
    """The sampler's generator for sample ``index`` of ``rank``."""
    return np.random.default_rng((seed, rank, index))


class VolumeStream(IterableDataset[dict[str, np.ndarray]]):
    """Endless stream of one-volume samples ``sampler(image, rng)`` for one rank.

    Args:
        cache: the cache folder, or a picklable :class:`~pimpic.data.sources.VolumeSource`
            (e.g. an nnU-Net preprocessed folder).
        case_ids: the pretraining pool (the same list, in the same order, on every rank).
        sampler: picklable ``(image (X, Y, Z), rng) -> dict[str, ndarray]`` of the method.
        volumes: V, volumes per batch (the DataLoader's ``batch_size``).
        seed, rank, world_size: see the module docstring.
        start: first sample index (``step · V`` when resuming).
    """

    def __init__(
        self,
        cache: str | Path | VolumeSource,
        case_ids: Sequence[str],
        sampler: Sampler,
        *,
        volumes: int = 1,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
    ) -> None:
        super().__init__()
        if not case_ids:
            raise ValueError("VolumeStream needs at least one case")
        if start % volumes:
            raise ValueError(f"start {start} must be a multiple of volumes {volumes}")
        self.source: VolumeSource | None = None if isinstance(cache, (str, Path)) else cache
        self.root = Path(cache) if isinstance(cache, (str, Path)) else Path(cache.root)
        self.case_ids = list(case_ids)
        self.sampler = sampler
        self.volumes = volumes
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start = start

    def sample(self, index: int, volumes: OrderedDict[str, np.ndarray] | None = None
               ) -> dict[str, np.ndarray]:
        """Sample ``index`` of this rank (``volumes``: an optional open-memmap LRU)."""
        cid = self.case_ids[case_for_sample(len(self.case_ids), self.seed, self.rank,
                                            self.world_size, index)]
        source: VolumeSource = self.source if self.source is not None else Cache(self.root)
        if volumes is None:
            image = source.image(cid)
        else:
            if cid not in volumes:
                volumes[cid] = source.image(cid)
                if len(volumes) > _OPEN_VOLUMES:
                    volumes.popitem(last=False)
            volumes.move_to_end(cid)
            image = volumes[cid]
        return self.sampler(image, sample_rng(self.seed, self.rank, index))

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        # Avoid oversubscription: each worker is a single-threaded numpy/torch producer.
        if info is not None:
            torch.set_num_threads(1)
        open_volumes: OrderedDict[str, np.ndarray] = OrderedDict()
        batch = self.start // self.volumes + worker
        while True:
            for j in range(self.volumes):
                yield self.sample(batch * self.volumes + j, open_volumes)
            batch += workers


def make_loader(
    stream: VolumeStream,
    num_workers: int = 2,
    pin_memory: bool = False,
    prefetch_factor: int = 2,
) -> DataLoader[Any]:
    """Batches of ``stream.volumes`` samples: each array gains a leading ``(V, ...)`` axis."""
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs = {"persistent_workers": True, "prefetch_factor": prefetch_factor}
    return DataLoader(stream, batch_size=stream.volumes, num_workers=num_workers,
                      pin_memory=pin_memory, **kwargs)
