"""The run folder: one policy for creating, resuming and overwriting every training run.

A folder is a pimpic run only when it holds the marker ``.pimpic-run``, written when pimpic
creates the run (a folder that merely holds a ``config.yaml`` is not)::

    {"kind": "pretrain" | "finetune", "pimpic_version": "0.1.0",
     "artefacts": ["config.yaml", "run.json", ...]}      # the names pimpic writes there

What a command does with its ``--out`` folder:

====================  =============  ==================================  ======================
folder                no flag        ``--resume``                        ``--overwrite``
====================  =============  ==================================  ======================
missing or empty      start          refuse: nothing to resume           start
run of this kind      refuse (start  continue from ``checkpoint.pt``     remove its artefacts,
                      again if it    (refuse without one)                start
                      stopped before
                      a checkpoint)
anything else         refuse         refuse                              refuse
====================  =============  ==================================  ======================

``--overwrite`` removes only what pimpic wrote: the artefacts this kind of run writes (not
whatever a hand-edited marker lists), the temporary files of their atomic writes (left by a
killed process), and ``eval-*`` folders that are evaluations (marked ``.pimpic-eval`` and
holding nothing but evaluation outputs). Anything else in the folder (a user's notes, a figure,
an ``eval-*`` *file*, a hand-written ``eval-mine/summary.json``) makes it refuse, naming what it
found: nothing pimpic did not write is deleted, and a restarted run never sits next to results
of the run it replaced. Nothing outside the folder is touched; a listed name that is a link is
unlinked, never followed.

``--resume`` continues only the same experiment: the config may differ in :data:`RESUMABLE`
keys only, and the identity recorded in ``run.json`` when the run started (cache manifest, case
ids, encoder content, ...) must be unchanged; the first difference is refused.

One command at a time uses a run folder: :meth:`RunFolder.check` takes the folder's lock
(``.pimpic-lock``, the lock :mod:`pimpic.data.prepare` takes on a cache), held until the run
ends; a second command on the same folder is refused, naming the running one's pid.

The same policy serves the experiment's restarts (:mod:`pimpic.protocol.experiment`).

What a run records about itself in ``run.json`` is a :class:`RunRecord` dataclass of its stage,
read and written here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pimpic import __version__
from pimpic.config import config_differences, load_yaml, plain
from pimpic.errors import PimpicError
from pimpic.io import HeldLock, acquire_lock, read_json, write_json
from pimpic.paths import (
    CHECKPOINT,
    CONFIG,
    ENV,
    EVAL_MARKER,
    EVAL_OUTPUTS,
    MARKER,
    METRICS,
    PREDICTIONS,
    RUN_INFO,
    RUN_LOCK,
    TENSORBOARD,
)

log = logging.getLogger(__name__)

KINDS = ("pretrain", "finetune")

#: settings that change where and how fast a run executes, never what it computes
RUNTIME_KEYS = frozenset({"device", "num_workers", "log_every", "checkpoint_every",
                          "sw_batch_size"})
#: settings that only say how long a run goes on: a resumed run may extend them
LENGTH_KEYS = frozenset({"steps", "max_epochs", "max_steps", "patience"})
#: config keys that may change between a run and its resumption
RESUMABLE = RUNTIME_KEYS | LENGTH_KEYS
#: what a run writes as it starts: a folder holding only these (and the marker) stopped before
#: its first checkpoint, with nothing to keep, and the same command simply starts it again
STARTED = frozenset({MARKER, CONFIG, RUN_INFO, ENV, METRICS, TENSORBOARD})


class RunFolder:
    """The folder of one training run and the rules for (re)using it.

    Args:
        path: the run folder (``--out``).
        kind: ``pretrain`` or ``finetune``; a folder of the other kind is refused.
        artefacts: the names this kind of run writes into the folder (files or folders).

    Use :meth:`check` (every rank may call it; rank 0 takes the folder's lock) before any
    expensive work, then :meth:`check_resume` when resuming, then :meth:`start` (rank 0) to
    create or reopen it.
    """

    def __init__(self, path: str | Path, kind: str, artefacts: Iterable[str]) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
        self.path = Path(path)
        self.kind = kind
        self.artefacts = tuple(artefacts)
        self._stale: list[Path] = []
        self._release: weakref.finalize[Any, Any] | None = None

    # ------------------------------------------------------------------------------ decisions

    def check(self, *, resume: bool, overwrite: bool, lock: bool = True) -> bool:
        """Decide whether the run starts (False) or resumes (True); with ``lock``, take the
        folder's lock first (kept while this object lives, or until :meth:`release`).

        The decision touches nothing. The lock (``.pimpic-lock``, created with the folder when
        it is missing) is taken first where it exists, otherwise only after a first decision
        accepted the folder, and the decision is made (again) under it: of two commands given
        one folder, the second is refused, naming the first — whether it would start,
        ``--resume`` or ``--overwrite``.
        Under DDP only rank 0 locks (``lock=dist.is_main``).

        Raises:
            PimpicError: every refusal of the table in the module docstring, and a folder
                locked by another running command.
        """
        if not lock or self._release is not None:
            return self._decide(resume, overwrite)
        if not (self.path / RUN_LOCK).is_file():  # lock no folder not known to be usable
            self._decide(resume, overwrite)
        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        held = acquire_lock(self.path / RUN_LOCK, f"`pimpic {self.kind}`")
        self._release = weakref.finalize(self, _unlock, self.path, held, created, os.getpid())
        try:
            return self._decide(resume, overwrite)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Drop the folder's lock (also dropped when this object goes, or the process ends).
        Where no run was started, the lock file goes too, and the folder if this command
        created it: a refused or failed command leaves no trace."""
        if self._release is not None:
            self._release()
            self._release = None

    def _decide(self, resume: bool, overwrite: bool) -> bool:
        path = self.path
        if resume and overwrite:
            raise PimpicError("--resume and --overwrite exclude each other")
        if path.exists() and not path.is_dir():
            raise PimpicError(f"{path}: exists and is not a folder")
        entries = sorted(e for e in path.iterdir() if e.name != RUN_LOCK) if path.is_dir() \
            else []
        if not entries:
            if resume:
                raise PimpicError(f"{path}: no checkpoint to resume from (no run there); "
                                  "start it without --resume")
            return False
        marker = self._read_marker()
        if marker is None:
            raise PimpicError(f"{path}: not a pimpic run folder (no {MARKER}) and not empty; "
                              "refusing to use it — choose a new or empty --out folder")
        if marker["kind"] != self.kind:
            raise PimpicError(f"{path}: holds a {marker['kind']} run, not a {self.kind} run; "
                              "choose another --out folder")
        if resume:
            if not (path / CHECKPOINT).is_file():
                raise PimpicError(f"{path}: no checkpoint to resume from ({CHECKPOINT} not "
                                  "written yet); pass --overwrite to start over")
            return True
        if not overwrite:
            if not all(e.name in STARTED or _is_temporary(e.name, STARTED) for e in entries):
                raise PimpicError(f"{path}: run folder exists and is not empty; pass --resume "
                                  "to continue it or --overwrite to start over")
            log.warning("%s: the %s run there stopped before its first checkpoint (killed, or "
                        "a full disk); starting it again", path, self.kind)
        # the names this kind of run writes, not whatever the marker lists: a hand-edited
        # marker must not make --overwrite delete a user's file
        listed = set(self.artefacts)
        foreign = [e.name for e in entries if not _owned(e, listed)]
        if foreign:
            raise PimpicError(f"{path}: --overwrite removes only what pimpic wrote, and the "
                              f"folder also holds {', '.join(foreign[:5])}"
                              f"{', …' if len(foreign) > 5 else ''}; move that away first")
        self._stale = [e for e in entries if e.name != MARKER]
        return False

    def check_resume(self, config: Mapping[str, Any], identity: Mapping[str, Any],
                     defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Refuse to resume another experiment; returns the run's ``run.json``.

        Args:
            config: the resolved config now (``to_dict``); compared with ``config.yaml``,
                :data:`RESUMABLE` keys excepted.
            identity: values the run must still have, compared with the same keys of
                ``run.json`` (e.g. ``cache_manifest_sha256``, ``train_cases``).
            defaults: the config class's defaults (``to_dict``), standing in for keys a run
                made by an older pimpic did not record.
        """
        diffs = config_differences(load_yaml(self.path / CONFIG), config, RESUMABLE, defaults)
        if diffs:
            raise PimpicError(f"{self.path}: cannot resume with a different config — "
                              + "; ".join(diffs))
        info = read_json(self.path / RUN_INFO)
        if not isinstance(info, dict):
            raise PimpicError(f"{self.path / 'run.json'}: malformed (expected an object)")
        for key, now in identity.items():
            saved = info.get(key)
            if plain(saved) != plain(now):
                raise PimpicError(f"{self.path}: cannot resume — {_difference(key, saved, now)}")
        return info

    # ------------------------------------------------------------------------------- effects

    def start(self, resuming: bool) -> None:
        """Create or reopen the folder (rank 0 only), after :meth:`check`.

        A fresh run removes the previous run's artefacts that :meth:`check` found and writes
        the marker; a resumed run only drops the temporary files of interrupted writes and
        adds any new artefact names to its marker.
        """
        listed = set(self.artefacts)
        if resuming:
            marker = self._read_marker()
            listed |= set(marker["artefacts"] if marker else [])
            stale = [e for e in self.path.iterdir() if _is_temporary(e.name, listed)]
        else:
            stale = self._stale
        for entry in stale:
            _remove(self.path, entry)
        self._stale = []
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.path / MARKER, _marker(self.kind, sorted(listed)))

    def _read_marker(self) -> dict[str, Any] | None:
        path = self.path / MARKER
        if not path.exists() and not path.is_symlink():
            return None
        try:
            data = json.loads(path.read_text()) if path.is_file() else None
        except (OSError, ValueError):
            data = None
        names = data.get("artefacts") if isinstance(data, dict) else None
        if (not isinstance(data, dict) or data.get("kind") not in KINDS
                or not isinstance(names, list) or not all(_plain_name(n) for n in names)):
            raise PimpicError(f"{path}: malformed run marker; refusing to touch {self.path}")
        return data


R = TypeVar("R", bound="RunRecord")


@dataclasses.dataclass
class RunRecord:
    """Base of a stage's ``run.json`` record, a dataclass whose fields are the file's keys."""

    #: what the record belongs to, in refusals (``a fine-tuning run``)
    WHAT: ClassVar[str] = "a run"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, run_dir: Path) -> None:
        write_json(run_dir / RUN_INFO, self.to_json())

    @classmethod
    def from_json(cls: type[R], path: Path, data: Any) -> R:
        """The record read from ``path``; a file that lacks a field without default is refused
        (a key the record does not know is dropped)."""
        names = [f.name for f in dataclasses.fields(cls)]
        try:
            return cls(**{k: data[k] for k in names if k in data})
        except TypeError:
            missing = [k for k in names if not isinstance(data, dict) or k not in data]
            raise PimpicError(f"{path}: not {cls.WHAT}'s record (no "
                              f"{', '.join(missing[:5])})") from None


# ---------------------------------------------------------------------------------- helpers


def saved_config(path: str | Path) -> dict[str, Any] | None:
    """The ``config.yaml`` of the pimpic run in ``path`` (the base of ``--resume``), or None
    where ``path`` is not a run that saved one."""
    path = Path(path)
    if not (path / MARKER).is_file() or not (path / CONFIG).is_file():
        return None
    return load_yaml(path / CONFIG)


def mark_evaluation(folder: Path) -> None:
    """Mark ``folder`` (``RUN/eval-<split>``) as pimpic's, so ``--overwrite`` may remove it."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / EVAL_MARKER, _marker("evaluation", list(EVAL_OUTPUTS)))


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (e.g. the encoder a fine-tuning run started from)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def json_sha256(obj: Any) -> str:
    """Hex SHA-256 of a JSON value, independent of key order (e.g. a cache manifest)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _unlock(folder: Path, lock: HeldLock, created: bool, owner: int) -> None:
    """Release ``folder``'s lock; when the lock file is all there is (no run started), remove
    it, and the folder if this command ``created`` it — still holding the lock, so no other
    command is using them. Only the ``owner`` process does that, never a forked worker."""
    try:
        if os.getpid() == owner and [e.name for e in folder.iterdir()] == [RUN_LOCK]:
            (folder / RUN_LOCK).unlink()
            if created:
                folder.rmdir()
    except OSError:
        pass  # a folder someone else writes into, or one that went: keep what is there
    finally:
        lock.release()


def _marker(kind: str, artefacts: list[str]) -> dict[str, Any]:
    return {"kind": kind, "pimpic_version": __version__, "artefacts": artefacts}


def _plain_name(name: Any) -> bool:
    """A single name inside the folder: no separators, not ``.``/``..``, not the marker."""
    return (isinstance(name, str) and name not in ("", ".", "..", MARKER)
            and not any(c in name for c in "/\\\0"))


def _is_temporary(name: str, artefacts: Iterable[str]) -> bool:
    """A temporary file of :func:`pimpic.io.atomic_path` (``.<name>.<random>.tmp``)."""
    return name.endswith(".tmp") and any(name.startswith(f".{a}.") for a in [*artefacts, MARKER])


def _owned(entry: Path, artefacts: set[str]) -> bool:
    name = entry.name
    if name in (MARKER, RUN_LOCK) or name in artefacts or _is_temporary(name, artefacts):
        return True
    return name.startswith("eval-") and _is_evaluation(entry)


def _is_evaluation(folder: Path) -> bool:
    """``eval-*`` holding pimpic's marker and nothing but what an evaluation writes (so not a
    user's folder with a ``summary.json``, nor a marked one a user added a file to)."""
    if folder.is_symlink() or not folder.is_dir() or not (folder / EVAL_MARKER).is_file():
        return False
    for entry in folder.iterdir():
        name = entry.name
        if name == EVAL_MARKER or _is_temporary(name, EVAL_OUTPUTS):
            continue
        if name not in EVAL_OUTPUTS or entry.is_symlink():
            return False
        if name == PREDICTIONS and not (entry.is_dir() and all(
                p.is_file() and not p.is_symlink()
                and (p.suffix == ".npy" or (p.name.startswith(".") and p.suffix == ".tmp"))
                for p in entry.iterdir())):
            return False
    return True


def _remove(folder: Path, entry: Path) -> None:
    if entry.parent != folder:  # entries come from folder.iterdir(); never reach outside
        raise PimpicError(f"{entry}: refusing to delete outside {folder}")
    if entry.is_symlink() or not entry.is_dir():
        entry.unlink(missing_ok=True)
    else:
        shutil.rmtree(entry)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "…"


def _difference(key: str, saved: Any, now: Any) -> str:
    """``key: run has A, now B``, pointing at the first differing entry of two lists."""
    saved, now = plain(saved), plain(now)
    if isinstance(saved, list) and isinstance(now, list):
        for i, (a, b) in enumerate(zip(saved, now, strict=False)):
            if a != b:
                return f"{key}[{i}]: run has {_short(a)}, now {_short(b)}"
        return f"{key}: run has {len(saved)} entries, now {len(now)}"
    if isinstance(saved, dict) and isinstance(now, dict):
        diffs = config_differences(saved, now)
        if diffs:
            return f"{key}.{diffs[0]}"
    return f"{key}: run has {_short(saved)}, now {_short(now)}"
