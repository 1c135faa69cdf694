"""Small I/O helpers: atomic writes (never a half-written artifact) and JSON."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path`` atomically.

    The temporary file lives in the same folder so ``os.replace`` is a rename, not a copy. On
    error the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; artifacts get the usual umask-derived mode
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """``open`` for writing whose result appears at ``path`` only once fully written."""
    with atomic_path(path) as tmp, open(tmp, mode) as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_open(path) as fh:
        json.dump(obj, fh, indent=2, sort_keys=False, default=_json_default)
        fh.write("\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read JSON; a missing or malformed file is a :class:`PimpicError` naming the file."""
    from pimpic.errors import PimpicError

    path = Path(path)
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise PimpicError(f"{path}: file not found") from None
    except json.JSONDecodeError as err:
        raise PimpicError(f"{path}: malformed JSON ({err.msg} at line {err.lineno})") from None


def append_jsonl(path: str | os.PathLike[str], obj: Any) -> None:
    """Append one JSON line (used for ``metrics.jsonl``; a torn last line is tolerated on read)."""
    with open(path, "a") as fh:
        fh.write(json.dumps(obj, default=_json_default) + "\n")


def read_jsonl(path: str | os.PathLike[str]) -> list[Any]:
    """Read a JSON-lines file, skipping a torn trailing line left by a killed process."""
    rows = []
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def save_safetensors(state: Mapping[str, Any], path: str | os.PathLike[str],
                     metadata: Mapping[str, str]) -> None:
    """Write ``state`` (name → tensor) as safetensors with string ``metadata``, atomically and
    reproducibly: equal inputs give byte-identical files.

    The safetensors library stores ``__metadata__`` in a hash map, so two saves of the same
    tensors can order its keys differently; the JSON header is rewritten here with sorted keys,
    padded with spaces to its original length (the format's own padding), which every reader
    accepts.
    """
    from safetensors.torch import save

    blob = bytearray(save(dict(state), metadata=dict(metadata)))
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    canonical = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    if len(canonical) > n:  # cannot happen for the same content; keep the library's bytes
        canonical = bytes(blob[8:8 + n])
    blob[8:8 + n] = canonical.ljust(n, b" ")
    with atomic_open(path, "wb") as fh:
        fh.write(blob)
