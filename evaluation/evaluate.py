"""Evaluate a model as a paper did, and compare it with the paper's table.

    python evaluation/evaluate.py --model <checkpoint or Hub id> [--protocol justrl|open-rs|own.yaml] [--n 4 ...]
    python evaluation/evaluate.py --help

The protocols (benchmarks, samples per problem, sampling, prompt, table) are the YAML files in evaluation/protocols.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without `pip install -e .`

from trl_justrl.evaluation.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="python evaluation/evaluate.py"))
