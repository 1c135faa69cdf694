"""Training state on disk: ``checkpoint.pt``, written atomically and read back safely.

The checkpoint holds everything needed to continue bit-for-bit: model and optimiser state, the
step, the RNG states of every rank (torch, CUDA, numpy, python) and the resolved config. The data
stream needs no state of its own — it is a pure function of ``(seed, rank, sample index)``
(:mod:`pimpic.data.loader`). Everything is plain tensors/containers, so it loads with
``torch.load(weights_only=True)``. Whether a run may be resumed at all is decided by
:mod:`pimpic.training.run_folder`.
"""

from __future__ import annotations

import pickle
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pimpic.errors import PimpicError
from pimpic.io import atomic_open


def rng_state() -> dict[str, Any]:
    """The RNG states of this process (numpy's as tensors, so ``weights_only`` loads them)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_all(*entropy: int) -> None:
    """Seed torch, numpy and python from a tuple of ints (e.g. ``(seed, rank, step)``)."""
    s = int(np.random.SeedSequence(list(entropy)).generate_state(1)[0])
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> None:
    """Write ``state`` atomically: a crash mid-write leaves the previous checkpoint intact."""
    with atomic_open(path, "wb") as fh:  # a file object: a full disk raises OSError
        torch.save(dict(state), fh)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    required: Sequence[str] = ("step", "model")) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` that has the ``required`` keys.

    Only tensors and plain containers are unpickled (``weights_only``): a file holding anything
    else is refused, never executed. Missing, truncated, corrupt or foreign files are a
    one-line PimpicError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise PimpicError(f"{path}: no checkpoint to resume from")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # torch's message suggests weights_only=False: wrong advice for a file we cannot vouch for
        raise PimpicError(f"{path}: not a pimpic checkpoint (it holds more than tensors and "
                          "plain containers, or is corrupt); refusing to load it") from None
    except Exception:  # torch raises many types for truncated/corrupt files
        raise PimpicError(f"{path}: unreadable checkpoint (truncated or corrupt); start over "
                          "with --overwrite") from None
    missing = [k for k in required if not isinstance(state, dict) or k not in state]
    if missing:
        raise PimpicError(f"{path}: not a pimpic checkpoint of this kind of run (no "
                          f"{', '.join(missing)})")
    return dict(state)


def restore(path: str | Path, state: Mapping[str, Any], **parts: Any) -> None:
    """``part.load_state_dict(state[name])`` for every ``name=part`` (model, optimiser,
    scheduler, ...); a checkpoint that does not fit them is a PimpicError naming the file."""
    for name, part in parts.items():
        try:
            part.load_state_dict(state[name])
        except (KeyError, RuntimeError, ValueError, TypeError) as err:
            detail = " ".join(str(err).split())[:160] or type(err).__name__
            raise PimpicError(f"{path}: its {name} state does not fit this run ({detail})"
                              ) from None
