"""The encoder hand-off: ``encoder.safetensors`` with self-describing JSON metadata.

The file holds the encoder's ``state_dict`` (the U-Net's keys: ``blocks.<l>.conv<k>.0.weight|
bias``) and, in the safetensors header, ``{"format": "pimpic-encoder", "pimpic": "<json>"}``
where the JSON has ``architecture`` (the backbone's ``architecture()``: its ``name`` in the
backbone table and what rebuilds it, e.g. the ``Encoder`` constructor arguments),
``patch_size``, ``spacing`` (mm), ``window`` (HU), ``method``, ``steps`` and ``pimpic_version``.

Loading checks that metadata against the fine-tuning setup and fails with the list of what
differs; then the declared architecture against the tensor names and shapes in the file's
header, built on the meta device before any weights are allocated (a file cannot make pimpic
build an absurd network: the backbone's builder refuses absurd sizes);
missing or unexpected tensor keys are errors too (``strict`` semantics). Outside pimpic the
file is plain safetensors::

    from safetensors.torch import load_file
    state = load_file("encoder.safetensors")      # dict[str, Tensor]
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pimpic import __version__
from pimpic.errors import PimpicError
from pimpic.io import save_safetensors
from pimpic.training.guard import check_weights

FORMAT = "pimpic-encoder"
#: metadata fields compared between an encoder and the setup it is loaded into
CHECKED = ("in_channels", "width", "depth", "patch_size", "spacing", "window")


def save_encoder(path: str | Path, encoder: Any, meta: Mapping[str, Any]) -> None:
    """Write ``encoder`` to ``path`` atomically, with ``meta`` plus its architecture."""
    full = {"architecture": encoder.architecture(), "pimpic_version": __version__, **meta}
    # clone: nnU-Net's blocks register one tensor under two names, which safetensors refuses
    state = {k: v.detach().cpu().clone().contiguous() for k, v in encoder.state_dict().items()}
    save_safetensors(state, path, {"format": FORMAT, "pimpic": json.dumps(full)})


def read_encoder_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of an exported encoder; a non-pimpic or corrupt file is an error."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise PimpicError(f"{path}: encoder file not found")
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
    except Exception as err:  # safetensors raises several types for corrupt headers
        raise PimpicError(f"{path}: not a readable safetensors file ({err})") from None
    if header.get("format") != FORMAT or "pimpic" not in header:
        raise PimpicError(f"{path}: not a pimpic encoder export (no '{FORMAT}' metadata)")
    try:
        meta = json.loads(header["pimpic"])
    except json.JSONDecodeError:
        raise PimpicError(f"{path}: corrupt pimpic metadata in the safetensors header") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("architecture", {}), dict):
        raise PimpicError(f"{path}: corrupt pimpic metadata (expected an object with an "
                          "'architecture' mapping)")
    return dict(meta)


def _flat(meta: Mapping[str, Any]) -> dict[str, Any]:
    arch = meta.get("architecture", {})
    out = {k: arch.get(k) for k in ("in_channels", "width", "depth")}
    for k in ("patch_size", "spacing", "window"):
        v = meta.get(k)
        out[k] = list(v) if isinstance(v, (list, tuple)) else v
    return out


def compare_metadata(
    meta: Mapping[str, Any], expected: Mapping[str, Any], allow: Iterable[str] = ()
) -> list[str]:
    """Human-readable differences between an encoder's metadata and ``expected`` (flat keys of
    :data:`CHECKED`; keys absent from ``expected`` are not compared), minus allowed ones."""
    allow = set(allow)
    have = _flat(meta)
    diffs = []
    for key in CHECKED:
        if key not in expected or key in allow:
            continue
        want = expected[key]
        want = list(want) if isinstance(want, (list, tuple)) else want
        got = have.get(key)
        same = (
            [round(float(a), 6) for a in got] == [round(float(b), 6) for b in want]
            if isinstance(got, list) and isinstance(want, list) and len(got) == len(want)
            else got == want
        )
        if not same:
            diffs.append(f"{key}: encoder has {got}, setup expects {want}")
    return diffs


def load_encoder(
    path: str | Path,
    build: Callable[[Mapping[str, Any]], nn.Module],
    expected: Mapping[str, Any] | None = None,
    allow: Iterable[str] = (),
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the exported encoder and check it against ``expected``.

    Args:
        path: an ``encoder.safetensors`` written by :func:`save_encoder`.
        build: the metadata's ``architecture`` → a new module
            (:func:`pimpic.pretraining.backbones.build_encoder`, the backbone table).
        expected: flat setup values to check (any of :data:`CHECKED`).
        allow: names from :data:`CHECKED` whose mismatch is accepted deliberately.

    Raises:
        PimpicError: not a pimpic export, corrupt, metadata mismatch, an architecture the
            backbone refuses, or tensors missing, unexpected or of other shapes.
    """
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_encoder_metadata(path)
    unknown = set(allow) - set(CHECKED)
    if unknown:
        raise PimpicError(f"--allow {', '.join(sorted(unknown))}: not one of {', '.join(CHECKED)}")
    diffs = compare_metadata(meta, expected or {}, allow)
    if diffs:
        raise PimpicError(f"{path}: encoder does not match this setup — " + "; ".join(diffs)
                          + " (pass --allow NAME to accept a difference deliberately)")
    arch = meta.get("architecture", {})
    if arch.get("name") == "nnunet-encoder":
        raise PimpicError(f"{path}: an nnU-Net encoder; fine-tune it with nnU-Net after "
                          "`pimpic export nnunet RUN --plans ... --configuration ... --out ...`")
    _check_tensors(path, arch, build)
    encoder = _build(path, arch, build)
    try:
        state = load_file(str(path))
    except Exception as err:
        raise PimpicError(f"{path}: corrupt tensor data ({err})") from None
    check_weights(path, state)
    encoder.load_state_dict(state, strict=True)
    return encoder, meta


def _describe(arch: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in arch.items() if k != "name")


def _build(path: Path, arch: Mapping[str, Any],
           build: Callable[[Mapping[str, Any]], nn.Module]) -> nn.Module:
    """``build(arch)``; an architecture its backbone refuses is a one-line error."""
    try:
        return build(arch)
    except (ValueError, TypeError, KeyError, RuntimeError, OverflowError, PimpicError) as err:
        raise PimpicError(f"{path}: metadata declares an impossible architecture "
                          f"({_describe(arch)}: {' '.join(str(err).split())})") from None


def _check_tensors(path: Path, arch: Mapping[str, Any],
                   build: Callable[[Mapping[str, Any]], nn.Module]) -> None:
    """The declared architecture must have exactly the tensors (names and shapes) the file's
    header lists. Built on the meta device, so nothing is allocated (the backbone's builder
    refuses absurd sizes first)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118 (not a dict)
    except Exception as err:
        raise PimpicError(f"{path}: corrupt tensor header ({err})") from None
    with torch.device("meta"):
        own = {k: tuple(v.shape) for k, v in _build(path, arch, build).state_dict().items()}
    missing = sorted(set(own) - set(shapes))
    unexpected = sorted(set(shapes) - set(own))
    if missing or unexpected:
        raise PimpicError(
            f"{path}: state does not fit the architecture — missing {missing[:5]}"
            f"{'…' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{'…' if len(unexpected) > 5 else ''}"
        )
    bad = [k for k in own if own[k] != shapes[k]]
    if bad:
        raise PimpicError(f"{path}: tensor shapes differ from the declared architecture "
                          f"({_describe(arch)}) for {bad[:3]}")
