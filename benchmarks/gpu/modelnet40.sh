#!/bin/bash
# GPU call 2 of 2, on the machine benchmarks/gpu/stage.sh left warm (its /tmp/stage):
#   bash benchmarks/gpu/modelnet40.sh TRAIN_SECONDS COMMIT      (with .gpu_b carried)
# Unpacks the ModelNet40 copy (parts A from /tmp/stage and B from .gpu_b) to /tmp/modelnet40-1024, chooses each
# model's epochs from call 1's step timings so that training fits TRAIN_SECONDS, trains the learned-canonicalized
# DGCNN and PointNet at the same time on the one GPU (benchmarks/modelnet40_gpu_{dgcnn,pointnet}.yaml) and puts
# results, checkpoints and logs under $OUT. (CONFIG_DIR and ACCELERATOR override the configs' folder and the
# accelerator, for a small smoke run of this script on a CPU.)
set -uo pipefail
OUT=${OUT:?set by the device tool}
seconds=${1:?training seconds}
export GEOCANON_COMMIT=${2:?commit of the working tree} PYTHONPATH=$PWD PYTHONUNBUFFERED=1 XDG_CACHE_HOME=/tmp/cache
test -f /tmp/stage/step_dgcnn.json || { echo "no /tmp/stage: this is a fresh machine, run benchmarks/gpu/stage.sh first"; exit 3; }
python3 benchmarks/gpu/modelnet40_transport.py unpack /tmp/modelnet40-1024 /tmp/stage/part_a .gpu_b || exit 4
# 9351 training shapes per epoch: the 9843 of the train split less the configs' 5% validation hold-out (492)
python3 benchmarks/gpu/calibrate.py plan "$seconds" 9351 /tmp/stage/step_*.json | tee /tmp/stage/epochs.env
source /tmp/stage/epochs.env
mkdir -p /tmp/bin
printf '#!/usr/bin/env python3\nimport sys\nfrom geocanon.cli import main\nsys.exit(main())\n' > /tmp/bin/geocanon
chmod +x /tmp/bin/geocanon
pids=()
for backbone in dgcnn pointnet; do
  epochs_var=${backbone^^}_EPOCHS
  /tmp/bin/geocanon bench shapes --config "${CONFIG_DIR:-benchmarks}/modelnet40_gpu_$backbone.yaml" --accelerator "${ACCELERATOR:-gpu}" \
    --max-epochs "${!epochs_var}" --max-time-s "$((seconds + 30))" --data-root /tmp/modelnet40-1024 --no-progress \
    > "$OUT/$backbone.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
tar czf "$OUT/results.tar.gz" benchmarks/results/modelnet40_gpu_* runs/modelnet40_gpu_*/*/logs runs/modelnet40_gpu_*/*/*.json
cp benchmarks/checkpoints/modelnet40_gpu_learned_*.pt "$OUT"/ || true
exit $status
