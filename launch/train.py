"""Train JustRL from a recipe.

    accelerate launch launch/train.py --config launch/recipes/justrl_deepseek_1.5b.yaml [--key value ...]
    torchrun --nproc_per_node 2 launch/train.py --config ...
    python launch/train.py --config launch/recipes/demo_cpu.yaml
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without `pip install -e .`

from trl_justrl.train import cli  # noqa: E402

if __name__ == "__main__":
    cli()
