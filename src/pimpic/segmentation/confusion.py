"""Where do a fine-tuned model's voxels go? Ground-truth class × predicted class (``pimpic
confusion``).

Counted over the predictions an evaluation saved (``RUN/eval-<split>/pred/<case>.npy``, ``pimpic
evaluate``) against the labels of the cache they were made on, both on the cache's grid. Dice
says how well a structure is found; this says what a missed one was taken for (background, or
a neighbour: a tumour for its organ).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pimpic.data.cache import Cache
from pimpic.errors import PimpicError
from pimpic.io import read_json
from pimpic.paths import PREDICTIONS, RUN_INFO, eval_dir
from pimpic.segmentation.run_info import FinetuneRun


def confusion(predictions: Path, cache: Cache, classes: int) -> np.ndarray:
    """Voxel counts ``(classes, classes)``, ``[truth, prediction]``, summed over every
    ``<case>.npy`` in ``predictions`` against the cache's label of that case."""
    counts = np.zeros((classes, classes), np.int64)
    preds = sorted(predictions.glob("*.npy"))
    if not preds:
        raise PimpicError(f"{predictions}: no predictions (<case>.npy); `pimpic evaluate` "
                          "writes them")
    for path in preds:
        pred = np.load(path)
        truth = cache.label(path.stem) if path.stem in cache.case_ids else None
        if truth is None or truth.shape != pred.shape:
            raise PimpicError(f"{path}: {cache.root} holds no label of that case and shape")
        if max(int(pred.max()), int(truth.max())) >= classes:
            raise PimpicError(f"{path}: a class above {classes - 1} (the run's labels have "
                              f"{classes} classes)")
        pair = np.asarray(truth, dtype=np.int64) * classes + pred.astype(np.int64)
        counts += np.bincount(pair.ravel(), minlength=classes * classes).reshape(classes, classes)
    return counts


def run_confusion(run: Path, split: str = "test",
                  cache: Path | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
    """:func:`confusion` of a fine-tuning run's evaluation on ``split`` (``cache``: default the
    run's own), and the names of its classes (its labels)."""
    info = FinetuneRun.from_json(run / RUN_INFO, read_json(run / RUN_INFO))
    labels = info.label_set()
    if cache is None and not info.cache:
        raise PimpicError(f"{run}: {RUN_INFO} names no cache; pass --cache")
    data = Cache(cache if cache is not None else info.cache)
    if not labels.matches(data.require_labels()):
        raise PimpicError(f"{data.root}: its labels ({data.require_labels().names()}) are not "
                          f"the run's ({labels.names()})")
    counts = confusion(eval_dir(run, split) / PREDICTIONS, data, labels.num_classes)
    return counts, labels.names_by_class()


def format_confusion(counts: np.ndarray, names: tuple[str, ...]) -> str:
    """The share (%) of each true class's voxels (rows) predicted as each class (columns)."""
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    width = max(18, *(len(n) + 2 for n in names))
    cell = max(12, *(len(n) + 2 for n in names))
    lines = [f"{'true / predicted':<{width}}" + "".join(f"{n:>{cell}}" for n in names)]
    for name, row in zip(names, share, strict=True):
        lines.append(f"{name:<{width}}" + "".join(f"{100 * v:{cell}.1f}" for v in row))
    return "\n".join(lines) + "\n"
