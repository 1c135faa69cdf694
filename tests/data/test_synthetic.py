"""The synthetic CT cohort: plausible anatomy, labels where they belong, determinism."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from _cli import assert_refused
from pimpic.cli import app
from pimpic.data.datasets import read_dataset
from pimpic.data.synthetic import generate_cohort, make_case
from pimpic.data.synthetic_style import VARIABILITY
from pimpic.errors import PimpicError

TINY = {"shape": (64, 64, 20), "spacing": (2.8, 2.8, 6.0)}  # the default 180 mm field of view
#: realistic cases draw slices of 0.5–2× the nominal spacing: 3 mm nominal keeps them ≤ 6 mm,
#: as in clinical CT, where labels sampled at voxel centres stay connected
GRIDS = {"low": TINY, "realistic": {"shape": (64, 64, 40), "spacing": (2.8, 2.8, 3.0)}}
Case = tuple[np.ndarray, np.ndarray, np.ndarray]


@pytest.fixture(scope="module")
def cases() -> dict[tuple[str, str], list[Case]]:
    return {(var, task): [make_case(np.random.default_rng([1, i]), task=task, variability=var,
                                    **GRIDS[var]) for i in range(4)]
            for var in VARIABILITY for task in ("pancreas", "kidney")}


@pytest.mark.parametrize("variability", VARIABILITY)
@pytest.mark.parametrize("task", ["pancreas", "kidney"])
def test_labels_inside_body_and_tumour_inside_organ(cases, task: str, variability: str) -> None:
    n_tumours = 0
    for image, label, affine in cases[variability, task]:
        assert image.dtype == np.int16 and label.dtype == np.uint8
        assert set(np.unique(label).tolist()) <= {0, 1, 2}
        voxel_mm3 = float(np.prod(np.abs(np.diag(affine)[:3])))
        assert (label == 1).sum() * voxel_mm3 > 1000  # some organ is left beside the tumour
        body = ndimage.binary_fill_holes(ndimage.binary_opening(image > -500))
        # the opened body mask can cut off a few tissue voxels squeezed between bowel gas
        assert (label[~body] > 0).sum() <= 3
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
    image, label, _ = cases["low", "pancreas"][0]
    assert image.min() >= -1024 and image.max() <= 3071
    assert np.median(image[0]) < -900  # air at the field-of-view edge
    assert (image > 300).sum() > 50  # bone
    assert ((image > -150) & (image < -50)).sum() > 500  # fat
    organ = image[label == 1].mean()
    assert 40 < organ < 200  # the low cohort is portal-venous
    for image, label, _ in cases["low", "pancreas"]:
        if (label == 2).sum() > 10:  # its pancreatic tumours are all hypodense
            assert image[label == 2].mean() < image[label == 1].mean()
    for image, label, _ in cases["realistic", "pancreas"]:  # any phase, any kind of tumour
        assert image.min() >= -1024 and np.median(image[0]) < -900
        assert 10 < image[label == 1].mean() < 200
    for variability in VARIABILITY:
        kidney, klabel, _ = cases[variability, "kidney"][0]
        assert 15 < kidney[klabel == 1].mean() < 250
        # both kidneys are labelled: two big separate blobs (vessels may cut off a few voxels)
        blobs, _ = ndimage.label(klabel > 0)
        sizes = np.sort(np.bincount(blobs.ravel())[1:])[::-1]
        assert len(sizes) >= 2 and sizes[1] > 0.3 * sizes[0]
        assert sizes[:2].sum() > 0.95 * sizes.sum()


def _spread(cohort: list[Case]) -> dict[str, float]:
    """What makes a few labelled cases insufficient, measured on the images and labels."""
    hu, inplane, slices, centre_z, volume, tumour = [], [], [], [], [], []
    for image, label, affine in cohort:
        zooms = np.abs(np.diag(affine)[:3])
        hu.append(image[label == 1].mean())
        inplane.append(zooms[0])
        slices.append(round(zooms[2], 2))
        centre_z.append((affine[:3, :3] @ np.argwhere(label > 0).mean(0) + affine[:3, 3])[2])
        volume.append((label > 0).sum() * zooms.prod())
        tumour.append((label == 2).sum() * zooms.prod())
    return {
        "organ_hu_sd": float(np.std(hu)),  # contrast phases and strengths
        "pixel_ratio": float(max(inplane) / min(inplane)),  # field of view
        "n_slice_spacings": len(set(slices)),
        "position_sd_mm": float(np.std(centre_z)),  # scan range, organ placement
        "volume_cv": float(np.std(volume) / np.mean(volume)),  # habitus, organ size
        # ≥ 1000 mm³ = 125 voxels at the demo's 2 mm: big enough to learn from
        "tumour_fraction": float(np.mean(np.array(tumour) >= 1000)),
    }


#: the realistic cohort exceeds every bound; the low one (what a model trained on two cases
#: already covers) stays below every one
SPREAD_BOUNDS = {"organ_hu_sd": 18.0, "pixel_ratio": 1.2, "n_slice_spacings": 3,
                 "position_sd_mm": 8.0, "volume_cv": 0.35, "tumour_fraction": 0.5}


@pytest.mark.parametrize("variability", VARIABILITY)
def test_cohort_is_varied_and_tumours_are_learnable(variability: str) -> None:
    cohort = [make_case(np.random.default_rng([7, i]), variability=variability, **TINY)
              for i in range(12)]
    spread = _spread(cohort)
    above = {k: spread[k] >= bound for k, bound in SPREAD_BOUNDS.items()}
    if variability == "realistic":
        assert all(above.values()), spread
    else:
        assert not any(above.values()), spread


@pytest.mark.parametrize("variability", VARIABILITY)
def test_deterministic_per_seed(variability: str) -> None:
    kw = {"shape": (40, 40, 12), "spacing": (4, 4, 8), "variability": variability}
    a = make_case(np.random.default_rng([3, 1]), **kw)
    b = make_case(np.random.default_rng([3, 1]), **kw)
    c = make_case(np.random.default_rng([3, 2]), **kw)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


def test_cohort_is_an_msd_dataset_and_reruns_are_noops(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    kw = {"task": "kidney", "seed": 5, "shape": (40, 40, 12), "spacing": (4, 4, 8),
          "progress": False}
    generate_cohort(out, 3, **kw)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"] == {"0": "background", "1": "kidney", "2": "tumour"}
    assert meta["numTraining"] == 3 and meta["pimpic_synth"]["variability"] == "realistic"
    assert meta["training"][0] == {"image": "./imagesTr/kidney_000.nii.gz",
                                   "label": "./labelsTr/kidney_000.nii.gz"}
    layout, cases = read_dataset(out)
    assert layout == "msd" and len(cases) == 3
    imgs = [nib.load(str(c["image"])) for c in cases]
    assert all(img.get_data_dtype() == np.int16 for img in imgs)
    # each case's own grid is in its header: pixdim = the affine's voxel size, varying by case
    zooms = [tuple(float(z) for z in img.header.get_zooms()) for img in imgs]
    for img, z in zip(imgs, zooms, strict=True):
        np.testing.assert_allclose(np.abs(np.diag(img.affine)[:3]), z, rtol=1e-6)
    assert len(set(zooms)) > 1
    again = make_case(np.random.default_rng([5, 0]), shape=(40, 40, 12), spacing=(4, 4, 8),
                      task="kidney")[0]
    np.testing.assert_array_equal(np.asanyarray(imgs[0].dataobj), again)

    mtime = cases[0]["image"].stat().st_mtime_ns
    generate_cohort(out, 3, **kw)
    assert cases[0]["image"].stat().st_mtime_ns == mtime
    with pytest.raises(PimpicError, match="other arguments"):
        generate_cohort(out, 3, **{**kw, "seed": 6})
    with pytest.raises(PimpicError, match="variability=realistic"):
        generate_cohort(out, 3, **kw, variability="low")
    with pytest.raises(PimpicError, match="unknown task"):
        generate_cohort(tmp_path / "x", 1, task="liver")
    with pytest.raises(PimpicError, match="unknown variability"):
        generate_cohort(tmp_path / "x", 1, variability="high")
    with pytest.raises(PimpicError, match="at least 8"):
        generate_cohort(tmp_path / "x", 1, shape=(4, 40, 40))


def test_low_cohort_keeps_its_fixed_grid(tmp_path: Path) -> None:
    generate_cohort(tmp_path, 2, seed=5, shape=(40, 40, 12), spacing=(4, 4, 8), progress=False,
                    variability="low")
    for path in sorted((tmp_path / "imagesTr").iterdir()):
        img = nib.load(str(path))
        assert img.shape == (40, 40, 12)
        np.testing.assert_allclose(img.header.get_zooms(), (4, 4, 8))


def test_synth_help_describes_variability() -> None:
    result = CliRunner().invoke(app, ["synth", "--help"])
    assert result.exit_code == 0
    assert "--variability" in result.output
    for word in ("realistic", "low", "contrast phase", "slice thickness"):
        assert word in result.output


@pytest.mark.parametrize("task", ["pancreas", "kidney"])
def test_realistic_tumours_stand_out_from_their_organ(task: str) -> None:
    """Realistic tumours differ from their host by at least REALISTIC.min_contrast on average
    (measured against the organ label's mean, which mixes cortex and medulla, so with a margin);
    their sign still follows the kind and phase, not one rule."""
    from pimpic.data.synthetic_tumour import REALISTIC

    gaps = []
    for i in range(12):
        image, label, _ = make_case(np.random.default_rng([7, i]), task=task,
                                    variability="realistic", **GRIDS["realistic"])
        if (label == 2).sum() > 20:
            gaps.append(float(image[label == 2].mean() - image[label == 1].mean()))
    assert len(gaps) >= 6
    # without the rule a quarter of them lie within ~20 HU of the organ (measured)
    assert np.percentile(np.abs(gaps), 25) > 0.6 * REALISTIC.min_contrast


def test_kidney_benchmark_tumours_are_large_and_spare_their_kidney() -> None:
    """A cheap proxy for issue #10's two cohort criteria on the demo's kidney cohort (the real
    measurement is ``scripts/cohort_check.py --task kidney``, several minutes of fine-tuning).

    At the demo's budget a from-scratch network learns the tumour only when tumours are large
    (median ~27 cm³ in the benchmark; at ~6 cm³ it never predicted one), and it learns the organ
    only when some kidneys are tumour-free and a tumour leaves a good part of its kidney (every
    case with a tumour, or tumours that swallow the kidney, and the network calls the whole
    kidney tumour). Measured on cases 0–11 of the demo's cohort (seed 0, the default grid).
    """
    volumes, shares, free = [], [], 0
    for i in range(12):
        _, label, affine = make_case(np.random.default_rng([0, i]), task="kidney")
        cm3 = abs(np.linalg.det(affine[:3, :3])) / 1000
        kidney, tumour = (label == 1).sum() * cm3, (label == 2).sum() * cm3
        if tumour == 0:
            free += 1
            continue
        volumes.append(tumour)
        shares.append(kidney / (kidney + tumour))
    assert free >= 1
    assert np.median(volumes) >= 15.0, volumes
    assert np.median(shares) >= 0.3 and min(shares) >= 0.1, shares


@pytest.mark.parametrize("user_files", [("imagesTr/pancreas_001.nii.gz",),
                                        ("imagesTr/pancreas_000.nii.gz",
                                         "labelsTr/pancreas_000.nii.gz")],
                         ids=["Y01-image", "Y02-image-and-label"])
def test_synth_never_writes_into_a_folder_holding_a_users_files(tmp_path: Path,
                                                                user_files: tuple[str]) -> None:
    out = tmp_path / "y01"
    for name in user_files:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(b"MY_SCAN")
    res = CliRunner().invoke(app, ["synth", "--out", str(out), "--cases", "3", "--shape",
                                   "40,40,24", "--spacing", "4,4,6", "--no-progress"])
    assert_refused(res, f"{out}: exists and is not a pimpic synth dataset")
    assert all((out / n).read_bytes() == b"MY_SCAN" for n in user_files)
    assert not (out / "dataset.json").exists()


def test_synth_refuses_a_shape_no_machine_can_hold(tmp_path: Path) -> None:
    """Y07: one line, before anything is written (was a MemoryError traceback)."""
    out = tmp_path / "y07"
    res = CliRunner().invoke(app, ["synth", "--out", str(out), "--cases", "1", "--shape",
                                   "100000,100000,100000", "--no-progress"])
    assert_refused(res, "shape 100000,100000,100000: a case needs about", "use a smaller --shape")
    assert not out.exists()


def test_an_interrupted_synth_resumes_from_its_dataset_json(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    kw: dict[str, Any] = {"seed": 5, "shape": (40, 40, 12), "spacing": (4, 4, 8),
                          "progress": False, "variability": "low"}
    generate_cohort(out, 2, **kw)
    (out / "imagesTr" / "pancreas_001.nii.gz").unlink()  # killed before its last file
    generate_cohort(out, 2, **kw)
    assert (out / "imagesTr" / "pancreas_001.nii.gz").is_file()
