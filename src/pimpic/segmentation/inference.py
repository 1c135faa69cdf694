"""Whole-volume inference (validation, evaluation, prediction).

Sliding-window inference (MONAI) with windows of the training patch size (overlap and blending
from the run's config; released: 0.5 and constant at test time), optionally restricted to the
body's bounding box (image > 0, as the released code's CropForeground), argmax, and an optional
largest-connected-component step (docs/method.md §6.2, §8).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from scipy import ndimage
from torch import nn

from pimpic.training.device import autocast, flush_denormals


def foreground_box(image: np.ndarray | torch.Tensor) -> tuple[slice, slice, slice]:
    """The bounding box of ``image > 0`` (the body after the HU window maps air to 0), as
    slices; the whole volume when nothing is above 0. MONAI's ``CropForeground`` rule."""
    mask = np.asarray(image) > 0
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        box.append(slice(int(idx[0]), int(idx[-1]) + 1) if idx.size else slice(None))
    return box[0], box[1], box[2]


@torch.no_grad()
def sliding_window_logits(
    model: nn.Module,
    image: np.ndarray | torch.Tensor,
    patch_size: int,
    *,
    overlap: float = 0.5,
    mode: str = "constant",
    sw_batch_size: int = 4,
    device: torch.device | None = None,
    amp: bool = True,
    cpu_bf16: bool = False,
) -> torch.Tensor:
    """Class logits of a whole volume.

    Args:
        model: network ``(B, 1, p, p, p) → (B, C, p, p, p)``; used in its current mode.
        image: ``(X, Y, Z)`` preprocessed volume (any float dtype).
        patch_size: window edge ``p`` in voxels; volumes smaller than ``p`` are padded by MONAI.
        overlap: fraction of window overlap (released: 0.25 validation, 0.5 test).
        mode: blending of overlapping windows, ``constant`` (released) or ``gaussian``.
        sw_batch_size: windows per forward pass.
        device: where the model runs (default: the model's device).
        amp: bf16 autocast on CUDA.
        cpu_bf16: bf16 autocast on CPU.

    Returns:
        ``(C, X, Y, Z)`` float32 logits on ``device``.
    """
    if device is None:
        device = next(model.parameters()).device
    x = torch.as_tensor(np.asarray(image, dtype=np.float32) if isinstance(image, np.ndarray)
                        else image.float())
    x = x.to(device)[None, None]
    with autocast(device, amp, cpu_bf16), flush_denormals(device):
        out = sliding_window_inference(
            x, roi_size=(patch_size,) * 3, sw_batch_size=sw_batch_size, predictor=model,
            overlap=overlap, mode=mode,
        )
    assert isinstance(out, torch.Tensor)
    return out[0].float()


def body_logits(model: nn.Module, image: np.ndarray, patch_size: int, *,
                crop_foreground: bool, **window: Any) -> tuple[tuple[slice, slice, slice],
                                                                torch.Tensor]:
    """Sliding-window logits of the body's bounding box (:func:`foreground_box`) — or of the
    whole volume without ``crop_foreground`` — and that box; ``window`` as for
    :func:`sliding_window_logits`. The one crop rule of validation, evaluation and prediction."""
    box = foreground_box(image) if crop_foreground else (slice(None),) * 3
    return box, sliding_window_logits(model, image[box], patch_size, **window)


def predict_labels(
    model: nn.Module,
    image: np.ndarray,
    patch_size: int,
    *,
    overlap: float = 0.5,
    mode: str = "constant",
    crop_foreground: bool = False,
    sw_batch_size: int = 4,
    device: torch.device | None = None,
    amp: bool = True,
    cpu_bf16: bool = False,
    lcc: bool = False,
    lcc_by_class: bool = False,
) -> np.ndarray:
    """Sliding-window logits → argmax → optional :func:`largest_component` (of the whole
    foreground, or with ``lcc_by_class`` of each class); ``(X, Y, Z)`` uint8.

    With ``crop_foreground`` the network sees only :func:`foreground_box` (as in training) and
    everything outside it is background.
    """
    box, logits = body_logits(model, image, patch_size, crop_foreground=crop_foreground,
                              overlap=overlap, mode=mode, sw_batch_size=sw_batch_size,
                              device=device, amp=amp, cpu_bf16=cpu_bf16)
    labels = np.zeros(np.shape(image), dtype=np.uint8)
    labels[box] = logits.argmax(0).to(torch.uint8).cpu().numpy()
    if not lcc:
        return labels
    return largest_component_by_class(labels) if lcc_by_class else largest_component(labels)


def largest_component_by_class(labels: np.ndarray) -> np.ndarray:
    """:func:`largest_component` of each class on its own: for a dataset of separate
    structures (organs at risk), where the whole foreground is several objects.

    ``(X, Y, Z)`` integer labels → same shape and dtype.
    """
    out: np.ndarray = labels.copy()
    for value in np.unique(labels):
        if value:
            out[(labels == value) & (largest_component(labels == value) == 0)] = 0
    return out


def largest_component(labels: np.ndarray) -> np.ndarray:
    """Keep only the largest 26-connected component of the whole foreground (labels > 0).

    The released code's post-processing was a no-op; here the whole organ (organ ∪ tumour) is
    reduced to its largest component and every foreground voxel outside it (a spurious blob,
    of organ or tumour) becomes background. The tumour is thereby restricted to the kept organ,
    while several tumours inside it survive. (``scipy.ndimage.label`` rather than MONAI's
    ``KeepLargestConnectedComponent``, which needs scikit-image, not a pimpic dependency.)

    ``(X, Y, Z)`` integer labels → same shape and dtype.
    """
    components, n = ndimage.label(labels > 0, structure=np.ones((3, 3, 3), bool))
    out: np.ndarray = labels.copy()
    if n <= 1:
        return out
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    out[components != int(sizes.argmax())] = 0
    return out
