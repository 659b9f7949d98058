"""The paper's evaluation (`python -m trl_justrl.evaluation`): avg@N on the nine benchmarks, graded by
`trl_justrl.grading` (plus CompassVerifier on request), compared with the paper's table.

Built on the rest of the package; nothing outside `trl_justrl.evaluation` imports it.
"""
