"""An extension is one class plus one registration line: a toy data source, layout, metric and
backbone, each defined here, registered with one line (``monkeypatch`` undoes it), and used as
far as pimpic takes it — pretraining on the source, ``prepare`` through the layout, the metric
in every evaluation output and ``results.csv``, fine-tuning and reloading the backbone. The
method registry has its own toy (``test_registry.py``)."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

import _pretrain_dummy as dummy
from _nifti import phantom, save
from pimpic.data import datasets
from pimpic.data.cache import Cache
from pimpic.data.labels import LabelSet, parse_labels
from pimpic.data.leakage import array_sha256
from pimpic.data.prepare import prepare
from pimpic.data.preprocess import Settings
from pimpic.data.sources import VolumeSource
from pimpic.errors import PimpicError
from pimpic.io import read_json, write_json
from pimpic.models.backbone import Backbone, Level, check_backbone
from pimpic.models.export import load_encoder, read_encoder_metadata, save_encoder
from pimpic.models.unet import SegmentationNet, unet_architecture
from pimpic.paths import cell_dir, eval_dir
from pimpic.pretraining import backbones, sources
from pimpic.pretraining.backbones import BackboneKind, build_encoder
from pimpic.pretraining.config import PretrainConfig
from pimpic.pretraining.engine import pretrain
from pimpic.pretraining.sources import SourceKind, open_source
from pimpic.protocol.grid import BASELINE, ExperimentConfig
from pimpic.protocol.results import collect_results, format_results_table, write_results_csv
from pimpic.protocol.statistics import paired_tests
from pimpic.segmentation import metrics
from pimpic.segmentation.config import FinetuneConfig
from pimpic.segmentation.evaluate import describe, evaluate
from pimpic.segmentation.finetune import finetune
from pimpic.segmentation.model_file import load_model, save_model

# --------------------------------------------------------------------------- a data source


class NpyFolder:
    """A toy source: ``<case>.npy`` volumes ``(D, H, W)`` beside ``volumes.json`` (spacing)."""

    MARKER = "volumes.json"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.manifest = read_json(self.root / self.MARKER)

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / cls.MARKER).is_file()

    @property
    def settings(self) -> dict[str, Any]:
        return {"spacing": self.manifest["spacing"], "window": None, "normalization": ["toy"]}

    @property
    def case_ids(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.npy"))

    def train_ids(self) -> list[str]:
        return self.case_ids

    def image(self, case_id: str) -> np.ndarray:
        image: np.ndarray = np.load(self.root / f"{case_id}.npy", mmap_mode="r")
        return image

    def case_hashes(self, case_id: str) -> dict[str, str | None]:
        return {"content": array_sha256(self.image(case_id)), "input": None}


def test_a_data_source_is_one_class_and_one_line(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "volumes"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        np.save(root / f"vol_{i}.npy", rng.random((20, 16, 16)).astype(np.float32))
    write_json(root / NpyFolder.MARKER, {"spacing": [2.0, 1.0, 1.0]})
    with pytest.raises(PimpicError, match="not a pimpic cache"):
        open_source(root)

    monkeypatch.setitem(sources.SOURCES, "npy-folder", SourceKind(NpyFolder.detect, NpyFolder))

    source = open_source(root)
    assert isinstance(source, NpyFolder) and isinstance(source, VolumeSource)
    dummy.install(monkeypatch)
    cfg = PretrainConfig(width=2, depth=3, patch_size=16, patches=2, steps=2, num_workers=0,
                         checkpoint_every=2, device="cpu")
    pretrain(root, tmp_path / "run", cfg, progress=False)
    meta = read_encoder_metadata(tmp_path / "run" / "encoder.safetensors")
    assert meta["pretrain_cases"] == ["vol_0", "vol_1", "vol_2"]
    assert meta["spacing"] == [2.0, 1.0, 1.0] and meta["window"] is None
    assert meta["normalization"] == ["toy"]
    assert meta["pretrain_hashes"]["vol_1"] == source.case_hashes("vol_1")
    assert read_json(tmp_path / "run" / "run.json")["case_ids"] == meta["pretrain_cases"]


# --------------------------------------------------------------------------------- a layout


class PairsLayout:
    """A toy layout: ``<case>_img.nii.gz`` beside ``<case>_seg.nii.gz``, and ``pairs.json``
    naming the label values."""

    MARKER = "pairs.json"

    def detect(self, root: Path) -> bool:
        return (root / self.MARKER).is_file()

    def read(self, root: Path) -> list[dict[str, Any]]:
        values = list(self.labels(root).values)
        return [{"id": img.name[: -len("_img.nii.gz")], "image": img,
                 "label": img.with_name(img.name.replace("_img", "_seg")),
                 "label_values": values} for img in root.glob("*_img.nii.gz")]

    def labels(self, root: Path) -> LabelSet:
        return parse_labels(read_json(root / self.MARKER), root / self.MARKER, by_name=False)


def test_a_layout_is_one_class_and_one_line(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "pairs"
    for i in range(4):
        image, label = phantom((12, 10, 8), i)
        affine = np.diag([1.5, 1.5, 3.0, 1.0])
        save(src / f"p{i}_img.nii.gz", image, affine)
        save(src / f"p{i}_seg.nii.gz", label, affine)
    (src / PairsLayout.MARKER).write_text(json.dumps({"0": "background", "1": "liver",
                                                      "2": "lesion"}))
    assert datasets.detect_layout(src) == "folder"  # unregistered: NIfTI files, no labels

    monkeypatch.setattr(datasets, "LAYOUTS", {"pairs": PairsLayout(), **datasets.LAYOUTS})

    report = prepare(src, tmp_path / "cache", Settings(spacing=(1.5, 1.5, 3.0)), workers=1,
                     progress=False)
    assert report["layout"] == "pairs" and report["n_cases"] == 4 and not report["bad"]
    cache = Cache(tmp_path / "cache")
    assert cache.case_ids == ["p0", "p1", "p2", "p3"]
    assert cache.require_labels().names() == "1 liver, 2 lesion"
    label = cache.label("p2")
    assert label is not None and set(np.unique(label)) == {0, 1, 2}
    assert sum(len(cache.split().part(k)) for k in ("train", "val", "test")) == 4


# --------------------------------------------------------------------------------- a metric


def precision(pred: np.ndarray, gt: np.ndarray, spacing: Any) -> float:
    """``|P ∩ G| / |P|`` of two boolean masks; NaN for an empty prediction."""
    n = int(np.count_nonzero(pred))
    return float(np.count_nonzero(pred & gt)) / n if n else float("nan")


def test_a_metric_is_one_entry_in_every_output(make_cache: Any, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(metrics.METRICS, "precision",
                        metrics.Metric(precision, "Precision", (">8.4f", "<6.4f")))

    root = make_cache(n_cases=6, shape=(16, 16, 16))
    cache = Cache(root)
    exp = tmp_path / "exp"
    run = cell_dir(exp, BASELINE, 100, 0)
    torch.manual_seed(0)
    model = SegmentationNet(build_encoder(unet_architecture(1, 2, 3)), 3)
    save_model(run / "model.safetensors", model, {"patch_size": 16, "settings": cache.settings})
    write_json(run / "run.json", {"cache": str(root), "train_cases": cache.train_ids(),
                                  "val_cases": list(cache.split().val)})
    summary = evaluate(run, progress=False)
    assert {"precision_mean", "precision_sd"} <= set(summary["structures"]["organ"])
    assert "Precision" in describe(summary)
    with open(eval_dir(run) / "per_case.csv") as fh:
        header = next(csv.reader(fh))
    assert header[-3:] == ["precision_organ", "precision_tumour", "precision_whole"]

    cfg = ExperimentConfig(cache=str(root), methods=(BASELINE,), fractions=(100,), seeds=(0,))
    rows = collect_results(exp, cfg)
    assert len(rows) == len(cache.split().test) and "precision_whole" in rows[0]
    write_results_csv(rows, exp / "results.csv")
    assert "precision_tumour" in (exp / "results.csv").read_text().splitlines()[0]
    # Table 1 and the paired tests stay about Dice, whatever else is scored
    assert "Dice (%)" in format_results_table(rows) and paired_tests(rows) == []


# ------------------------------------------------------------------------------- a backbone


class TwoLevels(nn.Module):
    """A toy backbone: a 3×3×3 convolution (stride 1), then one at stride 2 with twice the
    width; ``forward(x (B, C, D, H, W)) → [f1 (B, K, D, H, W), f2 (B, 2K, D/2, H/2, W/2)]``."""

    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        self.in_channels, self.width = in_channels, width
        self.levels = (Level((1, 1, 1), width), Level((2, 2, 2), 2 * width))
        self.stem = nn.Conv3d(in_channels, width, 3, padding=1)
        self.down = nn.Conv3d(width, 2 * width, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f1 = F.relu(self.stem(x))
        return [f1, F.relu(self.down(f1))]

    def architecture(self) -> dict[str, Any]:
        return {"name": "two-levels", "in_channels": self.in_channels, "width": self.width}

    @classmethod
    def from_architecture(cls, arch: Any) -> TwoLevels:
        return cls(int(arch["in_channels"]), int(arch["width"]))


def test_a_backbone_is_one_class_and_one_line(make_cache: Any, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    arch = {"name": "two-levels", "in_channels": 1, "width": 3}
    with pytest.raises(PimpicError, match="unknown backbone 'two-levels'"):
        build_encoder(arch)

    monkeypatch.setitem(backbones.BACKBONES, "two-levels",
                        BackboneKind("two-level encoder", TwoLevels.from_architecture))

    torch.manual_seed(0)
    encoder = build_encoder(arch)
    assert isinstance(encoder, TwoLevels) and isinstance(encoder, Backbone)
    check_backbone(encoder, (16, 8, 12))
    path = tmp_path / "encoder.safetensors"
    save_encoder(path, encoder, {"patch_size": 16, "spacing": [1.5] * 3,
                                 "window": [-200.0, 400.0], "method": "toy", "steps": 0})
    loaded, meta = load_encoder(path, build_encoder, {"in_channels": 1, "patch_size": 16})
    assert meta["architecture"] == arch
    assert all(torch.equal(a, b) for a, b in zip(encoder.state_dict().values(),
                                                  loaded.state_dict().values(), strict=True))

    # fine-tuned (lr 0: the kept model's encoder is exactly the export), saved and reloaded
    cache = make_cache(n_cases=5, shape=(16, 16, 16))
    cfg = FinetuneConfig(patch_size=16, batch_size=1, samples_per_volume=1, num_workers=0,
                         max_steps=2, lr=0.0, device="cpu")
    run = finetune(cache, tmp_path / "run", cfg, encoder=path, progress=False,
                   tensorboard=False)
    state = load_file(str(run / "model.safetensors"))
    for k, v in encoder.state_dict().items():
        assert torch.equal(state[f"encoder.{k}"], v)
    model, info = load_model(run)
    assert isinstance(model.encoder, TwoLevels) and info.architecture == arch
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 16, 16, 16)).shape == (1, 3, 16, 16, 16)
    wrong = dataclasses.replace(cfg, patch_size=18)  # the bottleneck pools level 2 once more
    with pytest.raises(PimpicError, match=r"patch_size 18 must be divisible by 2\^depth = 4"):
        finetune(cache, tmp_path / "r2", wrong, encoder=path, allow=["patch_size"],
                 progress=False)
