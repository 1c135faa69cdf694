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

A run whose encoder does not fit the plans is refused, naming the first tensor that differs.
"""

from __future__ import annotations

import json
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


def _num_outputs(plan: NnunetPlan, dataset_json: Path | None) -> int:
    """Segmentation heads from ``dataset.json`` (beside the plans unless given); 2 without one —
    the loader skips ``seg_layers``, so their size never blocks loading."""
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


def export_nnunet(run_dir: str | Path, plans: str | Path, configuration: str, out: str | Path,
                  *, dataset_json: str | Path | None = None) -> dict[str, Any]:
    """Write ``out``: the full nnU-Net network state with the run's pretrained encoder.

    Args:
        run_dir: a finished pretraining run (``encoder.safetensors``).
        plans, configuration: the nnU-Net plans file and configuration to fine-tune with.
        out: the checkpoint (``.pth``) to write, atomically.
        dataset_json: for the number of segmentation heads (default: beside ``plans``).

    Returns:
        A summary: ``out``, ``encoder_tensors``, ``network_tensors``, ``configuration``.

    Raises:
        PimpicError: no finished run, plans unusable, or the run's backbone does not match.
    """
    import torch
    from safetensors.torch import load_file

    run_dir, out = Path(run_dir), Path(out)
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
    encoder.load_state_dict({k[len("encoder."):]: v for k, v in state.items()}, strict=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    checkpoint = {
        WEIGHTS_KEY: weights,
        "pimpic": {"format": "pimpic-nnunet-export", "plans": plan.path.name,
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
            "configuration": plan.describe()}
