"""Dataset readers: layout detection, junk files, and bad dataset folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _nifti import folder_tree, kits_tree, msd_tree, nnunet_tree
from pimpic.data.datasets import read_dataset
from pimpic.errors import PimpicError


@pytest.mark.parametrize(("make", "layout", "ids", "labelled"), [
    (msd_tree, "msd", ["pan_000", "pan_001", "pan_002"], True),
    (kits_tree, "kits19", ["case_00000", "case_00001", "case_00002"], True),
    (nnunet_tree, "nnunet", ["kid_000", "kid_001", "kid_002"], True),
    (folder_tree, "folder", ["sub_vol0", "vol1", "vol2"], False),
])
def test_layouts_are_detected_and_skip_junk(tmp_path: Path, make, layout, ids, labelled) -> None:
    root = make(tmp_path / layout)
    found, cases = read_dataset(root)
    assert found == layout
    assert [c["id"] for c in cases] == ids
    for c in cases:
        assert c["image"].is_file() and not c["image"].name.startswith(".")
        assert (c["label"] is not None) == labelled
        if labelled:
            assert c["label"].is_file()
            assert c["label_values"] == [0, 1, 2]
    # forcing the detected layout gives the same answer
    assert read_dataset(root, layout=found)[1] == cases


def test_msd_reads_only_the_labelled_training_list(tmp_path: Path) -> None:
    _, cases = read_dataset(msd_tree(tmp_path / "msd"))
    assert all("imagesTs" not in str(c["image"]) for c in cases)


@pytest.mark.parametrize(("content", "match"), [
    ("{not json", "malformed JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"name": "x"}', "no 'training' list"),
    ('{"training": [{"label": "x"}]}', "no 'image' path"),
    ('{"training": [], "labels": {"one": "organ"}}', "non-integer label"),
])
def test_malformed_dataset_json(tmp_path: Path, content: str, match: str) -> None:
    root = msd_tree(tmp_path / "msd", n=1)
    (root / "dataset.json").write_text(content)
    with pytest.raises(PimpicError, match=match) as err:
        read_dataset(root, layout="msd")
    assert "dataset.json" in str(err.value) and "\n" not in str(err.value)


def test_missing_dataset_json(tmp_path: Path) -> None:
    root = msd_tree(tmp_path / "msd", n=1)
    (root / "dataset.json").unlink()
    with pytest.raises(PimpicError, match=r"dataset.json: file not found"):
        read_dataset(root)
    with pytest.raises(PimpicError, match=r"dataset.json: file not found"):
        read_dataset(root, layout="msd")


def test_empty_and_missing_folders(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "._junk.nii.gz").write_bytes(b"junk")
    with pytest.raises(PimpicError, match="empty folder"):
        read_dataset(tmp_path / "empty")
    with pytest.raises(PimpicError, match="does not exist"):
        read_dataset(tmp_path / "nope")
    with pytest.raises(PimpicError, match="unknown layout"):
        read_dataset(folder_tree(tmp_path / "f"), layout="decathlon")
    with pytest.raises(PimpicError, match="no cases found"):
        read_dataset(folder_tree(tmp_path / "g"), layout="kits19")


def test_duplicate_ids_are_refused(tmp_path: Path) -> None:
    root = msd_tree(tmp_path / "msd", n=2)
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"].append(meta["training"][0])
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(PimpicError, match="duplicate case id"):
        read_dataset(root)


def _msd_with_names(root: Path, names: list[str]) -> Path:
    """An MSD tree whose training list names these image files (each written)."""
    root = msd_tree(root, n=1)
    img = (root / "imagesTr" / "pan_000.nii.gz").read_bytes()
    lab = (root / "labelsTr" / "pan_000.nii.gz").read_bytes()
    training = []
    for name in names:
        (root / "imagesTr" / name).write_bytes(img)
        (root / "labelsTr" / name).write_bytes(lab)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"] = training
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.mark.parametrize(("names", "match"), [
    (["a:b.nii.gz"], r"a:b.nii.gz: case id 'a:b' contains ':'"),
    ([" lead.nii.gz"], "starts or ends with white space"),
    (["tab\there.nii.gz"], "unsafe in a folder name"),
    (["x" * 210 + ".nii.gz"], "longer than 200 bytes"),
    (["Pan_7.nii.gz", "pan_7.nii.gz"], "'pan_7' collides with 'Pan_7'"),
    (["caf\u00e9.nii.gz", "cafe\u0301.nii.gz"], "collides with"),  # NFC vs NFD spelling
])
def test_unsafe_or_colliding_case_ids_are_refused(tmp_path: Path, names, match) -> None:
    root = _msd_with_names(tmp_path / "msd", names)
    with pytest.raises(PimpicError, match=match) as err:
        read_dataset(root)
    assert "\n" not in str(err.value)


def test_nnunet_image_without_a_case_name_is_refused(tmp_path: Path) -> None:
    """``_0000.nii.gz`` has the empty id: its case folder would be ``cases/`` itself."""
    root = nnunet_tree(tmp_path / "nn", n=2)
    (root / "imagesTr" / "_0000.nii.gz").write_bytes(
        (root / "imagesTr" / "kid_000_0000.nii.gz").read_bytes())
    with pytest.raises(PimpicError, match=r"imagesTr/_0000.nii.gz: case id '' is empty"):
        read_dataset(root)


def test_folder_layout_never_takes_label_maps_for_ct(tmp_path: Path) -> None:
    for make in (msd_tree, kits_tree, nnunet_tree):
        _, cases = read_dataset(make(tmp_path / make.__name__), layout="folder")
        assert cases
        for c in cases:
            assert "labels" not in str(c["image"]) and c["image"].name != "segmentation.nii.gz"
