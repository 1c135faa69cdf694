"""nnU-Net's network, built by nnU-Net's own code, and its encoder as a pimpic backbone.

:func:`build_network` is what ``nnUNetTrainer.build_network_architecture`` does:
``PlansManager(plans).get_configuration(name)`` → ``get_network_from_plans(class name,
arch_kwargs, the kwargs to import, input channels, output channels, allow_init=True)``. So the
network — and the names and shapes of its tensors — is exactly the one ``nnUNetv2_train`` will
build from the same plans.

:class:`NnunetEncoder` wraps that network's ``encoder`` (``PlainConvEncoder`` or
``ResidualEncoder``; one output per stage) as a backbone: ``forward`` returns the stage outputs,
finest first, and ``levels`` their cumulative strides and widths. Its state dict holds the
encoder's tensors under ``encoder.`` — the same names as in the whole network, which makes
the export to an nnU-Net checkpoint a plain copy (:mod:`pimpic.nnunet.export`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from pimpic.errors import PimpicError
from pimpic.nnunet.plans import NnunetPlan, check_pyramid, load_plan

INSTALL_HINT = "install nnU-Net with: pip install 'pimpic[nnunet]'"
#: the encoder's name in its weight file's metadata (its key in the backbone table)
NNUNET = "nnunet-encoder"


def require_nnunetv2() -> None:
    """A one-line error when the optional ``nnunetv2`` package is missing."""
    try:
        import nnunetv2  # noqa: F401
    except ImportError:
        raise PimpicError(f"the nnU-Net backbone needs the nnunetv2 package; {INSTALL_HINT}"
                          ) from None


def build_network(plan: NnunetPlan, in_channels: int = 1, num_outputs: int = 2) -> nn.Module:
    """The whole segmentation network of ``plan``, freshly initialised by nnU-Net's code
    (deep supervision off; it adds no tensors)."""
    require_nnunetv2()
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(plan.plans)
    try:
        config = manager.get_configuration(plan.name)
        network: nn.Module = get_network_from_plans(
            config.network_arch_class_name, config.network_arch_init_kwargs,
            config.network_arch_init_kwargs_req_import, in_channels, num_outputs,
            allow_init=True, deep_supervision=False)
    except (ImportError, TypeError, ValueError, KeyError, AssertionError, RuntimeError) as err:
        raise PimpicError(f"{plan.describe()}: nnU-Net cannot build this network "
                          f"({type(err).__name__}: {' '.join(str(err).split())})") from None
    return network


class NnunetEncoder(nn.Module):
    """The encoder of an nnU-Net network as a pimpic backbone.

    Args:
        encoder: the network's ``encoder`` module (returns one feature map per stage).
        plan: the plans configuration it was built from.
        in_channels: image channels.

    ``forward(x (B, in_channels, D, H, W))`` → ``[f_1, …, f_S]``, ``f_s (B, features_per_stage[s],
    D/σ_s, H/σ_s, W/σ_s)`` with σ_s the cumulative stride of stage s (per axis).
    """

    def __init__(self, encoder: nn.Module, plan: NnunetPlan, in_channels: int) -> None:
        super().__init__()
        self.encoder = encoder
        encoder.return_skips = True  # type: ignore[assignment]
        self.levels = plan.levels()
        self.in_channels = in_channels
        self._arch = {
            "name": NNUNET, "in_channels": in_channels,
            "network_class_name": plan.network_class, "plans": plan.path.name,
            "plans_name": str(plan.plans.get("plans_name", "")),
            "dataset_name": str(plan.plans.get("dataset_name", "")),
            "configuration": plan.name,
            "strides": [list(level.stride) for level in self.levels],
            "widths": [level.width for level in self.levels],
        }

    def forward(self, x: Tensor) -> list[Tensor]:
        return list(self.encoder(x))

    def architecture(self) -> dict[str, Any]:
        """What an exported encoder's metadata records (the export checks tensors, not this)."""
        return dict(self._arch)


def build_encoder(plans: str | Path, configuration: str, in_channels: int = 1) -> NnunetEncoder:
    """The encoder nnU-Net builds from ``plans``/``configuration``, checked to offer the pyramid
    the pretext tasks need (:func:`pimpic.nnunet.plans.check_pyramid`)."""
    plan = load_plan(plans, configuration)
    check_pyramid(plan)
    network = build_network(plan, in_channels)
    return NnunetEncoder(network.encoder, plan, in_channels)  # type: ignore[arg-type]
