"""Evaluation of a fine-tuned run on held-out cases, as in the paper (docs/method.md §8).

Per case: sliding-window inference with the model's own settings (training patch size; released
default: 50 % overlap, constant blending, only inside the body's bounding box), argmax,
optional largest-connected-component post-processing (:func:`pimpic.segmentation.inference.
largest_component` — the released code's version was a no-op, this one is tested; of the whole
organ in the organ + tumour view, of each class otherwise), then every metric of
:data:`~pimpic.segmentation.metrics.METRICS` (Dice, HD95 in mm) for every structure the
dataset names (organ, tumour and whole organ for MSD Task07 / KiTS19-style data) with the NaN
rules of :mod:`pimpic.segmentation.metrics`. Metrics are computed in the preprocessed space (as
the paper) or, with ``original_space=True``, after mapping the prediction back onto the original
label file's grid.

The cases are a split of the run's cache (``eval-<split>/``) or, with ``data=DIR``, every
labelled case of another dataset (any layout ``pimpic prepare`` reads), preprocessed on the fly
with the model's own recorded settings (RAS orientation, spacing, HU window, body crop) and
scored the same way (``eval-data-<DIR name>/``): an external validation on patients that were
never in the model's cache. Its labels must be the model's.

Writes ``per_case.csv``, ``summary.json`` and ``pred/<case>.npy`` into that folder, and the
marker ``.pimpic-eval`` that lets the run folder's ``--overwrite`` recognise the folder.
"""

from __future__ import annotations

import csv
import functools
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from pimpic.data.cache import MANIFEST, Cache
from pimpic.data.datasets import read_dataset, read_labels
from pimpic.data.labels import ORGAN_TUMOUR_VIEW, LabelSet
from pimpic.data.leakage import check_encoder_pool
from pimpic.data.preprocess import Settings, load_and_preprocess, to_original_grid
from pimpic.errors import PimpicError
from pimpic.io import atomic_open, read_json, write_json
from pimpic.paths import PER_CASE, PREDICTIONS, SUMMARY, eval_dir
from pimpic.segmentation.inference import predict_labels
from pimpic.segmentation.metrics import case_metrics, columns, format_table, summarise
from pimpic.segmentation.model_file import ModelInfo, load_model
from pimpic.training.device import resolve_device
from pimpic.training.run_folder import mark_evaluation

log = logging.getLogger(__name__)


def _check_held_out(run_dir: Path, split: str, case_ids: list[str], info: ModelInfo,
                    cache: Cache, allow_transductive: bool = False) -> list[str]:
    """A case seen in fine-tuning (by id) or in pretraining (by id or content,
    :func:`pimpic.data.leakage.check_encoder_pool`) cannot measure generalisation; an encoder
    pretrained on every cached case is accepted with ``allow_transductive`` (the accepted
    overlaps are returned)."""
    both = [c for c in case_ids if c in set(info.train_cases)]
    if both:
        raise PimpicError(
            f"{run_dir}: split '{split}' has {len(both)} case(s) that were in the fine-tuning "
            f"set ({', '.join(both[:5])}{', …' if len(both) > 5 else ''}); evaluate on held-out "
            "cases (--split test)")
    return check_encoder_pool(run_dir, info.pretrain_pool, cache, case_ids, split,
                              allow_transductive=allow_transductive)


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


def _original_space(label_path: Path, meta: Mapping[str, Any], pred: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Prediction mapped onto the original grid, the original label and its spacing (mm)."""
    img: Any = nib.load(str(label_path))
    gt = np.asarray(img.dataobj).astype(np.int64)
    mapped = to_original_grid(pred, meta)
    if mapped.shape != gt.shape:
        raise PimpicError(f"{label_path}: label shape {gt.shape} differs from the case's "
                          f"original image shape {mapped.shape}")
    spacing = [float(s) for s in img.header.get_zooms()[:3]]
    return mapped, gt, spacing


@dataclass
class _Case:
    """One case to score: preprocessed image and label, its preprocessing metadata and the
    original label file (for ``original_space``)."""

    id: str
    image: np.ndarray
    label: np.ndarray
    meta: dict[str, Any]
    source_label: Callable[[], Path]


def _cache_cases(cache: Cache, case_ids: list[str]) -> Iterator[_Case]:
    for cid in case_ids:
        meta = cache.meta(cid)
        yield _Case(cid, cache.image(cid), np.asarray(cache.label(cid)), meta,
                    functools.partial(_resolve_label, cache, meta, cid))


def _data_cases(cases: list[dict[str, Any]], settings: Settings) -> Iterator[_Case]:
    for case in cases:
        image, label, meta = load_and_preprocess(case["image"], case["label"], settings,
                                                 case.get("label_values"))
        assert label is not None  # only labelled cases are listed
        yield _Case(case["id"], image, label, meta, functools.partial(Path, case["label"]))


def _external(run_dir: Path, data: Path, layout: str | None, info: ModelInfo
              ) -> tuple[list[dict[str, Any]], LabelSet]:
    """The labelled cases of dataset ``data`` and its labels, which must be the model's; cases
    whose image the model was fine-tuned or pretrained on are refused."""
    layout, cases = read_dataset(data, layout)
    labels = read_labels(data, layout)
    if labels is None:
        raise PimpicError(f"{data}: a folder of unlabelled images ({layout} layout) cannot be "
                          "scored; give a labelled dataset (MSD, KiTS19, nnU-Net raw)")
    if not info.labels.matches(labels):
        raise PimpicError(f"{data}: its labels ({labels.names()}) are not the model's "
                          f"({info.labels.names()}); evaluate on data with the same labels")
    # KiTS19's test cases ship without labels; a listed label file that is missing is reported
    # when its case is read
    cases = [c for c in cases if c["label"] is not None]
    if not cases:
        raise PimpicError(f"{data}: no labelled cases to score")
    seen = _seen_images(info)
    both = [c["id"] for c in cases if Path(c["image"]).resolve() in seen]
    if both:
        raise PimpicError(f"{data}: {len(both)} case(s) were in the model's fine-tuning set or "
                          f"pretraining pool ({', '.join(both[:5])}{', …' if len(both) > 5 else ''}"
                          "); evaluate on patients the model never saw")
    return cases, labels


def _seen_images(info: ModelInfo) -> set[Path]:
    """Source images of the cases the model was fine-tuned or pretrained on, as far as its
    cache still says (empty when the cache is gone)."""
    if not info.cache or not Path(info.cache, MANIFEST).is_file():
        return set()
    cache = Cache(info.cache)
    seen = set()
    for cid in {*info.train_cases, *info.pretrain_cases}:
        try:
            src = cache.meta(cid).get("source_image")
        except PimpicError:
            continue
        if src:
            seen.add(Path(src).resolve())
    return seen


def evaluate(
    run_dir: str | Path,
    *,
    split: str = "test",
    cache: str | Path | Cache | None = None,
    data: str | Path | None = None,
    layout: str | None = None,
    lcc: bool = False,
    original_space: bool = False,
    device: str = "auto",
    progress: bool = True,
    save_predictions: bool = True,
    absent: str = "zero",
    unfinished: bool = False,
    allow_transductive: bool = False,
) -> dict[str, Any]:
    """Evaluate the best model of ``run_dir`` on the cache's ``split`` cases, or on dataset
    ``data``.

    Args:
        run_dir: a fine-tuning run folder (with ``model.safetensors``).
        split: ``test`` (default), ``val`` or ``train``; cases seen in pretraining or
            fine-tuning are refused.
        cache: the cache to read (default: the run's own cache).
        data: instead of a cache split, every labelled case of this dataset folder (MSD,
            KiTS19, nnU-Net raw), preprocessed with the model's settings; its labels must be
            the model's. Written to ``eval-data-<folder name>/``.
        layout: force ``data``'s layout instead of detecting it.
        lcc: keep only the largest connected component (of the whole organ in the organ +
            tumour view, of each class otherwise).
        original_space: compute metrics on the original image grid (needs the source labels).
        device: ``auto``, ``cpu``, ``cuda``, ...
        progress: show a progress bar.
        save_predictions: write ``pred/<case>.npy`` (preprocessed space, uint8).
        absent: the summary's rule for a structure absent from a case's ground truth: Dice 0
            (``zero``, released) or left out (``nan``); ``per_case.csv`` keeps NaN either way.
        unfinished: evaluate a run whose ``run.json`` says it has not finished (killed before
            its stopping rule; refused otherwise); the summary records ``"unfinished": true``.
        allow_transductive: accept a model whose encoder was pretrained on every cached case
            (``pretrain --pool all``: the evaluated patients' images, never their labels); the
            summary then records ``"transductive": true``.

    Returns:
        the summary dict (also written to ``summary.json``). Dice is NaN (and excluded, counted
        in ``n_excluded``) where the ground truth lacks a structure; where the prediction misses
        a present structure Dice is 0 and HD95 NaN (``n_missed``).
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
    where: dict[str, str] = {}
    transductive: list[str] = []
    cases: Iterable[_Case]
    if data is not None:
        data = Path(data)
        found, labels = _external(run_dir, data, layout, info)
        settings = Settings.from_dict(info.settings)
        cases, n_cases = _data_cases(found, settings), len(found)
        name = f"data-{data.resolve().name}"
        where = {"data": str(data.resolve())}
    else:
        if cache is None:
            if not info.cache:
                raise PimpicError(f"{run_dir}: run.json names no cache; pass --cache")
            cache = info.cache
        cache = cache if isinstance(cache, Cache) else Cache(cache)
        _check_settings(cache, info)
        labels = cache.require_labels()
        if not info.labels.matches(labels):
            raise PimpicError(f"{cache.root}: its labels ({labels.names()}) are not the "
                              f"model's ({info.labels.names()})")
        case_ids, transductive = _split_cases(run_dir, cache, split, info, allow_transductive)
        cases, n_cases, name = _cache_cases(cache, case_ids), len(case_ids), split
        where = {"cache": str(cache.root)}

    dev = resolve_device(device)
    model.to(dev)
    out_dir = eval_dir(run_dir, name)
    if out_dir.exists() and not out_dir.is_dir():
        raise PimpicError(f"{out_dir}: exists and is not a folder; move it away to evaluate")
    _check_same_data(out_dir, where)
    mark_evaluation(out_dir)  # the run folder's --overwrite may remove it, and only it
    (out_dir / PREDICTIONS).mkdir(parents=True, exist_ok=True)
    structures = labels.structures
    rows: list[dict[str, Any]] = []
    for case in tqdm(cases, total=n_cases, disable=not progress, desc=f"evaluate {name}",
                     unit="case"):
        pred = predict_labels(model, case.image, info.patch_size, **info.inference.window(),
                              device=dev, lcc=lcc,
                              lcc_by_class=labels.view != ORGAN_TUMOUR_VIEW)
        if save_predictions:
            with atomic_open(out_dir / PREDICTIONS / f"{case.id}.npy", "wb") as fh:
                np.save(fh, pred)
        if original_space:
            p, gt, spacing = _original_space(case.source_label(), case.meta, pred)
        else:
            p, gt = pred, case.label
            spacing = [float(s) for s in case.meta.get("spacing", info.settings["spacing"])]
        rows.append({"case": case.id, **case_metrics(p, gt, spacing, structures)})

    with atomic_open(out_dir / PER_CASE) as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns(structures)))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (v if isinstance(v, str) or not math.isnan(v) else "nan")
                             for k, v in row.items()})
    summary: dict[str, Any] = {
        "split": split if data is None else "data", "n_cases": len(rows), "lcc": lcc,
        "absent": absent, "space": "original" if original_space else "preprocessed",
        "run": str(run_dir), **where,
        "structures": summarise(rows, absent, structures=structures)}
    if info.completed is False:
        summary["unfinished"] = True
    if transductive:
        summary["transductive"] = True
    if labels.view != ORGAN_TUMOUR_VIEW:  # the organ + tumour view's summary stays as it was
        summary["names"] = {s.key: s.name for s in structures}
    write_json(out_dir / SUMMARY, _nan_to_none(summary))
    return summary


def _split_cases(run_dir: Path, cache: Cache, split: str, info: ModelInfo,
                 allow_transductive: bool) -> tuple[list[str], list[str]]:
    """The held-out, labelled cases of ``split``, and those a transductive pretraining pool
    held (accepted with ``allow_transductive``)."""
    case_ids = list(cache.split().part(split))
    if not case_ids:
        raise PimpicError(f"{cache.root}: split '{split}' has no cases")
    transductive = _check_held_out(run_dir, split, case_ids, info, cache, allow_transductive)
    missing = [c for c in case_ids if cache.label(c) is None]
    if missing:
        raise PimpicError(f"{cache.root}: case(s) without a label in split '{split}': "
                          f"{', '.join(missing[:5])}")
    return case_ids, transductive


def _check_same_data(out_dir: Path, where: Mapping[str, str]) -> None:
    """An external evaluation folder holds one dataset's scores: another folder of the same
    name is refused rather than mixed in or silently replaced."""
    path = out_dir / SUMMARY
    if "data" not in where or not path.is_file():
        return
    old = read_json(path)
    if isinstance(old, dict) and old.get("data") not in (None, where["data"]):
        raise PimpicError(f"{out_dir}: holds the evaluation of {old['data']}, not "
                          f"{where['data']}; move it away first")


def describe(summary: Mapping[str, Any]) -> str:
    """The summary as the ``evaluate`` command prints it: a header line, the table of
    :func:`~pimpic.segmentation.metrics.format_table` and the structures scored 0 or left
    out because the ground truth lacks them."""
    structures = summary["structures"]
    lines = [f"{summary['run']} — {summary.get('data') or summary['split']}: "
             f"{summary['n_cases']} cases, {summary['space']} space, lcc={summary['lcc']}"
             + (" — UNFINISHED run (its best model so far)" if summary.get("unfinished")
                else "")
             + (" — transductive pretraining (these patients' images were in the pool)"
                if summary.get("transductive") else ""),
             format_table(structures, summary.get("names"))]
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
