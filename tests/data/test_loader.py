"""The pretraining data stream: sharding by rank, purity in the sample index, batching."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from _pretrain_dummy import RandomCrops
from pimpic.data.loader import VolumeStream, case_for_sample, make_loader, shard_size


@pytest.mark.parametrize(("n", "world"), [(10, 1), (10, 2), (7, 3), (2, 4)])
def test_ranks_read_disjoint_volumes_each_epoch(n: int, world: int) -> None:
    size = shard_size(n, world)
    for epoch in range(3):
        shards = [{case_for_sample(n, 5, r, world, epoch * size + k) for k in range(size)}
                  for r in range(world)]
        assert all(len(s) == size for s in shards)
        if n >= world:  # enough volumes: no two ranks share one within an epoch
            assert len(set().union(*shards)) == size * world
    # every case is visited over a few epochs, and the order changes between epochs
    seen = [case_for_sample(n, 5, 0, world, i) for i in range(size * 40)]
    assert set(seen) == set(range(n))


def _take(stream: VolumeStream, workers: int, k: int) -> list[dict[str, torch.Tensor]]:
    return list(itertools.islice(iter(make_loader(stream, workers)), k))


def test_stream_is_pure_in_the_index_and_resumable(make_cache) -> None:
    cache = make_cache(n_cases=5, shape=(20, 18, 16), labelled=False)
    ids = [f"case_{i:03d}" for i in range(5)]
    sampler = RandomCrops(16, 3)

    def stream(start: int = 0, rank: int = 0) -> VolumeStream:
        return VolumeStream(cache, ids, sampler, volumes=2, seed=1, rank=rank, world_size=2,
                            start=start)

    full = _take(stream(), 0, 5)
    assert full[0]["patches"].shape == (2, 3, 1, 16, 16, 16)
    assert full[0]["patches"].dtype == torch.float32 and full[0]["boxes"].shape == (2, 3, 2, 3)
    resumed = _take(stream(start=3 * 2), 0, 2)
    for a, b in zip(full[3:], resumed, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    with_workers = _take(stream(), 2, 5)  # independent of the number of workers
    for a, b in zip(full, with_workers, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    other_rank = _take(stream(rank=1), 0, 1)
    assert not torch.equal(other_rank[0]["fingerprint"], full[0]["fingerprint"])


def test_stream_validates_arguments(make_cache) -> None:
    cache = make_cache(n_cases=3, shape=(16, 16, 16), labelled=False)
    with pytest.raises(ValueError, match="at least one case"):
        VolumeStream(cache, [], RandomCrops(16, 1))
    with pytest.raises(ValueError, match="multiple of volumes"):
        VolumeStream(cache, ["case_000"], RandomCrops(16, 1), volumes=2, start=3)
    one = VolumeStream(cache, ["case_000"], RandomCrops(16, 1))
    assert np.isfinite(one.sample(0)["patches"]).all()
