"""The paper's evaluation (`python -m trl_justrl.evaluation`): avg@N on the nine benchmarks, graded by
`trl_justrl.grading` (plus CompassVerifier on request), compared with the paper's table.

Its problem sets (`problem_sets`), sampling backends (`sampling`) and in-training validation (`validation`) serve
training too; the offline run (`runner`, `cli`, `store`, `stats`, `table`, `protocols`, `compass`) builds on the
rest of the package, and nothing outside `trl_justrl.evaluation` imports it.
"""
