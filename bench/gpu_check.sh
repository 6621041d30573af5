#!/usr/bin/env bash
# Issue 24's GPU checks, prepared for one device-tool session (about 8 minutes on an H100/H200), from the repo root:
#
#   mkdir -p .ref && git -C /work/ref/stylegan3 archive HEAD | tar -x -C .ref --one-top-level=stylegan3
#   run(command="bash bench/gpu_check.sh", carry=[".ref/stylegan3"], timeout_s=560)
#
# .ref/ is git-ignored: the scratch copy of NVlabs/stylegan3 travels with the command, never in the repo.
# Imports models/ and torch only (the device machine has no Prefect or DVC). Each step has its own time limit,
# so one that fails or runs long leaves the others' JSON under $OUT.
set -u
OUT=${OUT:-bench/results/gpu}
REF=${REF:-.ref/stylegan3}
export PYTHONPATH=$PWD
mkdir -p "$OUT"
PY=${PY:-python}
{ nvidia-smi -L; $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"

# 1. The filtered leaky ReLU on every layer of full-width T and R at 256 (batch 4): ganflow's against its plain
#    form and NVIDIA's compiled op (max differences, time, peak memory). Compiles the reference's plugins (cached
#    in ~/.cache/torch_extensions for the steps below).
timeout 100 $PY bench/side_by_side.py --check-ops "$REF" --device cuda --out "$OUT/filtered_lrelu_ops.json" \
  > "$OUT/filtered_lrelu_ops.log" 2>&1; echo "ops check: rc $?"; tail -n 3 "$OUT/filtered_lrelu_ops.log"

# 2. NVIDIA's training step beside ganflow's at 256², batch 32: default mixed precision for the three networks
#    first (the figures), then fp32 with the time left.
side() {  # name, seconds, arguments
  local name=$1 limit=$2; shift 2
  timeout "$limit" $PY bench/train_step.py --device cuda --reference "$REF" --resolutions 256 --batch 32 --reps 1 \
    --out "$OUT/side_by_side_$name.json" "$@" > "$OUT/side_by_side_$name.log" 2>&1
  echo "$name: rc $?"; grep -E '^\{"arch"|Error|error' "$OUT/side_by_side_$name.log" | tail -n 4
}
side stylegan2-mixed 60 --arch stylegan2 --precision mixed
side stylegan3-t-mixed 70 --arch stylegan3-t --batch-gpu 16 --precision mixed
side stylegan3-r-mixed 90 --arch stylegan3-r --batch-gpu 8 --precision mixed
side stylegan2-fp32 50 --arch stylegan2 --precision fp32
side stylegan3-t-fp32 60 --arch stylegan3-t --batch-gpu 16 --precision fp32
side stylegan3-r-fp32 50 --arch stylegan3-r --batch-gpu 8 --precision fp32
