"""The fine-tuning schema: :class:`FinetuneConfig`. Defaults reproduce the authors' released
recipe (docs/method.md §6.2); pimpic's own choices are named options."""

from __future__ import annotations

import dataclasses
import math
import typing

from pimpic.config import (
    AT_LEAST_1,
    NON_NEGATIVE,
    PERCENT,
    PROBABILITY,
    Range,
    check_ranges,
    ranged,
)


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Supervised fine-tuning (docs/method.md §6.2). Defaults = the authors' released recipe.

    Per step ``batch_size`` volumes × ``samples_per_volume`` label-balanced crops (2 × 16 = 32),
    an epoch = one pass over the labelled volumes, Dice loss, Adam 1e-5, light augmentation on
    the whole (foreground-cropped) volume before cropping, model selection and early stopping
    (patience 15 epochs) on the validation Dice loss. pimpic's own choices are named options.
    """

    fraction: int = ranged(100, PERCENT)
    seed: int = ranged(0, NON_NEGATIVE)
    #: network outputs; None: one per label value of the cache (its dataset's labels), which
    #: is what a run records. A number must agree with the labels (a check, not a choice)
    num_classes: int | None = ranged(None, Range(2, optional=True))
    # used only without an encoder (from scratch); otherwise the encoder's metadata decides
    width: int = ranged(32, AT_LEAST_1)
    depth: int = ranged(5, AT_LEAST_1)
    patch_size: int = ranged(64, AT_LEAST_1)
    #: ``released``: up-blocks 8K, 4K, 2K, K, K, align_corners=True, 1×1×1 head (21.3 M
    #: parameters at K = 32); ``symmetric``: up-blocks 16K … K, 3×3×3 head (47.1 M)
    decoder: typing.Literal["released", "symmetric"] = "released"
    loss: typing.Literal["dice", "dicece"] = "dice"
    #: Dice over the whole batch (one Dice per class over all crops, as nnU-Net's batch Dice)
    #: instead of one per crop: a structure absent from most crops (a tumour) is then not
    #: punished into never being predicted; not in the released recipe
    dice_batch: bool = False
    lr: float = ranged(1e-5, NON_NEGATIVE)
    #: the encoder's own learning rate (None: ``lr``), e.g. lower to keep pretrained features;
    #: the schedule scales both alike; not in the released recipe
    encoder_lr: float | None = ranged(None, Range(0, optional=True))
    lr_schedule: typing.Literal["constant", "cosine"] = "constant"
    weight_decay: float = ranged(0.0, NON_NEGATIVE)
    #: volumes per batch; each gives ``samples_per_volume`` label-balanced crops
    batch_size: int = ranged(2, AT_LEAST_1)
    samples_per_volume: int = ranged(16, AT_LEAST_1)
    #: positive : negative crop ratio (RandCropByPosNegLabeld)
    pos_ratio: float = ranged(1.0, NON_NEGATIVE)
    #: crop centres drawn per class (background, organ, tumour, …) in these proportions
    #: (MONAI ``RandCropByLabelClassesd``; a class absent from a volume is skipped there), as
    #: nnU-Net oversamples small foreground classes; None: ``pos_ratio`` crops on any foreground
    #: voxel (released)
    class_ratios: tuple[float, ...] | None = ranged(None, Range(0, optional=True))
    #: crop every volume (train, validation, test) to its body (image > 0) and draw negative
    #: crops inside it, as the released code; False: negative crops may be centred in air
    crop_foreground: bool = True
    #: an epoch = this many optimiser steps (None: one pass over the training cases)
    steps_per_epoch: int | None = ranged(None, Range(1, optional=True))
    #: the released code's epoch cap
    max_epochs: int = ranged(500, AT_LEAST_1)
    max_steps: int | None = ranged(None, Range(1, optional=True))
    patience: int = ranged(15, AT_LEAST_1)
    freeze_encoder_epochs: int = ranged(0, NON_NEGATIVE)
    val_criterion: typing.Literal["dice_loss", "dice"] = "dice_loss"
    val_every: int = ranged(1, AT_LEAST_1)
    #: the "Random + Aug" augmentation; ``aug_stage=volume`` applies it to the whole volume
    #: before cropping (released), ``patch`` to every crop
    augment: bool = True
    aug_stage: typing.Literal["volume", "patch"] = "volume"
    affine_prob: float = ranged(0.1, PROBABILITY)
    rotate_rad: float = ranged(0.1, Range(0, math.pi))
    scale: float = ranged(0.1, Range(0, 1, high_open=True))
    shift_vox: float = ranged(0.0, NON_NEGATIVE)
    noise_prob: float = ranged(0.2, PROBABILITY)
    noise_std: float = ranged(0.01, NON_NEGATIVE)
    #: nnU-Net-style intensity augmentation of every crop (brightness, contrast, gamma,
    #: low-resolution simulation): for cohorts that mix contrast phases; not in the paper
    intensity_aug: bool = False
    #: sliding window: validation overlap, test overlap (evaluation), blending
    val_sw_overlap: float = ranged(0.25, Range(0, 1, high_open=True))
    sw_overlap: float = ranged(0.5, Range(0, 1, high_open=True))
    sw_mode: typing.Literal["constant", "gaussian"] = "constant"
    sw_batch_size: int = ranged(4, AT_LEAST_1)
    device: str = "auto"
    #: bf16 autocast on CUDA
    amp: bool = True
    #: bf16 autocast on CPU as well: lower precision, not run-to-run reproducible and NaN-prone
    #: on some CPUs (docs/reproducibility.md), so off; faster only on some CPUs
    cpu_bf16: bool = False
    #: channels-last 3D memory layout for training and inference (≈2× faster on CPU; a layout,
    #: not a change of the computation)
    channels_last: bool = True
    num_workers: int = ranged(2, NON_NEGATIVE)
    log_every: int = ranged(10, AT_LEAST_1)

    def __post_init__(self) -> None:
        check_ranges(self)
        if (self.class_ratios is not None and self.num_classes is not None
                and len(self.class_ratios) != self.num_classes):
            raise ValueError(f"class_ratios: {len(self.class_ratios)} values for num_classes="
                             f"{self.num_classes} (one per class, background first)")
        if self.class_ratios is not None and not any(self.class_ratios):
            raise ValueError("class_ratios: all zero, so no class would ever be sampled; give "
                             "at least one class a positive ratio")
