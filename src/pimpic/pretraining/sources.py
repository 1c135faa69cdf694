"""The kinds of folder pretraining reads, and :func:`open_source`, which tells them apart.

:data:`SOURCES` is the table of source kinds: name → :class:`SourceKind`, a test that
recognises such a folder and the class that reads it (a :class:`~pimpic.data.sources.
VolumeSource`). :func:`open_source` opens a folder as the first kind, in table order, whose
test accepts it; a folder no kind recognises is opened as a pimpic cache, whose error says
what is missing (``run `pimpic prepare```). A new kind of source is its file and one line
here. :func:`pool_cases` names the cases of a pretraining pool (``pimpic pretrain --pool``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pimpic.data.cache import MANIFEST, Cache
from pimpic.data.sources import VolumeSource
from pimpic.data.splits import POOLS
from pimpic.errors import PimpicError
from pimpic.nnunet.data import PreprocessedFolder, is_preprocessed_folder


@dataclass(frozen=True)
class SourceKind:
    """One entry of :data:`SOURCES`.

    Args:
        detect: does this folder hold this kind of source? (cheap: looks at file names)
        open: the folder → its source.
    """

    detect: Callable[[Path], bool]
    open: Callable[[Path], VolumeSource]


#: the source kinds, tried in this order
SOURCES: dict[str, SourceKind] = {
    "nnunet-preprocessed": SourceKind(is_preprocessed_folder, PreprocessedFolder),
    "pimpic-cache": SourceKind(lambda root: (root / MANIFEST).is_file(), Cache),
}


def open_source(root: str | Path) -> VolumeSource:
    """The source in ``root``: the first kind of :data:`SOURCES` that recognises it, else a
    pimpic cache (whose error names what is missing)."""
    root = Path(root)
    for kind in SOURCES.values():
        if kind.detect(root):
            return kind.open(root)
    return Cache(root)


def pool_cases(source: VolumeSource, pool: str = "train") -> list[str]:
    """The cases of pretraining pool ``pool`` (:data:`pimpic.data.splits.POOLS`) of a source:
    a split cache's :meth:`~pimpic.data.splits.Split.pool`; any other source's every case
    (:meth:`~pimpic.data.sources.VolumeSource.train_ids`: an nnU-Net preprocessed folder and
    an unsplit cache have no evaluation cases of their own)."""
    if pool not in POOLS:
        raise PimpicError(f"pretraining pool {pool!r}: choose one of {', '.join(POOLS)}")
    if isinstance(source, Cache) and source.has_splits():
        return list(source.split().pool(pool))
    return source.train_ids()
