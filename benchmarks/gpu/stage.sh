#!/bin/bash
# GPU call 1 of 2 (see benchmarks/gpu/modelnet40.sh): keep part A of the carried ModelNet40 copy in /tmp/stage on the
# machine and time the training steps of both models while they share the GPU, as they will in call 2.
# Needs: the working tree with .gpu_a carried (benchmarks/gpu/modelnet40_transport.py pack ... .gpu_a .gpu_b).
set -euo pipefail
OUT=${OUT:?set by the device tool}
mkdir -p /tmp/stage/part_a
cp .gpu_a/modelnet40.* /tmp/stage/part_a/
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, e3nn, torch_geometric, lightning; print('torch', torch.__version__, 'e3nn', e3nn.__version__, 'pyg', torch_geometric.__version__, 'lightning', lightning.__version__)"
pids=()
for backbone in dgcnn pointnet; do
  python3 benchmarks/gpu/calibrate.py step "${CONFIG_DIR:-benchmarks}/modelnet40_gpu_$backbone.yaml" /tmp/stage/step_$backbone.json &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
cp /tmp/stage/step_*.json "$OUT"/
echo staged
