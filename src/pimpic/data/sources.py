"""The pretraining data source contract: what pretraining reads from a folder of volumes.

Pretraining reads its images from a *source*: a pimpic cache (:class:`~pimpic.data.cache.Cache`,
made by ``pimpic prepare``), an nnU-Net preprocessed folder
(:class:`~pimpic.nnunet.data.PreprocessedFolder`), or any class with the members of
:class:`VolumeSource`. The engine, the loader and the leakage guard use nothing else, so a new
kind of source is one file with such a class, and one line in the table of source kinds
(:data:`pimpic.pretraining.sources.SOURCES`) that lets ``open_source`` recognise its folder.

A kind of source may offer more, and the engine then uses it:

* ``input_sha256(case_ids, keys)`` — the SHA-256 of each case's input files (a cache), so a
  resume after ``prepare`` redid a case is refused;
* ``plan`` — an nnU-Net plan (an nnU-Net folder), the default plans of ``backbone: nnunet``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class VolumeSource(Protocol):
    """A folder of 3D volumes pretraining can read (instances must pickle: DataLoader workers
    receive them).

    Members:
        root: the folder (recorded in ``run.json``, named in messages).
        manifest: what identifies the data; its SHA-256 is what a resumed run must share.
        settings: ``spacing`` (mm per axis of the arrays), ``window`` (the HU window the
            intensities were clipped to, or None) and optionally ``normalization`` (the
            intensity schemes; default a window scaled to [0, 1]) — recorded in the encoder.
        case_ids: every case, in a fixed order.
    """

    root: Path

    @property
    def manifest(self) -> Mapping[str, Any]: ...

    @property
    def settings(self) -> Mapping[str, Any]: ...

    @property
    def case_ids(self) -> list[str]: ...

    def train_ids(self) -> list[str]:
        """The default pretraining pool (a cache: its training split)."""
        ...

    def image(self, case_id: str) -> Any:
        """The case's volume ``(D, H, W)``, a numpy array or a lazily sliced array-like (a
        sampler reads only its patches' voxels)."""
        ...

    def case_hashes(self, case_id: str) -> dict[str, str | None]:
        """``{"content", "input"}`` SHA-256s of the case's source voxels and input file (None
        where unknown): what the leakage guard compares (:mod:`pimpic.data.leakage`)."""
        ...
