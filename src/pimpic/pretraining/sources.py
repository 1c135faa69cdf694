"""The kinds of folder pretraining reads, and :func:`open_source`, which tells them apart.

:data:`SOURCES` is the table of source kinds: name → :class:`SourceKind`, a test that
recognises such a folder and the class that reads it (a :class:`~pimpic.data.sources.
VolumeSource`). :func:`open_source` opens a folder as the first kind, in table order, whose
test accepts it; a folder no kind recognises is opened as a pimpic cache, whose error says
what is missing (``run `pimpic prepare```). A new kind of source is its file and one line
here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pimpic.data.cache import MANIFEST, Cache
from pimpic.data.sources import VolumeSource
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
