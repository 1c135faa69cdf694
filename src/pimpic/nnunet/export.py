"""``pimpic export nnunet``: a pretraining run → a checkpoint nnU-Net fine-tunes from.

``nnUNetv2_train DATASET CONFIGURATION FOLD -pretrained_weights checkpoint.pth`` builds its
network from the plans, then (``nnunetv2.run.load_pretrained_weights``) reads
``torch.load(checkpoint)["network_weights"]`` and requires every tensor of its network —
except the ``.seg_layers.`` outputs — under the same name with the same shape. So the export
builds the whole network of ``--plans``/``--configuration`` with nnU-Net's own code
(:func:`pimpic.nnunet.network.build_network`; decoder freshly initialised by nnU-Net's
initialiser, seeded so the same command writes the same bytes), copies the run's encoder
tensors into its ``encoder``, and saves its full ``state_dict`` under ``network_weights``
(with a ``pimpic`` entry describing the source run; nnU-Net ignores it). The network's decoder
holds a reference to the encoder, so ``decoder.encoder.*`` carries the pretrained tensors too.

A run whose encoder does not fit the plans is refused, naming the first tensor that differs. A
run pretrained otherwise than the plans preprocess and downsample — another spacing, another
intensity normalisation, other strides (:data:`SETUP_CHECKS`) — is refused too, saying exactly
what differs, unless each difference is accepted by name (``--allow``): the weights would load,
and silently start fine-tuning from features learnt on other data.

``--out`` names a file: an existing one is replaced only with ``--overwrite``, and only when it
is an earlier export (never a run's ``encoder.safetensors`` or a user's checkpoint).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pimpic.errors import PimpicError
from pimpic.io import atomic_path
from pimpic.models.export import read_encoder_metadata
from pimpic.nnunet.network import build_network
from pimpic.nnunet.plans import NnunetPlan, load_plan

#: the key nnU-Net's pretrained-weights loader reads
WEIGHTS_KEY = "network_weights"
#: seed of the decoder's initialisation (nnU-Net re-initialises nothing it loads)
SEED = 0
#: what the export's ``pimpic`` entry says it is
FORMAT = "pimpic-nnunet-export"
#: how the pretraining must agree with the plans (the names ``--allow`` accepts)
SETUP_CHECKS = ("spacing", "normalization", "strides")


def _num_outputs(plan: NnunetPlan, dataset_json: Path | None) -> int:
    """Segmentation heads from ``dataset.json`` (beside the plans unless given, which then must
    exist); 2 without one — the loader skips ``seg_layers``, so their size never blocks
    loading."""
    if dataset_json is not None and not dataset_json.is_file():
        raise PimpicError(f"{dataset_json}: --dataset-json file not found")
    path = dataset_json or plan.path.parent / "dataset.json"
    if not path.is_file():
        return 2
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    try:
        dataset = json.loads(path.read_text())
        heads = PlansManager(plan.plans).get_label_manager(dataset).num_segmentation_heads
    except Exception as err:  # nnU-Net's label manager raises assorted types
        raise PimpicError(f"{path}: unreadable nnU-Net dataset.json ({err})") from None
    return int(heads)


def first_mismatch(have: dict[str, tuple[int, ...]], want: dict[str, tuple[int, ...]]
                   ) -> str | None:
    """The first tensor (in the network's order) that the run lacks or holds with another
    shape, then the first tensor the network lacks; None when both agree."""
    for key, shape in want.items():
        if key not in have:
            return f"{key} {list(shape)} is not in the run (the run's first tensor is " \
                   f"{next(iter(have), 'none')})"
        if have[key] != shape:
            return f"{key}: the run has {list(have[key])}, the plans give {list(shape)}"
    extra = [k for k in have if k not in want]
    if extra:
        return f"{extra[0]} is in the run but not in the plans' encoder"
    return None


def setup_differences(meta: dict[str, Any], plan: NnunetPlan) -> dict[str, str]:
    """How the run was pretrained versus how ``plan`` preprocesses and downsamples, by
    :data:`SETUP_CHECKS` name (empty: they agree). Spacings are compared as sets of values,
    since a cache's axes (RAS) and a plan's (transposed) are ordered differently."""
    diffs = {}
    spacing = meta.get("spacing")
    if not isinstance(spacing, list) or sorted(round(float(v), 4) for v in spacing) \
            != sorted(round(v, 4) for v in plan.spacing):
        diffs["spacing"] = f"spacing: run {_mm(spacing)}, plans {_mm(plan.spacing)}"
    have, want = _run_normalization(meta), _plan_normalization(plan)
    if have != want:
        diffs["normalization"] = f"intensity normalisation: run {have}, plans {want}"
    strides = meta.get("architecture", {}).get("strides")
    planned = [list(level.stride) for level in plan.levels()]
    if strides != planned:
        diffs["strides"] = (f"strides: run {strides if strides is not None else 'not recorded'}"
                            f", plans {planned}")
    return diffs


def _mm(spacing: Any) -> str:
    if not isinstance(spacing, list):
        return "not recorded"
    return "×".join(f"{float(v):g}" for v in spacing) + " mm"


def _run_normalization(meta: dict[str, Any]) -> str:
    schemes, window = meta.get("normalization"), meta.get("window")
    if schemes == ["CTNormalization"]:
        return f"CTNormalization (clip {window})"
    if schemes in (None, ["window"]) and window is not None:  # a pimpic cache
        return f"HU window {window} scaled to [0, 1]"
    return ", ".join(schemes) if isinstance(schemes, list) else "not recorded"


def _plan_normalization(plan: NnunetPlan) -> str:
    if plan.normalization == ["CTNormalization"]:
        return f"CTNormalization (clip {plan.ct_window})"
    return ", ".join(plan.normalization) or "not given"


def check_out(out: Path, overwrite: bool) -> None:
    """``out`` must be a new file, or (with ``overwrite``) an earlier export."""
    if out.is_dir():
        raise PimpicError(f"{out}: is a folder; --out names the checkpoint file to write "
                          f"(e.g. {out / 'checkpoint.pth'})")
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise PimpicError(f"{out}: exists; pass --overwrite to replace it")
    if not _is_export(out):
        raise PimpicError(f"{out}: exists and is not a checkpoint written by `pimpic export "
                          "nnunet`; refusing to replace it, even with --overwrite")


def _is_export(path: Path) -> bool:
    import torch

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a torch file, or not one weights_only reads: not ours
        return False
    return isinstance(saved, dict) and isinstance(saved.get("pimpic"), dict) \
        and saved["pimpic"].get("format") == FORMAT


def export_nnunet(run_dir: str | Path, plans: str | Path, configuration: str, out: str | Path,
                  *, dataset_json: str | Path | None = None, allow: Iterable[str] = (),
                  overwrite: bool = False) -> dict[str, Any]:
    """Write ``out``: the full nnU-Net network state with the run's pretrained encoder.

    Args:
        run_dir: a finished pretraining run (``encoder.safetensors``).
        plans, configuration: the nnU-Net plans file and configuration to fine-tune with.
        out: the checkpoint (``.pth``) to write, atomically.
        dataset_json: for the number of segmentation heads (default: beside ``plans``).
        allow: :data:`SETUP_CHECKS` whose difference is accepted.
        overwrite: replace ``out`` if it is an earlier export.

    Returns:
        A summary: ``out``, ``encoder_tensors``, ``network_tensors``, ``configuration``,
        ``allowed`` (the accepted differences).

    Raises:
        PimpicError: no finished run, plans unusable, the run's backbone does not match, it
            was pretrained otherwise than the plans (not allowed), or ``out`` is refused.
    """
    import torch
    from safetensors.torch import load_file

    run_dir, out = Path(run_dir), Path(out)
    unknown = sorted(set(allow) - set(SETUP_CHECKS))
    if unknown:
        raise PimpicError(f"--allow {', '.join(unknown)}: not one of {', '.join(SETUP_CHECKS)}")
    check_out(out, overwrite)
    encoder_file = run_dir / "encoder.safetensors"
    meta = read_encoder_metadata(encoder_file)
    plan = load_plan(plans, configuration)
    arch = meta.get("architecture", {})
    in_channels = int(arch.get("in_channels", 1))
    torch.manual_seed(SEED)
    network = build_network(plan, in_channels, _num_outputs(plan, Path(dataset_json)
                                                            if dataset_json else None))
    state = load_file(str(encoder_file))
    encoder: Any = network.encoder
    want = {f"encoder.{k}": tuple(v.shape) for k, v in encoder.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state.items()}
    problem = first_mismatch(have, want)
    if problem:
        kind = arch.get("name", "?")
        raise PimpicError(f"{run_dir}: its {kind} backbone does not match {plan.describe()} — "
                          f"first mismatching layer {problem}")
    diffs = setup_differences(meta, plan)
    refused = [d for name, d in diffs.items() if name not in set(allow)]
    if refused:
        names = ",".join(n for n in diffs if n not in set(allow))
        raise PimpicError(f"{run_dir}: pretrained otherwise than {plan.describe()} "
                          f"preprocesses — {'; '.join(refused)}; fine-tune with plans that "
                          f"match, or pass --allow {names} to export anyway")
    encoder.load_state_dict({k[len("encoder."):]: v for k, v in state.items()}, strict=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    checkpoint = {
        WEIGHTS_KEY: weights,
        "pimpic": {"format": FORMAT, "plans": plan.path.name,
                   "configuration": plan.name, "method": meta.get("method"),
                   "steps": meta.get("steps"), "pimpic_version": meta.get("pimpic_version"),
                   "encoder_tensors": len(state)},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    # a file object, not a path: torch names the archive's records after a path, and the
    # temporary one would make every export differ
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        torch.save(checkpoint, fh)
    return {"out": str(out), "encoder_tensors": len(state), "network_tensors": len(weights),
            "configuration": plan.describe(), "allowed": [diffs[n] for n in diffs]}
