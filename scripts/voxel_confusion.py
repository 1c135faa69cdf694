"""Where do a fine-tuned model's test voxels go? Ground-truth class × predicted class.

    python scripts/voxel_confusion.py CACHE RUN [RUN ...]

``CACHE`` is the prepared cache the runs were evaluated on, ``RUN`` a fine-tuning run folder
(e.g. ``EXP/finetune/random/f100/s0``) with an ``eval-test/pred`` folder of predictions on the
cache's grid (``pimpic evaluate`` writes them). Prints, per run, the share of each ground-truth
class's voxels (rows: background, organ, tumour, …) predicted as each class (columns), summed
over the test cases. Dice says how well a structure is found; this says what a missed tumour
was taken for (background, or its organ).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from pimpic.data.cache import Cache
from pimpic.paths import eval_dir


def confusion(cache: Cache, run: Path, classes: int) -> np.ndarray:
    """Voxel counts ``[truth, prediction]`` over the run's test predictions."""
    counts = np.zeros((classes, classes), np.int64)
    preds = sorted((eval_dir(run) / "pred").glob("*.npy"))
    if not preds:
        raise SystemExit(f"voxel_confusion.py: {eval_dir(run) / 'pred'}: no predictions (*.npy)")
    for path in preds:
        pred = np.load(path)
        truth = cache.label(path.stem)
        if truth is None or truth.shape != pred.shape:
            raise SystemExit(f"voxel_confusion.py: {path}: no label of that shape in {cache.root}")
        pair = truth.astype(np.int64) * classes + pred.astype(np.int64)
        counts += np.bincount(pair.ravel(), minlength=classes * classes).reshape(classes, classes)
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cache", type=Path)
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--names", default="background,organ,tumour",
                        help="class names, comma-separated (their number sets the classes)")
    args = parser.parse_args()
    names = args.names.split(",")
    cache = Cache(args.cache)
    for run in args.runs:
        counts = confusion(cache, run, len(names))
        share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        print(f"{run}: share of each true class's test voxels predicted as (%)")
        print(f"{'true / predicted':<18}" + "".join(f"{n:>12}" for n in names))
        for name, row in zip(names, share, strict=True):
            print(f"{name:<18}" + "".join(f"{100 * v:12.1f}" for v in row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
