"""``pimpic prepare``: preprocess a whole dataset into a cache (layout: :mod:`pimpic.data.cache`).

Cases run in worker processes (one case each, via :func:`load_and_preprocess`) with a progress
bar. Each case is written into a hidden temporary folder, fsynced, and renamed into place, so a
killed run or a power cut never leaves a half-written case. One ``prepare`` at a time writes a
cache: it holds an exclusive lock on ``.prepare.lock`` and a second one is refused; its
workers do not inherit the lock, and exit when it dies (:func:`pimpic.io.acquire_lock`,
:func:`_init_worker`).

Images without labels can join a labelled dataset's cases (``unlabelled``: ``prepare SRC
--unlabelled DIR``): every NIfTI image of each folder, read as the ``folder`` layout reads it
(its case id from its file name), is cached beside SRC's cases with the same preprocessing and
hashes, as an unlabelled case. The labelled cases are split as without them (same split, same
digest); the others are listed under the split's ``unlabelled``, the pretraining pool's
archive (:attr:`pimpic.data.splits.Split.unlabelled`). An unlabelled id that is already a case's
id, or an unlabelled image with the same source voxels (``content_sha256``) as a labelled case
— the same scan twice, which would carry an evaluation patient into a pool that should not
hold one — is a one-line error naming both files. The manifest records the folders.

A case is *finished* when its ``meta.json`` records the same settings and the same input files.
Each input is recorded by size, ``mtime_ns`` and SHA-256: a file whose size and mtime are
unchanged is taken as unchanged (no read); one whose mtime moved is hashed, and only a changed
hash makes the case stale. A rerun skips finished cases, redoes missing and stale ones (and
says why), then rewrites the manifest listing every finished case. A cache made with other
settings is never mixed into: that is an error.

Nothing outside the cache's ``cases/`` folder is ever deleted, and inside it only a case folder
being replaced or a temporary folder (:func:`_remove`), each checked to sit directly in
``cases/`` first. The split is written once and then kept (:func:`pimpic.data.splits.settle_split`).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pimpic import __version__
from pimpic.data.cache import CASES_DIR, LOCK, MANIFEST, SPLITS, Cache, write_manifest
from pimpic.data.datasets import check_case_ids, read_dataset, read_labels
from pimpic.data.labels import LabelSet
from pimpic.data.preprocess import Settings, content_sha256, load_and_preprocess
from pimpic.data.splits import check_split_request, read_split_file, settle_split, split_digest
from pimpic.errors import PimpicError
from pimpic.io import (
    exclusive_lock,
    file_digest,
    file_fingerprint,
    fsync_dir,
    naming,
    read_json,
    save_npy,
    write_json,
)

TMP_PREFIX = ".tmp-"
INPUTS = ("image", "label")


def prepare(
    src: str | Path,
    out: str | Path,
    settings: Settings = Settings(),
    layout: str | None = None,
    workers: int = 2,
    skip_bad: bool = False,
    seed: int | None = None,
    splits_file: str | Path | None = None,
    resplit: bool = False,
    progress: bool = True,
    unlabelled: Sequence[str | Path] = (),
) -> dict[str, Any]:
    """Preprocess every case of dataset ``src`` into cache folder ``out``.

    Args:
        src: dataset root (MSD, KiTS19, nnU-Net raw or a folder of NIfTI files).
        out: cache folder (created; an existing cache must have the same ``settings``).
        settings: spacing / HU window / crop / dtype.
        layout: force a dataset layout instead of detecting it.
        workers: worker processes (1 = run in this process).
        skip_bad: carry on past bad cases and list them, instead of stopping at the first.
        seed: seed of a new train/val/test split (None: 0, or the saved split's).
        splits_file: a user split (pimpic's or the released format, see
            :mod:`pimpic.data.splits`) used instead of a seeded one.
        resplit: recompute the split even though the cache has one (cases may move). Without
            it a saved split is kept, and a run that would change it is refused.
        progress: show a progress bar.
        unlabelled: folders of NIfTI images cached beside ``src``'s cases without labels
            (listed under the split's ``unlabelled``; module docstring).

    Returns:
        report ``{"out", "layout", "n_cases", "processed", "skipped", "bad": [{"id", "error"}],
        "redone": {id: why} (finished cases whose inputs changed), "splits": {"train", "val",
        "test"[, "unlabelled"]} sizes or None, "split_status": kept/updated (unlabelled cases
        added)/new/recomputed/none, "split_digest",
        "labels" (the named structures, e.g. ``"1 brainstem, 2 spinal_cord"``; None for an
        unlabelled folder), "seconds"}``.
    """
    t0 = time.perf_counter()
    out = Path(out)
    layout, cases = read_dataset(src, layout)
    labels = read_labels(src, layout)
    folders = list(dict.fromkeys(str(Path(d).resolve()) for d in unlabelled))
    extra = _unlabelled_cases(cases, folders)
    cases = [*cases, *extra]
    user = read_split_file(splits_file) if splits_file is not None else None
    _check_out(out, settings, labels, folders, resplit)
    out.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out / LOCK, "`pimpic prepare`"):
        # again under the lock: another run may have written it
        _check_out(out, settings, labels, folders, resplit)
        saved = read_json(out / SPLITS) if (out / SPLITS).is_file() else None
        check_split_request(saved, user, seed, resplit, out / SPLITS)
        cases_dir = out / CASES_DIR
        cases_dir.mkdir(exist_ok=True)
        for leftover in cases_dir.glob(TMP_PREFIX + "*"):
            _remove(leftover, cases_dir)

        finished: set[str] = set()
        redone: dict[str, str] = {}
        for c in cases:
            why = _stale_reason(cases_dir / c["id"], c, settings)
            if why is None:
                finished.add(c["id"])
            elif why:
                redone[c["id"]] = why
        # the manifest goes first, so a rerun with other settings is refused even after a crash
        source = str(Path(src).resolve())
        write_manifest(out, settings.to_dict(), [c["id"] for c in cases if c["id"] in finished],
                       source=source, layout=layout, labels=labels, unlabelled=folders)
        todo = [c for c in cases if c["id"] not in finished]
        bad = _run(todo, cases_dir, settings, workers, skip_bad, progress, finished)
        if not bad or skip_bad:
            bad += _same_scans(cases, extra, finished, cases_dir)
        done_ids = [c["id"] for c in cases if c["id"] in finished]
        write_manifest(out, settings.to_dict(), done_ids, source=source, layout=layout,
                       labels=labels, unlabelled=folders)
        if bad and not skip_bad:
            raise PimpicError(f"{bad[0]['error']} (finished cases are kept; fix it and rerun, "
                              "or pass --skip-bad)")

        labelled = [c["id"] for c in cases if c["id"] in finished and c["label"] is not None]
        split, status = settle_split(saved, user, done_ids, labelled, seed, resplit,
                                     out / SPLITS, splits_file or "--splits")
        if split is not None and status != "kept":
            write_json(out / SPLITS, split)
    return {
        "out": str(out), "layout": layout, "n_cases": len(cases),
        "processed": len(todo) - len(bad), "skipped": len(cases) - len(todo), "bad": bad,
        "redone": {k: v for k, v in redone.items() if k in finished},
        "splits": _sizes(split) if split else None,
        "split_status": status, "split_digest": split_digest(split) if split else None,
        "labels": labels.names() if labels is not None else None,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _sizes(split: dict[str, Any]) -> dict[str, int]:
    """Cases per part; ``unlabelled`` only when the split lists some."""
    sizes = {k: len(split[k]) for k in ("train", "val", "test")}
    if split.get("unlabelled"):
        sizes["unlabelled"] = len(split["unlabelled"])
    return sizes


def _unlabelled_cases(labelled: list[dict[str, Any]], folders: Sequence[str]
                      ) -> list[dict[str, Any]]:
    """The images of each of ``folders`` as unlabelled cases (the ``folder`` layout's reader
    and ids); an id that another case has already is a one-line error naming both files."""
    seen = {c["id"]: c for c in labelled}
    extra: list[dict[str, Any]] = []
    for folder in folders:
        _, found = read_dataset(folder, "folder")
        for case in found:
            other = seen.setdefault(case["id"], case)
            if other is not case:
                raise PimpicError(f"{case['image']}: unlabelled case id {case['id']!r} is "
                                  f"already the id of {other['image']}; rename one of them")
        extra += found
    check_case_ids([*labelled, *extra], folders[0] if folders else ".")  # case-folded clashes
    return extra


def _same_scans(cases: list[dict[str, Any]], extra: list[dict[str, Any]], finished: set[str],
                cases_dir: Path) -> list[dict[str, str]]:
    """Finished unlabelled cases (``extra``) whose source voxels equal a labelled case's
    (``content_sha256``): each is removed from the cache and reported as a bad case."""
    if not extra:
        return []

    def content(cid: str) -> str | None:
        try:
            sha = read_json(cases_dir / cid / "meta.json").get("content_sha256")
        except (PimpicError, AttributeError):
            return None
        return str(sha) if sha else None

    scans: dict[str, dict[str, Any]] = {}
    for c in cases:
        if c["label"] is not None and c["id"] in finished:
            sha = content(c["id"])
            if sha is not None:
                scans.setdefault(sha, c)
    bad = []
    for c in extra:
        same = scans.get(content(c["id"]) or "") if c["id"] in finished else None
        if same is not None:
            _remove(cases_dir / c["id"], cases_dir)
            finished.discard(c["id"])
            bad.append({"id": c["id"], "error": f"case {c['id']}: {c['image']}: the same scan "
                        f"as labelled case {same['id']} ({same['image']}; equal source voxels, "
                        "content_sha256); remove it from the unlabelled folder"})
    return bad


def _check_out(out: Path, settings: Settings, labels: LabelSet | None,
               unlabelled: Sequence[str] = (), resplit: bool = False) -> None:
    """``out`` must be new, empty, or a cache made with the same settings and labels, and
    (unless ``resplit``) from at least the unlabelled folders it was made from."""
    manifest = out / MANIFEST
    if manifest.is_file():
        data = read_json(manifest)
        if not Cache.is_manifest(data):
            raise PimpicError(f"{manifest}: not a pimpic cache manifest; choose another --out")
        dropped = [d for d in data.get("unlabelled") or () if d not in unlabelled]
        if dropped and not resplit:
            raise PimpicError(f"{out}: the cache holds the unlabelled images of {dropped[0]}; "
                              f"pass --unlabelled {dropped[0]} again (or --resplit to drop them)")
        old = data.get("settings", {})
        try:
            same = Settings.from_dict(old) == settings
        except (PimpicError, TypeError):
            same = False
        if not same:
            raise PimpicError(f"{out}: cache made with other settings ({_fmt(old)}) than "
                              f"requested ({_fmt(settings.to_dict())}); use another --out")
        had = Cache(out).labels if "labels" in data else labels  # older caches: not recorded
        differ = (had is None) != (labels is None) or (
            had is not None and labels is not None and not had.matches(labels))
        if differ:
            raise PimpicError(f"{out}: cache made from a dataset with other labels "
                              f"({had.names() if had else 'none'}, now "
                              f"{labels.names() if labels else 'none'}); use another --out")
    elif out.exists() and (not out.is_dir() or any(not _ours(p) for p in out.iterdir())):
        raise PimpicError(f"{out}: exists and is not a pimpic cache; choose another --out")


def _ours(path: Path) -> bool:
    """What a run that stopped before writing its manifest leaves: the lock, an empty cases/."""
    return path.name == LOCK or (path.name == CASES_DIR and path.is_dir()
                                 and not any(path.iterdir()))


def _fmt(settings: Any) -> str:
    if not isinstance(settings, dict):
        return str(settings)
    return ", ".join(f"{k}={v}" for k, v in settings.items())


def _remove(path: Path, cases_dir: Path) -> None:
    """Delete one folder pimpic wrote: a case or temporary folder directly inside ``cases/``.

    Anything else — ``cases/`` itself, a path outside it, a symlink — is refused, so no case id
    or leftover name can ever make ``prepare`` delete more than one case.
    """
    inside = (path.name not in ("", ".", "..") and not path.is_symlink() and path.is_dir()
              and path.parent.resolve() == cases_dir.resolve())
    if not inside:
        raise PimpicError(f"{path}: refusing to delete it (not a case folder directly inside "
                          f"{cases_dir})")
    shutil.rmtree(path)


def _stale_reason(d: Path, case: dict[str, Any], settings: Settings) -> str | None:
    """None if case folder ``d`` is finished and current; ``""`` if it is missing or
    incomplete; otherwise why it must be redone. An input whose mtime moved but whose content
    did not is recorded again, so the next run need not hash it, and a case cached before
    ``content_sha256`` existed gets it (from its unchanged image) without being redone."""
    if not (d / "meta.json").is_file() or not (d / "image.npy").is_file():
        return ""
    try:
        meta = read_json(d / "meta.json")
    except PimpicError:
        return ""
    if not isinstance(meta, dict) or meta.get("settings") != settings.to_dict():
        return "made with other settings"
    recorded = meta.get("sources")
    if not isinstance(recorded, dict):
        return "made by an older pimpic (inputs not fingerprinted)"
    refreshed = False
    for key in INPUTS:
        path, rec = case[key], recorded.get(key)
        if (path is None) != (rec is None):
            return f"{key} {'added' if rec is None else 'removed'}"
        if path is None:
            continue
        if not isinstance(rec, dict):
            return ""
        if Path(meta.get(f"source_{key}") or "").name != Path(path).name:
            return f"{key} file renamed"
        try:
            st = os.stat(path)
            if st.st_size != rec.get("size"):
                return f"{key} changed"
            if st.st_mtime_ns == rec.get("mtime_ns"):
                continue
            if file_digest(path) != rec.get("sha256"):
                return f"{key} changed"
        except OSError:
            return ""  # unreadable now: processing reports it
        rec["mtime_ns"] = st.st_mtime_ns
        refreshed = True
    if not meta.get("content_sha256"):  # cached by an older pimpic: the leakage guard needs it
        try:
            meta["content_sha256"] = content_sha256(case["image"])
        except PimpicError:
            return ""
        refreshed = True
    if refreshed:
        write_json(d / "meta.json", meta)
    return None


def _process(case: dict[str, Any], cases_dir: Path, settings: Settings) -> str | None:
    """Preprocess and write one case; returns the error message of a bad case, else None."""
    try:
        # fingerprints first: a file changed while it is read looks stale next time
        sources = {k: file_fingerprint(case[k]) if case[k] is not None else None
                   for k in INPUTS}
    except OSError:
        sources = None  # a missing file: load_and_preprocess names it
    except PimpicError as err:
        return f"case {case['id']}: {err}"
    try:
        image, label, meta = load_and_preprocess(case["image"], case["label"], settings,
                                                 case.get("label_values"))
    except PimpicError as err:
        return f"case {case['id']}: {err}"
    except Exception as err:  # a bad case must not take the others down (--skip-bad)
        return f"case {case['id']}: {case['image']}: unexpected {type(err).__name__}: {err}"
    if sources is None:
        return f"case {case['id']}: {case['image']}: an input file vanished while it was read"
    tmp = cases_dir / f"{TMP_PREFIX}{case['id']}-{os.getpid()}"
    if tmp.exists():
        _remove(tmp, cases_dir)
    final = cases_dir / case["id"]
    try:
        with naming(final, tmp):  # a full disk names the case folder, not the temporary one
            tmp.mkdir()
            save_npy(tmp / "image.npy", image.astype(settings.dtype))
            if label is not None:
                save_npy(tmp / "label.npy", label)
            meta = {"id": case["id"], **meta, "source_image": str(case["image"]),
                    "source_label": str(case["label"]) if case["label"] is not None else None,
                    "sources": sources, "settings": settings.to_dict(),
                    "pimpic_version": __version__}
            write_json(tmp / "meta.json", meta)
            fsync_dir(tmp)
            if final.exists():  # stale: made from older inputs or settings
                _remove(final, cases_dir)
            os.replace(tmp, final)
            fsync_dir(cases_dir)
    finally:
        if tmp.exists():
            _remove(tmp, cases_dir)
    return None


def _init_worker(parent: int, interval_s: float = 1.0) -> None:
    """Set up a worker: one thread for torch, and exit as soon as ``parent`` is gone (a
    ``prepare`` killed by a signal or a batch system's time-out must not leave its workers
    running, orphaned, for ever)."""
    import torch

    # each worker is one case at a time; the parallelism is across processes
    torch.set_num_threads(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _run(todo: list[dict[str, Any]], cases_dir: Path, settings: Settings, workers: int,
         skip_bad: bool, progress: bool, finished: set[str]) -> list[dict[str, str]]:
    """Process ``todo``; adds finished ids to ``finished`` and returns the bad cases."""
    from tqdm.auto import tqdm

    bad: list[dict[str, str]] = []
    bar = tqdm(total=len(todo), desc="prepare", unit="case", disable=not progress or not todo)

    def record(cid: str, error: str | None) -> None:
        if error is None:
            finished.add(cid)
        else:
            bad.append({"id": cid, "error": error})
        bar.update(1)

    try:
        if workers <= 1 or len(todo) <= 1:
            for case in todo:
                record(case["id"], _process(case, cases_dir, settings))
                if bad and not skip_bad:
                    break
            return bad
        # fork starts workers in milliseconds (spawn re-imports torch + MONAI per worker, many
        # seconds); workers reset their thread pools, as torch's own DataLoader workers do
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with cf.ProcessPoolExecutor(min(workers, len(todo)), mp_context=ctx,
                                    initializer=_init_worker,
                                    initargs=(os.getpid(),)) as pool:
            futures = {pool.submit(_process, c, cases_dir, settings): c["id"] for c in todo}
            for fut in cf.as_completed(futures):
                record(futures[fut], fut.result())
                if bad and not skip_bad:
                    pool.shutdown(wait=True, cancel_futures=True)
                    for f, cid in futures.items():  # cases that finished while shutting down
                        if f.done() and not f.cancelled() and cid not in finished \
                                and f is not fut and f.result() is None:
                            finished.add(cid)
                    break
        return bad
    finally:
        bar.close()
