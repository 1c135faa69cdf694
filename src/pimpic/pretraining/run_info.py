"""What a pretraining run records about itself: ``run.json`` (:class:`PretrainRun`)."""

from __future__ import annotations

import dataclasses
from typing import Any

from pimpic.training.run_folder import RunRecord


@dataclasses.dataclass
class PretrainRun(RunRecord):
    """``run.json``: where the run came from and what a resume must still match (the cache
    manifest digest, the pool's case ids and their image files)."""

    WHAT = "a pretraining run"

    #: the cache (or nnU-Net preprocessed folder) pretrained on
    cache: str
    method: str
    #: processes of the latest session
    world_size: int
    cache_manifest_sha256: str
    case_ids: list[str]
    #: the image SHA-256 of each pool case (a pimpic cache; None: another source, or a run made
    #: before they were recorded): a resume after ``prepare`` redid a case is refused
    case_inputs: dict[str, Any] | None = None
    #: the cache's pool it read (``train``, ``train+unlabelled``, ``all``; None: cases named by
    #: the caller, e.g. every case of a separate pool)
    pretrain_pool: str | None = "train"
    #: the step each resumed session started from (not written until the run is resumed)
    resumed_from: list[int] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = super().to_json()
        if not self.resumed_from:
            del data["resumed_from"]
        return data
