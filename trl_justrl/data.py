"""Training data: load, normalise to one layout, append the recipe's prompt suffix, filter long prompts.

Sources: a Hub id (default DAPO-Math-17k), a local parquet / jsonl / json file, a folder of such files, or
`synthetic` (a built-in, seeded set of integer-answer problems for the CPU demo; no network). Two row layouts are
accepted: verl (`prompt` chat messages + `reward_model.ground_truth`) and plain (`problem` / `answer`). Every row
comes out as `prompt` (chat messages whose last user turn ends with the suffix) and `ground_truth` (a string).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

from datasets import Dataset, concatenate_datasets, load_dataset

from .rewards import BOX_OPENER, last_boxed_content

logger = logging.getLogger(__name__)

DEFAULT_DATASET = "BytedTsinghua-SIA/DAPO-Math-17k"  # RECIPE: training data
PROMPT_SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."  # RECIPE: prompt suffix
TRAIN_SUFFIX_SEPARATOR = "\n\n"  # RECIPE: the training data path appends the suffix after a blank line
SYNTHETIC = "synthetic"

# DAPO-Math-17k wraps each problem in an "Answer:"-style instruction; the recipe's user turn is the bare problem
# followed by PROMPT_SUFFIX, so the wrapper is removed when present.
DAPO_INSTRUCTION_PREFIX = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
)
DAPO_INSTRUCTION_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'

FILE_FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}


class DataError(ValueError):
    """A training-data problem, with the source, row and field it concerns."""


def with_suffix(problem: str, separator: str = TRAIN_SUFFIX_SEPARATOR) -> str:
    """The recipe's user turn: the problem text, the separator, then PROMPT_SUFFIX (never appended twice)."""
    problem = problem.rstrip()
    if problem.endswith(PROMPT_SUFFIX):
        return problem
    return f"{problem}{separator}{PROMPT_SUFFIX}"


def strip_dapo_instruction(text: str) -> str:
    """Remove DAPO-Math-17k's "Answer:" instruction wrapper, leaving the bare problem text."""
    if text.startswith(DAPO_INSTRUCTION_PREFIX):
        text = text[len(DAPO_INSTRUCTION_PREFIX) :]
    if text.endswith(DAPO_INSTRUCTION_SUFFIX):
        text = text[: -len(DAPO_INSTRUCTION_SUFFIX)]
    return text


def _is_messages(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in value)
    )


def normalize_row(row: dict[str, Any], *, where: str, strip_dapo: bool = True) -> dict[str, Any]:
    """One row in either layout -> {"prompt": messages, "ground_truth": str}; `where` names the row in errors."""
    if "prompt" in row and row["prompt"] is not None:
        field, prompt = "prompt", row["prompt"]
    elif "problem" in row and row["problem"] is not None:
        field, prompt = "problem", row["problem"]
    else:
        raise DataError(f"{where}: no prompt (expected a 'prompt' or 'problem' field; got {sorted(row)}).")

    if isinstance(prompt, str):
        if not prompt.strip():
            raise DataError(f"{where}: field '{field}' is empty.")
        messages = [{"role": "user", "content": prompt}]
    elif _is_messages(prompt):
        messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
    else:
        raise DataError(
            f"{where}: field '{field}' must be text or a list of chat messages with 'role' and 'content', "
            f"got {type(prompt).__name__}."
        )
    user_turns = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if not user_turns:
        raise DataError(f"{where}: field '{field}' has no user message.")
    last = user_turns[-1]
    content = strip_dapo_instruction(messages[last]["content"]) if strip_dapo else messages[last]["content"]
    messages[last]["content"] = with_suffix(content)
    return {"prompt": messages, "ground_truth": row_ground_truth(row, where=where)}


def row_ground_truth(row: dict[str, Any], *, where: str) -> str:
    """The answer of a row in either layout (verl `reward_model.ground_truth`, plain `answer`), unboxed."""
    reward_model = row.get("reward_model")
    if isinstance(reward_model, dict) and "ground_truth" in reward_model:
        field, truth = "reward_model.ground_truth", reward_model["ground_truth"]
    elif "answer" in row:
        field, truth = "answer", row["answer"]
    elif "ground_truth" in row:
        field, truth = "ground_truth", row["ground_truth"]
    else:
        raise DataError(f"{where}: no answer (expected 'reward_model.ground_truth' or 'answer'; got {sorted(row)}).")
    if truth is None or (isinstance(truth, str) and not truth.strip()):
        raise DataError(f"{where}: field '{field}' is missing or empty.")
    if isinstance(truth, float) and truth.is_integer():
        truth = int(truth)  # parquet may store integer answers as floats
    return unbox_ground_truth(str(truth).strip())


def unbox_ground_truth(truth: str) -> str:
    """`\\boxed{204}` -> `204` when the whole ground truth is one box (some released sets store it so)."""
    if truth.startswith(BOX_OPENER) and last_boxed_content(truth) == truth[len(BOX_OPENER) : -1]:
        return truth[len(BOX_OPENER) : -1]
    return truth


def _read_parts(source: str, split: str) -> list[tuple[str, Dataset]]:
    """Raw rows of each file (or of the Hub data set), named so that errors can say where a row comes from."""
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in FILE_FORMATS)
        if not files:
            raise DataError(f"{source}: no .parquet, .jsonl or .json files in this folder.")
    elif path.is_file():
        if path.suffix not in FILE_FORMATS:
            raise DataError(f"{source}: unsupported file type {path.suffix!r}; use .parquet, .jsonl or .json.")
        files = [path]
    elif source.startswith((".", "/", "~")) or path.suffix in FILE_FORMATS:
        raise DataError(f"{source}: no such file or folder.")
    else:
        return [(source, load_dataset(source, split=split))]
    parts = []
    for file in files:
        if file.stat().st_size == 0:
            raise DataError(f"{file}: the file is empty.")
        try:
            parts.append((str(file), load_dataset(FILE_FORMATS[file.suffix], data_files=str(file), split="train")))
        except Exception as exc:  # datasets raises many types, some without a message
            raise DataError(f"{file}: could not be read as {file.suffix[1:]} ({type(exc).__name__}: {exc})") from exc
    return parts


def load_training_data(
    source: str = DEFAULT_DATASET,
    *,
    split: str = "train",
    strip_dapo: bool = True,
    synthetic_size: int = 256,
    seed: int = 0,
) -> Dataset:
    """Load `source` and return rows with `prompt` (messages ending with the suffix) and `ground_truth`."""
    if source == SYNTHETIC:
        parts = [(SYNTHETIC, synthetic_arithmetic(synthetic_size, seed=seed))]
    else:
        parts = _read_parts(source, split)
    normalised = []
    for name, raw in parts:

        def convert(row: dict[str, Any], index: int, name: str = name) -> dict[str, Any]:
            return normalize_row(row, where=f"{name}: row {index}", strip_dapo=strip_dapo)

        normalised.append(
            raw.map(convert, with_indices=True, remove_columns=raw.column_names, desc=f"Normalising {name}")
        )
    dataset = concatenate_datasets(normalised) if len(normalised) > 1 else normalised[0]
    if len(dataset) == 0:
        raise DataError(f"{source}: the data set is empty.")
    logger.info("Loaded %d training prompts from %s", len(dataset), source)
    return dataset


def prompt_lengths(dataset: Dataset, tokenizer: Any, chat_template_kwargs: dict | None = None) -> list[int]:
    """Token count of each prompt after the chat template with the generation prompt (as TRL renders it)."""
    kwargs = chat_template_kwargs or {}

    def measure(batch: dict[str, list]) -> dict[str, list[int]]:
        ids = [
            tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=False, **kwargs)
            for m in batch["prompt"]
        ]
        return {"_prompt_length": [len(x) for x in ids]}

    measured = dataset.map(measure, batched=True, batch_size=256, desc="Measuring prompt lengths")
    return list(measured["_prompt_length"])


def filter_long_prompts(
    dataset: Dataset, tokenizer: Any, max_prompt_length: int, chat_template_kwargs: dict | None = None
) -> tuple[Dataset, int]:
    """Drop prompts over `max_prompt_length` tokens (the recipe never truncates); return the rest and the count."""
    lengths = prompt_lengths(dataset, tokenizer, chat_template_kwargs)
    keep = [i for i, n in enumerate(lengths) if n <= max_prompt_length]
    dropped = len(lengths) - len(keep)
    if dropped:
        logger.warning(
            "Dropped %d of %d prompts longer than max_prompt_length=%d tokens", dropped, len(lengths), max_prompt_length
        )
    if not keep:
        raise DataError(
            f"All {len(lengths)} prompts are longer than max_prompt_length={max_prompt_length} tokens "
            f"(shortest: {min(lengths)}); nothing is left to train on."
        )
    return (dataset.select(keep) if dropped else dataset), dropped


# ---- The built-in demo data ----------------------------------------------------------------------------------


def synthetic_arithmetic(size: int = 256, *, seed: int = 0, max_operand: int = 9) -> Dataset:
    """Seeded single-digit addition problems with integer answers, in the verl layout, for the CPU demo.

    Each prompt carries one worked example as a previous chat turn (answer in `\\boxed{}`): a 135M-parameter model
    then boxes its answer often enough, and is right often enough, that rewards vary within groups from step one.
    """
    if size < 1:
        raise DataError(f"synthetic: size must be positive, got {size}.")
    rng = random.Random(seed)
    rows = []
    for _ in range(size):
        a, b, x, y = (rng.randint(1, max_operand) for _ in range(4))
        example = [
            {"role": "user", "content": with_suffix(f"What is {x} + {y}?")},
            {"role": "assistant", "content": f"{x} + {y} = {x + y}. The answer is \\boxed{{{x + y}}}."},
        ]
        rows.append(
            {
                "prompt": example + [{"role": "user", "content": f"What is {a} + {b}?"}],
                "data_source": SYNTHETIC,
                "reward_model": {"ground_truth": str(a + b), "style": "rule"},
            }
        )
    return Dataset.from_list(rows)
