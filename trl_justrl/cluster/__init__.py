"""Cluster operations: the planner (`python -m trl_justrl.cluster.plan`), the launchers behind `launch/*.sh` and
`launch/slurm/train.slurm`, and `trl-justrl serve` (the recipe's vLLM server on this machine).

They build on the training core: `JustRLConfig`'s defaults and batch geometry, and the recipe reader of
`trl_justrl.train`.
"""
