"""What a fine-tuning run records about itself: ``run.json`` (:class:`FinetuneRun`) and where
training stands in ``checkpoint.pt`` (:class:`Progress`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pimpic.data.labels import LabelSet, class_names
from pimpic.errors import PimpicError
from pimpic.training.run_folder import RunRecord


@dataclasses.dataclass
class FinetuneRun(RunRecord):
    """``run.json``: where the run came from (paths and times — what may differ between identical
    runs lives here, never in the model file), what a resume must still match (the cache
    manifest digest, the cases, the encoder digest) and how far it got."""

    WHAT = "a fine-tuning run"

    cache: str
    fraction: int
    #: the cache's preprocessing settings
    settings: dict[str, Any]
    cache_manifest_sha256: str
    train_cases: list[str]
    val_cases: list[str]
    encoder_sha256: str | None
    #: the encoder file it started from (None: from scratch) and that file's metadata
    encoder: str | None
    encoder_meta: dict[str, Any] | None
    patch_size: int
    num_classes: int
    architecture: dict[str, Any]
    best_epoch: int | None = None
    best_score: float | None = None
    epochs: int = 0
    steps: int = 0
    completed: bool = False
    stop_reason: str | None = None
    started: str = ""
    #: the SHA-256 of each training and validation case's input files (``Cache.input_sha256``):
    #: a resume after ``prepare`` redid a case with other inputs is refused
    case_inputs: dict[str, Any] | None = None
    #: the cache's labels (:meth:`pimpic.data.labels.LabelSet.to_json`; None: run made before
    #: labels were recorded)
    labels: dict[str, Any] | None = None
    #: its encoder was pretrained on the test patients' images (``--pool all``), accepted with
    #: ``--allow-transductive`` (:func:`pimpic.data.leakage.check_encoder_pool`)
    transductive: bool = False

    def label_set(self) -> LabelSet:
        """The labels it was trained on (a run made before labels were recorded: the set its
        class count implies, as its model file reads)."""
        return LabelSet.from_json(self.labels) if self.labels else class_names(self.num_classes)


@dataclasses.dataclass
class Progress:
    """Where a fine-tuning run stands; saved in ``checkpoint.pt`` as a plain dict."""

    epoch: int = 0
    step: int = 0
    best_score: float | None = None
    best_epoch: int | None = None
    #: training time over all sessions (s)
    elapsed_s: float = 0.0

    @classmethod
    def from_checkpoint(cls, path: Path, saved: Any) -> Progress:
        names = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(saved, dict) or not set(names) <= set(saved):
            raise PimpicError(f"{path}: not a fine-tuning checkpoint (its training state "
                              f"lacks {', '.join(sorted(names))})")
        return cls(**{k: saved[k] for k in names})
