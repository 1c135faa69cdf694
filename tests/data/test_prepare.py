"""``prepare``: the cache layout, resuming, settings guard, splits, bad cases, and never
deleting or trusting what it should not."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from _lock import held_elsewhere
from _nifti import folder_tree, kits_tree, msd_tree, nnunet_tree, save
from pimpic.data.cache import LOCK, Cache
from pimpic.data.prepare import _init_worker, _remove, prepare
from pimpic.data.preprocess import Settings
from pimpic.errors import PimpicError

META_KEYS = {"id", "shape", "spacing", "affine", "original_affine", "original_shape",
             "original_spacing", "crop_box", "has_label", "source_image", "source_label",
             "sources", "label_values", "settings", "content_sha256"}


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
    split = cache.split()
    assert sorted(split.train + split.val + split.test) == cache.case_ids
    assert split.fractions["100"] == split.train

    mtime = (out / "cases" / cid / "image.npy").stat().st_mtime_ns
    again = prepare(src, out, workers=1, progress=False)
    assert again["processed"] == 0 and again["skipped"] == 4
    assert (out / "cases" / cid / "image.npy").stat().st_mtime_ns == mtime

    # same bytes rewritten (mtime moves, content does not): still finished, not re-read again
    img_path = src / "imagesTr" / "pan_001.nii.gz"
    img_path.write_bytes(img_path.read_bytes())
    again = prepare(src, out, workers=1, progress=False)
    assert again["processed"] == 0 and not again["redone"]
    assert cache.meta("pan_001")["sources"]["image"]["mtime_ns"] == img_path.stat().st_mtime_ns

    # a stale case (its source changed) and a missing case are redone, nothing else
    shutil.rmtree(out / "cases" / "pan_002")
    msd_tree(src, n=4, shape=(14, 10, 8))  # every source changes
    (out / "cases" / ".tmp-pan_000-1").mkdir()  # leftover of a killed worker
    third = prepare(src, out, workers=1, progress=False)
    assert third["processed"] == 4 and not (out / "cases" / ".tmp-pan_000-1").exists()
    assert third["redone"] == {c: "image changed" for c in ("pan_000", "pan_001", "pan_003")}
    assert third["split_status"] == "kept"


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
    # int(0.7 · 5) = 3 train, int(0.1 · 5) = 0 val, 2 test (the released rule)
    assert report["splits"] == {"train": 3, "val": 0, "test": 2}
    cache = Cache(out)
    assert cache.label(cache.case_ids[0]) is None and len(cache.train_ids()) == 3


def test_user_splits(tmp_path: Path) -> None:
    src = msd_tree(tmp_path / "msd", n=4)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"train": ["pan_000", "pan_001"], "val": ["pan_002"],
                                "test": ["pan_003"]}))
    out = tmp_path / "cache"
    prepare(src, out, workers=1, progress=False, splits_file=good)
    assert Cache(out).split().train == ("pan_000", "pan_001")
    assert Cache(out).split().fractions["5"] == ("pan_000",)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": ["pan_000", "pan_009"], "val": [], "test": []}))
    with pytest.raises(PimpicError, match=r"splits.json: the cache already has another split"):
        prepare(src, out, workers=1, progress=False, splits_file=bad)
    with pytest.raises(PimpicError, match=r"bad.json: 'train' names unknown"):
        prepare(src, out, workers=1, progress=False, splits_file=bad, resplit=True)
    assert Cache(out).split().train == ("pan_000", "pan_001")


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
    assert report["splits"] == {"train": 2, "val": 0, "test": 1}
    # still bad on a rerun: the split (made without them) is kept
    assert prepare(src, out, workers=1, progress=False, skip_bad=True)["split_status"] == "kept"


def _tree_state(root: Path) -> dict[str, tuple[int, int, bytes]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_an_empty_case_id_never_deletes_the_cache(tmp_path: Path) -> None:
    """``_0000.nii.gz`` (id "") once made ``cases/`` the case folder, and a rerun wiped it."""
    src = nnunet_tree(tmp_path / "nn", n=3)
    out = tmp_path / "cache"
    prepare(src, out, workers=1, progress=False)
    shutil.copy(src / "imagesTr" / "kid_000_0000.nii.gz", src / "imagesTr" / "_0000.nii.gz")
    shutil.copy(src / "labelsTr" / "kid_000.nii.gz", src / "labelsTr" / ".nii.gz")
    before = _tree_state(out)
    with pytest.raises(PimpicError, match=r"_0000.nii.gz: case id '' is empty"):
        prepare(src, out, workers=1, progress=False)
    assert _tree_state(out) == before


def test_remove_deletes_only_a_folder_directly_inside_cases(tmp_path: Path) -> None:
    cases = tmp_path / "cache" / "cases"
    (cases / "a").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (cases / "link").symlink_to(tmp_path / "elsewhere")
    for path in (cases, cases / "", cases / ".", cases / "..", tmp_path / "elsewhere",
                 cases / "link", cases / "a" / ".." / ".."):
        with pytest.raises(PimpicError, match="refusing to delete"):
            _remove(path, cases)
    assert (cases / "a").is_dir() and (tmp_path / "elsewhere").is_dir()
    _remove(cases / "a", cases)
    assert not (cases / "a").exists()


def test_a_same_size_label_correction_is_redone(tmp_path: Path) -> None:
    """Uncompressed .nii: a corrected label has the same byte size as the wrong one."""
    src = msd_tree(tmp_path / "msd", n=3, ext=".nii")
    out = tmp_path / "cache"
    prepare(src, out, workers=1, progress=False)
    label_path = src / "labelsTr" / "pan_001.nii"
    size = label_path.stat().st_size
    cached = Cache(out).label("pan_001", mmap=False)
    assert cached is not None and cached.any()
    save(label_path, np.zeros((12, 10, 8), np.uint8), np.diag([-1.5, -1.5, 3.0, 1.0]))
    assert label_path.stat().st_size == size
    report = prepare(src, out, workers=1, progress=False)
    assert report["redone"] == {"pan_001": "label changed"} and report["processed"] == 1
    label = Cache(out).label("pan_001", mmap=False)
    assert label is not None and not label.any()


def test_a_second_prepare_on_the_same_cache_is_locked_out(tmp_path: Path) -> None:
    src = msd_tree(tmp_path / "msd", n=3)
    out = tmp_path / "cache"
    prepare(src, out, workers=1, progress=False)
    shutil.rmtree(out / "cases" / "pan_001")
    (out / "cases" / ".tmp-pan_001-99999").mkdir()  # the other run's work in progress
    with held_elsewhere(out / LOCK, "`pimpic prepare`") as pid:
        with pytest.raises(PimpicError, match=r"\.prepare\.lock: locked by another "
                                              rf"`pimpic prepare` \(pid {pid}, still running\)"):
            prepare(src, out, workers=1, progress=False)
        assert (out / "cases" / ".tmp-pan_001-99999").is_dir()
    assert prepare(src, out, workers=1, progress=False)["processed"] == 1


def test_case_files_and_folders_are_fsynced(tmp_path: Path, monkeypatch) -> None:
    synced: list[str] = []
    real = os.fsync

    def record(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", record)
    out = tmp_path / "cache"
    prepare(msd_tree(tmp_path / "msd", n=1), out, workers=1, progress=False)
    names = {Path(p).name for p in synced}
    assert {"image.npy", "label.npy", "cases"} <= names
    assert any(n.startswith(".meta.json.") for n in names)  # atomic_open's temporary name
    assert any(Path(p).name.startswith(".tmp-pan_000") for p in synced)  # before the rename


def test_adding_cases_never_moves_the_split(tmp_path: Path) -> None:
    src, out = tmp_path / "msd", tmp_path / "cache"
    msd_tree(src, n=9, shape=(6, 6, 4))
    prepare(src, out, workers=1, progress=False)
    before = (out / "splits.json").read_bytes()
    msd_tree(src, n=10, shape=(6, 6, 4))  # a tenth case (and the nine rewritten identically)
    with pytest.raises(PimpicError, match=r"splits.json: 1 cached case\(s\) are not in the "
                                          r"saved split \(pan_009\).*--resplit"):
        prepare(src, out, workers=1, progress=False)
    assert (out / "splits.json").read_bytes() == before
    assert "pan_009" in Cache(out).case_ids  # cached all the same; only the split waits
    with pytest.raises(PimpicError, match=r"made with seed 0; --seed 3 would move cases"):
        prepare(src, out, workers=1, progress=False, seed=3)
    report = prepare(src, out, workers=1, progress=False, resplit=True)
    assert report["split_status"] == "recomputed" and report["splits"]["train"] == 7
    assert report["split_digest"] == prepare(src, out, workers=1, progress=False)["split_digest"]


def test_released_split_file(tmp_path: Path) -> None:
    src, out = tmp_path / "msd", tmp_path / "cache"
    msd_tree(src, n=6, shape=(6, 6, 4))

    def entries(*idx: int) -> list[dict[str, str]]:
        return [{"image": f"./imagesTr/pan_{i:03d}.nii.gz",
                 "label": f"./labelsTr/pan_{i:03d}.nii.gz"} for i in idx]

    released = {"validation": entries(4), "test": entries(5),
                "train_2_percent": entries(2), "train_5_percent": entries(2),
                "train_10_percent": entries(2), "train_20_percent": entries(2, 0),
                "train_50_percent": entries(0, 2), "train_100_percent": entries(3, 0, 2, 1)}
    path = tmp_path / "released.json"
    path.write_text(json.dumps(released))
    report = prepare(src, out, workers=1, progress=False, splits_file=path)
    assert report["splits"] == {"train": 4, "val": 1, "test": 1}
    split = Cache(out).split()
    assert split.train == ("pan_003", "pan_000", "pan_002", "pan_001")  # order as given
    assert split.fractions["2"] == ("pan_002",) and split.fractions["50"] == (
        "pan_000", "pan_002")


def _listed(src: Path, image: str) -> None:
    meta = json.loads((src / "dataset.json").read_text())
    meta["training"].append({"image": image, "label": "./labelsTr/pan_000.nii.gz"})
    (src / "dataset.json").write_text(json.dumps(meta))


def test_an_image_linked_to_dev_zero_is_refused_not_read_forever(tmp_path: Path) -> None:
    """Issue #23 A35: the fingerprint hashed /dev/zero until killed."""
    import signal

    src = msd_tree(tmp_path / "msd", n=2)
    (src / "imagesTr" / "zero.nii.gz").symlink_to("/dev/zero")
    _listed(src, "./imagesTr/zero.nii.gz")

    def hung(*_: object) -> None:
        raise TimeoutError("prepare hung on /dev/zero")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    try:
        with pytest.raises(PimpicError, match=r"case zero: .*: not a regular file"):
            prepare(src, tmp_path / "cache", workers=1, progress=False)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_a_listed_hidden_name_is_refused_not_dropped(tmp_path: Path) -> None:
    """Issue #23 B12: a listed ``..nii.gz`` was silently left out of the cache."""
    src = msd_tree(tmp_path / "msd", n=2)
    shutil.copy(src / "imagesTr" / "pan_000.nii.gz", src / "imagesTr" / "..nii.gz")
    _listed(src, "./imagesTr/..nii.gz")
    with pytest.raises(PimpicError, match=r"\.\.nii\.gz: case id '\.' starts with '\.'"):
        prepare(src, tmp_path / "cache", workers=1, progress=False)


def test_a_pool_image_linked_to_a_label_map_is_not_taken_for_ct(tmp_path: Path) -> None:
    """Issue #23 B22, folder layout: a link to ``labelsTr/x`` is a label map too."""
    from pimpic.data.datasets import read_dataset

    src = msd_tree(tmp_path / "msd", n=2)
    (src / "dataset.json").unlink()
    (src / "scans").mkdir()
    (src / "scans" / "x.nii.gz").symlink_to(src / "labelsTr" / "pan_001.nii.gz")
    _, cases = read_dataset(src, layout="folder")
    assert [c["id"] for c in cases] == ["imagesTr_pan_000", "imagesTr_pan_001"]


def test_a_case_cached_before_content_hashes_gets_one_without_redoing(tmp_path: Path) -> None:
    src = msd_tree(tmp_path / "msd", n=2)
    out = tmp_path / "cache"
    prepare(src, out, workers=1, progress=False)
    meta_path = out / "cases" / "pan_000" / "meta.json"
    meta = json.loads(meta_path.read_text())
    want = meta.pop("content_sha256")
    meta_path.write_text(json.dumps(meta))
    report = prepare(src, out, workers=1, progress=False)
    assert report["processed"] == 0 and Cache(out).meta("pan_000")["content_sha256"] == want


def test_a_worker_exits_when_its_prepare_dies() -> None:
    """S09/S10: a killed `prepare` must not leave its workers running, orphaned."""
    ctx = multiprocessing.get_context("fork")
    # a worker whose recorded parent is not its parent: as after the parent was killed
    worker = ctx.Process(target=_init_then_idle, args=(os.getpid() + 10**6,))
    worker.start()
    worker.join(10)
    alive = worker.is_alive()
    if alive:
        worker.kill()
        worker.join()
    assert not alive and worker.exitcode == 1


def _init_then_idle(parent: int) -> None:
    _init_worker(parent, interval_s=0.05)
    time.sleep(30)
