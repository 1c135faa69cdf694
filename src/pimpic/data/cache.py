"""Read access to a prepared cache (written by :mod:`pimpic.data.preprocess`).

Layout of ``CACHE/``::

    manifest.json            {"format": "pimpic-cache", "version": 1, "pimpic_version": ...,
                              "settings": {...preprocessing settings...}, "source": ...,
                              "layout": ..., "labels": {...} or null, "cases": [ids...],
                              ["unlabelled": [folders...]]}
                             (``labels``: :meth:`pimpic.data.labels.LabelSet.to_json`;
                             ``unlabelled``: the ``prepare --unlabelled`` folders, if any)
    splits.json              {"seed", "ratios", "train", "val", "test", "fractions": {"5": [...]},
                              ["unlabelled": [...], "unused": [...]]}; written once, then kept
                             (pimpic.data.splits.settle_split)
    cases/<id>/image.npy     (X, Y, Z) RAS voxel grid at the target spacing, values in [0, 1]
    cases/<id>/label.npy     (X, Y, Z) uint8, only for labelled cases
    cases/<id>/meta.json     per-case metadata (original affine/shape/spacing, crop box, ...,
                             and ``sources``: size, mtime_ns and SHA-256 of each input file)
    .prepare.lock            held (``flock``) by the one ``pimpic prepare`` writing the cache

Arrays are opened memory-mapped, so the patch sampler reads only the voxels of a patch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from pimpic import __version__
from pimpic.data.labels import ORGAN_TUMOUR, LabelSet
from pimpic.data.splits import Split
from pimpic.errors import PimpicError
from pimpic.io import read_json, write_json

#: ``manifest.json``'s ``format`` and ``version``
FORMAT = "pimpic-cache"
VERSION = 1
MANIFEST = "manifest.json"
SPLITS = "splits.json"
CASES_DIR = "cases"
LOCK = ".prepare.lock"


class Cache:
    """A prepared dataset cache.

    Args:
        root: the cache folder made by ``pimpic prepare``.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise PimpicError(f"{self.root}: cache folder does not exist (run `pimpic prepare`)")
        if not (self.root / MANIFEST).is_file():
            raise PimpicError(
                f"{self.root}: not a pimpic cache (no {MANIFEST}; run `pimpic prepare`)"
            )

    @staticmethod
    def is_manifest(data: Any) -> bool:
        """Is ``data`` (a parsed ``manifest.json``) a pimpic cache manifest?"""
        return isinstance(data, dict) and data.get("format") == FORMAT

    @cached_property
    def manifest(self) -> dict[str, Any]:
        data = read_json(self.root / MANIFEST)
        if not self.is_manifest(data):
            raise PimpicError(f"{self.root / MANIFEST}: not a pimpic cache manifest")
        manifest: dict[str, Any] = data
        return manifest

    @property
    def settings(self) -> dict[str, Any]:
        """Preprocessing settings: ``spacing`` (mm, 3 floats), ``window`` (HU, 2 floats), ..."""
        return dict(self.manifest["settings"])

    @property
    def labels(self) -> LabelSet | None:
        """The labels of the dataset it was prepared from (None: an unlabelled folder); a cache
        made before labels were recorded reads as the organ + tumour view it was scored with."""
        if "labels" not in self.manifest:
            return ORGAN_TUMOUR
        data = self.manifest["labels"]
        try:
            return LabelSet.from_json(data) if data is not None else None
        except (KeyError, TypeError, ValueError, AttributeError):
            raise PimpicError(f"{self.root / MANIFEST}: malformed 'labels'") from None

    def require_labels(self) -> LabelSet:
        """:attr:`labels`, or a one-line error for a cache of unlabelled images."""
        labels = self.labels
        if labels is None:
            raise PimpicError(f"{self.root}: the cache names no labels (prepared from a folder "
                              "of unlabelled images)")
        return labels

    @property
    def case_ids(self) -> list[str]:
        """All finished cases, in manifest order."""
        return list(self.manifest["cases"])

    def case_dir(self, case_id: str) -> Path:
        return self.root / CASES_DIR / case_id

    def _check(self, case_id: str) -> Path:
        d = self.case_dir(case_id)
        if not (d / "image.npy").is_file():
            raise PimpicError(f"{d}: case {case_id!r} is not in the cache")
        return d

    def image(self, case_id: str, mmap: bool = True) -> np.ndarray:
        """The preprocessed image, ``(X, Y, Z)``, float16/float32 in [0, 1] (memory-mapped)."""
        d = self._check(case_id)
        image: np.ndarray = np.load(d / "image.npy", mmap_mode="r" if mmap else None)
        return image

    def label(self, case_id: str, mmap: bool = True) -> np.ndarray | None:
        """The preprocessed label, ``(X, Y, Z)`` uint8, or None for an unlabelled case."""
        d = self._check(case_id)
        p = d / "label.npy"
        return np.load(p, mmap_mode="r" if mmap else None) if p.is_file() else None

    def meta(self, case_id: str) -> dict[str, Any]:
        """Per-case metadata (see :mod:`pimpic.data.preprocess`)."""
        return dict(read_json(self._check(case_id) / "meta.json"))

    def has_splits(self) -> bool:
        return (self.root / SPLITS).is_file()

    def split(self) -> Split:
        """The saved split (``train``/``val``/``test`` and the nested label fractions)."""
        if not self.has_splits():
            raise PimpicError(f"{self.root}: no {SPLITS} (run `pimpic prepare` or pass --splits)")
        return Split.from_json(read_json(self.root / SPLITS), self.root / SPLITS)

    def train_ids(self) -> list[str]:
        """The pretraining pool: exactly the training split (all cases if unsplit)."""
        return list(self.split().train) if self.has_splits() else self.case_ids

    def case_hashes(self, case_id: str) -> dict[str, str | None]:
        """``{"content", "input"}``: the SHA-256 of the case's source voxels and of its image
        file, as ``prepare`` recorded them in ``meta.json`` (None: not recorded, or not a case
        of the cache) — what the leakage guard compares (:mod:`pimpic.data.leakage`)."""
        try:
            meta = self.meta(case_id)
        except PimpicError:
            return {"content": None, "input": None}
        image = (meta.get("sources") or {}).get("image")
        sha = image.get("sha256") if isinstance(image, dict) else None
        content = meta.get("content_sha256")
        return {"content": str(content) if content else None, "input": str(sha) if sha else None}

    def input_sha256(self, case_ids: Sequence[str],
                     keys: Sequence[str] = ("image", "label")) -> dict[str, dict[str, Any]]:
        """id → ``{key: SHA-256 of that input file}`` as ``prepare`` recorded it (None: not
        recorded). The manifest lists ids only, so this is what tells a case redone with
        other inputs from the one a run was made on."""
        out: dict[str, dict[str, Any]] = {}
        for cid in case_ids:
            sources = self.meta(cid).get("sources")
            recs = [sources.get(k) if isinstance(sources, dict) else None for k in keys]
            out[cid] = {k: r.get("sha256") if isinstance(r, dict) else None
                        for k, r in zip(keys, recs, strict=True)}
        return out


def check_same_inputs(saved: Any, now: Mapping[str, Mapping[str, Any]] | None, what: str,
                      advice: str) -> None:
    """Refuse, in one line (``"<what> — … ; <advice>"``), when a case of ``saved`` (an earlier
    :meth:`Cache.input_sha256`) now has other inputs; a run that recorded none (an older
    pimpic, a source that is not a cache) is not compared."""
    if not isinstance(saved, dict) or now is None:
        return
    changed = []
    for cid, old in saved.items():
        new = dict(now.get(cid) or {})
        keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)] \
            if cid in now and isinstance(old, dict) else []
        if keys:
            changed.append(f"{cid} ({', '.join(keys)})")
    if changed:
        raise PimpicError(f"{what} — {len(changed)} case(s) were redone by `pimpic prepare` "
                          f"with other input files since: {', '.join(changed[:5])}"
                          f"{', …' if len(changed) > 5 else ''}; {advice}")


def write_manifest(root: str | Path, settings: Mapping[str, Any], cases: Sequence[str], *,
                   source: str, layout: str, labels: LabelSet | None = ORGAN_TUMOUR,
                   unlabelled: Sequence[str] = ()) -> None:
    """Write ``root/manifest.json`` (atomically): the one writer of the cache's manifest.

    Args:
        root: the cache folder.
        settings: the preprocessing settings (``Settings.to_dict()``: ``spacing``, ``window``, ...).
        cases: every finished case, in order.
        source: where the cases came from (the dataset folder).
        layout: the dataset layout it was read as (``msd``, ``kits19``, ...).
        labels: the labels the dataset names (None: an unlabelled folder).
        unlabelled: the folders whose images were added as unlabelled cases (written only
            when there are some, so a cache made without them keeps its manifest byte for
            byte, and the pretraining runs made on it can resume).
    """
    manifest: dict[str, Any] = {
        "format": FORMAT, "version": VERSION, "pimpic_version": __version__,
        "settings": dict(settings), "source": source, "layout": layout,
        "labels": labels.to_json() if labels is not None else None, "cases": list(cases)}
    if unlabelled:
        manifest["unlabelled"] = list(unlabelled)
    write_json(Path(root) / MANIFEST, manifest)
