"""An nnU-Net preprocessed folder as a pretraining data source.

``nnUNetv2_plan_and_preprocess`` writes, per configuration, a folder such as
``nnUNet_preprocessed/Dataset001_X/nnUNetPlans_3d_fullres/`` with one image per case —
``<case>.b2nd`` (blosc2, nnU-Net ≥ 2.6) or ``<case>.npy`` / ``<case>.npz`` (older versions; key
``data``) — of shape ``(C, D, H, W)``: resampled to the configuration's spacing and normalised
with its schemes (for CT: clipped to the foreground's 0.5–99.5 percentiles, then z-scored).
Beside the folder lie ``dataset.json`` and the plans file whose configuration has that
``data_identifier``. Pretraining on it means the encoder sees exactly the arrays nnU-Net will
fine-tune on.

:class:`PreprocessedFolder` is a :class:`~pimpic.data.sources.VolumeSource` (the part of a
pimpic cache the pretraining engine reads): ``root``, ``manifest`` (what a resumed run must
share), ``settings`` (``spacing`` from the plan, ``window``: the CT clip range in HU, or None),
``case_ids``, ``train_ids()`` (every case: self-supervision reads no labels, and nnU-Net's own
test cases are never preprocessed), ``image(case_id)`` — channel 0 as a lazily read
``(D, H, W)`` array — and ``case_hashes(case_id)``; and ``plan``, the default plans of an
nnU-Net backbone. :func:`is_preprocessed_folder` is how ``open_source`` recognises one
(:mod:`pimpic.pretraining.sources`).
Intensities are z-scores, not the [0, 1] of a pimpic cache: padding (``sampler.pad_value``, 0)
is then the foreground mean, as in nnU-Net's own padding.

The leakage guard (:mod:`pimpic.data.leakage`) cannot compare those arrays with a pimpic cache
(cropped, resampled, z-scored): :meth:`PreprocessedFolder.case_hashes` hashes the case's *raw*
image instead, found where nnU-Net keeps it (``$nnUNet_raw/<dataset_name>/imagesTr/
<case>_0000<file_ending>``). Without it a case is compared by id only, and the guard says so.
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from pimpic.data.preprocess import content_sha256
from pimpic.errors import PimpicError
from pimpic.io import file_digest
from pimpic.nnunet.plans import NnunetPlan, load_plan

FORMAT = "nnunet-preprocessed"
_SUFFIXES = (".b2nd", ".npy", ".npz")


def _case_files(root: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for suffix in _SUFFIXES:
        for f in sorted(root.glob(f"*{suffix}")):
            cid = f.name[: -len(suffix)]
            if not cid.endswith("_seg"):
                out.setdefault(cid, f)
    return out


def is_preprocessed_folder(path: str | Path) -> bool:
    """Does ``path`` look like an nnU-Net preprocessed configuration folder (case arrays with
    ``.pkl`` properties, a ``dataset.json`` one level up)?"""
    root = Path(path)
    return (root.is_dir() and (root.parent / "dataset.json").is_file()
            and any(root.glob("*.pkl")) and bool(_case_files(root)))


def find_plan(root: Path) -> NnunetPlan:
    """The plans file beside ``root`` with a configuration whose ``data_identifier`` is the
    folder's name (the first such configuration in file order)."""
    for plans in sorted(root.parent.glob("*.json")):
        try:
            data = json.loads(plans.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        configs = data.get("configurations") if isinstance(data, dict) else None
        if not isinstance(configs, dict):
            continue
        for name in configs:
            try:
                plan = load_plan(plans, name)
            except PimpicError:
                continue
            if plan.data_identifier == root.name:
                return plan
    raise PimpicError(f"{root}: no plans file in {root.parent} has a configuration with "
                      f"data_identifier {root.name!r}")


class _Blosc2Channel:
    """Channel ``c`` of a blosc2 ``(C, D, H, W)`` array, sliced lazily like a numpy array."""

    def __init__(self, path: Path, channel: int = 0) -> None:
        import blosc2

        self._array = blosc2.open(urlpath=str(path), mode="r")
        self.shape = tuple(int(s) for s in self._array.shape[1:])
        self.dtype = np.dtype(self._array.dtype)
        self.ndim = 3
        self._channel = channel

    def __getitem__(self, index: Any) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        steps = [s.step for s in index if isinstance(s, slice) and s.step not in (None, 1)]
        if steps:  # strided views (the foreground anchor's coarse grid): read, then stride
            strided: np.ndarray = np.asarray(self._array[self._channel])[index]
            return strided
        return np.asarray(self._array[(self._channel,) + index])  # noqa: RUF005

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.asarray(self._array[self._channel])
        return out if dtype is None else out.astype(dtype)


class PreprocessedFolder:
    """Read access to one nnU-Net preprocessed configuration folder (see the module doc).

    Args:
        root: e.g. ``nnUNet_preprocessed/Dataset001_X/nnUNetPlans_3d_fullres``.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not is_preprocessed_folder(self.root):
            raise PimpicError(f"{self.root}: not an nnU-Net preprocessed folder (case arrays "
                              "with .pkl properties, dataset.json one level up)")

    @cached_property
    def plan(self) -> NnunetPlan:
        return find_plan(self.root)

    @cached_property
    def _files(self) -> dict[str, Path]:
        return _case_files(self.root)

    @property
    def case_ids(self) -> list[str]:
        return list(self._files)

    def train_ids(self) -> list[str]:
        return self.case_ids

    @property
    def settings(self) -> dict[str, Any]:
        """``spacing`` (mm, the plan's, transposed axes), ``window`` (HU: the CT clip range of
        channel 0, None for other schemes) and the plan's ``normalization`` schemes."""
        plan = self.plan
        return {"spacing": plan.spacing, "window": plan.ct_window,
                "normalization": plan.normalization, "source": FORMAT}

    @cached_property
    def manifest(self) -> dict[str, Any]:
        """What identifies the data (hashed into a run's ``run.json``)."""
        plan = self.plan
        return {"format": FORMAT, "plans": plan.path.name, "configuration": plan.name,
                "dataset_name": plan.plans.get("dataset_name"), "settings": self.settings,
                "cases": self.case_ids}

    @cached_property
    def raw_images(self) -> Path | None:
        """The raw dataset's ``imagesTr/`` (``$nnUNet_raw/<dataset_name>/imagesTr``) if found."""
        raw = os.environ.get("nnUNet_raw")  # noqa: SIM112 (nnU-Net's own name)
        name = self.plan.plans.get("dataset_name")
        folder = Path(raw) / str(name) / "imagesTr" if raw and name else None
        return folder if folder is not None and folder.is_dir() else None

    def case_hashes(self, case_id: str) -> dict[str, str | None]:
        """``{"content", "input"}`` SHA-256s of the case's raw channel-0 image (as a pimpic
        cache records them), or None each where the raw image is not found."""
        ending = ".nii.gz"
        if (self.root.parent / "dataset.json").is_file():
            with open(self.root.parent / "dataset.json") as fh:
                ending = str(json.load(fh).get("file_ending", ending))
        path = self.raw_images / f"{case_id}_0000{ending}" if self.raw_images else None
        if path is None or not path.is_file() or not ending.endswith((".nii", ".nii.gz")):
            return {"content": None, "input": None}
        return {"content": content_sha256(path), "input": file_digest(path)}

    def image(self, case_id: str, mmap: bool = True) -> Any:
        """Channel 0 of the case, ``(D, H, W)`` in the plan's transposed axes, read lazily."""
        path = self._files.get(case_id)
        if path is None:
            raise PimpicError(f"{self.root}: case {case_id!r} is not in the folder")
        try:
            if path.suffix == ".b2nd":
                return _Blosc2Channel(path)
            if path.suffix == ".npy":
                arr = np.load(path, mmap_mode="r" if mmap else None)
            else:
                with np.load(path) as z:
                    arr = z["data"]
        except (OSError, ValueError, KeyError) as err:
            raise PimpicError(f"{path}: unreadable preprocessed case ({err})") from None
        if arr.ndim != 4:
            raise PimpicError(f"{path}: expected a (C, D, H, W) array, got shape {arr.shape}")
        return arr[0]

