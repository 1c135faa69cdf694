"""Split sizes (the released rule), nested fractions, split files in both formats, the rules that
keep a cache's split fixed, and the experiment's check that its split did not move."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pimpic.data.splits import (
    Split,
    check_split_request,
    fraction_cases,
    make_splits,
    read_split_file,
    settle_split,
    split_digest,
)
from pimpic.errors import PimpicError
from pimpic.io import read_json, write_json
from pimpic.protocol import experiment
from pimpic.protocol.grid import ExperimentConfig

IDS = [f"c{i:03d}" for i in range(281)]


@pytest.mark.parametrize(("n", "sizes"), [
    (281, (196, 28, 57)),  # the paper's pancreas cohort: round() gave 197/28/56
    (10, (7, 1, 2)),
    (9, (6, 0, 3)),  # below 10 cases there is no validation case
    (90, (62, 9, 19)),  # int(0.7 · 90) = int(62.999…) = 62, as released
    (3, (2, 0, 1)),
])
def test_released_split_sizes(n: int, sizes: tuple[int, int, int]) -> None:
    s = make_splits(IDS[:n], seed=0)
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == sizes
    assert sorted(s["train"] + s["val"] + s["test"]) == IDS[:n]


def test_fractions_are_nested_ceil_prefixes() -> None:
    s = make_splits(IDS, seed=1)
    for p in (5, 10, 20, 50, 100):
        assert s["fractions"][str(p)] == s["train"][: -(-196 * p // 100)]
    assert len(fraction_cases(s, 2)) == 4  # ceil(3.92), computed when not stored
    assert make_splits(IDS, seed=1) == s and make_splits(IDS, seed=2)["train"] != s["train"]


def _entries(ids: list[str]) -> list[dict[str, str]]:
    return [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in ids]


def _released(train: list[str], val: list[str], test: list[str]) -> dict[str, object]:
    data: dict[str, object] = {"validation": _entries(val), "test": _entries(test)}
    for p, k in ((2, 1), (5, 2), (10, 3), (20, 4), (50, 5), (100, len(train))):
        data[f"train_{p}_percent"] = _entries(list(reversed(train[:k])))  # any order
    return data


def test_read_both_split_file_formats(tmp_path: Path) -> None:
    train, val, test = IDS[:7], IDS[7:8], IDS[8:10]
    released = tmp_path / "released.json"
    released.write_text(json.dumps(_released(train, val, test)))
    s = read_split_file(released)
    assert s["train"] == list(reversed(train)) and s["val"] == val and s["test"] == test
    assert s["fractions"]["2"] == [IDS[0]] and s["fractions"]["5"] == [IDS[1], IDS[0]]
    assert s["fractions"]["100"] == s["train"]
    own = tmp_path / "own.json"
    own.write_text(json.dumps({"train": train, "val": val, "test": test}))
    mine = read_split_file(own)
    assert mine["fractions"]["5"] == [IDS[0]] and mine["fractions"]["50"] == train[:4]


@pytest.mark.parametrize(("change", "match"), [
    (lambda d: d.update(train_50_percent=_entries([*IDS[:4], IDS[8]])),  # c008 is a test case
     r"the 50% label fraction is not inside the 100% list \(\['c008'\]\)"),
    (lambda d: d.update(train_2_percent=[]), r"label fraction 2% lists no case"),
    (lambda d: d.pop("validation"), r"without a 'validation' list"),
    (lambda d: d["test"].append({"image": "./imagesTr/c008.nii.gz",
                                 "label": "./labelsTr/c009.nii.gz"}), r"pairs image"),
    (lambda d: d["test"].append(d["test"][0]), r"'test' lists case\(s\) twice"),
    (lambda d: [d.pop(k) for k in list(d)] and d.update(x=1), r"not a split file"),
])
def test_bad_split_files_are_refused(tmp_path: Path, change, match) -> None:
    data = _released(IDS[:7], IDS[7:8], IDS[8:10])
    change(data)
    path = tmp_path / "s.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PimpicError, match=match) as err:
        read_split_file(path)
    assert str(path) in str(err.value)


def test_a_saved_split_is_kept_or_refused_never_moved() -> None:
    ids = IDS[:9]
    split, status = settle_split(None, None, ids, ids, None, False, "splits.json")
    assert status == "new" and split is not None
    assert settle_split(split, None, ids, ids, None, False, "s") == (split, "kept")
    # the old behaviour: nine → ten cases moved cases between train and test
    moved = make_splits(IDS[:10], seed=0)
    assert set(moved["test"]) & set(split["train"])
    with pytest.raises(PimpicError, match=r"1 cached case\(s\) are not in the saved split "
                                          r"\(c009\).*--resplit"):
        settle_split(split, None, IDS[:10], IDS[:10], None, False, "s")
    with pytest.raises(PimpicError, match=r"names 1 case\(s\) that are not cached now"):
        settle_split(split, None, ids[1:], ids[1:], None, False, "s")
    again, status = settle_split(split, None, IDS[:10], IDS[:10], None, True, "s")
    assert status == "recomputed" and again == moved
    # seeds and split files that would replace the saved split are refused up front
    check_split_request(split, None, 0, False, "s")
    check_split_request(split, None, None, False, "s")
    with pytest.raises(PimpicError, match="made with seed 0; --seed 1 would move cases"):
        check_split_request(split, None, 1, False, "s")
    check_split_request(split, None, 1, True, "s")
    other = {k: split[k] for k in ("train", "val", "test")}
    other["train"] = list(reversed(other["train"]))  # the order decides the fractions
    with pytest.raises(PimpicError, match="already has another split"):
        check_split_request(split, other, None, False, "s")


def test_a_user_split_lists_the_cases_it_leaves_out() -> None:
    user = {"train": IDS[:3], "val": [], "test": IDS[3:4]}
    split, _ = settle_split(None, user, IDS[:6], IDS[:5], None, False, "s", "u.json")
    assert split is not None
    assert split["unused"] == [IDS[4]] and split["unlabelled"] == [IDS[5]]
    assert settle_split(split, None, IDS[:6], IDS[:5], None, False, "s")[1] == "kept"
    with pytest.raises(PimpicError, match=r"u.json: 'train' names unknown case\(s\) \['x'\]"):
        settle_split(None, {**user, "train": ["x"]}, IDS[:6], IDS[:5], None, False, "s", "u.json")


def test_split_digest_follows_the_lists() -> None:
    s = make_splits(IDS[:20], seed=0)
    assert split_digest(s) == split_digest(json.loads(json.dumps(s)))
    t = dict(s, test=s["test"][1:], val=[*s["val"], s["test"][0]])
    assert split_digest(t) != split_digest(s)


def test_a_saved_split_reads_as_a_split_with_the_same_lists_and_digest(tmp_path: Path) -> None:
    saved = make_splits(IDS[:20], seed=4)
    saved["unlabelled"] = ["x1"]
    split = Split.from_json(json.loads(json.dumps(saved)), "s.json")
    assert split.train == tuple(saved["train"]) and split.part("test") == tuple(saved["test"])
    assert (split.seed, split.ratios, split.unlabelled) == (4, (0.7, 0.1, 0.2), ("x1",))
    assert split.digest == split_digest(saved)
    assert [split.fraction(p) for p in (2, 5, 100)] == [
        fraction_cases(saved, p) for p in (2, 5, 100)]
    stored = read_split_file(_write(tmp_path / "r.json", _released(IDS[:7], IDS[7:8],
                                                                   IDS[8:10])))
    released = Split.from_json(stored, "r.json")
    assert released.seed is None and released.fraction(2) == stored["fractions"]["2"]
    assert released.digest == split_digest(stored)
    with pytest.raises(PimpicError, match="not one of train, val, test"):
        split.part("validation")
    with pytest.raises(PimpicError, match=r"s.json: 'val' must be a list of case ids"):
        Split.from_json({**saved, "val": "c001"}, "s.json")


def _write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_experiment_refuses_a_moved_split(make_cache, tmp_path: Path, monkeypatch) -> None:
    cache = make_cache(n_cases=10, shape=(8, 8, 8))
    monkeypatch.setattr(experiment, "plan_stages", lambda *a, **k: [])
    cfg = ExperimentConfig(cache=str(cache), methods=("random",))
    exp = tmp_path / "exp"
    experiment.run_experiment(cfg, exp, on_stage=None, report=False)
    assert read_json(exp / "split.json")["train"] == 7
    experiment.run_experiment(cfg, exp, on_stage=None, report=False)  # same split: fine
    splits = read_json(cache / "splits.json")
    splits["val"], splits["test"] = splits["test"][:1], [*splits["val"], *splits["test"][1:]]
    write_json(cache / "splits.json", splits)
    with pytest.raises(PimpicError, match=r"exp: holds an experiment made on another split"):
        experiment.run_experiment(cfg, exp, on_stage=None, report=False)
