"""Evaluation of a fine-tuned run on held-out cases, as in the paper (docs/method.md §8).

Per case: sliding-window inference with the model's own settings (training patch size; released
default: 50 % overlap, constant blending, only inside the body's bounding box), argmax,
optional largest-connected-component post-processing (:func:`pimpic.segmentation.inference.
largest_component` — the released code's version was a no-op, this one is tested), then Dice
and HD95 (mm) for organ (label 1), tumour (label 2) and whole organ (1 ∪ 2) with the NaN rules
of :mod:`pimpic.segmentation.metrics`. Metrics are computed in the preprocessed 1.5 mm space (as
the paper) or, with ``original_space=True``, after mapping the prediction back onto the original
label file's grid.

Writes ``RUN/eval-<split>/per_case.csv``, ``summary.json`` and ``pred/<case>.npy``, and the
marker ``.pimpic-eval`` that lets the run folder's ``--overwrite`` recognise the folder.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from pimpic.data.cache import Cache
from pimpic.data.leakage import check_encoder_pool
from pimpic.data.preprocess import to_original_grid
from pimpic.errors import PimpicError
from pimpic.io import atomic_open, write_json
from pimpic.paths import PER_CASE, PREDICTIONS, SUMMARY, eval_dir
from pimpic.segmentation.inference import predict_labels
from pimpic.segmentation.metrics import COLUMNS, case_metrics, format_table, summarise
from pimpic.segmentation.model_file import ModelInfo, load_model
from pimpic.training.device import resolve_device
from pimpic.training.run_folder import mark_evaluation

log = logging.getLogger(__name__)


def _check_held_out(run_dir: Path, split: str, case_ids: list[str], info: ModelInfo,
                    cache: Cache) -> None:
    """A case seen in fine-tuning (by id) or in pretraining (by id or content,
    :func:`pimpic.data.leakage.check_encoder_pool`) cannot measure generalisation."""
    both = [c for c in case_ids if c in set(info.train_cases)]
    if both:
        raise PimpicError(
            f"{run_dir}: split '{split}' has {len(both)} case(s) that were in the fine-tuning "
            f"set ({', '.join(both[:5])}{', …' if len(both) > 5 else ''}); evaluate on held-out "
            "cases (--split test)")
    check_encoder_pool(run_dir, info.pretrain_pool, cache, case_ids, split)


def _check_settings(cache: Cache, info: ModelInfo) -> None:
    want, have = info.settings, cache.settings
    for key in ("spacing", "window"):
        if key in want and key in have and not np.allclose(want[key], have[key]):
            raise PimpicError(f"{cache.root}: {key} {have[key]} differs from the run's "
                              f"{want[key]}; evaluate on a cache prepared like the training one")


def _resolve_label(cache: Cache, meta: Mapping[str, Any], case_id: str) -> Path:
    src = meta.get("source_label")
    if not src:
        raise PimpicError(f"{cache.case_dir(case_id)}: no 'source_label' in meta.json; "
                          "--original-space needs the original label file")
    path = Path(src)
    candidates = [path] if path.is_absolute() else [
        cache.root / path, Path(str(cache.manifest.get("source", ""))) / path]
    for p in candidates:
        if p.is_file():
            return p
    raise PimpicError(f"case {case_id!r}: original label file {src} not found")


def _original_space(cache: Cache, case_id: str, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                           list[float]]:
    """Prediction mapped onto the original grid, the original label and its spacing (mm)."""
    meta = cache.meta(case_id)
    path = _resolve_label(cache, meta, case_id)
    img: Any = nib.load(str(path))
    gt = np.asarray(img.dataobj).astype(np.int64)
    mapped = to_original_grid(pred, meta)
    if mapped.shape != gt.shape:
        raise PimpicError(f"{path}: label shape {gt.shape} differs from the case's original "
                          f"image shape {mapped.shape}")
    spacing = [float(s) for s in img.header.get_zooms()[:3]]
    return mapped, gt, spacing


def evaluate(
    run_dir: str | Path,
    *,
    split: str = "test",
    cache: str | Path | Cache | None = None,
    lcc: bool = False,
    original_space: bool = False,
    device: str = "auto",
    progress: bool = True,
    save_predictions: bool = True,
    absent: str = "zero",
    unfinished: bool = False,
) -> dict[str, Any]:
    """Evaluate the best model of ``run_dir`` on the cache's ``split`` cases.

    Args:
        run_dir: a fine-tuning run folder (with ``model.safetensors``).
        split: ``test`` (default), ``val`` or ``train``; cases seen in pretraining or
            fine-tuning are refused.
        cache: the cache to read (default: the run's own cache).
        lcc: keep only the largest connected component of the whole organ.
        original_space: compute metrics on the original image grid (needs the source labels).
        device: ``auto``, ``cpu``, ``cuda``, ...
        progress: show a progress bar.
        save_predictions: write ``pred/<case>.npy`` (preprocessed space, uint8).
        absent: the summary's rule for a structure absent from a case's ground truth: Dice 0
            (``zero``, released) or left out (``nan``); ``per_case.csv`` keeps NaN either way.
        unfinished: evaluate a run whose ``run.json`` says it has not finished (killed before
            its stopping rule; refused otherwise); the summary records ``"unfinished": true``.

    Returns:
        the summary dict (also written to ``eval-<split>/summary.json``). Dice is NaN (and
        excluded, counted in ``n_excluded``) where the ground truth lacks a structure; where
        the prediction misses a present structure Dice is 0 and HD95 NaN (``n_missed``).
    """
    run_dir = Path(run_dir)
    model, info = load_model(run_dir)
    if info.completed is False:
        if not unfinished:
            raise PimpicError(
                f"{run_dir}: fine-tuning has not finished (run.json: completed false, stopped "
                f"after {info.epochs} epoch(s)); resume it with `pimpic finetune CACHE --out "
                f"{run_dir} --resume`, or pass --unfinished to evaluate its best model so far")
        log.warning("%s: fine-tuning has not finished; evaluating its best model so far",
                    run_dir)
    if cache is None:
        if not info.cache:
            raise PimpicError(f"{run_dir}: run.json names no cache; pass --cache")
        cache = info.cache
    cache = cache if isinstance(cache, Cache) else Cache(cache)
    _check_settings(cache, info)
    splits = cache.splits()
    if split not in ("train", "val", "test"):
        raise PimpicError(f"split {split!r} is not one of train, val, test")
    case_ids = list(splits.get(split) or [])
    if not case_ids:
        raise PimpicError(f"{cache.root}: split '{split}' has no cases")
    _check_held_out(run_dir, split, case_ids, info, cache)
    missing = [c for c in case_ids if cache.label(c) is None]
    if missing:
        raise PimpicError(f"{cache.root}: case(s) without a label in split '{split}': "
                          f"{', '.join(missing[:5])}")

    dev = resolve_device(device)
    model.to(dev)
    out_dir = eval_dir(run_dir, split)
    if out_dir.exists() and not out_dir.is_dir():
        raise PimpicError(f"{out_dir}: exists and is not a folder; move it away to evaluate")
    mark_evaluation(out_dir)  # the run folder's --overwrite may remove it, and only it
    (out_dir / PREDICTIONS).mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for cid in tqdm(case_ids, disable=not progress, desc=f"evaluate {split}", unit="case"):
        pred = predict_labels(model, cache.image(cid), info.patch_size, **info.inference.window(),
                              device=dev, lcc=lcc)
        if save_predictions:
            with atomic_open(out_dir / PREDICTIONS / f"{cid}.npy", "wb") as fh:
                np.save(fh, pred)
        if original_space:
            p, gt, spacing = _original_space(cache, cid, pred)
        else:
            p, gt = pred, np.asarray(cache.label(cid))
            spacing = [float(s) for s in cache.meta(cid).get("spacing",
                                                             cache.settings["spacing"])]
        rows.append({"case": cid, **case_metrics(p, gt, spacing)})

    with atomic_open(out_dir / PER_CASE) as fh:
        writer = csv.DictWriter(fh, fieldnames=list(COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (v if isinstance(v, str) or not math.isnan(v) else "nan")
                             for k, v in row.items()})
    structures = summarise(rows, absent)
    summary = {"split": split, "n_cases": len(rows), "lcc": lcc, "absent": absent,
               "space": "original" if original_space else "preprocessed",
               "run": str(run_dir), "cache": str(cache.root), "structures": structures}
    if info.completed is False:
        summary["unfinished"] = True
    write_json(out_dir / SUMMARY, _nan_to_none(summary))
    return summary


def describe(summary: Mapping[str, Any]) -> str:
    """The summary as the ``evaluate`` command prints it: a header line, the table of
    :func:`~pimpic.segmentation.metrics.format_table` and the structures scored 0 or left
    out because the ground truth lacks them."""
    structures = summary["structures"]
    lines = [f"{summary['run']} — {summary['split']}: {summary['n_cases']} cases, "
             f"{summary['space']} space, lcc={summary['lcc']}"
             + (" — UNFINISHED run (its best model so far)" if summary.get("unfinished")
                else ""), format_table(structures)]
    excluded = {k: v["n_excluded"] for k, v in structures.items() if v["n_excluded"]}
    if excluded:
        rule = "scored 0" if summary["absent"] == "zero" else "excluded"
        lines.append(f"{rule} (structure absent from the ground truth): "
                     + ", ".join(f"{k} {v}" for k, v in excluded.items()))
    return "\n".join(lines)


def _nan_to_none(obj: Any) -> Any:
    """JSON has no NaN: undefined means are written as null."""
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj
