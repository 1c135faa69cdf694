"""The reference 3D U-Net (docs/method.md §3).

Encoder: ``depth`` blocks of widths ``K·2^l``; a block is three 3×3×3 convolutions, each
followed by InstanceNorm3d (no affine) and ReLU, and returns ``out1 + out3``. A MaxPool3d(2)
follows every block. The pre-pool block outputs are the feature pyramid ``f1..f5`` at
resolutions 1, 1/2, …, 1/16 of the patch; ``maxpool(f5)`` (1/32) feeds the decoder bottleneck.

The encoder's ``state_dict`` is the pretraining artifact; the decoder is always freshly
initialised for fine-tuning.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pimpic.models.backbone import Level, isotropic_levels, levels_of

#: the encoder's name in its weight file's metadata (its key in the backbone table)
UNET = "unet3d-encoder"
#: the most channels a level may declare (a corrupt or hostile file must not build a network
#: of terabytes; the paper's deepest level has 512)
MAX_WIDTH = 2**16


def _conv_in_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, kernel_size=3, padding=1, bias=True),
        nn.InstanceNorm3d(cout, affine=False),
        nn.ReLU(inplace=True),
    )


class ConvBlock(nn.Module):
    """Three conv–IN–ReLU layers with a skip from the first to the third: ``out1 + out3``.

    ``(B, cin, D, H, W) → (B, cout, D, H, W)``.
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = _conv_in_relu(cin, cout)
        self.conv2 = _conv_in_relu(cout, cout)
        self.conv3 = _conv_in_relu(cout, cout)

    def forward(self, x: Tensor) -> Tensor:
        out1: Tensor = self.conv1(x)
        out3: Tensor = self.conv3(self.conv2(out1))
        return out1 + out3


class Encoder(nn.Module):
    """3D U-Net encoder returning its feature pyramid.

    Args:
        in_channels: image channels (1 for CT).
        width: base width K (paper: 32); block ``l`` has ``K·2^l`` channels.
        depth: number of blocks (paper: 5).

    ``forward(x)`` with ``x (B, in_channels, D, H, W)``, D/H/W divisible by ``2^depth``, returns
    ``[f1, …, f_depth]`` with ``f_l (B, K·2^(l−1), D/2^(l−1), H/2^(l−1), W/2^(l−1))``.
    """

    def __init__(self, in_channels: int = 1, width: int = 32, depth: int = 5) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.width = width
        self.depth = depth
        widths = [width * 2**level for level in range(depth)]
        self.widths = widths
        cins = [in_channels, *widths[:-1]]
        self.blocks = nn.ModuleList(ConvBlock(ci, co) for ci, co in zip(cins, widths, strict=True))
        #: the pyramid's strides and widths (the backbone contract, :mod:`pimpic.models.backbone`)
        self.levels: tuple[Level, ...] = isotropic_levels(widths)

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            feats.append(x)
            if i < self.depth - 1:
                x = F.max_pool3d(x, 2)
        return feats

    def architecture(self) -> dict[str, object]:
        """The constructor arguments: what an exported encoder's metadata records."""
        return unet_architecture(self.in_channels, self.width, self.depth)

    @classmethod
    def from_architecture(cls, arch: Mapping[str, Any]) -> Encoder:
        """The encoder :meth:`architecture` describes.

        Raises:
            ValueError: ``in_channels``, ``width`` or ``depth`` is not a positive integer, or
                the deepest level would have more than :data:`MAX_WIDTH` channels.
        """
        values = [arch.get(k) for k in ("in_channels", "width", "depth")]
        ints = [v for v in values if isinstance(v, int) and not isinstance(v, bool) and v >= 1]
        if len(ints) != 3:
            raise ValueError("in_channels, width and depth must be positive integers")
        in_channels, width, depth = ints
        if depth > MAX_WIDTH.bit_length() or width * 2 ** (depth - 1) > MAX_WIDTH:
            raise ValueError(f"width {width} and depth {depth} give more than {MAX_WIDTH} "
                             "channels at the deepest level")
        return cls(in_channels, width, depth)


def unet_architecture(in_channels: int, width: int, depth: int) -> dict[str, object]:
    """The metadata that describes (and rebuilds) an :class:`Encoder`."""
    return {"name": UNET, "in_channels": in_channels, "width": width, "depth": depth}


#: decoder variants (docs/method.md §3): up-block widths as multiples of K, skip upsampling
#: with ``align_corners``, head kernel
DECODERS = {
    # the authors' released fine-tuning network: 8K, 4K, 2K, K, K; 3×3×3 head (padding 1)
    "released": {"up": (8, 4, 2, 1, 1), "align_corners": True, "head_kernel": 3},
    # mirror of the encoder: 16K, 8K, 4K, 2K, K; 3×3×3 head
    "symmetric": {"up": (16, 8, 4, 2, 1), "align_corners": False, "head_kernel": 3},
}


class Decoder(nn.Module):
    """Bottleneck at 1/2^depth, then ``depth`` up-blocks (trilinear ×2, concat skip, block).

    Args:
        widths: the encoder's level widths ``[K, 2K, …]``.
        num_classes: output channels.
        kind: a key of :data:`DECODERS` (``released``: 21,293,603 parameters at K = 32,
            depth 5, 3 classes; ``symmetric``: 47.1 M).
        head_kernel: the output convolution's kernel, where it is not the variant's (model
            files written before the released head became 3×3×3 have 1×1×1).

    ``forward(pyramid) → logits (B, num_classes, D, H, W)``.
    """

    def __init__(self, widths: list[int], num_classes: int, kind: str = "released",
                 head_kernel: int | None = None) -> None:
        super().__init__()
        if kind not in DECODERS:
            raise ValueError(f"decoder {kind!r} is not one of {', '.join(DECODERS)}")
        spec = DECODERS[kind]
        base, depth = widths[0], len(widths)
        # the up-block widths of a depth-5 network; shallower networks keep the last ``depth``
        outs = [base * m for m in spec["up"][-depth:]]  # type: ignore[index]
        top = widths[-1]
        self.bottleneck = _conv_in_relu(top, top)
        ups = []
        cin = top
        for skip, out in zip(reversed(widths), outs, strict=True):
            ups.append(ConvBlock(cin + skip, out))
            cin = out
        self.up_blocks = nn.ModuleList(ups)
        k = head_kernel or int(spec["head_kernel"])  # type: ignore[call-overload]
        self.head = nn.Conv3d(cin, num_classes, kernel_size=k, padding=k // 2)
        self.align_corners = bool(spec["align_corners"])
        self.kind = kind

    def forward(self, pyramid: list[Tensor]) -> Tensor:
        x = self.bottleneck(F.max_pool3d(pyramid[-1], 2))
        for block, skip in zip(self.up_blocks, reversed(pyramid), strict=True):
            x = F.interpolate(x, size=skip.shape[2:], mode="trilinear",
                              align_corners=self.align_corners)
            x = block(torch.cat([x, skip], dim=1))
        logits: Tensor = self.head(x)
        return logits


class SegmentationNet(nn.Module):
    """Encoder (a backbone, pretrained or random) + randomly initialised decoder.

    ``(B, in_channels, D, H, W) → logits (B, num_classes, D, H, W)``; spatial sizes must be
    divisible by twice the deepest level's stride (the bottleneck pools it once more; for the
    U-Net encoder: ``2^depth``).
    """

    def __init__(self, encoder: nn.Module, num_classes: int = 3, decoder: str = "released",
                 head_kernel: int | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        widths = [level.width for level in levels_of(encoder)]
        self.decoder = Decoder(widths, num_classes, decoder, head_kernel)
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.decoder(self.encoder(x))
        return logits
