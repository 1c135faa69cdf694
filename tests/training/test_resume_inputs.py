"""Resume and experiment identity follow case content (issue #23 finding 6): after ``prepare``
redid a case with a corrected label or image, ``finetune --resume`` (R01), ``pretrain
--resume`` (R02) and an ``experiment`` rerun (R03) are refused in one line naming the case."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

import _pretrain_dummy as dummy
from _nifti import msd_tree, save
from pimpic.data.cache import Cache
from pimpic.data.prepare import prepare
from pimpic.data.preprocess import Settings
from pimpic.errors import PimpicError
from pimpic.io import read_json
from pimpic.pretraining.config import PretrainConfig
from pimpic.pretraining.engine import pretrain
from pimpic.segmentation.config import FinetuneConfig
from pimpic.segmentation.finetune import finetune

SETTINGS = Settings(spacing=(1.5, 1.5, 3.0))
AFFINE = np.diag([-1.5, -1.5, 3.0, 1.0])  # msd_tree's
FT = FinetuneConfig(width=2, depth=3, patch_size=16, batch_size=1, samples_per_volume=1,
                    num_workers=0, max_epochs=1, steps_per_epoch=1, device="cpu")
PRE = PretrainConfig(width=2, depth=3, patch_size=16, patches=2, steps=2, checkpoint_every=1,
                     num_workers=0, device="cpu")


def _dataset(tmp_path: Path) -> tuple[Path, Path, str]:
    """(dataset, its cache, a training case)."""
    src = msd_tree(tmp_path / "ds", n=4, shape=(16, 16, 12))
    cache = tmp_path / "cache"
    prepare(src, cache, SETTINGS, workers=1, progress=False)
    return src, cache, Cache(cache).split().train[0]


def _redo(src: Path, cache: Path, case: str, what: str) -> None:
    """Correct one input file and prepare again (it says "redone … changed")."""
    path = src / ("labelsTr" if what == "label" else "imagesTr") / f"{case}.nii.gz"
    import nibabel as nib

    data = np.asarray(nib.load(path).dataobj).copy()
    data[0, 0, 0] = 1 if what == "label" else data[0, 0, 0] + 7
    save(path, data, AFFINE)
    report = prepare(src, cache, SETTINGS, workers=1, progress=False)
    assert report["redone"] == {case: f"{what} changed"}


def test_finetune_resume_after_a_case_was_redone_is_refused(tmp_path: Path) -> None:
    src, cache, case = _dataset(tmp_path)
    run = finetune(cache, tmp_path / "ft", FT, progress=False, tensorboard=False)
    assert read_json(run / "run.json")["case_inputs"][case]["label"]
    _redo(src, cache, case, "label")
    longer = dataclasses.replace(FT, max_epochs=2)
    with pytest.raises(PimpicError, match=rf"ft: cannot resume — 1 case\(s\) were redone by "
                       rf"`pimpic prepare` with other input files since: {case} \(label\)"):
        finetune(cache, run, longer, resume=True, progress=False, tensorboard=False)
    assert read_json(run / "run.json")["epochs"] == 1


def test_pretrain_resume_follows_the_images_only(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    src, cache, case = _dataset(tmp_path)
    dummy.install(monkeypatch)
    run = tmp_path / "pre"
    pretrain(cache, run, PRE, progress=False)
    _redo(src, cache, case, "label")  # pretraining reads no label: resuming is fine
    pretrain(cache, run, dataclasses.replace(PRE, steps=3), resume=True, progress=False)
    _redo(src, cache, case, "image")
    with pytest.raises(PimpicError, match=rf"pre: cannot resume — .*: {case} \(image\)"):
        pretrain(cache, run, dataclasses.replace(PRE, steps=4), resume=True, progress=False)


def test_experiment_rerun_after_a_case_was_redone_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(Path(__file__).parents[1] / "protocol"))
    from test_experiment import Stubs, _cfg  # type: ignore[import-not-found]

    from pimpic.protocol import experiment
    from pimpic.protocol.experiment import run_experiment

    stubs = Stubs()
    for name in ("pretrain", "finetune", "evaluate"):
        monkeypatch.setattr(experiment, name, getattr(stubs, name))
    src, cache, _ = _dataset(tmp_path)
    test_case = Cache(cache).split().test[0]
    cfg = _cfg(cache, methods=("random",), fractions=(100,))
    run_experiment(cfg, tmp_path / "exp", progress=False, on_stage=None, report=False)
    _redo(src, cache, test_case, "label")
    with pytest.raises(PimpicError, match=rf"exp: holds an experiment made on other data of "
                       rf".*: {test_case} \(label\); use a new --out folder"):
        run_experiment(cfg, tmp_path / "exp", progress=False, on_stage=None, report=False)
