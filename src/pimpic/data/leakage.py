"""The leakage guard between a pretraining pool and a task's held-out cases.

When an experiment pretrains on one dataset (a large unlabelled pool) and fine-tunes on
another (the labelled task), a test case of the task that is also in the pool would have been
seen in pretraining, and its score would flatter the encoder. The same scan often sits in two
collections under different names or folder layouts, so ids alone do not find it. A test case
counts as in the pool when

* its **case id** is a pool case id, or
* its **input file** has the SHA-256 of a pool case's input (``sources.image.sha256`` in the
  case's ``meta.json``, recorded by ``pimpic prepare``), or
* its **cached array** equals a pool case's: same shape, dtype and bytes (SHA-256), which also
  catches the same scan converted to another file format. Only pool arrays whose shape equals
  a test array's shape are read, so the check costs almost nothing on a real pool.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from pimpic.errors import PimpicError


def _source_sha(source: Any, case_id: str) -> str | None:
    meta = getattr(source, "meta", None)
    if meta is None:
        return None
    try:
        rec = (meta(case_id).get("sources") or {}).get("image") or {}
    except PimpicError:
        return None
    sha = rec.get("sha256") if isinstance(rec, dict) else None
    return str(sha) if sha else None


def array_sha256(image: Any) -> str:
    """SHA-256 of an image's shape, dtype and voxel bytes."""
    arr = np.ascontiguousarray(np.asarray(image))
    h = hashlib.sha256(f"{arr.shape}|{arr.dtype.str}|".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def pool_overlap(task: Any, test_ids: Sequence[str], pool: Any,
                 pool_ids: Sequence[str]) -> list[str]:
    """``"<test id> = <pool id> (by id | input SHA-256 | array)"`` for every test case of
    ``task`` found in ``pool`` (both: a cache or any source with ``image(id)``)."""
    found: dict[str, str] = {}
    pool_set = set(pool_ids)
    for cid in test_ids:
        if cid in pool_set:
            found[cid] = f"{cid} = {cid} (by id)"
    by_sha: dict[str, str] = {}
    for pid in pool_ids:
        sha = _source_sha(pool, pid)
        if sha:
            by_sha.setdefault(sha, pid)
    for cid in test_ids:
        sha = _source_sha(task, cid)
        if cid not in found and sha and sha in by_sha:
            found[cid] = f"{cid} = {by_sha[sha]} (same input file SHA-256)"
    shapes: dict[tuple[int, ...], list[str]] = {}
    for cid in test_ids:
        if cid not in found:
            shapes.setdefault(tuple(task.image(cid).shape), []).append(cid)
    hashes: dict[str, str] = {}
    for cids in shapes.values():
        for cid in cids:
            hashes[array_sha256(task.image(cid))] = cid
    for pid in pool_ids:
        if tuple(pool.image(pid).shape) in shapes:
            same = hashes.get(array_sha256(pool.image(pid)))
            if same is not None and same not in found:
                found[same] = f"{same} = {pid} (same cached array)"
    return [found[c] for c in test_ids if c in found]


def check_pool(task: Any, test_ids: Sequence[str], pool: Any, pool_ids: Sequence[str]) -> None:
    """Refuse, in one line, a pool that holds any of the task's test cases."""
    both = pool_overlap(task, test_ids, pool, pool_ids)
    if both:
        raise PimpicError(
            f"{pool.root}: the pretraining pool holds {len(both)} of the task's test case(s) "
            f"({'; '.join(both[:5])}{'; …' if len(both) > 5 else ''}); remove them from the "
            "pool or evaluate on other cases")
