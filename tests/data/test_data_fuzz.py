"""Property: whatever NIfTI a dataset holds, ``prepare`` ends in a correct cache entry or in a
one-line :class:`PimpicError` naming the file — never another exception, never a changed input.

Headers and data are drawn at random: 2D/3D/4D shapes, integer and float dtypes, spacings and
axis flips, zero / singular / NaN / sheared affines, NaN and Inf voxels, empty labels, label
values outside the declared ones, non-integer labels, and labels on another grid.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _nifti import save_sform
from pimpic.data.cache import Cache
from pimpic.data.prepare import prepare
from pimpic.data.preprocess import Settings
from pimpic.errors import PimpicError

SETTINGS = Settings(spacing=(2.0, 2.0, 2.0), dtype="float32")
DECLARED = {0, 1, 2}


def _affine(kind: str, pixdim: tuple[float, float, float], flips: tuple[bool, ...]) -> np.ndarray:
    a = np.diag([*(p * (-1 if f else 1) for p, f in zip(pixdim, flips, strict=True)), 1.0])
    a[:3, 3] = [-10.0, 5.0, 2.5]
    if kind == "zero":
        return np.zeros((4, 4))
    if kind == "singular":
        a[:3, 1] = a[:3, 0]
    elif kind == "nan":
        a[1, 1] = np.nan
    elif kind == "inf":
        a[0, 3] = np.inf
    elif kind == "sheared":
        a[0, 1] = 0.4 * pixdim[1]
    elif kind == "tiny":
        a[:3, 2] *= 1e-6
    return a


cases = st.fixed_dictionaries({
    "ndim": st.sampled_from([3, 3, 3, 3, 2, 4]),
    "shape": st.tuples(*[st.integers(1, 6)] * 4),
    "dtype": st.sampled_from(["int16", "uint8", "int32", "float32", "float64"]),
    "pixdim": st.tuples(*[st.floats(0.3, 5.0)] * 3),
    "flips": st.tuples(*[st.booleans()] * 3),
    "affine": st.sampled_from(["ok"] * 6 + ["zero", "singular", "nan", "inf", "sheared",
                                            "tiny"]),
    "bad_voxel": st.sampled_from([None] * 4 + [np.nan, np.inf, -np.inf]),
    "label": st.sampled_from(["none", "phantom", "phantom", "empty", "out_of_range",
                              "negative", "fractional", "nan", "other_shape", "other_affine"]),
    "seed": st.integers(0, 2**16),
})


def _write_case(root: Path, c: dict) -> None:
    rng = np.random.default_rng(c["seed"])
    shape = tuple(c["shape"][: c["ndim"]])
    hu = rng.uniform(-1000, 1000, shape)
    image = (hu % 256).astype(np.uint8) if c["dtype"] == "uint8" else hu.astype(c["dtype"])
    if c["bad_voxel"] is not None and image.dtype.kind == "f":
        image.flat[rng.integers(image.size)] = c["bad_voxel"]
    affine = _affine(c["affine"], c["pixdim"], c["flips"])
    save_sform(root / "imagesTr" / "pan_000.nii.gz", image, affine)
    entry = {"image": "./imagesTr/pan_000.nii.gz"}
    kind = c["label"]
    if kind != "none":
        label = rng.integers(0, 3, shape).astype(np.uint8)
        if kind == "empty":
            label[:] = 0
        elif kind == "out_of_range":
            label.flat[0] = 7
        elif kind == "negative":
            label = label.astype(np.int16)
            label.flat[0] = -1
        elif kind in ("fractional", "nan"):
            label = label.astype(np.float32)
            label.flat[0] = 0.5 if kind == "fractional" else np.nan
        elif kind == "other_shape":
            label = np.zeros((shape[0] + 1, *shape[1:]), np.uint8)
        lab_affine = affine.copy()
        if kind == "other_affine":
            lab_affine[:3, 3] += 7.0
        save_sform(root / "labelsTr" / "pan_000.nii.gz", label, lab_affine)
        entry["label"] = "./labelsTr/pan_000.nii.gz"
    (root / "dataset.json").write_text(json.dumps({
        "labels": {"0": "background", "1": "organ", "2": "tumour"}, "training": [entry]}))


def _snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p): (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*") if p.is_file()}


def _check_entry(out: Path, has_label: bool) -> None:
    cache = Cache(out)
    assert cache.case_ids == ["pan_000"]
    image, label, meta = cache.image("pan_000"), cache.label("pan_000"), cache.meta("pan_000")
    assert image.ndim == 3 and list(image.shape) == meta["shape"] and min(image.shape) >= 1
    assert np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1
    assert np.isfinite(meta["affine"]).all() and np.isfinite(meta["original_affine"]).all()
    assert all(s > 0 for s in meta["original_spacing"]) and meta["spacing"] == [2.0, 2.0, 2.0]
    np.testing.assert_allclose(np.linalg.norm(np.asarray(meta["affine"])[:3, :3], axis=0),
                               meta["spacing"], rtol=1e-4)
    assert (label is not None) == has_label == meta["has_label"]
    if label is not None:
        assert label.shape == image.shape and set(np.unique(label).tolist()) <= DECLARED


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(c=cases)
def test_prepare_any_nifti_ends_in_a_cache_entry_or_a_one_line_error(c: dict) -> None:
    with tempfile.TemporaryDirectory() as d:
        src, out = Path(d) / "src", Path(d) / "cache"
        _write_case(src, c)
        before = _snapshot(src)
        try:
            prepare(src, out, SETTINGS, workers=1, progress=False)
        except PimpicError as err:
            msg = str(err)
            assert "\n" not in msg and "unexpected" not in msg, msg
            assert "pan_000.nii.gz" in msg, msg
        else:
            _check_entry(out, c["label"] != "none")
        assert _snapshot(src) == before
