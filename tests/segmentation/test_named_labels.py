"""Any label set end to end: a dataset with named structures (one absent from some cases) is
prepared, fine-tuned with the classes its labels give, evaluated per structure on its test
split and, with ``evaluate --data``, on a folder the model never saw."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _cli import assert_refused
from _nifti import organs_tree
from pimpic.cli import app
from pimpic.config import load_yaml
from pimpic.data.cache import Cache
from pimpic.data.prepare import prepare
from pimpic.data.preprocess import Settings
from pimpic.errors import PimpicError
from pimpic.io import read_json
from pimpic.segmentation.config import FinetuneConfig
from pimpic.segmentation.evaluate import describe, evaluate
from pimpic.segmentation.finetune import finetune
from pimpic.segmentation.model_file import load_model

NATIVE = Settings(spacing=(1.5, 1.5, 3.0))
TINY = FinetuneConfig(width=2, depth=3, patch_size=16, batch_size=1, samples_per_volume=2,
                      num_workers=0, log_every=1, lr=1e-2, steps_per_epoch=2, max_epochs=1)
KEYS = ["brainstem", "spinal_cord", "parotid_left"]
SHAPE = (24, 16, 16)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(dataset folder, cache, run) of a 4-class model fine-tuned for two steps."""
    root = tmp_path_factory.mktemp("named")
    src = organs_tree(root / "data", n=6, shape=SHAPE)
    cache = root / "cache"
    prepare(src, cache, NATIVE, workers=1, progress=False)
    run = finetune(cache, root / "run", TINY, progress=False, tensorboard=False)
    return src, cache, run


def _per_case(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_fine_tuning_takes_its_classes_from_the_labels(trained, tmp_path: Path) -> None:
    _, cache, run = trained
    model, info = load_model(run)
    assert model.num_classes == info.num_classes == 4
    assert [s.key for s in info.labels.structures] == KEYS
    assert load_yaml(run / "config.yaml")["num_classes"] == 4  # resolved, as a resume compares
    assert read_json(run / "run.json")["labels"]["labels"]["spinal cord"] == 2
    with pytest.raises(PimpicError, match=r"label value 3 does not fit num_classes=3") as err:
        finetune(cache, tmp_path / "r", dataclasses.replace(TINY, num_classes=3),
                 progress=False)
    assert "brainstem" in str(err.value) and not (tmp_path / "r").exists()
    with pytest.raises(PimpicError, match=r"num_classes=5 differs from the 4 classes"):
        finetune(cache, tmp_path / "r", dataclasses.replace(TINY, num_classes=5),
                 progress=False)


def test_the_test_split_is_scored_per_structure(trained) -> None:
    _, cache, run = trained
    summary = evaluate(run, device="cpu", progress=False)
    rows = _per_case(run / "eval-test" / "per_case.csv")
    assert list(rows[0]) == ["case", *(f"dice_{k}" for k in KEYS), *(f"hd95_{k}" for k in KEYS)]
    assert [r["case"] for r in rows] == list(Cache(cache).split().test)
    assert list(summary["structures"]) == KEYS
    assert summary["names"]["spinal_cord"] == "spinal cord"
    assert "spinal cord" in describe(summary)


def test_evaluate_data_scores_a_folder_the_model_never_saw(trained, tmp_path: Path) -> None:
    _, _, run = trained
    other = organs_tree(tmp_path / "hospital_b", n=3, shape=(22, 14, 12), prefix="ext")
    summary = evaluate(run, data=other, device="cpu", progress=False)
    out = run / "eval-data-hospital_b"
    rows = _per_case(out / "per_case.csv")
    assert [r["case"] for r in rows] == ["ext_000", "ext_001", "ext_002"]
    assert list(rows[0])[1:] == [*(f"dice_{k}" for k in KEYS), *(f"hd95_{k}" for k in KEYS)]
    assert rows[0]["dice_parotid_left"] == "nan"  # ext_000 has no parotid
    saved = json.loads((out / "summary.json").read_text())
    assert saved["data"] == str(other.resolve()) and saved["n_cases"] == 3
    assert saved["structures"]["parotid_left"]["n_excluded"] == 1
    assert summary["structures"]["parotid_left"]["n"] == 3  # absent scores 0 (released rule)
    assert (out / "pred" / "ext_001.npy").is_file() and (out / ".pimpic-eval").is_file()
    nan_rule = evaluate(run, data=other, device="cpu", progress=False, absent="nan",
                        original_space=True)
    assert nan_rule["structures"]["parotid_left"]["n"] == 2
    assert nan_rule["space"] == "original"


def test_evaluate_data_refuses_other_labels_and_seen_patients(trained, tmp_path: Path) -> None:
    src, _, run = trained
    other = organs_tree(tmp_path / "c", n=2, prefix="c",
                        labels={"background": 0, "liver": 1, "spleen": 2, "kidney": 3})
    with pytest.raises(PimpicError, match=r"labels \(1 liver.*are not the model's") as err:
        evaluate(run, data=other, device="cpu", progress=False)
    assert str(other) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(PimpicError, match=r"case\(s\) were in the model's fine-tuning set"):
        evaluate(run, data=src, device="cpu", progress=False)
    assert not (run / "eval-data-c").exists()


def test_cli_evaluate_data(trained, tmp_path: Path) -> None:
    _, _, run = trained
    other = organs_tree(tmp_path / "site", n=2, shape=(20, 14, 12), prefix="s")
    runner = CliRunner()
    res = runner.invoke(app, ["evaluate", str(run), "--data", str(other), "--device", "cpu",
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    assert str(other.resolve()) in res.output and "spinal cord" in res.output
    wrong = organs_tree(tmp_path / "wrong", n=2, prefix="w",
                        labels={"background": 0, "a": 1, "b": 2, "c": 3})
    assert_refused(runner.invoke(app, ["evaluate", str(run), "--data", str(wrong),
                                       "--no-progress"]), "not the model's", str(wrong))
