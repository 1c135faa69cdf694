"""The leakage guard between a pretraining pool and a task's held-out cases.

A test case of the task that was also in an encoder's pretraining pool would have been seen in
pretraining, and its score would flatter the encoder. The same scan often sits in two
collections under different names, file formats, integer types or cache settings, so ids alone
do not find it. A test case counts as in the pool when

* its **case id** is a pool case id, or
* its **content** equals a pool case's: ``content_sha256``, the SHA-256 of the source voxels as
  float32 after RAS reorientation, before resampling, windowing, cropping or the cache's dtype
  (recorded per case by ``pimpic prepare``, :func:`pimpic.data.preprocess.content_sha256`), or
* its **input file** has the SHA-256 of a pool case's input (``sources.image.sha256``), or
* (pools checked directly, as ``pimpic experiment`` does) its **cached array** equals a pool
  case's: same shape, dtype and bytes. Only pool arrays whose shape equals a test array's shape
  are read, so the check costs almost nothing on a real pool.

Where an encoder meets a test split (``pimpic finetune``, ``pimpic evaluate`` and every cell of
``pimpic experiment``), the pool is what the encoder records about itself: ``pretrain_cases``
and ``pretrain_hashes`` (:func:`pool_record`: id → ``{"content", "input"}``) in its metadata,
written by pretraining. The pool needs not exist any more.

An encoder pretrained on every cached case of the task (``pimpic pretrain --pool all``, which
it records as ``pretrain_pool: all``) holds the evaluation patients' images — never their
labels — on purpose: transductive pretraining. It is refused like any other unless the user
says so (``allow_transductive``: ``--allow-transductive``, or ``pretrain_pool: all`` in an
experiment); then it is accepted with one warning per task and split
(:func:`warn_transductive`). An encoder whose pool holds test cases without recording that
choice (a renamed copy, a separate pool) is refused whatever is allowed.

What cannot be compared is said, never passed over: a pool case without a content hash (an
nnU-Net preprocessed pool whose raw images are not found, a cache or an encoder made by an
older pimpic) and test cases without one are compared by what they have (id, input file) and
a warning names how many.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pimpic.data.sources import VolumeSource
from pimpic.errors import PimpicError

log = logging.getLogger(__name__)

#: what a case's identity holds: the content hash and the input file's hash (None: unknown)
Hashes = dict[str, str | None]


def case_hashes(source: VolumeSource, case_id: str) -> Hashes:
    """``{"content", "input"}`` SHA-256s of one case of a source (a cache records them per case
    in ``meta.json``; an nnU-Net preprocessed folder hashes the raw image)."""
    return source.case_hashes(case_id)


def pool_record(source: VolumeSource, case_ids: Sequence[str]) -> dict[str, Hashes]:
    """id → :func:`case_hashes` of every pool case: what an encoder records as
    ``pretrain_hashes`` (no paths or times, so equal runs write equal files)."""
    return {cid: case_hashes(source, cid) for cid in case_ids}


def array_sha256(image: Any) -> str:
    """SHA-256 of an image's shape, dtype and voxel bytes."""
    arr = np.ascontiguousarray(np.asarray(image))
    h = hashlib.sha256(f"{arr.shape}|{arr.dtype.str}|".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def record_overlap(pool_ids: Sequence[str], pool: Mapping[str, Mapping[str, Any]],
                   task: VolumeSource, test_ids: Sequence[str]) -> list[str]:
    """``"<test id> = <pool id> (by id | same voxels | same input file SHA-256)"`` for every
    test case of ``task`` found in a pool given by its ids and :func:`pool_record`; unknown
    hashes never match. Warns when some cases could not be compared by content."""
    found: dict[str, str] = {}
    ids = set(pool_ids)
    index: dict[tuple[str, str], str] = {}
    for pid in pool_ids:
        rec = pool.get(pid) or {}
        for kind in ("content", "input"):
            if isinstance(rec.get(kind), str):
                index.setdefault((kind, rec[kind]), pid)
    how = {"content": "same voxels", "input": "same input file SHA-256"}
    unknown = 0
    for cid in test_ids:
        if cid in ids:
            found[cid] = f"{cid} = {cid} (by id)"
            continue
        mine = case_hashes(task, cid)
        unknown += mine["content"] is None
        for kind in ("content", "input"):
            sha = mine[kind]
            same = index.get((kind, sha)) if sha else None
            if same is not None:
                found[cid] = f"{cid} = {same} ({how[kind]})"
                break
    blind = sum(not isinstance((pool.get(p) or {}).get("content"), str) for p in pool_ids)
    if blind or unknown:
        log.warning(
            "leakage check incomplete: %s; those were compared by case id and input file only "
            "(rerun `pimpic prepare` on a cache made by an older pimpic; for an nnU-Net "
            "preprocessed pool, set nnUNet_raw to its raw dataset before pretraining)",
            " and ".join(x for x in (
                f"{blind} of {len(pool_ids)} pretraining case(s) have no content hash"
                if blind else "",
                f"{unknown} of {len(test_ids)} test case(s) of {task.root} "
                "have none" if unknown else "") if x))
    return [found[c] for c in test_ids if c in found]


def pool_overlap(task: VolumeSource, test_ids: Sequence[str], pool: VolumeSource,
                 pool_ids: Sequence[str]) -> list[str]:
    """:func:`record_overlap` of a pool at hand (a cache or an nnU-Net preprocessed folder),
    and, for a cache, cached arrays equal to a test case's (``same cached array``)."""
    found: dict[str, str] = {}
    for line in record_overlap(pool_ids, pool_record(pool, pool_ids), task, test_ids):
        found[line.split(" = ", 1)[0]] = line
    if hasattr(pool, "meta"):  # a pimpic cache: its arrays are comparable with the task's
        shapes: dict[tuple[int, ...], list[str]] = {}
        for cid in test_ids:
            if cid not in found:
                shapes.setdefault(tuple(task.image(cid).shape), []).append(cid)
        hashes = {array_sha256(task.image(cid)): cid for cids in shapes.values() for cid in cids}
        for pid in pool_ids:
            if tuple(pool.image(pid).shape) in shapes:
                same = hashes.get(array_sha256(pool.image(pid)))
                if same is not None and same not in found:
                    found[same] = f"{same} = {pid} (same cached array)"
    return [found[c] for c in test_ids if c in found]


#: the ``pretrain_pool`` an encoder records when it was pretrained on every cached case
TRANSDUCTIVE = "all"
_warned: set[tuple[str, str]] = set()


def _refusal(where: Any, what: str, both: list[str], split: str = "test",
             advice: str = "") -> PimpicError:
    return PimpicError(
        f"{where}: {what} holds {len(both)} of the task's {split} case(s) "
        f"({'; '.join(both[:5])}{'; …' if len(both) > 5 else ''}); "
        + (advice or "remove them from the pool and pretrain again, or evaluate on other cases"))


def warn_transductive(task_root: Any, split: str, n: int) -> None:
    """Log, once per task and split in this process (not once per cell of a grid), that
    pretraining saw the images of ``n`` of the task's ``split`` cases, as the user chose."""
    key = (str(Path(task_root).resolve()), split)
    if key in _warned:
        return
    _warned.add(key)
    log.warning("transductive pretraining: the pretraining pool holds the images (never the "
                "labels) of %d %s case(s) of %s; accepted as configured (--allow-transductive "
                "/ pretrain_pool: all)", n, split, task_root)


def check_pool(task: VolumeSource, test_ids: Sequence[str], pool: VolumeSource,
               pool_ids: Sequence[str]) -> None:
    """Refuse, in one line, a pool that holds any of the task's test cases."""
    both = pool_overlap(task, test_ids, pool, pool_ids)
    if both:
        raise _refusal(pool.root, "the pretraining pool", both)


def check_encoder_pool(where: Any, encoder_meta: Mapping[str, Any] | None, task: VolumeSource,
                       test_ids: Sequence[str], split: str = "test",
                       allow_transductive: bool = False) -> list[str]:
    """Refuse, in one line naming ``where``, an encoder (its metadata) pretrained on any of
    ``test_ids`` (the task's ``split``), compared by id and by the hashes it records
    (:func:`pool_record`) — unless it records ``pretrain_pool: all`` and
    ``allow_transductive`` accepts that (module docstring).

    Returns:
        the accepted overlaps (``"<test id> = <pool id> (how)"``; empty: none).
    """
    if not encoder_meta:
        return []
    pool_ids = [str(c) for c in encoder_meta.get("pretrain_cases") or ()]
    hashes = encoder_meta.get("pretrain_hashes")
    if not isinstance(hashes, dict):
        hashes = {}
    both = record_overlap(pool_ids, hashes, task, test_ids)
    if not both:
        return []
    what = "the encoder's pretraining pool"
    if encoder_meta.get("pretrain_pool") != TRANSDUCTIVE:
        advice = ("; --allow-transductive accepts only an encoder pretrained with --pool all, "
                  "which this one does not record" if allow_transductive else "")
        raise _refusal(where, what, both, split, advice and
                       "remove them from the pool and pretrain again, or evaluate on other "
                       "cases" + advice)
    if not allow_transductive:
        raise _refusal(where, f"{what} (--pool all: every cached case)", both, split,
                       "pass --allow-transductive (in an experiment: pretrain_pool: all) to "
                       "accept transductive pretraining deliberately, or pretrain with "
                       "--pool train or train+unlabelled")
    warn_transductive(task.root, split, len(both))
    return both
