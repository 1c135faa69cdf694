"""The reference 3D U-Net's shapes: the encoder's pyramid and the segmentation output."""

from __future__ import annotations

import pytest
import torch

from pimpic.models import Encoder, SegmentationNet
from pimpic.models.backbone import check_backbone
from pimpic.pretraining.backbones import build_encoder


@pytest.mark.parametrize(("width", "depth", "patch"), [(2, 3, 16), (2, 4, 16), (1, 5, 32)])
def test_encoder_pyramid_halves_the_grid_and_doubles_the_width(width: int, depth: int,
                                                               patch: int) -> None:
    enc = Encoder(1, width, depth)
    feats = enc(torch.zeros(2, 1, patch, patch, patch))
    assert enc.widths == [width * 2**level for level in range(depth)]
    assert [tuple(f.shape) for f in feats] == [
        (2, width * 2**level, *(patch // 2**level,) * 3) for level in range(depth)]


def test_encoder_takes_several_channels_and_describes_itself() -> None:
    enc = Encoder(3, 2, 3)
    assert enc(torch.zeros(1, 3, 8, 8, 8))[0].shape == (1, 2, 8, 8, 8)
    arch = enc.architecture()
    assert (arch["in_channels"], arch["width"], arch["depth"]) == (3, 2, 3)
    check_backbone(enc, (8, 16, 12))
    torch.manual_seed(0)
    again = build_encoder(arch)
    assert isinstance(again, Encoder) and again.architecture() == arch


@pytest.mark.parametrize("arch", [{"width": 0}, {"depth": 2.0}, {"in_channels": True},
                                  {"width": 2**15, "depth": 3}, {"depth": 10**18}])
def test_an_absurd_architecture_is_refused_before_building(arch: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Encoder.from_architecture({**Encoder(1, 2, 3).architecture(), **arch})


@pytest.mark.parametrize("decoder", ["released", "symmetric"])
@pytest.mark.parametrize(("depth", "patch"), [(3, 16), (4, 32)])
def test_segmentation_net_returns_class_logits_at_input_resolution(decoder: str, depth: int,
                                                                   patch: int) -> None:
    net = SegmentationNet(Encoder(1, 2, depth), num_classes=3, decoder=decoder)
    x = torch.randn(2, 1, patch, patch, patch)
    assert net(x).shape == (2, 3, patch, patch, patch)
    assert net.num_classes == 3 and net.decoder.kind == decoder


def test_unknown_decoder_is_refused() -> None:
    with pytest.raises(ValueError):
        SegmentationNet(Encoder(1, 2, 3), 3, "nope")
