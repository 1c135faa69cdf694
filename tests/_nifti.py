"""Tiny NIfTI trees for the data tests (MSD, KiTS19, nnU-Net raw, plain folder)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

# KiTS19 stores volumes slices-first: array axes (S→I, P→A..., R→L) with this kind of affine
KITS_AFFINE = np.array([[0.0, 0.0, -0.8, 0.0], [0.0, -0.8, 0.0, 0.0],
                        [-2.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


def save(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def save_sform(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    """Save with ``affine`` as the sform only (qform unset), so any matrix — zero, singular,
    NaN, sheared — reaches the reader as written (nibabel refuses to build a qform from those).
    ``pixdim`` agrees with the affine where that can be written (finite, non-zero lengths)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(array, None)
    img.header.set_sform(affine, code=1)
    img.header.set_qform(None, code=0)
    norms = np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0)
    if np.isfinite(norms).all() and norms.min() > 0:
        zooms = list(img.header.get_zooms())
        zooms[:3] = norms[: len(zooms)]
        img.header.set_zooms(zooms[: len(img.shape)])
    nib.save(img, str(path))
    return path


def save_stale_pixdim(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    """A valid sform-only NIfTI whose pixdim is stale (1 mm), written byte by byte as in
    issue #23 (nibabel keeps pixdim in step with the affine when it writes)."""
    import gzip
    import struct

    h = nib.Nifti1Header()
    h.set_data_shape(array.shape)
    h.set_data_dtype(array.dtype)
    h["srow_x"][:], h["srow_y"][:], h["srow_z"][:] = affine[0], affine[1], affine[2]
    h["sform_code"], h["qform_code"], h["vox_offset"] = 1, 0, 352
    raw = bytearray(h.binaryblock)
    raw[80:92] = struct.pack("<3f", 1, 1, 1)  # pixdim[1:4]
    path.write_bytes(gzip.compress(bytes(raw) + b"\0" * 4 + array.tobytes(order="F")))
    return path


def phantom(shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """HU image (int16) with a bright box (label 1) holding a darker cube (label 2)."""
    rng = np.random.default_rng(seed)
    image = np.full(shape, -1000, np.int16)
    sl = tuple(slice(s // 4, s - s // 4) for s in shape)
    image[sl] = 40
    label = np.zeros(shape, np.uint8)
    inner = tuple(slice(s // 3, s - s // 3) for s in shape)
    label[inner] = 1
    image[inner] = 120
    core = tuple(slice(s // 2 - 1, s // 2 + 1) for s in shape)
    label[core] = 2
    image[core] = 60
    image += rng.integers(-5, 5, shape).astype(np.int16)
    return image, label


def msd_tree(root: Path, n: int = 3, shape: tuple[int, int, int] = (12, 10, 8),
             affine: np.ndarray | None = None, ext: str = ".nii.gz") -> Path:
    aff = np.diag([-1.5, -1.5, 3.0, 1.0]) if affine is None else affine
    training = []
    for i in range(n):
        img, lab = phantom(shape, i)
        save(root / "imagesTr" / f"pan_{i:03d}{ext}", img, aff)
        save(root / "labelsTr" / f"pan_{i:03d}{ext}", lab, aff)
        training.append({"image": f"./imagesTr/pan_{i:03d}{ext}",
                         "label": f"./labelsTr/pan_{i:03d}{ext}"})
    (root / "imagesTr" / "._pan_000.nii.gz").write_bytes(b"\x00\x05\x16\x07junk")
    (root / "dataset.json").write_text(json.dumps({
        "name": "tiny", "labels": {"0": "background", "1": "pancreas", "2": "cancer"},
        "numTraining": n, "training": training, "test": ["./imagesTs/pan_999.nii.gz"]}))
    return root


def kits_tree(root: Path, n: int = 3, shape: tuple[int, int, int] = (6, 10, 12)) -> Path:
    for i in range(n):
        img, lab = phantom(shape, i)
        save(root / f"case_{i:05d}" / "imaging.nii.gz", img, KITS_AFFINE)
        save(root / f"case_{i:05d}" / "segmentation.nii.gz", lab, KITS_AFFINE)
    (root / "._case_00000").write_bytes(b"junk")
    return root


def nnunet_tree(root: Path, n: int = 3, shape: tuple[int, int, int] = (10, 10, 8)) -> Path:
    aff = np.diag([1.5, 1.5, 3.0, 1.0])
    for i in range(n):
        img, lab = phantom(shape, i)
        save(root / "imagesTr" / f"kid_{i:03d}_0000.nii.gz", img, aff)
        save(root / "labelsTr" / f"kid_{i:03d}.nii.gz", lab, aff)
    (root / "imagesTr" / "._kid_000_0000.nii.gz").write_bytes(b"junk")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "kidney": 1, "tumor": 2},
        "numTraining": n, "file_ending": ".nii.gz"}))
    return root


def folder_tree(root: Path, n: int = 3, shape: tuple[int, int, int] = (10, 10, 8)) -> Path:
    for i in range(n):
        img, _ = phantom(shape, i)
        save(root / ("sub" if i == 0 else "") / f"vol{i}.nii.gz", img, np.diag([2.0, 2, 2, 1]))
    (root / "._vol0.nii.gz").write_bytes(b"junk")
    return root


#: the named labels of :func:`organs_tree` (nnU-Net form, dataset order)
ORGANS = {"background": 0, "brainstem": 1, "spinal cord": 2, "parotid_left": 3}


def organs_phantom(shape: tuple[int, int, int], seed: int = 0,
                   with_parotid: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """HU image (int16) with three separate boxes labelled 1, 2 and (``with_parotid``) 3."""
    rng = np.random.default_rng(seed)
    image = np.full(shape, -1000, np.int16)
    image[1:-1, 1:-1, 1:-1] = 0
    label = np.zeros(shape, np.uint8)
    x, y, z = shape
    boxes = {1: (slice(2, x // 3), slice(2, y - 2), slice(2, z - 2)),
             2: (slice(x // 3 + 1, 2 * x // 3), slice(2, y // 2), slice(2, z - 2)),
             3: (slice(2 * x // 3 + 1, x - 2), slice(y // 2, y - 2), slice(2, z - 2))}
    for value, box in boxes.items():
        if value == 3 and not with_parotid:
            continue
        label[box] = value
        image[box] = 40 * value
    image += rng.integers(-5, 5, shape).astype(np.int16)
    return image, label


def organs_tree(root: Path, n: int = 4, shape: tuple[int, int, int] = (18, 12, 8),
                labels: dict[str, int] | None = None, prefix: str = "hn") -> Path:
    """nnU-Net raw tree of :func:`organs_phantom` cases with named labels; case 0 lacks the
    parotid (a structure absent from some cases)."""
    aff = np.diag([1.5, 1.5, 3.0, 1.0])
    for i in range(n):
        img, lab = organs_phantom(shape, i, with_parotid=i != 0)
        save(root / "imagesTr" / f"{prefix}_{i:03d}_0000.nii.gz", img, aff)
        save(root / "labelsTr" / f"{prefix}_{i:03d}.nii.gz", lab, aff)
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": labels or ORGANS,
        "numTraining": n, "file_ending": ".nii.gz"}))
    return root
