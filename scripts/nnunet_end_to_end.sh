#!/usr/bin/env bash
# The README's "Pretrain for nnU-Net" commands, run for real with nnU-Net's own CLI, on CPU.
#
#   scripts/nnunet_end_to_end.sh OUT
#
# On a tiny synthetic dataset it runs, in OUT (new or empty):
#   1. pimpic synth: E2E_CASES synthetic kidney CTs, copied into nnU-Net's raw layout
#      (raw/Dataset501_SynthKidney: imagesTr/<case>_0000.nii.gz, labelsTr/<case>.nii.gz,
#      dataset.json);
#   2. nnUNetv2_plan_and_preprocess -d 501 -c 3d_fullres --verify_dataset_integrity -np 1;
#   3. pimpic pretrain $P/nnUNetPlans_3d_fullres --set backbone=nnunet (E2E_STEPS steps of
#      E2E_PATCHES crops of E2E_PATCH voxels: an anisotropic box by default);
#   4. pimpic export nnunet (the plans' network, pretrained encoder, fresh decoder);
#   5. nnUNetv2_train 501 3d_fullres 0 -pretrained_weights ... -device cpu, stopped once its
#      first epoch has finished (nnU-Net's default trainer would run 1000);
#   6. checks: nnU-Net printed that it loaded the weights, and the network nnU-Net builds from
#      the plans holds every pretrained encoder tensor, bit for bit, after nnU-Net's own loader.
# nnUNet_raw, nnUNet_preprocessed and nnUNet_results point to OUT/raw, OUT/preprocessed and
# OUT/results; every command's output is in OUT/logs/<step>.log and the commands themselves in
# OUT/logs/commands.txt (with the pimpic commit). The pretraining run is OUT/runs/pimpic, the
# export OUT/pimpic_3d_fullres.pth.
#
# Settings (environment): E2E_CASES (6), E2E_STEPS (10), E2E_PATCH ([8,16,16]), E2E_PATCHES (8),
# E2E_TRAINER (nnUNetTrainer; -tr nnUNetTrainer_1epoch needs a torchvision that imports with
# your torch, see the README), E2E_TRAIN_MINUTES (stop nnU-Net this long after its first epoch
# started even if that epoch is not done; default: wait for it), nnUNet_n_proc_DA (0:
# augmentation in the main process).
# Needs pimpic with its nnunet extra (pip install -e ".[nnunet]") on PATH. Not part of the test
# suite. The cases are 30 x 30 x 15 voxels (6 x 6 x 8 mm), so that nnU-Net's plan is small; on a
# free 2-core CPU the whole script takes minutes, most of it nnU-Net's first epoch (250
# iterations).
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 OUT" >&2
    exit 2
fi
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
if [[ -n $(ls -A "$OUT") ]]; then
    echo "error: $OUT is not empty; give a new folder" >&2
    exit 2
fi
REPO=$(cd "$(dirname "$0")/.." && pwd)
CASES=${E2E_CASES:-6}
STEPS=${E2E_STEPS:-10}
PATCH=${E2E_PATCH:-[8,16,16]}
PATCHES=${E2E_PATCHES:-8}
TRAINER=${E2E_TRAINER:-nnUNetTrainer}
TRAIN_MINUTES=${E2E_TRAIN_MINUTES:-}
ID=501
NAME=Dataset${ID}_SynthKidney
export nnUNet_raw=$OUT/raw nnUNet_preprocessed=$OUT/preprocessed nnUNet_results=$OUT/results
export PYTHONUNBUFFERED=1  # nnU-Net's lines reach the log as they are printed
LOGS=$OUT/logs
mkdir -p "$LOGS" "$nnUNet_raw" "$nnUNet_preprocessed" "$nnUNet_results"
cd "$OUT"

commit=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
    commit="$commit (with uncommitted changes)"
fi
echo "# pimpic commit $commit, $(date -u +%Y-%m-%dT%H:%MZ), in $OUT" > "$LOGS/commands.txt"

# run STEP COMMAND...: the command into commands.txt, its output into logs/STEP.log
run() {
    local step=$1
    shift
    echo "$*" >> "$LOGS/commands.txt"
    echo "[$(date +%H:%M:%S)] $step: $*" >&2
    if ! "$@" > "$LOGS/$step.log" 2>&1; then
        tail -n 20 "$LOGS/$step.log" >&2
        echo "error: step $step failed (log: $LOGS/$step.log)" >&2
        exit 1
    fi
}

# 1. a tiny synthetic CT dataset in nnU-Net's raw format
run synth pimpic synth --out "$OUT/synth" --cases "$CASES" --task kidney --spacing 6,6,8 \
    --variability low --no-progress
run raw python - "$OUT/synth" "$nnUNet_raw/$NAME" <<'EOF'
import shutil
import sys
from pathlib import Path

from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
(dst / "imagesTr").mkdir(parents=True)
(dst / "labelsTr").mkdir()
cases = sorted(p.name[: -len(".nii.gz")] for p in (src / "imagesTr").glob("*.nii.gz"))
for case in cases:
    shutil.copy(src / "imagesTr" / f"{case}.nii.gz", dst / "imagesTr" / f"{case}_0000.nii.gz")
    shutil.copy(src / "labelsTr" / f"{case}.nii.gz", dst / "labelsTr" / f"{case}.nii.gz")
generate_dataset_json(str(dst), {0: "CT"}, {"background": 0, "kidney": 1, "tumour": 2},
                      len(cases), ".nii.gz", dataset_name=dst.name,
                      license="synthetic (pimpic synth)", converted_by="nnunet_end_to_end.sh")
print(f"{len(cases)} cases in {dst}")
EOF

# 2. nnU-Net plans and preprocesses it
run plan nnUNetv2_plan_and_preprocess -d "$ID" -c 3d_fullres --verify_dataset_integrity -np 1

# 3.–5. the README's three commands
P=$nnUNet_preprocessed/$NAME
run pretrain pimpic pretrain "$P/nnUNetPlans_3d_fullres" --out "$OUT/runs/pimpic" \
    --set backbone=nnunet --set "patch_size=$PATCH" --set "patches=$PATCHES" \
    --steps "$STEPS" --no-progress
run export pimpic export nnunet "$OUT/runs/pimpic" --plans "$P/nnUNetPlans.json" \
    --configuration 3d_fullres --out "$OUT/pimpic_3d_fullres.pth"

# nnUNet_n_proc_DA is the trainer's augmentation workers (nnU-Net's planner refuses 0)
train=(env "nnUNet_n_proc_DA=${nnUNet_n_proc_DA:-0}" nnUNetv2_train "$ID" 3d_fullres 0
       -tr "$TRAINER" -pretrained_weights "$OUT/pimpic_3d_fullres.pth" -device cpu)
echo "${train[*]}" >> "$LOGS/commands.txt"
echo "[$(date +%H:%M:%S)] train: ${train[*]} (stopped after its first epoch)" >&2
"${train[@]}" > "$LOGS/train.log" 2>&1 &
pid=$!
# nnU-Net logs "<time>: Epoch 1" when its second epoch starts (the first one is then done)
started=
while kill -0 "$pid" 2>/dev/null && ! grep -q ": Epoch 1$" "$LOGS/train.log"; do
    if [[ -z $started ]] && grep -q ": Epoch 0$" "$LOGS/train.log"; then
        started=$SECONDS
    fi
    if [[ -n $started && -n $TRAIN_MINUTES ]] && ((SECONDS - started > 60 * TRAIN_MINUTES)); then
        break
    fi
    sleep 10
done
if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    wait "$pid" || true
    if grep -q ": Epoch 1$" "$LOGS/train.log"; then
        echo "(stopped by nnunet_end_to_end.sh after the first epoch)" >> "$LOGS/train.log"
    else
        echo "(stopped by nnunet_end_to_end.sh $TRAIN_MINUTES min into the first epoch)" \
            >> "$LOGS/train.log"
    fi
elif ! wait "$pid"; then
    tail -n 20 "$LOGS/train.log" >&2
    echo "error: nnUNetv2_train failed (log: $LOGS/train.log)" >&2
    exit 1
fi

# 6. did nnU-Net load what pimpic pretrained?
grep -q "Loading pretrained weights from file" "$LOGS/train.log" || {
    echo "error: nnUNetv2_train did not print that it loaded the pretrained weights" >&2
    exit 1
}
grep -q ": Epoch 0$" "$LOGS/train.log" || {
    echo "error: nnUNetv2_train never started training (log: $LOGS/train.log)" >&2
    exit 1
}
run check python - "$P/nnUNetPlans.json" "$P/dataset.json" "$OUT/pimpic_3d_fullres.pth" \
    "$OUT/runs/pimpic" <<'EOF'
"""nnUNetTrainer.build_network_architecture's network, loaded by nnU-Net's own loader."""
import json
import sys
from pathlib import Path

import torch
from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from safetensors.torch import load_file

from pimpic.paths import ENCODER_FILE

plans, dataset_json, checkpoint, run = sys.argv[1:5]
manager = PlansManager(plans)
config = manager.get_configuration("3d_fullres")
heads = manager.get_label_manager(json.load(open(dataset_json))).num_segmentation_heads
torch.manual_seed(1)  # another initialisation than the export's
network = get_network_from_plans(config.network_arch_class_name,
                                 config.network_arch_init_kwargs,
                                 config.network_arch_init_kwargs_req_import, 1, heads,
                                 allow_init=True, deep_supervision=True)
load_pretrained_weights(network, checkpoint, verbose=False)
state = network.state_dict()
pretrained = load_file(str(Path(run) / ENCODER_FILE))
same = sum(torch.equal(state[k], v) for k, v in pretrained.items())
print(f"check: {same} of {len(pretrained)} pretrained encoder tensors are in the network "
      f"nnU-Net builds from the plans, bit for bit, after its loader")
sys.exit(0 if same == len(pretrained) else 1)
EOF
cat "$LOGS/check.log"
echo "done: logs in $LOGS" >&2
