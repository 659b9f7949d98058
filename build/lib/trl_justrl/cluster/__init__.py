"""Cluster operations: the planner (`python -m trl_justrl.cluster.plan`), the launchers behind `launch/*.sh` and
`launch/slurm/train.slurm`, the `vllm serve` command, and the vLLM server checks the trainer runs.

`vllm_server` imports nothing of the project (the trainer uses it); `plan`, `launcher` and `serve` build on the
training core's `JustRLConfig` defaults and batch geometry.
"""
