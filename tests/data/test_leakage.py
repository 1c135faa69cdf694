"""The leakage guard where an encoder meets a test split (issue #23 finding 1): the same scan
renamed, re-saved in another type and prepared with other settings is found by content, in
``finetune`` and ``evaluate`` from what the encoder records, and in an nnU-Net pool through its
raw images."""

from __future__ import annotations

import json
import logging
import pickle
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from _nifti import msd_tree, phantom, save
from pimpic.data.cache import Cache
from pimpic.data.leakage import check_encoder_pool, pool_overlap, pool_record
from pimpic.data.prepare import prepare
from pimpic.data.preprocess import Settings
from pimpic.errors import PimpicError
from pimpic.io import write_json
from pimpic.models.export import read_encoder_metadata, save_encoder
from pimpic.models.unet import Encoder
from pimpic.segmentation.config import FinetuneConfig
from pimpic.segmentation.finetune import finetune

PLANS = Path(__file__).parents[1] / "nnunet" / "nnunet_plans.json"
TASK = Settings(spacing=(1.5, 1.5, 3.0))
#: the pool is prepared otherwise: another spacing, cropped to the body, float32
POOL = Settings(spacing=(3.0, 3.0, 3.0), crop_foreground=True, dtype="float32")
TINY = FinetuneConfig(width=2, depth=3, patch_size=16, batch_size=1, samples_per_volume=1,
                      num_workers=0, max_steps=1, device="cpu")


@pytest.fixture(scope="module")
def task_and_pool(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(task cache, pool cache, the test case whose scan is in the pool as ``renamed_scan``)."""
    root = tmp_path_factory.mktemp("leak")
    src = msd_tree(root / "task", n=4, shape=(16, 16, 12))
    task = root / "task_cache"
    prepare(src, task, TASK, workers=1, progress=False)
    test_id = Cache(task).split().test[0]
    pool_src = root / "pool"
    for i in range(3):
        save(pool_src / f"other_{i}.nii.gz", phantom((16, 16, 12), 10 + i)[0])
    scan = nib.load(src / "imagesTr" / f"{test_id}.nii.gz")
    # re-saved: another name, uncompressed, float32 — not the same file bytes
    save(pool_src / "renamed_scan.nii", np.asarray(scan.dataobj).astype(np.float32),
         scan.affine)
    pool = root / "pool_cache"
    prepare(pool_src, pool, POOL, workers=1, progress=False)
    return task, pool, test_id


def _encoder(path: Path, pool: Path) -> Path:
    ids = Cache(pool).case_ids
    save_encoder(path, Encoder(1, 2, 3), {
        "patch_size": 16, "spacing": [1.5, 1.5, 3.0], "window": [-200.0, 400.0],
        "method": "pimpic", "steps": 1, "pretrain_cases": ids,
        "pretrain_hashes": pool_record(Cache(pool), ids)})
    return path


def test_the_same_scan_is_found_by_content_across_name_type_and_settings(
        task_and_pool: tuple[Path, Path, str]) -> None:
    task, pool, test_id = task_and_pool
    t, p = Cache(task), Cache(pool)
    assert t.image(test_id).shape != p.image("renamed_scan").shape  # nothing else in common
    test = list(t.split().test)
    assert pool_overlap(t, test, p, p.case_ids) == [f"{test_id} = renamed_scan (same voxels)"]


def test_finetune_refuses_an_encoder_pretrained_on_a_test_case(
        task_and_pool: tuple[Path, Path, str], tmp_path: Path) -> None:
    """L08: the three-command workflow checked ids only."""
    task, pool, test_id = task_and_pool
    encoder = _encoder(tmp_path / "encoder.safetensors", pool)
    with pytest.raises(PimpicError, match=rf"encoder\.safetensors: the encoder's pretraining pool "
                       rf"holds 1 of the task's test case\(s\) \({test_id} = renamed_scan "
                       r"\(same voxels\)\)") as err:
        finetune(task, tmp_path / "ft", TINY, encoder=encoder, progress=False)
    assert "\n" not in str(err.value) and not (tmp_path / "ft").exists()


def test_evaluate_refuses_a_run_whose_encoder_saw_a_test_case(
        task_and_pool: tuple[Path, Path, str], tmp_path: Path) -> None:
    """The run was fine-tuned before the guard existed (or on another cache): evaluate checks
    the encoder's record against the split it scores."""
    task, pool, test_id = task_and_pool
    clean = tmp_path / "clean.safetensors"
    save_encoder(clean, Encoder(1, 2, 3), {"patch_size": 16, "spacing": [1.5, 1.5, 3.0],
                                           "window": [-200.0, 400.0], "pretrain_cases": []})
    run = finetune(task, tmp_path / "ft", TINY, encoder=clean, progress=False,
                   tensorboard=False)
    info = json.loads((run / "run.json").read_text())
    info["encoder_meta"] = read_encoder_metadata(_encoder(tmp_path / "leaky.safetensors", pool))
    write_json(run / "run.json", info)
    from pimpic.segmentation.evaluate import evaluate

    with pytest.raises(PimpicError, match=rf"ft: the encoder's pretraining pool holds 1 .*"
                       rf"{test_id} = renamed_scan \(same voxels\)"):
        evaluate(run, progress=False)
    assert not (run / "eval-test").exists()


def test_an_encoder_without_hashes_is_checked_by_id_and_says_so(
        task_and_pool: tuple[Path, Path, str], caplog: pytest.LogCaptureFixture) -> None:
    task, _, test_id = task_and_pool
    old = {"pretrain_cases": ["renamed_scan", "other_0"]}  # an encoder made before the guard
    with caplog.at_level(logging.WARNING, logger="pimpic"):
        check_encoder_pool("enc", old, Cache(task), list(Cache(task).split().test))
    assert "2 of 2 pretraining case(s) have no content hash" in caplog.text
    with pytest.raises(PimpicError, match=rf"{test_id} = {test_id} \(by id\)"):
        check_encoder_pool("enc", {"pretrain_cases": [test_id]}, Cache(task), [test_id])


def _nnunet_pool(root: Path, raw_image: Path, test_like: str) -> Path:
    """An nnU-Net raw dataset holding ``raw_image`` as ``test_like``, and its preprocessed
    folder (z-scored arrays: nothing there can be compared with a pimpic cache)."""
    plans = json.loads(PLANS.read_text())
    name = plans["dataset_name"]
    raw = root / "raw" / name / "imagesTr"
    raw.mkdir(parents=True)
    shutil.copy(raw_image, raw / f"{test_like}_0000.nii.gz")
    save(raw / "pool_a_0000.nii.gz", phantom((16, 16, 12), 20)[0])
    pre = root / "preprocessed" / name
    pre.mkdir(parents=True)
    shutil.copy(PLANS, pre / "nnUNetPlans.json")
    write_json(pre / "dataset.json", {"channel_names": {"0": "CT"}, "file_ending": ".nii.gz"})
    folder = pre / "nnUNetPlans_3d_fullres"
    folder.mkdir()
    for cid in (test_like, "pool_a"):
        np.save(folder / f"{cid}.npy", np.random.default_rng(0).standard_normal(
            (1, 8, 8, 8)).astype(np.float32))
        (folder / f"{cid}.pkl").write_bytes(pickle.dumps({"spacing": [1.0] * 3}))
    return folder


def test_an_nnunet_pool_is_compared_through_its_raw_images(
        task_and_pool: tuple[Path, Path, str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """L09: an nnU-Net preprocessed pool holds no input hash and other intensities."""
    pytest.importorskip("nnunetv2")
    from pimpic.nnunet.data import PreprocessedFolder

    task, _, test_id = task_and_pool
    src = Path(str(Cache(task).meta(test_id)["source_image"]))
    folder = _nnunet_pool(tmp_path, src, "la_001")
    pool = PreprocessedFolder(folder)
    test = list(Cache(task).split().test)
    monkeypatch.delenv("nnUNet_raw", raising=False)
    with caplog.at_level(logging.WARNING, logger="pimpic"):
        assert pool_overlap(Cache(task), test, pool, pool.case_ids) == []
    assert "2 of 2 pretraining case(s) have no content hash" in caplog.text
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    pool = PreprocessedFolder(folder)
    assert pool_overlap(Cache(task), test, pool, pool.case_ids) == [
        f"{test_id} = la_001 (same voxels)"]


def test_pretraining_records_the_pool_s_hashes(task_and_pool: tuple[Path, Path, str],
                                               tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import _pretrain_dummy as dummy
    from pimpic.pretraining.config import PretrainConfig
    from pimpic.pretraining.engine import pretrain

    _, pool, _ = task_and_pool
    dummy.install(monkeypatch)
    cfg = PretrainConfig(width=2, depth=3, patch_size=16, patches=2, steps=1,
                         checkpoint_every=1, num_workers=0, device="cpu")
    pretrain(pool, tmp_path / "pre", cfg, progress=False)
    meta = read_encoder_metadata(tmp_path / "pre" / "encoder.safetensors")
    ids = meta["pretrain_cases"]
    assert meta["pretrain_hashes"] == pool_record(Cache(pool), ids)
    assert all(h["content"] and h["input"] for h in meta["pretrain_hashes"].values())
