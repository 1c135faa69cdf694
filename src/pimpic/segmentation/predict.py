"""Segment new scans with a fine-tuned run.

Each image is preprocessed exactly like the training data (the run's settings: RAS, spacing,
HU window, crop), segmented by sliding-window inference, and the mask is mapped back onto the
input's own voxel grid (nearest neighbour), so ``<name>_seg.nii.gz`` has the input's shape and
affine whatever its orientation and spacing. Labels: the values of the dataset the model was
trained on (uint8; class ``c`` is label value ``c``, the values being consecutive — e.g. 0
background, 1 organ, 2 tumour), named in the model file (``ModelInfo.labels``).
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from pimpic.data.preprocess import Settings, load_and_preprocess, to_original_grid
from pimpic.errors import PimpicError
from pimpic.io import atomic_path
from pimpic.segmentation.inference import predict_labels
from pimpic.segmentation.model_file import load_model
from pimpic.training.device import resolve_device

SUFFIXES = (".nii.gz", ".nii")
#: what ``predict`` appends to an image's name for its mask
MASK_SUFFIX = "_seg"
log = logging.getLogger(__name__)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def collect_images(images: Iterable[str | Path]) -> list[Path]:
    """Files and folders (their ``.nii``/``.nii.gz`` files; hidden ones and the
    ``*_seg.nii.gz`` masks of an earlier ``predict`` skipped) → sorted files."""
    found: list[Path] = []
    for item in images:
        p = Path(item)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and f.name.endswith(SUFFIXES)
                           and not f.name.startswith("."))
            masks = [f for f in files if _stem(f).endswith(MASK_SUFFIX)]
            if masks:
                log.info("%s: skipping %d earlier mask(s) (*%s.nii.gz, e.g. %s); name an image "
                         "file to segment it anyway", p, len(masks), MASK_SUFFIX, masks[0].name)
            files = [f for f in files if f not in masks]
            if not files:
                raise PimpicError(f"{p}: folder holds no .nii/.nii.gz images"
                                  + (f" besides {len(masks)} earlier mask(s)" if masks else ""))
            found.extend(files)
        elif p.is_file():
            if not p.name.endswith(SUFFIXES):
                raise PimpicError(f"{p}: not a NIfTI image (.nii or .nii.gz)")
            found.append(p)
        else:
            raise PimpicError(f"{p}: no such file or folder")
    if not found:
        raise PimpicError("no input images given")
    stems = [_stem(f) for f in found]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise PimpicError(f"several inputs would write the same output: {', '.join(dupes[:5])}")
    return found


def _check_channels(path: Path, in_channels: int) -> None:
    try:
        shape = nib.load(str(path)).shape  # type: ignore[attr-defined]
    except Exception as err:
        raise PimpicError(f"{path}: not a readable NIfTI image ({err})") from None
    channels = int(np.prod(shape[3:])) if len(shape) > 3 else 1
    if len(shape) < 3 or channels != in_channels:
        raise PimpicError(f"{path}: image has shape {tuple(shape)} ({channels} channel(s)); the "
                          f"model expects a 3D volume with {in_channels} channel(s)")


def predict(
    images: Iterable[str | Path],
    model_run: str | Path,
    out: str | Path,
    *,
    overwrite: bool = False,
    device: str = "auto",
    progress: bool = True,
) -> list[Path]:
    """Write ``out/<name>_seg.nii.gz`` for every input image; returns the written paths.

    Args:
        images: NIfTI files and/or folders of them.
        model_run: a fine-tuning run folder (its best model and preprocessing settings are used).
        out: output folder; an existing non-empty folder is refused unless ``overwrite``.
        overwrite: write into an existing folder, replacing same-named masks.
        device: ``auto``, ``cpu``, ``cuda``, ...
        progress: show a progress bar.
    """
    files = collect_images(images)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PimpicError(f"{out}: exists and is not a folder; --out names the folder the masks "
                          "go to")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise PimpicError(f"{out}: output folder exists; pass --overwrite to write into it")
    model, info = load_model(model_run)
    settings = Settings.from_dict(info.settings)
    in_channels = int(info.architecture["in_channels"])
    dev = resolve_device(device)
    model.to(dev)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PimpicError(f"{out}: cannot create the output folder ({err.strerror})") from None
    written = []
    for path in tqdm(files, disable=not progress, desc="predict", unit="image"):
        _check_channels(path, in_channels)
        image, _, meta = load_and_preprocess(path, None, settings)
        labels = predict_labels(model, image, info.patch_size, **info.inference.window(),
                                device=dev)
        mask = np.asarray(to_original_grid(labels, meta), dtype=np.uint8)
        src: Any = nib.load(str(path))
        if mask.shape != tuple(src.shape[:3]):
            raise PimpicError(f"{path}: mapped mask shape {mask.shape} differs from the image "
                              f"{tuple(src.shape[:3])} (preprocessing metadata is inconsistent)")
        seg = nib.Nifti1Image(mask, src.affine)
        seg.header.set_qform(src.affine, code=int(src.header["qform_code"]) or 1)
        seg.header.set_sform(src.affine, code=int(src.header["sform_code"]) or 1)
        seg.header.set_xyzt_units(*src.header.get_xyzt_units())
        target = out / f"{_stem(path)}{MASK_SUFFIX}.nii.gz"
        with atomic_path(target) as tmp:
            tmp.write_bytes(gzip.compress(seg.to_bytes(), compresslevel=6))
        written.append(target)
    return written
