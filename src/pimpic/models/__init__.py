"""Networks: the 3D U-Net encoder with its feature pyramid, the decoder, projection heads."""

from pimpic.models.heads import ProjectionHead
from pimpic.models.unet import ConvBlock, Decoder, Encoder, SegmentationNet

__all__ = ["ConvBlock", "Decoder", "Encoder", "ProjectionHead", "SegmentationNet"]
