"""What training and evaluation share, at the bottom of the import graph (imports nothing else of the project).

- `answers`: boxed-answer extraction and ground truths in either data layout.
- `prompts`: the recipe's prompt suffix, as training and evaluation append it.
- `grading`: `grade_answer`, the math-verify grader behind the `robust_math` reward and the benchmark scores.
- `benchmarks`: the paper's nine evaluation sets and their loader.
- `sampling`: N samples per problem (transformers or vLLM), seeded per problem.
- `validation`: `ValidationCallback`, the in-training validation `launch/train.py` adds.
"""
