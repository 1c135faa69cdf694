"""``prepare SRC --unlabelled DIR``: unlabelled images cached beside a labelled dataset, listed
as the split's ``unlabelled``, without moving the labelled split."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from _nifti import nnunet_tree, phantom, save
from pimpic.data.cache import Cache
from pimpic.data.prepare import prepare
from pimpic.data.preprocess import Settings
from pimpic.errors import PimpicError


def _archive(root: Path, n: int = 3) -> Path:
    """``n`` other scans (not the labelled ones: other seeds), one in a subfolder."""
    for i in range(n):
        img, _ = phantom((10, 10, 8), 50 + i)
        save(root / ("sub" if i == 0 else "") / f"scan{i}.nii.gz", img,
             np.diag([1.5, 1.5, 3.0, 1.0]))
    return root


def _prepare(src: Path, out: Path, **kw: object) -> dict:
    return prepare(src, out, workers=1, progress=False, **kw)  # type: ignore[arg-type]


def test_unlabelled_cases_join_without_moving_the_labelled_split(tmp_path: Path) -> None:
    src = nnunet_tree(tmp_path / "nn", n=4)
    arch = _archive(tmp_path / "archive")
    alone = _prepare(src, tmp_path / "alone")
    both = _prepare(src, tmp_path / "both", unlabelled=[arch])
    assert both["n_cases"] == 7 and both["processed"] == 7 and not both["bad"]
    assert both["split_digest"] == alone["split_digest"]
    assert both["splits"] == {**alone["splits"], "unlabelled": 3}
    cache, ref = Cache(tmp_path / "both"), Cache(tmp_path / "alone")
    split = cache.split()
    assert (split.train, split.val, split.test) == (ref.split().train, ref.split().val,
                                                    ref.split().test)
    assert split.unlabelled == ("scan1", "scan2", "sub_scan0")  # the folder reader's ids
    assert cache.manifest["unlabelled"] == [str(arch.resolve())]
    assert "unlabelled" not in ref.manifest  # a cache made without them: manifest as before
    meta = cache.meta("scan1")
    assert cache.label("scan1") is None and meta["content_sha256"] and meta["sources"]["image"]
    assert cache.case_hashes("scan1")["input"] == meta["sources"]["image"]["sha256"]
    # the same arguments again: nothing new
    again = _prepare(src, tmp_path / "both", unlabelled=[arch])
    assert (again["processed"], again["skipped"], again["split_status"]) == (0, 7, "kept")
    # forgetting the folder is refused before anything is rewritten
    with pytest.raises(PimpicError, match=r"pass --unlabelled .*archive again") as err:
        _prepare(src, tmp_path / "both")
    assert "\n" not in str(err.value) and Cache(tmp_path / "both").case_ids == cache.case_ids
    # a labelled cache gains the archive later: its split stays, the list grows
    later = _prepare(src, tmp_path / "alone", unlabelled=[arch])
    assert later["split_status"] == "updated" and later["split_digest"] == alone["split_digest"]
    assert Cache(tmp_path / "alone").split().unlabelled == split.unlabelled


def test_an_unlabelled_id_that_is_a_labelled_id_is_refused(tmp_path: Path) -> None:
    src = nnunet_tree(tmp_path / "nn", n=3)
    arch = _archive(tmp_path / "archive")
    img, _ = phantom((10, 10, 8), 99)
    save(arch / "kid_001.nii.gz", img)
    with pytest.raises(PimpicError, match=r"kid_001\.nii\.gz: unlabelled case id 'kid_001' is "
                       r"already the id of .*kid_001_0000\.nii\.gz") as err:
        _prepare(src, tmp_path / "cache", unlabelled=[arch])
    assert "\n" not in str(err.value) and not (tmp_path / "cache").exists()


def test_the_same_scan_twice_is_refused(tmp_path: Path) -> None:
    src = nnunet_tree(tmp_path / "nn", n=4)
    arch = _archive(tmp_path / "archive")
    # a labelled patient's image under another name (and another file: content, not bytes)
    img, _ = phantom((10, 10, 8), 2)
    save(arch / "copy_of_kid_002.nii.gz", img.astype(np.int32), np.diag([1.5, 1.5, 3.0, 1.0]))
    with pytest.raises(PimpicError, match=r"copy_of_kid_002\.nii\.gz: the same scan as labelled "
                       r"case kid_002 \(.*kid_002_0000\.nii\.gz; equal source voxels") as err:
        _prepare(src, tmp_path / "cache", unlabelled=[arch])
    assert "\n" not in str(err.value)
    assert not (tmp_path / "cache" / "cases" / "copy_of_kid_002").exists()
    assert "copy_of_kid_002" not in Cache(tmp_path / "cache").case_ids
    report = _prepare(src, tmp_path / "cache", unlabelled=[arch], skip_bad=True)
    assert [b["id"] for b in report["bad"]] == ["copy_of_kid_002"]
    assert Cache(tmp_path / "cache").split().unlabelled == ("scan1", "scan2", "sub_scan0")


def test_openkbp_with_its_unlabelled_scans(openkbp: Path, tmp_path: Path) -> None:
    """Two labelled patients + two unlabelled scans of the real data (linked, not copied)."""
    src, arch = tmp_path / "kbp", tmp_path / "kbp_unlabelled"
    for sub in ("imagesTr", "labelsTr"):
        (src / sub).mkdir(parents=True)
    shutil.copy(openkbp / "dataset.json", src / "dataset.json")
    for img in sorted((openkbp / "imagesTr").glob("*_0000.nii.gz"))[:3]:
        cid = img.name[: -len("_0000.nii.gz")]
        (src / "imagesTr" / img.name).symlink_to(img)
        (src / "labelsTr" / f"{cid}.nii.gz").symlink_to(openkbp / "labelsTr" / f"{cid}.nii.gz")
    arch.mkdir()
    for img in sorted((openkbp / "unlabelled").glob("*.nii.gz"))[:2]:
        (arch / img.name).symlink_to(img)
    # at about the data's own spacing: cheap to resample
    report = _prepare(src, tmp_path / "cache", unlabelled=[arch],
                      settings=Settings(spacing=(4.0, 4.0, 3.0)))
    assert not report["bad"] and report["n_cases"] == 5
    split = Cache(tmp_path / "cache").split()
    assert len(split.unlabelled) == 2 and len(split.train + split.val + split.test) == 3
    assert all(c.startswith("openkbp_") for c in split.unlabelled)


def test_cli_unlabelled_option(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pimpic.cli import app

    src = nnunet_tree(tmp_path / "nn", n=4)
    arch = _archive(tmp_path / "archive")
    res = CliRunner().invoke(app, ["prepare", str(src), "--out", str(tmp_path / "cache"),
                                   "--unlabelled", str(arch), "--workers", "1",
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "7/7 case(s) cached" in res.output and ", unlabelled 3 →" in res.output
