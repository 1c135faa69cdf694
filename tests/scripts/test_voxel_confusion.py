"""scripts/voxel_confusion.py: ground truth × prediction voxel counts over a run's test cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from _scripts import load_script
from pimpic.data.cache import Cache, write_manifest


def test_counts_each_true_class_by_predicted_class(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    cache, run = tmp_path / "cache", tmp_path / "run"
    (run / "eval-test" / "pred").mkdir(parents=True)
    expected = np.zeros((3, 3), np.int64)
    for case in ("a", "b"):
        truth = rng.integers(0, 3, (5, 4, 3)).astype(np.uint8)
        pred = rng.integers(0, 3, (5, 4, 3)).astype(np.uint8)
        (cache / "cases" / case).mkdir(parents=True)
        np.save(cache / "cases" / case / "image.npy", np.zeros((5, 4, 3), np.float32))
        np.save(cache / "cases" / case / "label.npy", truth)
        np.save(run / "eval-test" / "pred" / f"{case}.npy", pred)
        for t, p in zip(truth.ravel(), pred.ravel(), strict=True):  # the naive count
            expected[t, p] += 1
    write_manifest(cache, {"spacing": [2.0, 2.0, 2.0]}, ["a", "b"], source="test", layout="msd")
    counts = load_script("voxel_confusion").confusion(Cache(cache), run, 3)
    np.testing.assert_array_equal(counts, expected)
