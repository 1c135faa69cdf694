"""Preprocessing of one CT case (docs/method.md §1), and the way back to the original grid.

One case goes through MONAI's dictionary transforms::

    LoadImaged(NibabelReader, channel first) → Orientationd("RAS")
    → Spacingd(1.5 mm, image bilinear / label nearest)
    → ScaleIntensityRanged([-200, 400] HU → [0, 1], clipped) → [CropForegroundd(body)]

Before any voxel is read the NIfTI headers are checked (a regular file, 3D, real-valued, a
usable affine whose voxel sizes agree with the header's ``pixdim``, image and label on the same
grid, and not the same file), and after loading the voxels are (finite image, label values
among the declared ones), so a bad case fails with a one-line :class:`PimpicError` naming the
file.

A header whose ``pixdim`` disagrees with its sform is refused, not repaired: MONAI's reader
would silently replace the sform by the qform (or the pixdim by the sform), and which of the
two is stale cannot be told from the file — a wrong guess gives the scan another size,
orientation and origin. The criterion is MONAI's own (``np.allclose`` of ``pixdim`` and the
affine's column norms), so every file that passes is read with exactly nibabel's affine.

A usable affine is finite and non-singular (every voxel axis longer than ``MIN_SPACING_MM``,
the smallest singular value above ``1e-6`` of the largest) and **not sheared**: its voxel axes
are perpendicular to within ``MAX_SHEAR_COS`` (|cos| of the angle between two axes, ≈0.06°).
A sheared grid (an uncorrected CT gantry tilt) is refused rather than resampled, because the
pipeline after it — RAS reorientation, a spacing per axis, patch boxes in millimetres, the way
back to the source grid — assumes perpendicular axes; resample such a volume onto an orthogonal
grid first (``dcm2niix`` corrects gantry tilt by default). Rotated (oblique) grids are fine.

The per-case ``meta`` also records ``content_sha256``: the SHA-256 of the source voxels as float32
after the RAS reorientation, before resampling, windowing, cropping or the cache's dtype
(:func:`content_sha256`). The same scan saved under another name, file format or integer type
gives the same value, whatever the cache's settings; the leakage guard
(:mod:`pimpic.data.leakage`) compares it.

The per-case ``meta`` records both grids: ``affine`` maps a preprocessed voxel index to world
millimetres (RAS, crop offset included) and ``original_affine`` does the same for the source
image, which is all :func:`to_original_grid` needs to put a prediction back on the source grid.
The whole-dataset runner (parallel, resumable cache writer) is :mod:`pimpic.data.prepare`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pimpic.errors import PimpicError

DTYPES = ("float16", "float32")
MIN_SPACING_MM = 1e-3
MAX_SHEAR_COS = 1e-3


@dataclass(frozen=True)
class Settings:
    """Preprocessing settings, stored in the cache manifest.

    Args:
        spacing: output voxel size in mm, ``(x, y, z)`` in RAS order.
        window: HU clip range ``(low, high)``, mapped linearly to ``[0, 1]``.
        crop_foreground: crop each case to the bounding box of the body (HU above ``low``).
        dtype: storage dtype of the image arrays (``float16`` halves the cache).
    """

    spacing: tuple[float, float, float] = (1.5, 1.5, 1.5)
    window: tuple[float, float] = (-200.0, 400.0)
    crop_foreground: bool = False
    dtype: str = "float16"

    def __post_init__(self) -> None:
        spacing = tuple(float(s) for s in self.spacing)
        window = tuple(float(w) for w in self.window)
        if len(spacing) != 3 or min(spacing) <= 0:
            raise PimpicError(f"spacing {self.spacing} must be three positive millimetre values")
        if len(window) != 2 or not window[0] < window[1]:
            raise PimpicError(f"HU window {self.window} must be (low, high) with low < high")
        if self.dtype not in DTYPES:
            raise PimpicError(f"dtype {self.dtype!r} must be one of {', '.join(DTYPES)}")
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "window", window)
        object.__setattr__(self, "crop_foreground", bool(self.crop_foreground))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (tuples as lists), as written to ``manifest.json``."""
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Settings:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PimpicError(f"preprocessing settings: unknown key(s) {', '.join(unknown)}")
        kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                                  for k, v in data.items()}
        return cls(**kwargs)


def check_regular_file(path: Path, what: str) -> None:
    """Refuse a missing path, and a device, FIFO or socket (``/dev/zero`` would be read forever)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        raise PimpicError(f"{path}: {what} file not found") from None
    if not stat.S_ISREG(mode):
        kind = ("a folder" if stat.S_ISDIR(mode) else "a device" if stat.S_ISCHR(mode)
                or stat.S_ISBLK(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a socket"
                if stat.S_ISSOCK(mode) else "not a regular file")
        raise PimpicError(f"{path}: {what} is {kind}, not a regular NIfTI file")


def _header(path: Path, what: str) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and affine of a NIfTI file without reading its voxels."""
    import nibabel as nib

    check_regular_file(path, what)
    try:
        img: Any = nib.load(str(path))
        shape = tuple(int(s) for s in img.shape)
        affine = np.asarray(img.affine, dtype=np.float64)
        zooms = np.asarray(img.header.get_zooms()[:3], dtype=np.float64)
        dtype = np.dtype(img.get_data_dtype())
    except Exception as err:  # nibabel raises many types for damaged files
        raise PimpicError(f"{path}: corrupt or truncated NIfTI, unreadable header "
                          f"({_short(err)})") from None
    if len(shape) != 3:
        raise PimpicError(f"{path}: {what} is {len(shape)}D with shape {shape}, "
                          "expected a 3D volume")
    if min(shape) < 1:
        raise PimpicError(f"{path}: {what} has an empty axis (shape {shape})")
    if dtype.kind not in "biuf":
        raise PimpicError(f"{path}: {what} voxels are {dtype} ("
                          f"{'complex' if dtype.kind == 'c' else 'not real numbers'}); "
                          "expected real-valued intensities")
    _check_affine(affine, path, what)
    # MONAI's correct_nifti_header_if_necessary rewrites any header failing this test
    if not np.allclose(zooms, np.linalg.norm(affine[:3, :3], axis=0)):
        norms = ", ".join(f"{v:.4g}" for v in np.linalg.norm(affine[:3, :3], axis=0))
        raise PimpicError(f"{path}: {what} header is inconsistent: pixdim says "
                          f"{', '.join(f'{v:.4g}' for v in zooms)} mm voxels but the affine "
                          f"(sform) says {norms} mm; fix the header so both describe the scan's "
                          "true geometry (pimpic will not guess which one is stale)")
    return shape, affine


def _check_affine(affine: np.ndarray, path: Path, what: str) -> None:
    """Refuse a non-finite, singular or sheared voxel-to-world map (module docstring)."""
    if not np.isfinite(affine).all():
        raise PimpicError(f"{path}: {what} affine holds NaN or Inf; fix the header's "
                          "sform/qform/pixdim")
    lin = affine[:3, :3]
    spacing = np.linalg.norm(lin, axis=0)
    sv = np.linalg.svd(lin, compute_uv=False)
    if spacing.min() < MIN_SPACING_MM or sv.min() <= 1e-6 * sv.max():
        sizes = ", ".join(f"{v:.3g}" for v in spacing)
        raise PimpicError(f"{path}: {what} affine is singular (voxel axes {sizes} mm long, "
                          "not independent); fix the header's sform/qform/pixdim")
    unit = lin / spacing
    cos = np.abs(unit.T @ unit - np.eye(3)).max()
    if cos > MAX_SHEAR_COS:
        angle = float(np.degrees(np.arcsin(min(cos, 1.0))))
        raise PimpicError(f"{path}: {what} affine is sheared (voxel axes {angle:.2g}° off "
                          "perpendicular, e.g. an uncorrected gantry tilt); resample it onto an "
                          "orthogonal grid first")


def _short(err: BaseException) -> str:
    msg = " ".join(str(err).split()) or type(err).__name__
    return msg[:160]


def _transforms(keys: list[str], settings: Settings) -> Any:
    from monai.transforms import Compose, CropForegroundd, ScaleIntensityRanged, Spacingd

    low, high = settings.window
    modes = ["bilinear", "nearest"][: len(keys)]
    steps: list[Any] = [
        # float32 compute: float64 (the default) doubles time and memory for no visible gain
        Spacingd(keys, pixdim=settings.spacing, mode=modes, dtype=np.float32),
        ScaleIntensityRanged("image", a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True),
    ]
    if settings.crop_foreground:
        # body = anything denser than the window floor (air outside the patient is cut away)
        steps.append(CropForegroundd(keys, source_key="image", select_fn=_above_floor,
                                     allow_smaller=True))
    return Compose(steps)


def _above_floor(x: Any) -> Any:
    return x > 0


def _load_ras(data: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """Read ``data[key]`` (paths, headers already checked) as channel-first float32
    MetaTensors with nibabel's affine, reoriented to RAS."""
    from monai.transforms import LoadImaged, Orientationd

    for key in keys:
        try:
            data = LoadImaged(key, reader="NibabelReader", ensure_channel_first=True)(data)
        except Exception as err:  # truncated gzip, bad payload, ...
            raise PimpicError(f"{data[key]}: corrupt or truncated NIfTI ({_short(err)})") from None
    orient: Any = Orientationd(keys, axcodes="RAS", labels=None)  # None: RAS, no warning
    out: dict[str, Any] = orient(data)
    return out


def _voxels_sha256(image: Any) -> str:
    """SHA-256 of a ``(1, X, Y, Z)`` RAS image's shape and float32 voxel values."""
    arr = np.ascontiguousarray(np.asarray(image.numpy()[0], dtype=np.float32))
    digest = hashlib.sha256(f"{arr.shape}|".encode())
    digest.update(arr.tobytes())
    return digest.hexdigest()


def content_sha256(image_path: str | Path) -> str:
    """The ``content_sha256`` :func:`load_and_preprocess` records for an image file (module
    docstring): equal for the same voxels under another name, format or integer type."""
    path = Path(image_path)
    _header(path, "image")
    return _voxels_sha256(_load_ras({"image": str(path)}, ["image"])["image"])


def load_and_preprocess(
    image_path: str | Path,
    label_path: str | Path | None = None,
    settings: Settings = Settings(),
    label_values: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Load one case and preprocess it exactly as ``pimpic prepare`` does.

    Args:
        image_path: CT volume (NIfTI, HU).
        label_path: optional label volume on the same grid.
        settings: spacing / window / crop.
        label_values: allowed label values (default: any non-negative integer).

    Returns:
        ``image`` (X, Y, Z) float32 in [0, 1], RAS at ``settings.spacing``; ``label`` (X, Y, Z)
        uint8 or None; ``meta`` with ``shape``, ``spacing``, ``affine`` (preprocessed grid,
        crop included), ``original_affine``, ``original_shape``, ``original_spacing``,
        ``crop_box`` (``[[start], [end]]`` in the resampled grid), ``label_values`` and
        ``content_sha256`` (:func:`content_sha256`).
    """
    import torch

    image_path = Path(image_path)
    shape, affine = _header(image_path, "image")
    keys = ["image"]
    data: dict[str, Any] = {"image": str(image_path)}
    if label_path is not None:
        label_path = Path(label_path)
        lshape, laffine = _header(label_path, "label")
        if lshape != shape:
            raise PimpicError(f"{label_path}: label shape {lshape} differs from "
                              f"image shape {shape}")
        if not np.allclose(laffine, affine, rtol=1e-4, atol=1e-3):
            raise PimpicError(f"{label_path}: label affine differs from the image affine "
                              f"({image_path.name})")
        if os.path.samefile(image_path, label_path):
            raise PimpicError(f"{image_path}: image and label are the same file (is the "
                              "image a link to its label map?); point the image at the CT scan")
        keys.append("label")
        data["label"] = str(label_path)

    data = _load_ras(data, keys)
    if not bool(torch.isfinite(data["image"]).all()):
        raise PimpicError(f"{image_path}: image holds NaN or Inf voxels")
    if "label" in data:
        _check_label_values(data["label"], label_path, label_values)  # type: ignore[arg-type]
    content = _voxels_sha256(data["image"])

    data = _transforms(keys, settings)(data)
    image = data["image"]
    out_affine = np.asarray(image.affine, dtype=np.float64)
    image_np = np.ascontiguousarray(image.numpy()[0], dtype=np.float32)
    label_np = None
    if "label" in data:
        label_np = np.ascontiguousarray(np.rint(data["label"].numpy()[0]).astype(np.uint8))

    start = data.get("foreground_start_coord") if settings.crop_foreground else None
    start = [int(s) for s in start] if start is not None else [0, 0, 0]
    crop_box = [start, [s + n for s, n in zip(start, image_np.shape, strict=True)]]
    meta = {
        "shape": list(image_np.shape),
        "spacing": list(settings.spacing),
        "affine": out_affine.tolist(),
        "original_affine": affine.tolist(),
        "original_shape": list(shape),
        "original_spacing": [float(v) for v in np.linalg.norm(affine[:3, :3], axis=0)],
        "crop_box": crop_box,
        "has_label": label_np is not None,
        "label_values": sorted(int(v) for v in np.unique(label_np)) if label_np is not None else [],
        "content_sha256": content,
    }
    return image_np, label_np, meta


def _check_label_values(label: Any, path: Path, allowed: Sequence[int] | None) -> None:
    arr = np.asarray(label.numpy() if hasattr(label, "numpy") else label).ravel()
    if not np.isfinite(arr).all() or (arr != np.rint(arr)).any():
        raise PimpicError(f"{path}: label holds non-integer values")
    ints = arr.astype(np.int64)
    low = int(ints.min())
    # bincount: an order of magnitude faster than a sort-based unique on big volumes
    if int(ints.max()) - low < 1 << 16:
        found = (np.flatnonzero(np.bincount(ints - low)) + low).tolist()
    else:
        found = np.unique(ints).tolist()
    bad = [v for v in found if v < 0 or (allowed is not None and v not in allowed)]
    if bad:
        declared = list(allowed) if allowed is not None else "non-negative integers"
        which = f"value {bad[0]}" if len(bad) == 1 else f"values {bad[:5]}"
        raise PimpicError(f"{path}: label {which} not named by the dataset (outside the "
                          f"declared labels {declared})")


def to_original_grid(mask: np.ndarray, meta: Mapping[str, Any]) -> np.ndarray:
    """Map a preprocessed-space mask back onto the source image grid (nearest neighbour).

    Each source voxel is sent through ``original_affine`` to world millimetres and through the
    inverse of ``affine`` to a preprocessed voxel, rounded; voxels that land outside the
    preprocessed (possibly cropped) grid get 0. Save the result with ``original_affine``.

    Args:
        mask: ``(X, Y, Z)`` labels on the preprocessed grid (shape ``meta["shape"]``).
        meta: the case's ``meta.json``.

    Returns:
        ``(original_shape)`` array of ``mask.dtype``.
    """
    mask = np.asarray(mask)
    if list(mask.shape) != list(meta["shape"]):
        raise PimpicError(f"mask shape {mask.shape} differs from the case shape {meta['shape']}")
    shape = [int(s) for s in meta["original_shape"]]
    # source voxel → preprocessed voxel, one 4x4 map
    m = np.linalg.inv(np.asarray(meta["affine"], np.float64)) @ np.asarray(
        meta["original_affine"], np.float64)
    ii, jj = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    base = m[:3, :3] @ np.stack([ii.ravel(), jj.ravel(), np.zeros(ii.size)]) + m[:3, 3:4]
    out = np.zeros(shape, dtype=mask.dtype)
    limit = np.asarray(mask.shape)[:, None]
    # one source slice at a time keeps memory at O(X·Y) for 512² × 600 volumes
    for k in range(shape[2]):
        idx = np.rint(base + k * m[:3, 2:3]).astype(np.int64)
        ok = np.all((idx >= 0) & (idx < limit), axis=0)
        vals = np.zeros(idx.shape[1], dtype=mask.dtype)
        vals[ok] = mask[idx[0, ok], idx[1, ok], idx[2, ok]]
        out[:, :, k] = vals.reshape(shape[0], shape[1])
    return out

