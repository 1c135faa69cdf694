#!/usr/bin/env bash
# GPU check of pretraining at the paper configuration (K=32, 64³ patches, N=32, bf16, Adam).
#
#   scripts/gpu_check.sh [--out DIR] [--steps N] [--dry-run]
#
# 1. makes a small synthetic cache (`pimpic synth` + `pimpic prepare`; random volumes if those
#    fail), 2. measures the loader, 3. pretrains for N steps (default 300) with bf16 autocast,
# 4. counts the encoder's FLOPs for one forward+backward (torch.utils.flop_counter) and times
# that alone, and 5. writes DIR/gpu_check.json: step time, patches/s, peak GPU memory, achieved
# encoder TFLOP/s and energy per step (NVML). Budget: ≤ 8 minutes on one H100.
# --dry-run: a tiny configuration on CPU (a minute) to check the script itself.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=gpu_check_out
STEPS=300
DRY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT="$2"; shift 2 ;;
        --steps) STEPS="$2"; shift 2 ;;
        --dry-run) DRY=1; shift ;;
        *) echo "usage: $0 [--out DIR] [--steps N] [--dry-run]" >&2; exit 2 ;;
    esac
done

PY=python
[ -x .venv/bin/python ] && PY=.venv/bin/python
PIMPIC=("$PY" -c "from pimpic.cli import main; main()")
if ! "$PY" -c "import pimpic" 2>/dev/null; then
    echo "gpu_check: pimpic is not importable with $PY (pip install -e . first)" >&2
    exit 1
fi
mkdir -p "$OUT"
if [ "$DRY" = 1 ]; then
    SHAPE=(--shape 96,96,40); CASES=4; STEPS=4; WORKERS=1
else
    SHAPE=(); CASES=6; WORKERS=$(( $(nproc) > 9 ? 8 : $(nproc) - 1 ))
fi

echo "== 1/4 synthetic cache ($CASES cases)"
CACHE="$OUT/cache"
if [ ! -f "$CACHE/manifest.json" ]; then
    if ! { timeout 240 "${PIMPIC[@]}" synth --out "$OUT/synth" --cases "$CASES" \
               "${SHAPE[@]}" --no-progress \
           && timeout 240 "${PIMPIC[@]}" prepare "$OUT/synth" --out "$CACHE" \
               --workers "$WORKERS" --no-progress; }; then
        echo "gpu_check: synth/prepare failed; using random volumes instead" >&2
        rm -rf "$CACHE"
        "$PY" - "$CACHE" "$CASES" <<'EOF'
import sys
from pathlib import Path

import numpy as np

from pimpic.data.cache import write_manifest
from pimpic.data.splits import make_splits
from pimpic.io import write_json

root, n = Path(sys.argv[1]), int(sys.argv[2])
ids = [f"rand_{i:03d}" for i in range(n)]
rng = np.random.default_rng(0)
for cid in ids:
    (root / "cases" / cid).mkdir(parents=True)
    np.save(root / "cases" / cid / "image.npy", rng.random((128, 128, 96), np.float32)
            .astype(np.float16))
    write_json(root / "cases" / cid / "meta.json", {"id": cid, "shape": [128, 128, 96]})
write_manifest(root, {"spacing": [1.5, 1.5, 1.5], "window": [-200.0, 400.0]}, ids,
               source="random", layout="random")
write_json(root / "splits.json", make_splits(ids, seed=0))
EOF
    fi
fi

echo "== 2/4 loader"
if [ "$DRY" = 1 ]; then
    LOADER_ARGS=(--patch-size 32 --patches 4 --seconds 2 --workers 1)
else
    LOADER_ARGS=(--patch-size 64 --patches 32 --seconds 10 --workers "$WORKERS")
fi
timeout 120 "${PIMPIC[@]}" bench loader "$CACHE" "${LOADER_ARGS[@]}" | tail -n 1 \
    > "$OUT/loader.json" || echo '{"error": "loader benchmark failed"}' > "$OUT/loader.json"
cat "$OUT/loader.json"

echo "== 3/4 pretraining ($STEPS steps) and 4/4 FLOPs"
timeout 420 "$PY" - "$CACHE" "$OUT" "$STEPS" "$DRY" "$WORKERS" <<'EOF'
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from pimpic.pretraining.config import PretrainConfig
from pimpic.pretraining.engine import pretrain
from pimpic.io import read_json, read_jsonl, write_json
from pimpic.models import Encoder
from pimpic.paths import ENERGY, METRICS

cache, out, steps, dry, workers = (Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]),
                                   sys.argv[4] == "1", int(sys.argv[5]))
cuda = torch.cuda.is_available() and not dry
if not cuda and not dry:
    sys.exit("gpu_check: no CUDA GPU visible (use --dry-run to test the script on CPU)")
if dry:  # tiny, on CPU: checks the plumbing, not the numbers
    cfg = PretrainConfig(width=4, patch_size=32, patches=4, proj_dim=16, steps=steps,
                         log_every=1, checkpoint_every=steps, num_workers=workers, device="cpu")
else:  # the paper configuration: K=32, d=128, 64³, N=32, Adam 1e-5, bf16
    cfg = PretrainConfig(steps=steps, log_every=10, checkpoint_every=steps,
                         num_workers=workers, device="cuda", amp=True)
run = out / "run"
if cuda:
    torch.cuda.reset_peak_memory_stats()
t0 = time.perf_counter()
pretrain(cache, run, cfg, overwrite=True, progress=False)
wall = time.perf_counter() - t0
peak_mb = torch.cuda.max_memory_allocated() / 2**20 if cuda else None

rows = read_jsonl(run / METRICS)
per_step = cfg.patches * cfg.volumes
steady = rows[1:] or rows  # the first window holds start-up (workers, cuDNN autotuning)
step_s = statistics.median(per_step / r["patches_per_s"] for r in steady)
energy = read_json(run / ENERGY)

# Encoder FLOPs of one forward+backward on a step's batch (N patches), then its own speed.
device = torch.device("cuda" if cuda else "cpu")
enc = Encoder(cfg.in_channels, cfg.width, cfg.depth).to(device)
x = torch.rand(per_step, 1, *(cfg.patch_size,) * 3, device=device)
amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu",
                                                                              enabled=False)


def fwd_bwd() -> None:
    with amp:
        feats = enc(x)
    sum(f.float().mean() for f in feats).backward()


from torch.utils.flop_counter import FlopCounterMode

with FlopCounterMode(display=False) as counter:
    fwd_bwd()
flops = counter.get_total_flops()
for _ in range(3):
    fwd_bwd()
if cuda:
    torch.cuda.synchronize()
reps = 20 if cuda else 2
t = time.perf_counter()
for _ in range(reps):
    fwd_bwd()
if cuda:
    torch.cuda.synchronize()
enc_s = (time.perf_counter() - t) / reps

summary = {
    "device": torch.cuda.get_device_name(0) if cuda else "cpu (dry run)",
    "torch": torch.__version__,
    "config": {"width": cfg.width, "depth": cfg.depth, "patch_size": cfg.patch_size,
               "patches": cfg.patches, "volumes": cfg.volumes, "amp_bf16": cfg.amp and cuda,
               "steps": cfg.steps, "num_workers": cfg.num_workers},
    "median_step_s": step_s,
    "patches_per_s": per_step / step_s,
    "wall_s": wall,
    "peak_gpu_mb": peak_mb,
    "encoder_gflop_per_step_fwd_bwd": flops / 1e9,
    "encoder_tflops_in_training": flops / step_s / 1e12,
    "encoder_only_step_s": enc_s,
    "encoder_only_tflops": flops / enc_s / 1e12,
    "energy_source": energy["source"],
    "energy_note": energy["note"],
    "joules_per_step": energy["joules"] / cfg.steps,
    "joules_total": energy["joules"],
    "loss_first": rows[0]["loss"],
    "loss_last": rows[-1]["loss"],
    "loader": json.loads((out / "loader.json").read_text() or "{}"),
}
write_json(out / "gpu_check.json", summary)
print(json.dumps(summary, indent=2))
EOF
echo "summary: $OUT/gpu_check.json"
