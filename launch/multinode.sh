#!/usr/bin/env bash
# Launch JustRL on a cluster without SLURM: run this script once on every node.
#
#   NNODES=5 NODE_RANK=<0..4> GPUS_PER_NODE=8 MASTER_ADDR=<node 0 address> TRAIN_MASTER_ADDR=<node 1 address> \
#       launch/multinode.sh [--dry-run] [--config R] [--accelerate-config C] [--no-resume] [-- extra train.py args]
#
# Node 0 runs the vLLM server on its first VLLM_GPUS GPUs (default: up to 4; 0 = vLLM colocated in training) at
# MASTER_ADDR:VLLM_PORT (8000); nodes 1.. train, with training machine rank 0 on node 1 (TRAIN_MASTER_ADDR,
# MASTER_PORT 29500). On a single node the first GPUs serve and the rest train. Other variables: VLLM_GPUS,
# VLLM_TENSOR_PARALLEL_SIZE, VLLM_DATA_PARALLEL_SIZE, VLLM_PORT, MASTER_PORT, RECIPE, ACCELERATE_CONFIG, PYTHON.
# --dry-run prints every node's commands without running anything. Training resumes from the newest whole checkpoint
# in the recipe's output_dir unless --no-resume is given. SIGTERM / SIGUSR1 / Ctrl-C: the training processes finish
# their optimizer update, save a checkpoint and exit; this script waits for them and exits 75 (relaunch to resume).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" -m trl_justrl.cluster.launcher multinode "$@"
