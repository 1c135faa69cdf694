"""Label sets read from dataset.json: MSD and nnU-Net forms, regions, the organ + tumour view,
and what is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from _cli import assert_refused
from _nifti import kits_tree, msd_tree, organs_phantom, organs_tree, save
from pimpic.cli import app
from pimpic.data.cache import Cache
from pimpic.data.datasets import read_labels
from pimpic.data.labels import (
    KITS19,
    NAMED_VIEW,
    ORGAN_TUMOUR,
    ORGAN_TUMOUR_VIEW,
    LabelSet,
    parse_labels,
)
from pimpic.data.prepare import prepare
from pimpic.data.preprocess import Settings
from pimpic.errors import PimpicError
from pimpic.segmentation.metrics import COLUMNS, columns

COARSE = Settings(spacing=(3.0, 3.0, 3.0))


def test_nnunet_and_msd_forms_give_one_structure_per_name_in_dataset_order() -> None:
    nn = parse_labels({"background": 0, "brainstem": 1, "Spinal Cord": 2, "mandible": 3},
                      "ds.json", by_name=True)
    msd = parse_labels({"0": "background", "1": "brainstem", "2": "Spinal Cord",
                        "3": "mandible"}, "ds.json", by_name=False)
    for ls in (nn, msd):
        assert ls.view == NAMED_VIEW and ls.num_classes == 4
        assert [(s.key, s.name, s.values) for s in ls.structures] == [
            ("brainstem", "brainstem", (1,)), ("spinal_cord", "Spinal Cord", (2,)),
            ("mandible", "mandible", (3,))]
    assert nn.matches(msd) and LabelSet.from_json(json.loads(json.dumps(nn.to_json()))) == nn


def test_regions_are_structures_over_several_values() -> None:
    ls = parse_labels({"background": 0, "whole tumour": [1, 2, 3], "core": [2, 3],
                       "enhancing": 3}, "ds.json", by_name=True)
    assert ls.num_classes == 4 and ls.keys == ("whole_tumour", "core", "enhancing")
    assert [s.values for s in ls.structures] == [(1, 2, 3), (2, 3), (3,)]


@pytest.mark.parametrize(("labels", "organ"), [
    ({"0": "background", "1": "pancreas", "2": "cancer"}, "pancreas"),  # MSD Task07
    ({"0": "background", "1": "liver", "2": "Tumor"}, "liver"),
    ({"0": "background", "1": "kidney", "2": "tumour"}, "kidney"),  # pimpic synth
])
def test_an_organ_and_its_tumour_keep_the_organ_tumour_whole_view(labels, organ) -> None:
    ls = parse_labels(labels, "ds.json", by_name=False)
    assert ls.view == ORGAN_TUMOUR_VIEW and ls.matches(ORGAN_TUMOUR)
    assert ls.labels[1] == (organ, (1,))
    assert columns(ls.structures) == COLUMNS == (
        "case", "dice_organ", "dice_tumour", "dice_whole", "hd95_organ", "hd95_tumour",
        "hd95_whole")


def test_two_organs_are_not_an_organ_and_a_tumour() -> None:
    ls = parse_labels({"0": "background", "1": "anterior", "2": "posterior"}, "x", False)
    assert ls.view == NAMED_VIEW and ls.keys == ("anterior", "posterior")


@pytest.mark.parametrize(("labels", "match"), [
    ({"background": 0, "a": 1, "b": 3}, r"consecutive 0 … 3.*\[2\] not named"),
    ({"a": 1, "b": 2}, "no background"),
    ({"background": 0, "a b": 1, "a-b": 2}, "same column name 'a_b'"),
    ({"background": 0, "a": -1}, "non-negative"),
    ({"background": 0, "a": "x"}, "non-integer"),
    ({"background": 0, "a": [0, 1]}, "may not include it"),
])
def test_unusable_label_maps_are_one_line_errors(labels, match) -> None:
    with pytest.raises(PimpicError, match=match) as err:
        parse_labels(labels, "data/dataset.json", by_name=True)
    assert str(err.value).startswith("data/dataset.json: ") and "\n" not in str(err.value)


def test_layouts_record_their_labels_in_the_manifest(tmp_path: Path) -> None:
    """MSD Task07 and KiTS19 keep the organ + tumour view; a named set is carried as named."""
    msd = msd_tree(tmp_path / "msd")
    kits = kits_tree(tmp_path / "kits")
    assert read_labels(kits, "kits19") == KITS19
    organs = organs_tree(tmp_path / "hn", n=3)
    for src, keys in ((msd, ("organ", "tumour", "whole")), (kits, ("organ", "tumour", "whole")),
                      (organs, ("brainstem", "spinal_cord", "parotid_left"))):
        out = tmp_path / f"cache-{src.name}"
        prepare(src, out, COARSE, workers=1, progress=False)
        labels = Cache(out).labels
        assert labels is not None and labels.keys == keys
    named = Cache(tmp_path / "cache-hn").labels
    assert named is not None and named.labels[2] == ("spinal cord", (2,))
    msd_labels = Cache(tmp_path / "cache-msd").labels
    assert msd_labels is not None and msd_labels.labels[1] == ("pancreas", (1,))


def test_an_unnamed_label_value_is_refused_at_prepare_and_not_cached(tmp_path: Path) -> None:
    src = organs_tree(tmp_path / "hn", n=3)
    _, lab = organs_phantom((18, 12, 8), 1)
    lab[0, 0, 0] = 7
    bad = save(src / "labelsTr" / "hn_001.nii.gz", lab, np.diag([1.5, 1.5, 3.0, 1.0]))
    out = tmp_path / "cache"
    with pytest.raises(PimpicError) as err:
        prepare(src, out, COARSE, workers=1, progress=False)
    msg = str(err.value)
    assert str(bad) in msg and "label value 7 not named" in msg and "\n" not in msg
    report = prepare(src, out, COARSE, workers=1, progress=False, skip_bad=True)
    assert [b["id"] for b in report["bad"]] == ["hn_001"]
    cache = Cache(out)
    assert "hn_001" not in cache.case_ids and not cache.case_dir("hn_001").exists()
    assert cache.labels is not None and cache.labels.keys == (
        "brainstem", "spinal_cord", "parotid_left")


def test_a_cache_is_not_reused_for_a_dataset_with_other_labels(tmp_path: Path) -> None:
    out = tmp_path / "cache"
    prepare(organs_tree(tmp_path / "a", n=3), out, COARSE, workers=1, progress=False)
    other = organs_tree(tmp_path / "b", n=3, labels={"background": 0, "x": 1, "y": 2, "z": 3})
    with pytest.raises(PimpicError, match="other labels"):
        prepare(other, out, COARSE, workers=1, progress=False)


def test_openkbp_cases_are_cached_with_their_five_named_structures(openkbp: Path,
                                                                   tmp_path: Path) -> None:
    """Real data: three OpenKBP patients (linked, not copied) prepared at 4 mm."""
    src = tmp_path / "openkbp"
    for sub in ("imagesTr", "labelsTr"):
        (src / sub).mkdir(parents=True)
    for cid in sorted(p.name[: -len(".nii.gz")] for p in (openkbp / "labelsTr").iterdir())[:3]:
        (src / "imagesTr" / f"{cid}_0000.nii.gz").symlink_to(
            openkbp / "imagesTr" / f"{cid}_0000.nii.gz")
        (src / "labelsTr" / f"{cid}.nii.gz").symlink_to(openkbp / "labelsTr" / f"{cid}.nii.gz")
    (src / "dataset.json").write_bytes((openkbp / "dataset.json").read_bytes())
    out = tmp_path / "cache"
    prepare(src, out, Settings(spacing=(4.0, 4.0, 4.0)), workers=1, progress=False)
    cache = Cache(out)
    labels = cache.labels
    assert labels is not None and labels.num_classes == 6
    assert labels.keys == ("brainstem", "spinal_cord", "parotid_right", "parotid_left",
                           "mandible")
    assert len(cache.case_ids) == 3
    assert all(set(cache.meta(c)["label_values"]) <= set(range(6)) for c in cache.case_ids)


def test_cli_prepare_names_the_labels_and_refuses_an_unnamed_value(tmp_path: Path) -> None:
    src = organs_tree(tmp_path / "hn", n=3)
    runner = CliRunner()
    args = ["prepare", str(src), "--spacing", "3", "--workers", "1", "--no-progress"]
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    assert "labels: 1 brainstem, 2 spinal cord, 3 parotid_left" in res.output
    _, lab = organs_phantom((18, 12, 8), 2)
    lab[1, 1, 1] = 9
    bad = save(src / "labelsTr" / "hn_002.nii.gz", lab, np.diag([1.5, 1.5, 3.0, 1.0]))
    assert_refused(runner.invoke(app, [*args, "--out", str(tmp_path / "b")]),
                   str(bad), "label value 9 not named")
