"""``pimpic prepare``: preprocess a whole dataset into a cache (layout: :mod:`pimpic.data.cache`).

Cases run in worker processes (one case each, via :func:`load_and_preprocess`) with a progress
bar. Each case is written into a hidden temporary folder and renamed into place, so a killed
run never leaves a half-written case. A case is *finished* when its ``meta.json`` exists and
records the same settings and source file; a rerun skips finished cases and redoes only
missing or stale ones, then rewrites the manifest listing every finished case. A cache made with
other settings is never mixed into: that is an error.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from pimpic import __version__
from pimpic.data.cache import CASES_DIR, MANIFEST, SPLITS
from pimpic.data.datasets import read_dataset
from pimpic.data.preprocess import Settings, load_and_preprocess
from pimpic.data.splits import fraction_cases, make_splits, validate_splits
from pimpic.errors import PimpicError
from pimpic.io import read_json, write_json

CACHE_VERSION = 1
TMP_PREFIX = ".tmp-"


def prepare(
    src: str | Path,
    out: str | Path,
    settings: Settings = Settings(),
    layout: str | None = None,
    workers: int = 2,
    skip_bad: bool = False,
    seed: int = 0,
    splits_file: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Preprocess every case of dataset ``src`` into cache folder ``out``.

    Args:
        src: dataset root (MSD, KiTS19, nnU-Net raw or a folder of NIfTI files).
        out: cache folder (created; an existing cache must have the same ``settings``).
        settings: spacing / HU window / crop / dtype.
        layout: force a dataset layout instead of detecting it.
        workers: worker processes (1 = run in this process).
        skip_bad: carry on past bad cases and list them, instead of stopping at the first.
        seed: seed of the train/val/test split.
        splits_file: a user split (``{"train", "val", "test"}`` id lists) used instead.
        progress: show a progress bar.

    Returns:
        report ``{"out", "layout", "n_cases", "processed", "skipped", "bad": [{"id", "error"}],
        "splits": {"train", "val", "test"} sizes or None, "seconds"}``.
    """
    t0 = time.perf_counter()
    out = Path(out)
    layout, cases = read_dataset(src, layout)
    user_splits = _read_user_splits(splits_file) if splits_file is not None else None
    _check_out(out, settings)
    cases_dir = out / CASES_DIR
    cases_dir.mkdir(parents=True, exist_ok=True)
    for leftover in cases_dir.glob(TMP_PREFIX + "*"):
        shutil.rmtree(leftover, ignore_errors=True)

    finished = {c["id"] for c in cases if _is_finished(cases_dir / c["id"], c, settings)}
    # the manifest goes first, so a rerun with other settings is refused even after a crash
    _write_manifest(out, src, layout, settings, [c["id"] for c in cases if c["id"] in finished])
    todo = [c for c in cases if c["id"] not in finished]
    bad = _run(todo, cases_dir, settings, workers, skip_bad, progress, finished)
    done_ids = [c["id"] for c in cases if c["id"] in finished]
    _write_manifest(out, src, layout, settings, done_ids)
    if bad and not skip_bad:
        raise PimpicError(f"{bad[0]['error']} (finished cases are kept; fix it and rerun, "
                          "or pass --skip-bad)")

    labelled = [c["id"] for c in cases if c["id"] in finished and c["label"] is not None]
    split_sizes = _write_splits(out, done_ids, labelled, seed, user_splits, splits_file)
    return {
        "out": str(out), "layout": layout, "n_cases": len(cases),
        "processed": len(todo) - len(bad), "skipped": len(cases) - len(todo), "bad": bad,
        "splits": split_sizes, "seconds": round(time.perf_counter() - t0, 2),
    }


def _check_out(out: Path, settings: Settings) -> None:
    """``out`` must be new, empty, or a cache made with the same settings."""
    manifest = out / MANIFEST
    if manifest.is_file():
        data = read_json(manifest)
        if not isinstance(data, dict) or data.get("format") != "pimpic-cache":
            raise PimpicError(f"{manifest}: not a pimpic cache manifest; choose another --out")
        old = data.get("settings", {})
        try:
            same = Settings.from_dict(old) == settings
        except (PimpicError, TypeError):
            same = False
        if not same:
            raise PimpicError(f"{out}: cache made with other settings ({_fmt(old)}) than "
                              f"requested ({_fmt(settings.to_dict())}); use another --out")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PimpicError(f"{out}: exists and is not a pimpic cache; choose another --out")


def _fmt(settings: Any) -> str:
    if not isinstance(settings, dict):
        return str(settings)
    return ", ".join(f"{k}={v}" for k, v in settings.items())


def _source_id(case: dict[str, Any]) -> dict[str, Any]:
    """What identifies a case's source: file names and sizes (a changed file is redone)."""
    def size(p: Path | None) -> int | None:
        return p.stat().st_size if p is not None and p.is_file() else None

    return {"source_image": str(case["image"]), "source_label":
            str(case["label"]) if case["label"] is not None else None,
            "source_bytes": [size(case["image"]), size(case["label"])]}


def _is_finished(d: Path, case: dict[str, Any], settings: Settings) -> bool:
    if not (d / "meta.json").is_file() or not (d / "image.npy").is_file():
        return False
    try:
        meta = read_json(d / "meta.json")
    except PimpicError:
        return False
    src = _source_id(case)
    return bool(meta.get("settings") == settings.to_dict()
                and Path(meta.get("source_image", "")).name == Path(src["source_image"]).name
                and meta.get("source_bytes") == src["source_bytes"]
                and meta.get("has_label") == (case["label"] is not None))


def _process(case: dict[str, Any], cases_dir: Path, settings: Settings) -> str | None:
    """Preprocess and write one case; returns the error message of a bad case, else None."""
    try:
        image, label, meta = load_and_preprocess(case["image"], case["label"], settings,
                                                 case.get("label_values"))
    except PimpicError as err:
        return f"case {case['id']}: {err}"
    except Exception as err:  # a bad case must not take the others down (--skip-bad)
        return f"case {case['id']}: {case['image']}: unexpected {type(err).__name__}: {err}"
    tmp = cases_dir / f"{TMP_PREFIX}{case['id']}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        np.save(tmp / "image.npy", image.astype(settings.dtype))
        if label is not None:
            np.save(tmp / "label.npy", label)
        meta = {"id": case["id"], **meta, **_source_id(case), "settings": settings.to_dict(),
                "pimpic_version": __version__}
        write_json(tmp / "meta.json", meta)
        final = cases_dir / case["id"]
        if final.exists():  # stale: made from an older source file
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return None


def _init_worker() -> None:
    import torch

    # each worker is one case at a time; the parallelism is across processes
    torch.set_num_threads(1)


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
                                    initializer=_init_worker) as pool:
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


def _write_manifest(out: Path, src: str | Path, layout: str, settings: Settings,
                    ids: list[str]) -> None:
    write_json(out / MANIFEST, {
        "format": "pimpic-cache", "version": CACHE_VERSION, "pimpic_version": __version__,
        "settings": settings.to_dict(), "source": str(Path(src).resolve()), "layout": layout,
        "cases": ids,
    })


def _read_user_splits(path: str | Path) -> dict[str, Any]:
    data = read_json(path)
    if not isinstance(data, dict):
        raise PimpicError(f"{path}: a split file must be a JSON object with train/val/test lists")
    return data


def _write_splits(out: Path, done_ids: list[str], labelled: list[str], seed: int,
                  user: dict[str, Any] | None,
                  user_path: str | Path | None) -> dict[str, int] | None:
    """Write ``splits.json``: the user's split, or a seeded 70/10/20 split of the cases.

    Splits are made over the labelled cases when there are any (fine-tuning and evaluation need
    labels); unlabelled extras are listed under ``"unlabelled"``. An unchanged split is kept.
    """
    pool = labelled if labelled else done_ids
    if user is not None:
        validate_splits(user, pool, user_path or "splits")
        splits = dict(user)
        splits.setdefault("seed", None)
        splits["fractions"] = {str(p): fraction_cases(splits, p) for p in (5, 10, 20, 50, 100)}
    else:
        if len(pool) < 3:
            return None
        splits = make_splits(pool, seed=seed)
    extra = [c for c in done_ids if c not in set(pool)]
    if extra:
        splits["unlabelled"] = extra
    path = out / SPLITS
    if not (path.is_file() and read_json(path) == splits):
        write_json(path, splits)
    return {k: len(splits[k]) for k in ("train", "val", "test")}
