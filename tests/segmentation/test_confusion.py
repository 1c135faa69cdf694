"""Voxel confusion (confusion.py): ground truth × prediction voxel counts over a run's
evaluated cases, classes named by the run's labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from _runs import evaluated_run
from pimpic.data.cache import Cache, write_manifest
from pimpic.data.labels import parse_labels
from pimpic.errors import PimpicError
from pimpic.paths import PREDICTIONS, eval_dir
from pimpic.segmentation.confusion import confusion, format_confusion, run_confusion

LABELS = parse_labels({"background": 0, "brainstem": 1, "spinal cord": 2, "mandible": 3},
                      "dataset.json", by_name=True)


def test_counts_each_true_class_by_predicted_class(tmp_path: Path) -> None:
    run, expected = evaluated_run(tmp_path, LABELS)
    counts = confusion(eval_dir(run) / PREDICTIONS, Cache(tmp_path / "cache"), 4)
    np.testing.assert_array_equal(counts, expected)
    counts, names = run_confusion(run)  # the run's own cache and labels
    np.testing.assert_array_equal(counts, expected)
    assert names == ("background", "brainstem", "spinal cord", "mandible")
    lines = format_confusion(counts, names).splitlines()
    assert lines[0].split() == ["true", "/", "predicted", "background", "brainstem", "spinal",
                                "cord", "mandible"]
    share = 100 * expected[2] / expected[2].sum()
    assert lines[3].split()[2:] == [f"{v:.1f}" for v in share]  # "spinal cord" is two words


def test_refusals(tmp_path: Path) -> None:
    run, _ = evaluated_run(tmp_path, LABELS)
    with pytest.raises(PimpicError, match="no predictions"):
        run_confusion(run, split="val")
    other = tmp_path / "other"
    write_manifest(other, {"spacing": [2.0, 2.0, 2.0]}, [], source="test", layout="msd")
    with pytest.raises(PimpicError, match="not the run's"):
        run_confusion(run, cache=other)
    np.save(eval_dir(run) / PREDICTIONS / "zz.npy", np.zeros((5, 4, 3), np.uint8))
    with pytest.raises(PimpicError, match=r"zz\.npy: .* no label of that case"):
        run_confusion(run)


def test_classes_are_named_by_the_label_of_that_value_alone() -> None:
    """A value named only inside regions (nnU-Net's BraTS-like labels) is shown as itself."""
    regions = parse_labels({"background": 0, "whole tumour": [1, 2, 3], "core": [2, 3],
                            "enhancing": 3}, "dataset.json", by_name=True)
    assert regions.names_by_class() == ("background", "1", "2", "enhancing")
    assert LABELS.names_by_class() == ("background", "brainstem", "spinal cord", "mandible")
