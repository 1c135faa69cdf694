"""Finished runs reduced to what the readers of finished runs (statistics, curves, confusion)
read, written without training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pimpic.data.cache import write_manifest
from pimpic.data.labels import ORGAN_TUMOUR, LabelSet
from pimpic.io import write_json
from pimpic.paths import MARKER, PREDICTIONS, RUN_INFO, eval_dir
from pimpic.segmentation.run_info import FinetuneRun


def write_run_info(run: Path, *, kind: str = "finetune", cache: str = "", fraction: int = 5,
                   train_cases: int = 2, labels: LabelSet | None = ORGAN_TUMOUR) -> None:
    """``run``'s marker and a fine-tuning ``run.json`` (``labels`` None: a run made before
    labels were recorded)."""
    run.mkdir(parents=True, exist_ok=True)
    write_json(run / MARKER, {"kind": kind, "artefacts": []})
    info = FinetuneRun(cache=cache, fraction=fraction, settings={}, cache_manifest_sha256="",
                       train_cases=[f"t{i}" for i in range(train_cases)], val_cases=[],
                       encoder_sha256=None, encoder=None, encoder_meta=None, patch_size=16,
                       num_classes=(labels or ORGAN_TUMOUR).num_classes, architecture={},
                       labels=labels.to_json() if labels else None)
    write_json(run / RUN_INFO, info.to_json())


def evaluated_run(tmp_path: Path, labels: LabelSet) -> tuple[Path, np.ndarray]:
    """``tmp_path/cache`` with two cases and ``tmp_path/run`` whose test predictions are
    random; the expected ``[truth, prediction]`` voxel counts by a naive loop over the voxels."""
    rng = np.random.default_rng(0)
    cache, run = tmp_path / "cache", tmp_path / "run"
    k = labels.num_classes
    (eval_dir(run) / PREDICTIONS).mkdir(parents=True)
    expected = np.zeros((k, k), np.int64)
    for case in ("a", "b"):
        truth = rng.integers(0, k, (5, 4, 3)).astype(np.uint8)
        pred = rng.integers(0, k, (5, 4, 3)).astype(np.uint8)
        (cache / "cases" / case).mkdir(parents=True)
        np.save(cache / "cases" / case / "image.npy", np.zeros((5, 4, 3), np.float32))
        np.save(cache / "cases" / case / "label.npy", truth)
        np.save(eval_dir(run) / PREDICTIONS / f"{case}.npy", pred)
        for t, p in zip(truth.ravel(), pred.ravel(), strict=True):
            expected[t, p] += 1
    write_manifest(cache, {"spacing": [2.0, 2.0, 2.0]}, ["a", "b"], source="test",
                   layout="msd", labels=labels)
    write_run_info(run, cache=str(cache), fraction=100, labels=labels)
    return run, expected


def per_case_csv(path: Path, rows: list[list[Any]]) -> None:
    """An evaluation's ``per_case.csv`` of the organ + tumour view's Dice columns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ["case", "dice_organ", "dice_tumour", "dice_whole"]
    path.write_text("\n".join(",".join(map(str, r)) for r in [header, *rows]) + "\n")
