"""Same command, same seed — how equal are the results?

Fine-tunes one small network several times on one synthetic cache, each in a fresh process,
varying only what should not matter — the number of threads, PyTorch's deterministic-algorithm
switch, the ISA oneDNN may use — and prints, per variant, the largest weight difference to the
reference run and the final validation scores.

    python scripts/determinism_check.py --out /tmp/det            # ~3 min on 2 cores

Variants: ``ref`` (2 threads), ``again`` (the same, to show run-to-run equality), ``threads1``
(OMP/MKL threads 1), ``deterministic`` (``torch.use_deterministic_algorithms(True)``) and
``avx2`` (``ONEDNN_MAX_CPU_ISA=AVX2``: the kernels an older CPU would run).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from pimpic.io import read_jsonl
from pimpic.paths import METRICS, MODEL_FILE

VARIANTS = {
    "ref": ({"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}, False),
    "again": ({"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}, False),
    "threads1": ({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}, False),
    "deterministic": ({"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}, True),
    "avx2": ({"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
             False),
}

FINETUNE = ["--set", "width=4", "--set", "depth=4", "--set", "patch_size=32",
            "--set", "samples_per_volume=2", "--set", "lr=0.003", "--set", "loss=dicece",
            "--set", "steps_per_epoch=10", "--set", "max_epochs=2", "--set", "num_workers=0",
            "--set", "sw_batch_size=8", "--set", "affine_prob=1.0", "--set", "noise_prob=1.0"]

RUNNER = """
import sys, torch
if sys.argv[1] == "1":
    torch.use_deterministic_algorithms(True)
from pimpic.cli import main
sys.argv = ["pimpic", *sys.argv[2:]]
main()
"""


def _cache(out: Path) -> Path:
    from pimpic.data.cache import SPLITS
    from pimpic.data.prepare import prepare
    from pimpic.data.preprocess import Settings
    from pimpic.data.synthetic import generate_cohort

    cache = out / "cache"
    if not (cache / SPLITS).is_file():
        generate_cohort(out / "data", 10, task="pancreas", seed=0, shape=(160, 160, 36),
                        progress=False)
        prepare(out / "data", cache, settings=Settings(spacing=(3.0,) * 3), workers=2, seed=0,
                progress=False)
    return cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cache = _cache(args.out)
    import torch
    from safetensors.torch import load_file

    results = {}
    for name, (env, deterministic) in VARIANTS.items():
        run = args.out / name
        if not (run / MODEL_FILE).is_file():
            cmd = [sys.executable, "-c", RUNNER, "1" if deterministic else "0",
                   "finetune", str(cache), "--out", str(run), "--overwrite", "--no-progress",
                   *FINETUNE]
            subprocess.run(cmd, check=True, env={**os.environ, **env})
        weights = load_file(str(run / MODEL_FILE))
        rows = read_jsonl(run / METRICS)
        val = [r for r in rows if "val_dice" in r][-1]
        results[name] = (weights, val)
    ref = results["ref"][0]
    print(f"{'variant':<14} {'max |Δw|':>10} {'equal':>6} {'val Dice':>9} {'val Dice loss':>14}")
    for name, (weights, val) in results.items():
        diff = max(float((weights[k] - ref[k]).abs().max()) for k in ref)
        equal = all(torch.equal(weights[k], ref[k]) for k in ref)
        print(f"{name:<14} {diff:>10.3g} {equal!s:>6} {val['val_dice']:>9.4f} "
              f"{val['val_dice_loss']:>14.4f}")


if __name__ == "__main__":
    main()
