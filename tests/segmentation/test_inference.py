"""Sliding-window inference: shapes, blending of overlapping windows, the body crop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pimpic.segmentation.inference import body_logits, predict_labels, sliding_window_logits


class Intensity(nn.Module):
    """Per-voxel logits ``(background, organ, tumour) = (0.5, x, 3x − 1.5)``: a model whose
    output at a voxel depends only on that voxel, so every window and blend must agree with it
    (x < 0.5 is background, 0.5 < x < 0.75 organ, x > 0.75 tumour)."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))  # gives the model a device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.full_like(x, 0.5), x, 3 * x - 1.5], dim=1) + self.dummy


@pytest.mark.parametrize("shape", [(20, 17, 9), (8, 8, 8), (5, 30, 6)])
@pytest.mark.parametrize("mode", ["constant", "gaussian"])
def test_windows_cover_the_volume_and_blend_to_the_pointwise_answer(shape, mode) -> None:
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    logits = sliding_window_logits(Intensity(), image, 8, overlap=0.5, mode=mode, amp=False)
    assert logits.shape == (3, *shape) and logits.dtype == torch.float32
    x = torch.from_numpy(image)
    torch.testing.assert_close(logits, torch.stack([torch.full_like(x, 0.5), x, 3 * x - 1.5]),
                               atol=1e-5, rtol=1e-5)


def test_labels_are_the_argmax_and_the_body_crop_leaves_air_background() -> None:
    image = np.zeros((24, 24, 12), np.float32)
    image[4:20, 6:18, 2:10] = 0.3  # body: background
    image[6:16, 8:16, 3:9] = 0.6  # organ
    image[8:12, 8:12, 4:8] = 0.9  # tumour
    labels = predict_labels(Intensity(), image, 8, amp=False)
    expected = np.zeros(image.shape, np.uint8)
    expected[6:16, 8:16, 3:9] = 1
    expected[8:12, 8:12, 4:8] = 2
    np.testing.assert_array_equal(labels, expected)
    box, cropped = body_logits(Intensity(), image, 8, crop_foreground=True, amp=False)
    assert box == (slice(4, 20), slice(6, 18), slice(2, 10))
    assert cropped.shape == (3, 16, 12, 8)
    with_crop = predict_labels(Intensity(), image, 8, crop_foreground=True, amp=False)
    np.testing.assert_array_equal(with_crop, labels)  # air is background either way
