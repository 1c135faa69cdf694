"""The synthetic CT cohort: plausible anatomy, labels where they belong, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from pimpic.data.datasets import read_dataset
from pimpic.data.synthetic import generate_cohort, make_case
from pimpic.errors import PimpicError

TINY = {"shape": (64, 64, 20), "spacing": (2.8, 2.8, 6.0)}


@pytest.fixture(scope="module")
def cases() -> dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    return {task: [make_case(np.random.default_rng([1, i]), task=task, **TINY) for i in range(4)]
            for task in ("pancreas", "kidney")}


@pytest.mark.parametrize("task", ["pancreas", "kidney"])
def test_labels_inside_body_and_tumour_inside_organ(cases, task: str) -> None:
    n_tumours = 0
    for image, label, affine in cases[task]:
        assert image.dtype == np.int16 and label.dtype == np.uint8
        assert set(np.unique(label).tolist()) <= {0, 1, 2} and (label == 1).sum() > 20
        body = ndimage.binary_fill_holes(ndimage.binary_opening(image > -500))
        assert body[label > 0].all()
        tumour = label == 2
        if tumour.any():
            n_tumours += 1
            # every tumour voxel belongs to one blob that touches the organ
            grown = ndimage.binary_dilation(tumour, iterations=1)
            assert (grown & (label == 1)).any()
            organ_box = np.argwhere(label > 0)
            lo, hi = organ_box.min(0), organ_box.max(0)
            t = np.argwhere(tumour)
            assert (t >= lo).all() and (t <= hi).all()
        assert nib.aff2axcodes(affine) == ("L", "P", "S")
    assert n_tumours >= 2  # 85 % of cases carry one


def test_hu_ranges_are_plausible(cases) -> None:
    image, label, _ = cases["pancreas"][0]
    assert image.min() >= -1024 and image.max() <= 3071
    assert np.median(image[0]) < -900  # air at the field-of-view edge
    assert (image > 300).sum() > 50  # bone
    assert ((image > -150) & (image < -50)).sum() > 500  # fat
    organ = image[label == 1].mean()
    assert 40 < organ < 200
    for image, label, _ in cases["pancreas"]:
        if (label == 2).sum() > 10:  # pancreatic tumours are hypodense
            assert image[label == 2].mean() < image[label == 1].mean()
    kidney, klabel, _ = cases["kidney"][0]
    assert 80 < kidney[klabel == 1].mean() < 250
    # both kidneys are labelled: two big separate blobs (a few voxels may be cut off by vessels)
    blobs, _ = ndimage.label(klabel > 0)
    sizes = np.sort(np.bincount(blobs.ravel())[1:])[::-1]
    assert len(sizes) >= 2 and sizes[1] > 0.3 * sizes[0] and sizes[:2].sum() > 0.95 * sizes.sum()


def test_deterministic_per_seed() -> None:
    a = make_case(np.random.default_rng([3, 1]), shape=(40, 40, 12), spacing=(4, 4, 8))
    b = make_case(np.random.default_rng([3, 1]), shape=(40, 40, 12), spacing=(4, 4, 8))
    c = make_case(np.random.default_rng([3, 2]), shape=(40, 40, 12), spacing=(4, 4, 8))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


def test_cohort_is_an_msd_dataset_and_reruns_are_noops(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    generate_cohort(out, 3, task="kidney", seed=5, shape=(40, 40, 12), spacing=(4, 4, 8),
                    progress=False)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"] == {"0": "background", "1": "kidney", "2": "tumour"}
    assert meta["numTraining"] == 3
    assert meta["training"][0] == {"image": "./imagesTr/kidney_000.nii.gz",
                                   "label": "./labelsTr/kidney_000.nii.gz"}
    layout, cases = read_dataset(out)
    assert layout == "msd" and len(cases) == 3
    img = nib.load(str(cases[0]["image"]))
    assert img.get_data_dtype() == np.int16
    np.testing.assert_allclose(img.header.get_zooms(), (4, 4, 8))
    again = make_case(np.random.default_rng([5, 0]), shape=(40, 40, 12), spacing=(4, 4, 8),
                      task="kidney")[0]
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), again)

    mtime = cases[0]["image"].stat().st_mtime_ns
    generate_cohort(out, 3, task="kidney", seed=5, shape=(40, 40, 12), spacing=(4, 4, 8),
                    progress=False)
    assert cases[0]["image"].stat().st_mtime_ns == mtime
    with pytest.raises(PimpicError, match="other arguments"):
        generate_cohort(out, 3, task="kidney", seed=6, shape=(40, 40, 12), spacing=(4, 4, 8),
                        progress=False)
    with pytest.raises(PimpicError, match="unknown task"):
        generate_cohort(tmp_path / "x", 1, task="liver")
    with pytest.raises(PimpicError, match="at least 8"):
        generate_cohort(tmp_path / "x", 1, shape=(4, 40, 40))
