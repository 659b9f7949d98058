#!/usr/bin/env bash
# Serve a recipe's model with vLLM for TRL's server mode (weight transfer; context: the recipe's prompt + completion
# cap, or prompt + validation cap when it validates: 32,768 for the paper recipes).
#   CUDA_VISIBLE_DEVICES=0,1 launch/vllm_serve.sh --recipe launch/recipes/justrl_deepseek_1.5b.yaml \
#       --tensor-parallel-size 2 [--port 8000] [--gpu-memory-utilization 0.9] [--dry-run]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" -m trl_justrl.cluster.serve "$@"
