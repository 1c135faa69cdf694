"""The fine-tuned model file: ``model.safetensors``, the ``SegmentationNet`` state dict with JSON
metadata in the header (``architecture``, ``num_classes``, ``decoder``, ``patch_size``,
preprocessing ``settings``, the dataset's ``labels`` (class ``c`` is label value ``c``), the
``inference`` settings it was validated with, ...). Its bytes depend only on what identical runs
share: paths and times live in ``run.json``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import load_file

from pimpic import __version__
from pimpic.data.labels import LabelSet, class_names
from pimpic.errors import PimpicError
from pimpic.io import read_json, save_safetensors
from pimpic.models.backbone import architecture_of
from pimpic.models.unet import SegmentationNet
from pimpic.paths import MODEL_FILE, RUN_INFO
from pimpic.pretraining.backbones import build_encoder
from pimpic.training.device import memory_format
from pimpic.training.guard import check_weights

MODEL_FORMAT = "pimpic-segmentation"


def save_model(path: str | Path, model: SegmentationNet, meta: dict[str, Any]) -> None:
    """Write the network's ``state_dict`` as safetensors with JSON metadata, atomically."""
    full = {"architecture": architecture_of(model.encoder), "num_classes": model.num_classes,
            "decoder": model.decoder.kind, "pimpic_version": __version__, **meta}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_safetensors(state, path, {"format": MODEL_FORMAT, "pimpic": json.dumps(full)})


@dataclass(frozen=True)
class InferenceSettings:
    """How a model infers: the settings it was validated with (files written before these were
    recorded: overlap 0.5, Gaussian blending, no body crop, fp32, contiguous layout)."""

    overlap: float = 0.5
    mode: str = "gaussian"
    crop_foreground: bool = False
    cpu_bf16: bool = False
    channels_last: bool = False

    @classmethod
    def from_meta(cls, saved: Mapping[str, Any] | None) -> InferenceSettings:
        saved = saved or {}
        return cls(overlap=float(saved.get("overlap", 0.5)),
                   mode=str(saved.get("mode", "gaussian")),
                   crop_foreground=bool(saved.get("crop_foreground", False)),
                   cpu_bf16=bool(saved.get("cpu_bf16", False)),
                   channels_last=bool(saved.get("channels_last", False)))

    def window(self) -> dict[str, Any]:
        """Keyword arguments of :func:`~pimpic.segmentation.inference.predict_labels`."""
        return {"overlap": self.overlap, "mode": self.mode,
                "crop_foreground": self.crop_foreground, "cpu_bf16": self.cpu_bf16}


@dataclass(frozen=True)
class ModelInfo:
    """What a fine-tuned model says about itself (its file's metadata) and where it came from
    (its run's ``run.json``, when there is one)."""

    #: the encoder's ``architecture()`` (:mod:`pimpic.models.backbone`; the U-Net's
    #: ``in_channels``, ``width``, ``depth``, ...)
    architecture: dict[str, Any]
    num_classes: int
    patch_size: int
    #: the preprocessing settings of its cache (``spacing``, ``window``, ...)
    settings: dict[str, Any]
    inference: InferenceSettings
    #: the labels it was trained on (a file written before labels were recorded: the organ +
    #: tumour view for 3 classes, ``label_<c>`` otherwise)
    labels: LabelSet
    #: the run's cache folder (None: no run.json, or it names none)
    cache: str | None = None
    #: cases it was fine-tuned on, and cases its encoder was pretrained on
    train_cases: tuple[str, ...] = ()
    pretrain_cases: tuple[str, ...] = ()
    #: what its encoder records about its pool (``pretrain_cases``, ``pretrain_hashes``,
    #: ``pretrain_pool``)
    pretrain_pool: Mapping[str, Any] = field(default_factory=dict)
    #: ``run.json``'s ``completed`` (None: no run.json, or it does not say) and progress
    completed: bool | None = None
    epochs: int | None = None

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], run: Mapping[str, Any]) -> ModelInfo:
        """``run`` (``run.json``) wins over ``meta`` (the model file) where both say something."""
        both = {**meta, **run}
        encoder = run.get("encoder_meta") or {}
        num_classes = int(both["num_classes"])
        saved = meta.get("labels") or run.get("labels")
        labels = LabelSet.from_json(saved) if saved else class_names(num_classes)
        return cls(architecture=dict(both["architecture"]),
                   num_classes=num_classes, patch_size=int(both["patch_size"]),
                   settings=dict(both.get("settings") or {}),
                   inference=InferenceSettings.from_meta(meta.get("inference")),
                   labels=labels,
                   cache=str(run["cache"]) if run.get("cache") else None,
                   train_cases=tuple(run.get("train_cases") or ()),
                   pretrain_cases=tuple(encoder.get("pretrain_cases") or ()),
                   pretrain_pool={k: encoder[k] for k in ("pretrain_cases", "pretrain_hashes",
                                                          "pretrain_pool") if k in encoder},
                   completed=bool(run["completed"]) if "completed" in run else None,
                   epochs=int(run["epochs"]) if isinstance(run.get("epochs"), int) else None)


def load_model(run_dir: str | Path) -> tuple[SegmentationNet, ModelInfo]:
    """The best fine-tuned network of ``run_dir`` (eval mode, CPU, in the memory layout it was
    validated in) and what it says about itself."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PimpicError(f"{run_dir}: run folder does not exist")
    path = run_dir / MODEL_FILE
    if not path.is_file():
        raise PimpicError(f"{run_dir}: no {MODEL_FILE} — not a fine-tuning run, or it has "
                          "not finished its first epoch (`pimpic finetune ... --resume`)")
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
        meta = json.loads(header["pimpic"]) if header.get("format") == MODEL_FORMAT else None
        state = load_file(str(path))
    except Exception as err:
        raise PimpicError(f"{path}: corrupt model file ({err})") from None
    if meta is None:
        raise PimpicError(f"{path}: not a pimpic segmentation model")
    check_weights(path, state)
    head = state.get("decoder.head.weight")
    try:
        model = SegmentationNet(build_encoder(meta["architecture"]), int(meta["num_classes"]),
                                # files written before the released decoder existed
                                str(meta.get("decoder", "symmetric")),
                                # files written before the released head became 3×3×3
                                head_kernel=None if head is None else int(head.shape[-1]))
    except (ValueError, TypeError, KeyError) as err:
        raise PimpicError(f"{path}: {err}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise PimpicError(f"{path}: weights do not fit the architecture ({err})") from None
    run = read_json(run_dir / RUN_INFO) if (run_dir / RUN_INFO).is_file() else {}
    info = ModelInfo.from_meta(meta, run if isinstance(run, dict) else {})
    # infer in the layout the model was validated in (moving it to a device keeps the layout)
    layout = memory_format(info.inference.channels_last)
    return model.to(memory_format=layout).eval(), info  # type: ignore[call-overload]
