"""One-case preprocessing (RAS, spacing, HU window, crop), the way back, and bad inputs."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _nifti import KITS_AFFINE, phantom, save, save_sform, save_stale_pixdim
from pimpic.data.preprocess import Settings, load_and_preprocess, to_original_grid
from pimpic.errors import PimpicError

EXACT = Settings(dtype="float32")


def test_settings_round_trip_and_validation() -> None:
    s = Settings(spacing=(1, 1, 2), window=(-100, 300), crop_foreground=True)
    assert Settings.from_dict(s.to_dict()) == s
    assert s.to_dict()["spacing"] == [1.0, 1.0, 2.0]
    for bad in ({"spacing": (1, 0, 1)}, {"window": (400, -200)}, {"dtype": "int8"}):
        with pytest.raises(PimpicError):
            Settings(**bad)  # type: ignore[arg-type]
    with pytest.raises(PimpicError, match="unknown key"):
        Settings.from_dict({"spacing": [1, 1, 1], "zoom": 2})


def test_slices_first_volume_becomes_ras_at_target_spacing(tmp_path: Path) -> None:
    img, lab = phantom((6, 10, 12))
    ip = save(tmp_path / "imaging.nii.gz", img, KITS_AFFINE)
    lp = save(tmp_path / "segmentation.nii.gz", lab, KITS_AFFINE)
    image, label, meta = load_and_preprocess(ip, lp, EXACT, [0, 1, 2])
    affine = np.asarray(meta["affine"])
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), [1.5, 1.5, 1.5])
    # R from array axis 2 (12 × 0.8 mm), A from axis 1 (10 × 0.8), S from axis 0 (6 × 2.5);
    # MONAI keeps the centre-to-centre extent: (n − 1) · old / 1.5 + 1 voxels
    assert image.shape == label.shape == (7, 6, 9)
    assert image.dtype == np.float32 and label.dtype == np.uint8
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert set(np.unique(label).tolist()) == {0, 1, 2}
    assert meta["original_shape"] == [6, 10, 12]
    np.testing.assert_allclose(meta["original_spacing"], [2.5, 0.8, 0.8])
    assert meta["crop_box"] == [[0, 0, 0], [7, 6, 9]]


def test_exact_hu_window_mapping(tmp_path: Path) -> None:
    hu = np.linspace(-1000, 1000, 8 * 8 * 8).reshape(8, 8, 8).astype(np.float32)
    ip = save(tmp_path / "ct.nii.gz", hu, np.diag([1.5, 1.5, 1.5, 1.0]))
    image, label, meta = load_and_preprocess(ip, None, EXACT)
    assert label is None and not meta["has_label"]
    np.testing.assert_allclose(image, np.clip((hu + 200) / 600, 0, 1), atol=1e-6)
    image, _, _ = load_and_preprocess(ip, None, Settings(window=(-100, 100), dtype="float32"))
    np.testing.assert_allclose(image, np.clip((hu + 100) / 200, 0, 1), atol=1e-6)


def test_labels_survive_resampling(tmp_path: Path) -> None:
    img, lab = phantom((16, 16, 8))
    aff = np.diag([0.75, 0.75, 3.0, 1.0])
    ip, lp = save(tmp_path / "i.nii.gz", img, aff), save(tmp_path / "l.nii.gz", lab, aff)
    _, label, meta = load_and_preprocess(ip, lp, EXACT, [0, 1, 2])
    assert label is not None
    assert meta["label_values"] == [0, 1, 2]
    # nearest-neighbour resampling keeps the labelled volume (mm³) roughly
    for v in (1, 2):
        before = (lab == v).sum() * 0.75 * 0.75 * 3.0
        after = (label == v).sum() * 1.5**3
        assert after == pytest.approx(before, rel=0.6)


def test_crop_foreground_and_back(tmp_path: Path) -> None:
    img, lab = phantom((16, 12, 10))
    aff = np.diag([1.5, 1.5, 1.5, 1.0])
    aff[:3, 3] = [10.0, -4.0, 7.0]
    ip, lp = save(tmp_path / "i.nii.gz", img, aff), save(tmp_path / "l.nii.gz", lab, aff)
    image, label, meta = load_and_preprocess(ip, lp, Settings(crop_foreground=True), [0, 1, 2])
    start, end = meta["crop_box"]
    assert start == [4, 3, 2] and end == [12, 9, 8]  # the non-air box of the phantom
    assert image.shape == (8, 6, 6) and meta["shape"] == [8, 6, 6]
    shift = aff[:3, 3] + 1.5 * np.array(start)
    np.testing.assert_allclose(np.asarray(meta["affine"])[:3, 3], shift)
    back = to_original_grid(label, meta)
    assert back.shape == lab.shape
    np.testing.assert_array_equal(back, lab)


@settings(max_examples=8, deadline=None)
@given(perm=st.permutations([0, 1, 2]),
       flips=st.tuples(st.booleans(), st.booleans(), st.booleans()),
       shape=st.tuples(st.integers(3, 9), st.integers(3, 9), st.integers(3, 9)))
def test_to_original_grid_inverts_any_axis_order(perm, flips, shape) -> None:
    """Reorientation at unchanged spacing is a permutation of voxels: the way back is exact."""
    import tempfile

    lin = np.zeros((4, 4))
    for col, (row, flip) in enumerate(zip(perm, flips, strict=True)):
        lin[row, col] = -1.5 if flip else 1.5
    lin[:3, 3] = [3.0, -6.0, 1.5]
    lin[3, 3] = 1
    lab = np.random.default_rng(sum(shape)).integers(0, 3, shape).astype(np.uint8)
    with tempfile.TemporaryDirectory() as d:
        ip = save(Path(d) / "i.nii.gz", np.zeros(shape, np.int16), lin)
        lp = save(Path(d) / "l.nii.gz", lab, lin)
        _, label, meta = load_and_preprocess(ip, lp, EXACT)
    assert label is not None
    assert nib.aff2axcodes(np.asarray(meta["affine"])) == ("R", "A", "S")
    np.testing.assert_array_equal(to_original_grid(label, meta), lab)


def test_to_original_grid_outside_is_background() -> None:
    meta = {"shape": [2, 2, 2], "affine": np.eye(4).tolist(), "original_shape": [4, 2, 2],
            "original_affine": np.eye(4).tolist()}
    back = to_original_grid(np.ones((2, 2, 2), np.uint8), meta)
    assert back[:2].all() and not back[2:].any()
    with pytest.raises(PimpicError, match="mask shape"):
        to_original_grid(np.ones((3, 2, 2), np.uint8), meta)


def _bad_case(tmp_path: Path, kind: str) -> tuple[Path, Path | None, str]:
    """Write one broken case; returns (image, label, the file the error must name)."""
    img, lab = phantom((8, 8, 6))
    aff = np.diag([1.5, 1.5, 1.5, 1.0])
    ip, lp = tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz"
    save(ip, img, aff)
    save(lp, lab, aff)
    if kind == "missing":
        ip.unlink()
        return ip, lp, "img.nii.gz"
    if kind == "truncated":
        data = ip.read_bytes()
        ip.write_bytes(data[: int(len(data) * 0.7)])  # header intact, voxels cut short
        return ip, lp, "img.nii.gz"
    if kind == "garbage":
        ip.write_bytes(b"this is not a nifti file")
        return ip, lp, "img.nii.gz"
    if kind == "shape":
        save(lp, lab[:, :, :4], aff)
        return ip, lp, "lab.nii.gz"
    if kind == "affine":
        save(lp, lab, np.diag([1.5, 1.5, 3.0, 1.0]))
        return ip, lp, "lab.nii.gz"
    if kind == "label_values":
        lab[0, 0, 0] = 7
        save(lp, lab, aff)
        return ip, lp, "lab.nii.gz"
    if kind == "2d":
        save(ip, img[:, :, 0], aff)
        return ip, None, "img.nii.gz"
    if kind == "4d":
        save(ip, np.stack([img, img], -1), aff)
        return ip, None, "img.nii.gz"
    if kind in BAD_AFFINES:
        save_sform(ip, img, BAD_AFFINES[kind])
        return ip, None, "img.nii.gz"
    arr = img.astype(np.float32)
    arr[1, 2, 3] = np.nan if kind == "nan" else np.inf
    save(ip, arr, aff)
    return ip, lp, "img.nii.gz"


def _affine(columns: list[list[float]]) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = np.asarray(columns, float).T
    return a


BAD_AFFINES = {
    "zero_affine": np.zeros((4, 4)),
    "singular_affine": _affine([[1.5, 0, 0], [1.5, 0, 0], [0, 0, 1.5]]),  # two parallel axes
    "tiny_affine": _affine([[1e-5, 0, 0], [0, 1.5, 0], [0, 0, 1.5]]),
    "nan_affine": _affine([[np.nan, 0, 0], [0, 1.5, 0], [0, 0, 1.5]]),
    "sheared": _affine([[1.5, 0, 0], [0.3, 1.5, 0], [0, 0, 1.5]]),  # an 11° gantry tilt
}

BAD_KINDS = {"zero_affine": "affine is singular", "singular_affine": "affine is singular",
             "tiny_affine": "affine is singular", "nan_affine": "affine holds NaN",
             "sheared": "affine is sheared",
             "missing": "not found", "truncated": "corrupt or truncated", "garbage": "corrupt",
             "shape": "label shape", "affine": "label affine",
             "label_values": "outside the declared",
             "2d": "2D", "4d": "4D", "nan": "NaN or Inf", "inf": "NaN or Inf"}


@pytest.mark.parametrize("kind", list(BAD_KINDS))
def test_bad_input_is_a_one_line_error_naming_the_file(tmp_path: Path, kind: str) -> None:
    ip, lp, name = _bad_case(tmp_path, kind)
    with pytest.raises(PimpicError) as err:
        load_and_preprocess(ip, lp, EXACT, [0, 1, 2])
    msg = str(err.value)
    assert name in msg and BAD_KINDS[kind] in msg and "\n" not in msg, msg


def test_oblique_but_orthogonal_affine_is_accepted(tmp_path: Path) -> None:
    """A rotated grid (perpendicular axes) is fine; only shear is refused."""
    img, lab = phantom((10, 10, 8))
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    aff = np.array([[1.5 * c, -1.5 * s, 0, 0], [1.5 * s, 1.5 * c, 0, 0], [0, 0, 2.0, 0],
                    [0, 0, 0, 1]])
    ip = save_sform(tmp_path / "i.nii.gz", img, aff)
    lp = save_sform(tmp_path / "l.nii.gz", lab, aff)
    image, label, meta = load_and_preprocess(ip, lp, EXACT, [0, 1, 2])
    assert label is not None and image.shape == label.shape
    np.testing.assert_allclose(meta["original_spacing"], [1.5, 1.5, 2.0])


def test_pixdim_that_disagrees_with_the_sform_is_refused_not_repaired(tmp_path: Path) -> None:
    """Issue #23 finding 2: MONAI would replace the sform (4×4×6 mm, LPS) by the qform."""
    img, lab = phantom((10, 10, 6))
    aff = np.array([[-4.0, 0, 0, 30], [0, -4.0, 0, 20], [0, 0, 6.0, -10], [0, 0, 0, 1]])
    ip = save_stale_pixdim(tmp_path / "stale.nii.gz", img, aff)
    assert nib.load(ip).header.get_zooms() == (1, 1, 1)  # type: ignore[attr-defined]
    with pytest.raises(PimpicError, match=r"stale\.nii\.gz: image header is inconsistent: "
                       r"pixdim says 1, 1, 1 mm .* says 4, 4, 6 mm") as err:
        load_and_preprocess(ip, None, EXACT)
    assert "\n" not in str(err.value)
    good = save(tmp_path / "good.nii.gz", img, aff)  # the same scan, consistent header
    lp = save_stale_pixdim(tmp_path / "stale_label.nii.gz", lab, aff)
    with pytest.raises(PimpicError, match=r"stale_label\.nii\.gz: label header is inconsistent"):
        load_and_preprocess(good, lp, EXACT, [0, 1, 2])


@pytest.mark.parametrize("kind", ["complex64", "device", "fifo"])
def test_complex_voxels_and_non_regular_files_are_refused(tmp_path: Path, kind: str) -> None:
    """Issue #23 A12 (complex CT was cast to real) and A35 (a link to /dev/zero hung)."""
    import os

    img, _ = phantom((6, 6, 4))
    ip = tmp_path / "img.nii.gz"
    if kind == "complex64":
        save(ip, img.astype(np.complex64))
        want = r"image voxels are complex64 \(complex\)"
    elif kind == "device":
        ip.symlink_to("/dev/zero")
        want = "image is a device, not a regular NIfTI file"
    else:
        os.mkfifo(ip)
        want = "image is a FIFO, not a regular NIfTI file"
    with pytest.raises(PimpicError, match=r"img\.nii\.gz: " + want):
        load_and_preprocess(ip, None, EXACT)


def test_an_image_that_is_its_own_label_file_is_refused(tmp_path: Path) -> None:
    """Issue #23 B22: an image linked to its label map was accepted as CT."""
    _, lab = phantom((6, 6, 4))
    lp = save(tmp_path / "labelsTr" / "x.nii.gz", lab)
    ip = tmp_path / "imagesTr" / "x.nii.gz"
    ip.parent.mkdir()
    ip.symlink_to(lp)
    with pytest.raises(PimpicError, match=r"x\.nii\.gz: image and label are the same file"):
        load_and_preprocess(ip, lp, EXACT, [0, 1, 2])


def test_content_hash_ignores_name_dtype_format_crop_and_cache_dtype(tmp_path: Path) -> None:
    """The same voxels give the same content_sha256 whatever the file and the settings; other
    voxels or another orientation of the same array give another."""
    from pimpic.data.preprocess import content_sha256

    img, _ = phantom((12, 10, 8))
    aff = np.diag([-1.5, 1.5, 3.0, 1.0])
    a = save(tmp_path / "a.nii.gz", img, aff)
    b = save(tmp_path / "renamed.nii", img.astype(np.float32), aff)
    # the same scan stored slices-first: another array, the same voxels once in RAS
    c = save(tmp_path / "transposed.nii.gz", np.ascontiguousarray(img.transpose(2, 1, 0)),
             aff[:, [2, 1, 0, 3]])
    cropped = Settings(spacing=(3.0, 3.0, 3.0), crop_foreground=True, dtype="float16")
    hashes = {load_and_preprocess(p, None, s)[2]["content_sha256"]
              for p in (a, b, c) for s in (EXACT, cropped)}
    assert hashes == {content_sha256(a)}
    other = img.copy()
    other[0, 0, 0] += 1
    assert content_sha256(save(tmp_path / "other.nii.gz", other, aff)) not in hashes
