"""Math answers and their grading: the last `\\boxed{}` of a response and a data row's ground truth (`answers`), the
rule-based grader (`grader`) and its helper processes (`processes`, `worker`).

Near the bottom of the package: it imports only `data_errors` (training rewards and evaluation both use it).
"""
