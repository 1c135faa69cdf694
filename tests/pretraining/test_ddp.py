"""A real 2-process DistributedDataParallel run (gloo, CPU), as torchrun would start it."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from pimpic.pretraining.config import PretrainConfig

WORLD = 2
CFG = PretrainConfig(width=2, depth=3, patch_size=16, patches=2, steps=2, log_every=1,
                     checkpoint_every=1, num_workers=0, amp=False, device="cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_main(rank: int, port: int, cache: str, run: str, out: str) -> None:
    """One rank: the environment torchrun would set, the dummy method, then pretrain."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    import _pretrain_dummy as dummy
    import pimpic.registry as base
    from pimpic.pretraining.engine import pretrain

    base.get_method = lambda name: dummy.SPEC  # type: ignore[assignment]
    pretrain(cache, run, CFG, progress=False)
    assert dummy.DummyModule.last is not None
    torch.save({"seen": dummy.DummyModule.seen,
                "state": dummy.DummyModule.last.state_dict()}, Path(out) / f"rank{rank}.pt")


@pytest.mark.slow
def test_two_process_gloo_run(make_cache, tmp_path: Path) -> None:
    from pimpic.io import read_json, read_jsonl

    cache = make_cache(n_cases=8, shape=(16, 16, 16), labelled=False)
    run = tmp_path / "run"
    mp.spawn(_rank_main, args=(_free_port(), str(cache), str(run), str(tmp_path)),
             nprocs=WORLD, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD))
    # each rank read its own volumes (one epoch of its shard: 2 steps × 1 volume)
    assert set(r0["seen"]).isdisjoint(r1["seen"])
    # DDP kept the replicas identical
    assert r0["state"].keys() == r1["state"].keys()
    assert all(torch.equal(r0["state"][k], r1["state"][k]) for k in r0["state"])
    assert (run / "encoder.safetensors").is_file()
    assert read_json(run / "env.json")["world_size"] == WORLD
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["patches_per_s"] > 0
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert len(state["rng"]) == WORLD  # every rank's RNG state, for an exact resume
