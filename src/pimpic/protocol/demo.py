"""``pimpic demo``: the whole story on built-in synthetic data, on a CPU, in minutes.

1. generate a synthetic abdominal CT cohort (:mod:`pimpic.data.synthetic`);
2. prepare it (cache + 70/10/20 split);
3. run an :class:`~pimpic.protocol.grid.ExperimentConfig` grid — pretrain PiMPiC on the
   training images (no labels), fine-tune from scratch (``random``) and from the PiMPiC encoder
   at a low label fraction and at 100 %, evaluate all on the test split (the same machinery as
   ``pimpic experiment``: no second pipeline);
4. draw the embedding figures of the pretrained encoder on one test case, print the Dice table
   and where the report is.

Every stage is resumable: rerunning the same command after an interruption picks up where it
stopped. The CPU configuration is the paper's method at a smaller width, depth and patch size,
with more aggressive learning rates for the few hundred steps a CPU affords (see
:func:`demo_config`); ``--device cuda`` runs a larger configuration.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import torch

from pimpic.data.cache import Cache
from pimpic.data.prepare import prepare
from pimpic.data.preprocess import Settings
from pimpic.data.synthetic import generate_cohort
from pimpic.errors import PimpicError
from pimpic.paths import FIGURES, REPORT, TABLE, pretrain_dir
from pimpic.pretraining.config import PretrainConfig, SamplerConfig
from pimpic.protocol.experiment import run_experiment
from pimpic.protocol.grid import BASELINE, ExperimentConfig
from pimpic.protocol.report import write_all
from pimpic.protocol.visualize import embedding_figures
from pimpic.segmentation.config import FinetuneConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DemoSize:
    """The knobs that make a demo fit its time budget."""

    cases: int
    #: synthetic case shape in voxels (None: the generator's default field of view)
    shape: tuple[int, int, int] | None
    #: preprocessing spacing in mm
    spacing: float
    pretrain_steps: int
    finetune_steps_per_epoch: int
    finetune_max_epochs: int
    patience: int
    low_fraction: int


SIZES = {
    # 800 fine-tuning steps of 2 × 4 crops, no early stop: on the realistic cohort a
    # from-scratch model's validation Dice stays 0 for the first ~300 steps and the tumour comes
    # later still (scripts/cohort_check.py)
    "full": DemoSize(cases=40, shape=None, spacing=2.0, pretrain_steps=500,
                     finetune_steps_per_epoch=25, finetune_max_epochs=32, patience=32,
                     low_fraction=5),
    "quick": DemoSize(cases=12, shape=(160, 160, 36), spacing=3.0, pretrain_steps=15,
                      finetune_steps_per_epoch=5, finetune_max_epochs=2, patience=2,
                      low_fraction=10),
    "gpu": DemoSize(cases=60, shape=None, spacing=1.5, pretrain_steps=3000,
                    finetune_steps_per_epoch=50, finetune_max_epochs=60, patience=15,
                    low_fraction=5),
}


def demo_config(size: DemoSize, cache: Path, device: str) -> ExperimentConfig:
    """The experiment grid of the demo: ``random`` vs ``pimpic`` at a low fraction and 100 %."""
    gpu = device.startswith("cuda")
    # CPU: a width-4, depth-4 U-Net on 32³ patches is what two cores train in minutes (a
    # fine-tuning step ≈ 0.35 s); the method, losses and protocol are the paper's.
    width, depth, patch = (16, 5, 64) if gpu else (4, 4, 32)
    pretrain = PretrainConfig(
        method="pimpic", width=width, depth=depth, patch_size=patch,
        patches=32 if gpu else 16, proj_dim=128 if gpu else 64,
        lr=1e-4 if gpu else 1e-3, steps=size.pretrain_steps, device=device,
        num_workers=2 if gpu else 1, checkpoint_every=max(50, size.pretrain_steps // 4),
        log_every=5, sampler=SamplerConfig(anchor="foreground", intensity_aug=True),
    )
    # the released fine-tuning protocol (decoder, body crop, whole-volume augmentation, model
    # selection on the validation Dice loss, sliding-window settings) with a CPU's budget: a
    # few hundred steps of 2 volumes × 4 crops, a higher learning rate than the paper's 1e-5,
    # 3:1 organ-centred crops, DiceCE, float32 (bf16 on CPU is not reproducible run to run,
    # docs/reproducibility.md) — identical for every method
    finetune = FinetuneConfig(
        width=width, depth=depth, patch_size=patch, lr=3e-4 if gpu else 3e-3,
        loss="dicece", pos_ratio=3.0, batch_size=2, samples_per_volume=4,
        steps_per_epoch=size.finetune_steps_per_epoch, max_epochs=size.finetune_max_epochs,
        patience=size.patience, val_every=1 if gpu else 4, sw_batch_size=16, device=device,
        num_workers=2 if gpu else 0,
    )
    return ExperimentConfig(
        cache=str(cache), methods=(BASELINE, "pimpic"),
        fractions=(size.low_fraction, 100), seeds=(0,),
        pretrain=pretrain, finetune=finetune,
    )


def run_demo(
    out: str | Path = "pimpic-demo",
    *,
    quick: bool = False,
    task: str = "kidney",
    device: str = "auto",
    seed: int = 0,
    cases: int | None = None,
    progress: bool = True,
) -> Path:
    """Run (or resume) the demo in ``out``; returns the experiment folder with the report.

    Progress goes to the log (the CLI shows it on stderr); the Dice table, where the report is
    and the wall time are printed on stdout."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PimpicError("--device cuda: no CUDA device is available here")
    size = SIZES["quick" if quick else ("gpu" if device.startswith("cuda") else "full")]
    if cases is not None:
        if cases < 10:
            raise PimpicError(f"--cases {cases}: the demo needs at least 10 cases")
        size = dataclasses.replace(size, cases=cases)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    log.info(f"[demo 1/4] synthetic {task} cohort: {size.cases} cases → {out / 'data'}")
    generate_cohort(out / "data", size.cases, task=task, seed=seed, shape=size.shape,
                    progress=progress)
    log.info(f"[demo 2/4] prepare: RAS, {size.spacing} mm, [-200, 400] HU → {out / 'cache'}")
    prepare(out / "data", out / "cache", settings=Settings(spacing=(size.spacing,) * 3),
            workers=2, seed=seed, progress=progress)
    log.info(f"[demo 3/4] experiment: pretrain PiMPiC ({size.pretrain_steps} steps), fine-tune "
         f"random vs pimpic at {size.low_fraction} % and 100 % labels, evaluate on the test split")
    cfg = demo_config(size, out / "cache", device)
    exp = run_experiment(cfg, out / "experiment", progress=progress, report=False)
    log.info("[demo 4/4] embedding figures of the pretrained encoder, report")
    _embedding_figures(exp, out / "cache")
    write_all(exp, cfg)
    elapsed = time.perf_counter() - t0
    table = (exp / TABLE).read_text()
    print(table)
    print(f"report: {exp / REPORT}  (figures in {exp / FIGURES})")
    print(f"demo wall time: {elapsed / 60:.1f} min")
    return exp


def _embedding_figures(exp: Path, cache_root: Path) -> None:
    cache = Cache(cache_root)
    case = cache.split().test[0]
    embedding_figures(pretrain_dir(exp, "pimpic"), case, cache=cache_root, out=exp / FIGURES,
                      stride=8)
