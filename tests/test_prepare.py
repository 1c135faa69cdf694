"""``prepare``: the cache layout, resuming, settings guard, splits, and bad cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from _nifti import folder_tree, kits_tree, msd_tree
from pimpic.data.cache import Cache
from pimpic.data.prepare import prepare
from pimpic.data.preprocess import Settings
from pimpic.errors import PimpicError

META_KEYS = {"id", "shape", "spacing", "affine", "original_affine", "original_shape",
             "original_spacing", "crop_box", "has_label", "source_image", "source_label",
             "label_values", "settings"}


def test_cache_layout_and_resume(tmp_path: Path) -> None:
    src = msd_tree(tmp_path / "msd", n=4)
    out = tmp_path / "cache"
    report = prepare(src, out, workers=1, progress=False)
    assert report["processed"] == 4 and report["skipped"] == 0 and not report["bad"]
    cache = Cache(out)
    m = cache.manifest
    assert m["format"] == "pimpic-cache" and m["version"] == 1 and m["layout"] == "msd"
    assert m["settings"] == Settings().to_dict()
    assert m["cases"] == [f"pan_{i:03d}" for i in range(4)]
    cid = cache.case_ids[0]
    image, label, meta = cache.image(cid), cache.label(cid), cache.meta(cid)
    assert image.dtype == np.float16 and label is not None and label.dtype == np.uint8
    assert image.shape == label.shape == tuple(meta["shape"])
    assert set(meta) >= META_KEYS
    splits = cache.splits()
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == cache.case_ids
    assert splits["fractions"]["100"] == splits["train"]

    mtime = (out / "cases" / cid / "image.npy").stat().st_mtime_ns
    again = prepare(src, out, workers=1, progress=False)
    assert again["processed"] == 0 and again["skipped"] == 4
    assert (out / "cases" / cid / "image.npy").stat().st_mtime_ns == mtime

    # a stale case (its source changed) and a missing case are redone, nothing else
    img_path = src / "imagesTr" / "pan_001.nii.gz"
    img_path.write_bytes(img_path.read_bytes() + b"")  # same size: still finished
    import shutil

    shutil.rmtree(out / "cases" / "pan_002")
    msd_tree(src, n=4, shape=(14, 10, 8))  # every source changes size
    (out / "cases" / ".tmp-pan_000-1").mkdir()  # leftover of a killed worker
    third = prepare(src, out, workers=1, progress=False)
    assert third["processed"] == 4 and not (out / "cases" / ".tmp-pan_000-1").exists()


def test_parallel_workers_and_float32(tmp_path: Path) -> None:
    src = kits_tree(tmp_path / "kits", n=3)
    out = tmp_path / "cache"
    report = prepare(src, out, Settings(dtype="float32", spacing=(2, 2, 2)), workers=2,
                     progress=False)
    assert report["processed"] == 3 and report["layout"] == "kits19"
    cache = Cache(out)
    assert all(cache.image(c).dtype == np.float32 for c in cache.case_ids)


def test_other_settings_or_foreign_folder_is_refused(tmp_path: Path) -> None:
    src = msd_tree(tmp_path / "msd", n=3)
    out = tmp_path / "cache"
    prepare(src, out, workers=1, progress=False)
    with pytest.raises(PimpicError, match="other settings") as err:
        prepare(src, out, Settings(window=(-100, 300)), workers=1, progress=False)
    assert str(out) in str(err.value)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(PimpicError, match="not a pimpic cache"):
        prepare(src, foreign, workers=1, progress=False)


def test_unlabelled_folder_still_gets_splits(tmp_path: Path) -> None:
    out = tmp_path / "cache"
    report = prepare(folder_tree(tmp_path / "f", n=5), out, workers=1, progress=False)
    assert report["splits"] == {"train": 3, "val": 1, "test": 1}
    cache = Cache(out)
    assert cache.label(cache.case_ids[0]) is None and len(cache.train_ids()) == 3


def test_user_splits(tmp_path: Path) -> None:
    src = msd_tree(tmp_path / "msd", n=4)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"train": ["pan_000", "pan_001"], "val": ["pan_002"],
                                "test": ["pan_003"]}))
    out = tmp_path / "cache"
    prepare(src, out, workers=1, progress=False, splits_file=good)
    assert Cache(out).splits()["train"] == ["pan_000", "pan_001"]
    assert Cache(out).splits()["fractions"]["5"] == ["pan_000"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": ["pan_000", "pan_009"], "val": [], "test": []}))
    with pytest.raises(PimpicError, match=r"bad.json: 'train' names unknown"):
        prepare(src, out, workers=1, progress=False, splits_file=bad)


def _break_two(src: Path) -> None:
    """pan_001: listed file missing; pan_002: truncated image."""
    (src / "imagesTr" / "pan_001.nii.gz").unlink()
    p = src / "imagesTr" / "pan_002.nii.gz"
    p.write_bytes(p.read_bytes()[:-40])


def test_first_bad_case_stops_and_keeps_finished(tmp_path: Path) -> None:
    src = msd_tree(tmp_path / "msd", n=4)
    _break_two(src)
    out = tmp_path / "cache"
    with pytest.raises(PimpicError, match=r"case pan_001: .*pan_001.nii.gz: image file not found"):
        prepare(src, out, workers=1, progress=False)
    assert Cache(out).case_ids == ["pan_000"]


def test_skip_bad_finishes_the_rest(tmp_path: Path) -> None:
    src = msd_tree(tmp_path / "msd", n=5)
    _break_two(src)
    out = tmp_path / "cache"
    report = prepare(src, out, workers=1, progress=False, skip_bad=True)
    assert [b["id"] for b in report["bad"]] == ["pan_001", "pan_002"]
    assert "not found" in report["bad"][0]["error"]
    assert "corrupt or truncated" in report["bad"][1]["error"]
    assert Cache(out).case_ids == ["pan_000", "pan_003", "pan_004"]
    assert report["splits"] == {"train": 1, "val": 1, "test": 1}
