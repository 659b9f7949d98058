"""Training data: load (Hub id, parquet / jsonl / json file or folder, or built-in `synthetic`), normalise the verl
and plain layouts to `prompt` (chat messages with the recipe's suffix or system prompt) + `ground_truth` (+ Open-RS's
`solution`), and drop prompts over the cap (`PromptLengthFilter`). Errors name the file, row and field.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from datasets import Dataset, IterableDataset, concatenate_datasets, load_dataset

from .data_errors import DataError, row_namer
from .grading.answers import row_ground_truth
from .prompts import PROMPT_SUFFIX as PROMPT_SUFFIX  # re-exported: the recipe's suffix
from .prompts import with_suffix

logger = logging.getLogger(__name__)

DEFAULT_DATASET = "BytedTsinghua-SIA/DAPO-Math-17k"  # RECIPE: training data
SYNTHETIC = "synthetic"

# DAPO-Math-17k wraps each problem in an "Answer:"-style instruction. RECIPE: the released script keeps it and appends
# the suffix after a blank line (the default here); `strip_dapo=True` removes it, a documented deviation.
DAPO_INSTRUCTION_PREFIX = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
)
DAPO_INSTRUCTION_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'

FILE_FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}


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


def normalize_row(
    row: dict[str, Any],
    *,
    where: str,
    strip_dapo: bool = False,
    suffix: bool = True,
    system_prompt: str | None = None,
) -> dict[str, Any]:
    """One row in either layout -> {"prompt": messages, "ground_truth": str} (+ "solution" when the row has one, as
    Open-RS's rewards read it); `where` names the row in errors.

    JustRL's prompt (the default): the last user turn gets the recipe suffix. Open-RS's (`suffix=False`,
    `system_prompt` set): the system prompt, then the turns as given, no suffix; a system turn the row already has is
    replaced by `system_prompt`."""
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
    messages[last]["content"] = with_suffix(content) if suffix else content
    if system_prompt is not None:
        messages = [{"role": "system", "content": system_prompt}] + [m for m in messages if m["role"] != "system"]
    out = {"prompt": messages, "ground_truth": row_ground_truth(row, where=where)}
    if "solution" in row:
        solution = row["solution"]
        if solution is not None and not isinstance(solution, str):
            raise DataError(f"{where}: field 'solution' must be text, got {type(solution).__name__}.")
        out["solution"] = solution
    return out


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def looks_local(source: str) -> bool:
    """Whether `source` names a local path rather than a Hub id: it starts like a path, has a data-file suffix, more
    than one '/', or a first component that exists here as a folder (`data/train` when ./data exists)."""
    path = Path(source)
    return (source.startswith((".", "/", "~")) or path.suffix in FILE_FORMATS or not HUB_ID.match(source)
            or (len(path.parts) > 1 and Path(path.parts[0]).is_dir()))


def _hidden(file: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in file.relative_to(root).parts)


def _read_parts(source: str, split: str, config: str | None = None) -> list[tuple[str, Dataset]]:
    """Raw rows of each file (or of the Hub data set), named so that errors can say where a row comes from."""
    path = Path(source).expanduser()
    if path.is_dir():
        candidates = sorted(p for p in path.rglob("*") if p.suffix in FILE_FORMATS and p.is_file())
        hidden = [p for p in candidates if _hidden(p, path)]
        if hidden:  # editor and notebook copies (.ipynb_checkpoints/, .cache/) are not training data
            logger.warning("%s: skipping %d file(s) in hidden folders or with hidden names (e.g. %s).", source,
                           len(hidden), hidden[0].relative_to(path))
        files = [p for p in candidates if not _hidden(p, path)]
        if not files:
            raise DataError(f"{source}: no .parquet, .jsonl or .json files in this folder.")
    elif path.is_file():
        if path.suffix not in FILE_FORMATS:
            raise DataError(f"{source}: unsupported file type {path.suffix!r}; use .parquet, .jsonl or .json.")
        files = [path]
    elif looks_local(source):
        raise DataError(f"{source}: no such file or folder (relative to {Path.cwd()}).")
    else:
        return [(source, load_dataset(source, config, split=split))]
    parts = []
    for file in files:
        if file.stat().st_size == 0:
            raise DataError(f"{file}: the file is empty.")
        try:
            parts.append((str(file), load_dataset(FILE_FORMATS[file.suffix], data_files=str(file), split="train")))
        except Exception as exc:  # datasets raises many types, some without a message
            where = first_bad_json_line(file) if file.suffix in (".jsonl", ".json") else None
            detail = where or f"{type(exc).__name__}: {exc}"
            raise DataError(f"{file}: could not be read as {file.suffix[1:]} ({detail})") from exc
    return parts


def first_bad_json_line(file: Path) -> str | None:
    """'line N: why' for the first line of a JSON-lines file that is not UTF-8 or not JSON (None if all parse)."""
    with file.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as err:
                return f"line {number}: not UTF-8 ({err.reason} at byte {err.start} of the line)"
            except ValueError as err:
                return f"line {number}: not JSON ({err}); a line cut short?"
    return None


def load_training_data(
    source: str = DEFAULT_DATASET,
    *,
    split: str = "train",
    strip_dapo: bool = False,
    suffix: bool = True,
    system_prompt: str | None = None,
    synthetic_size: int = 256,
    seed: int = 0,
    config: str | None = None,
) -> Dataset:
    """Load `source` and return rows with `prompt` (chat messages; see `normalize_row` for the suffix and the system
    prompt), `ground_truth` and, where the data has it, `solution`. `config`: a Hub data set's configuration."""
    if source == SYNTHETIC:
        parts = [(SYNTHETIC, synthetic_arithmetic(synthetic_size, seed=seed, suffix=suffix))]
    else:
        parts = _read_parts(source, split, config)
    normalised = []
    for name, raw in parts:
        where = row_namer(name)

        def convert(row: dict[str, Any], index: int, where: Callable[[int], str] = where) -> dict[str, Any]:
            out = normalize_row(row, where=where(index), strip_dapo=strip_dapo, suffix=suffix,
                                system_prompt=system_prompt)
            return out | {ROW_KEY: _row_key(out)}

        try:
            normalised.append(
                raw.map(convert, with_indices=True, remove_columns=raw.column_names, desc=f"Normalising {name}")
            )
        except UnicodeDecodeError as exc:  # the json reader keeps undecodable bytes; reading the row fails
            file = Path(name)
            where = first_bad_json_line(file) if file.suffix in (".jsonl", ".json") and file.is_file() else None
            raise DataError(f"{name}: could not be read as text ({where or exc})") from exc
    dataset = concatenate_datasets(normalised) if len(normalised) > 1 else normalised[0]
    if len(dataset) == 0:
        raise DataError(f"{source}: the data set is empty.")
    duplicates = len(dataset) - len(set(dataset.data.column(ROW_KEY).to_numpy().tolist()))
    dataset = dataset.remove_columns(ROW_KEY)
    logger.info("Loaded %d training prompts from %s (%d repeat an earlier row's prompt and answer; kept: "
                "DAPO-Math-17k stores each problem ~100 times on purpose)", len(dataset), source, duplicates)
    return dataset


ROW_KEY = "_row_key"  # a temporary column: a digest of the normalised row, to count duplicates


def _row_key(row: dict[str, Any]) -> int:
    """A 64-bit digest of a normalised row's turns and answer (cheap: 1.8M rows in a few seconds)."""
    text = "\x1f".join([f"{m['role']}\x1e{m['content']}" for m in row["prompt"]] + [row["ground_truth"]])
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big", signed=True)


class PromptLengthFilter:
    """Drop prompts longer than `max_prompt_length` tokens, measured the way TRL's GRPOTrainer renders them.

    The recipe never truncates a prompt: longer ones leave the data set (verl's `filter_overlong_prompts`). A plain
    string prompt (TRL's "standard" format) is tokenized as is, like `processing_class(text=prompts)`; a conversation
    goes through the chat template with the generation prompt (and `tools` / `chat_template`, as TRL passes them).
    Multimodal conversations (content parts rather than text) are kept unmeasured: their image tokens depend on the
    processor, so one warning says the cap is not enforced for them. `dropped` counts the prompts removed so far: all
    of them at once for a map-style `Dataset`, as the stream is read for an `IterableDataset` (filtered lazily).
    """

    def __init__(
        self,
        processing_class: Any,
        max_prompt_length: int | None,
        chat_template_kwargs: dict | None = None,
        *,
        tools: list | None = None,
        chat_template: str | None = None,
        batch_size: int = 256,
    ):
        self.processing_class = processing_class
        self.max_prompt_length = max_prompt_length
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.tools = tools or None  # TRL passes `tools or None` (an empty list renders tool boilerplate in Llama)
        self.chat_template = chat_template
        self.batch_size = batch_size
        self.dropped = 0
        self._warned_multimodal = False
        self._measured: dict[str, int | None] = {}  # prompt -> length: DAPO-Math-17k stores each problem ~100 times

    def lengths(self, prompts: list[Any]) -> list[int | None]:
        """Token count of each prompt as TRL renders it; None for a multimodal conversation (not measured). Each
        distinct prompt is measured once (the rows the model sees do not change)."""
        keys = [p if isinstance(p, str) else json.dumps(p, sort_keys=True, default=str) for p in prompts]
        todo: dict[str, Any] = {}
        for key, prompt in zip(keys, prompts, strict=True):
            if key not in self._measured and key not in todo:
                todo[key] = prompt
        if todo:
            self._measured.update(zip(todo, self._measure(list(todo.values())), strict=True))
        return [self._measured[key] for key in keys]

    def _measure(self, prompts: list[Any]) -> list[int | None]:
        lengths: list[int | None] = [None] * len(prompts)
        texts = [(i, p) for i, p in enumerate(prompts) if isinstance(p, str)]
        chats = [(i, p) for i, p in enumerate(prompts) if not isinstance(p, str) and _is_text_chat(p)]
        if texts:
            ids = self.processing_class(text=[p for _, p in texts])["input_ids"]
            for (i, _), row in zip(texts, ids, strict=True):
                lengths[i] = len(row)
        if chats:
            rendered = self.processing_class.apply_chat_template(
                conversation=[p for _, p in chats], tools=self.tools, chat_template=self.chat_template,
                add_generation_prompt=True, tokenize=True, return_dict=True, **self.chat_template_kwargs,
            )
            for (i, _), row in zip(chats, rendered["input_ids"], strict=True):
                lengths[i] = len(row)
        if len(texts) + len(chats) < len(prompts) and not self._warned_multimodal:
            logger.warning("Multimodal prompts are not length-filtered: max_prompt_length=%d is not enforced for them.",
                           self.max_prompt_length)
            self._warned_multimodal = True
        return lengths

    def _keep(self, batch: dict[str, list]) -> list[bool]:
        keep = [n is None or n <= self.max_prompt_length for n in self.lengths(batch["prompt"])]
        self.dropped += keep.count(False)
        return keep

    def apply(self, dataset: Dataset | IterableDataset, name: str = "training") -> Dataset | IterableDataset:
        """The data set without its long prompts (unchanged when `max_prompt_length` is None); `name` only labels the
        log lines."""
        if self.max_prompt_length is None:
            return dataset
        if isinstance(dataset, IterableDataset):
            return dataset.filter(self._keep, batched=True, batch_size=self.batch_size)
        if "prompt" not in dataset.column_names:
            return dataset  # TRL itself will say that the data set has no prompt column
        lengths: list[int | None] = []
        for start in range(0, len(dataset), self.batch_size):
            lengths += self.lengths(dataset[start : start + self.batch_size]["prompt"])
        keep = [i for i, n in enumerate(lengths) if n is None or n <= self.max_prompt_length]
        dropped = len(lengths) - len(keep)
        self.dropped += dropped
        if dropped:
            logger.warning("Dropped %d of %d %s prompts longer than max_prompt_length=%d tokens",
                           dropped, len(lengths), name, self.max_prompt_length)
        if not keep:
            measured = [n for n in lengths if n is not None]
            raise DataError(
                f"All {len(lengths)} {name} prompts are longer than max_prompt_length={self.max_prompt_length} "
                f"tokens (shortest: {min(measured)}); nothing is left to train on."
            )
        return dataset.select(keep) if dropped else dataset


def _is_text_chat(prompt: Any) -> bool:
    return isinstance(prompt, list) and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in prompt)


# ---- The built-in demo data ----------------------------------------------------------------------------------


# Operand ranges of the built-in data's difficulty tiers: one-digit sums (mostly right for a 135M model shown one
# worked example), a two-digit and a one-digit number (sometimes right), two two-digit numbers (rarely right). Mixed,
# they keep groups with both right and wrong answers while the policy improves: the learning signal lasts.
SYNTHETIC_TIERS = ((9, 9), (99, 9), (99, 99))


def synthetic_arithmetic(
    size: int = 256, *, seed: int = 0, tiers: tuple[tuple[int, int], ...] = SYNTHETIC_TIERS, suffix: bool = True
) -> Dataset:
    """Seeded addition problems of mixed difficulty with integer answers, in the verl layout, for the CPU demo.

    Row i comes from tier i mod len(tiers) (its two operands' maxima, from 1). Each prompt carries one worked example
    of its own tier as a previous chat turn (answer in `\\boxed{}`), so a 135M-parameter model boxes its answer often
    enough for the strict reward to see it. `tiers=((9, 9),)` gives single-digit sums only. `suffix=False` leaves the
    recipe suffix out of the example turn too (Open-RS's prompt layout).
    """
    if size < 1:
        raise DataError(f"synthetic: size must be positive, got {size}.")
    if not tiers or any(len(t) != 2 or min(t) < 1 for t in tiers):
        raise DataError(f"synthetic: tiers must be (max_a, max_b) pairs of positive integers, got {tiers!r}.")
    rng = random.Random(seed)
    rows = []
    for index in range(size):
        max_a, max_b = tiers[index % len(tiers)]
        x, y, a, b = rng.randint(1, max_a), rng.randint(1, max_b), rng.randint(1, max_a), rng.randint(1, max_b)
        example = [
            {"role": "user", "content": with_suffix(f"What is {x} + {y}?") if suffix else f"What is {x} + {y}?"},
            {"role": "assistant", "content": f"{x} + {y} = {x + y}. The answer is \\boxed{{{x + y}}}."},
        ]
        rows.append(
            {
                "prompt": example + [{"role": "user", "content": f"What is {a} + {b}?"}],
                "data_source": SYNTHETIC,
                "reward_model": {"ground_truth": str(a + b), "style": "rule"},
                "solution": f"{a} + {b} = {a + b}, so the answer is $\\boxed{{{a + b}}}$.",  # Open-RS's rewards
            }
        )
    return Dataset.from_list(rows)
