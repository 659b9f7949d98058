"""In-training validation (the paper's Figure 1): through TRL's VLLMClient against a fake OpenAI-compatible server on
127.0.0.1, the script's math-verify grading, the logged `eval/<benchmark>/mean@<n>`, failures, the transformers
fallback, and the context the vLLM server must hold."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest

from trl_justrl.evaluation.sampling import SamplingSettings, problem_seed
from trl_justrl.evaluation.validation import (
    ServerSampler,
    ValidationCallback,
    ValidationFailed,
    grade_like_the_script,
    prompt_ids,
)

REPO = Path(__file__).resolve().parents[1]


def make_benchmark(root: Path) -> Path:
    """AIME24 with three addition problems (plain layout)."""
    (root / "AIME24").mkdir(parents=True)
    pd.DataFrame([{"id": f"p{i}", "problem": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(1, 4)]
                 ).to_parquet(root / "AIME24" / "test.parquet")
    return root


class FakeOpenAIServer:
    """Just what TRL's VLLMClient calls: /health, /v1/models and /v1/completions (token ids in and out). Each
    prompt's n samples answer its sum; the first `wrong` of them answer one more (graded wrong)."""

    def __init__(self, tokenizer, wrong: int = 1):
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _json(self, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):  # noqa: N802 (http.server's name)
                if self.path.startswith("/health"):
                    self.send_response(200)
                    self.end_headers()
                elif self.path == "/v1/models":
                    self._json({"data": [{"id": "fake-model"}]})
                else:
                    self.send_error(404)

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                choices = []
                for ids in body["prompt"]:
                    text = tokenizer.decode(ids)
                    a = int(text.rsplit("What is ", 1)[1].split(" + ")[0])
                    for k in range(body["n"]):
                        answer = 2 * a + (1 if k < wrong else 0)
                        completion = tokenizer.encode(f"So the sum is $\\boxed{{{answer}}}$.", add_special_tokens=False)
                        choices.append({"prompt_token_ids": ids, "token_ids": completion, "logprobs": None})
                self._json({"choices": choices})

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake_server(tokenizer):
    server = FakeOpenAIServer(tokenizer)
    yield server
    server.close()


@pytest.fixture
def vllm_client(fake_server, monkeypatch):
    """TRL's own client, pointed at the fake server (vLLM itself is not installed on CPU machines; the client only
    needs it for the weight-transfer path, which validation does not use)."""
    import trl.generation.vllm_client as vllm_client_module

    monkeypatch.setattr(vllm_client_module, "is_vllm_available", lambda: True)
    return vllm_client_module.VLLMClient(base_url=f"http://127.0.0.1:{fake_server.port}", connection_timeout=5)


def tiny_trainer(tmp_path, tiny_model_path, tiny_config, **overrides):
    from trl_justrl import JustRLTrainer
    from trl_justrl.data import load_training_data

    args = tiny_config(tmp_path / "run", **({"max_steps": 2, "logging_steps": 1, "eval_steps": 2, "prompts_per_step": 2,
                                             "prompts_per_update": 2} | overrides))
    return JustRLTrainer(model=str(tiny_model_path), reward_funcs=["dapo_strict"], args=args,
                         train_dataset=load_training_data("synthetic", synthetic_size=8))


def test_script_grading():
    assert grade_like_the_script("so $\\boxed{\\frac{1}{2}}$", "0.5")
    assert grade_like_the_script("the answer is $x = 4$.", "4")  # LaTeX anywhere, not only boxed
    assert not grade_like_the_script("\\boxed{5}", "4")
    assert not grade_like_the_script("the answer is 4", "4")  # no LaTeX: the project does not parse plain text
    assert not grade_like_the_script("\\boxed{__import__('os')}", "4")  # never evaluated, just wrong


def test_server_validation_requests_grading_and_metric(tmp_path, tiny_model_path, tiny_config, tokenizer,
                                                       fake_server, vllm_client):
    trainer = tiny_trainer(tmp_path, tiny_model_path, tiny_config)
    settings = SamplingSettings(max_new_tokens=64, temperature=0.7, top_p=0.9, seed=5)
    callback = ValidationCallback(trainer, ["AIME24"], n=4, data_dir=make_benchmark(tmp_path / "data"),
                                  settings=settings, sampler=ServerSampler(vllm_client, tokenizer))
    trainer.add_callback(callback)
    trainer.train()
    logged = [(h["step"], h["eval/AIME24/mean@4"]) for h in trainer.state.log_history if "eval/AIME24/mean@4" in h]
    assert logged == [(0, 75.0), (2, 75.0)]  # before training and at eval_steps; 3 of 4 samples right per problem
    assert len(fake_server.requests) == 6  # 3 problems x 2 validations, one request per problem
    problems = callback.problems["AIME24"]
    by_seed = {}
    for body in fake_server.requests:
        assert (body["n"], body["temperature"], body["top_p"], body["max_tokens"]) == (4, 0.7, 0.9, 64)
        assert body["model"] == "fake-model" and len(body["prompt"]) == 1
        by_seed[body["seed"]] = body["prompt"][0]
    assert set(by_seed) == {problem_seed(5, p.problem_id) for p in problems}  # per-problem seeds, stable
    for p in problems:  # the prompt is the evaluation prompt through the chat template, as token ids
        assert by_seed[problem_seed(5, p.problem_id)] == prompt_ids(tokenizer, p, settings)
    assert "Please reason step by step" in tokenizer.decode(by_seed[problem_seed(5, problems[0].problem_id)])


def test_the_validation_user_turn_is_the_released_scripts(tmp_path, tiny_model_path, tiny_config, tokenizer):
    """As the released script validated: the problem, a blank line, the suffix (its data loader appends it to the
    validation files as to the training data); the evaluation table's prompt keeps a space."""
    trainer = tiny_trainer(tmp_path, tiny_model_path, tiny_config)
    args = tiny_config(tmp_path / "v", validation_benchmarks=["AIME24"],
                       validation_data_dir=str(make_benchmark(tmp_path / "data")))
    callback = ValidationCallback.from_config(trainer, args)
    problem = callback.problems["AIME24"][0]
    turn = ("What is 1 + 1?\n\nPlease reason step by step, and put your final answer within \\boxed{}.")
    expected = tokenizer.apply_chat_template([{"role": "user", "content": turn}], add_generation_prompt=True,
                                             tokenize=True, return_dict=True)["input_ids"]
    assert problem.problem == "What is 1 + 1?" and prompt_ids(tokenizer, problem, callback.settings) == list(expected)
    assert ValidationCallback(trainer, ["AIME24"], data_dir=tmp_path / "data").settings.prompt_style == (
        "justrl-validation")


class BrokenSampler:
    def generate(self, problems, n, settings):
        raise ConnectionError("vLLM server at http://127.0.0.1:9 went away")


def test_a_failed_validation_is_loud_and_training_goes_on(tmp_path, tiny_model_path, tiny_config, caplog):
    trainer = tiny_trainer(tmp_path, tiny_model_path, tiny_config)
    callback = ValidationCallback(trainer, ["AIME24"], n=2, data_dir=make_benchmark(tmp_path / "data"),
                                  sampler=BrokenSampler())
    trainer.add_callback(callback)
    with caplog.at_level(logging.ERROR):
        trainer.train()
    assert trainer.state.global_step == 2 and callback.failures == 2
    assert "VALIDATION FAILED at step 0" in caplog.text and "went away" in caplog.text
    assert any(h.get("eval/validation_failures") == 2.0 for h in trainer.state.log_history)


def test_fail_fast_stops_the_run(tmp_path, tiny_model_path, tiny_config):
    trainer = tiny_trainer(tmp_path, tiny_model_path, tiny_config)
    trainer.add_callback(ValidationCallback(trainer, ["AIME24"], n=2, data_dir=make_benchmark(tmp_path / "data"),
                                            sampler=BrokenSampler(), fail_fast=True))
    with pytest.raises(ValidationFailed, match="ConnectionError: vLLM server at http://127.0.0.1:9 went away"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_config_turns_validation_on_with_the_transformers_fallback(tmp_path, tiny_model_path, tiny_config):
    trainer = tiny_trainer(tmp_path, tiny_model_path, tiny_config, validation_benchmarks=["AIME24"], validation_n=2,
                           validation_max_new_tokens=4, validation_data_dir=str(make_benchmark(tmp_path / "data")))
    callback = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, ValidationCallback))
    assert callback._mode() == "transformers" and callback.n == {"AIME24": 2}
    assert (callback.settings.temperature, callback.settings.top_p, callback.settings.max_new_tokens) == (0.7, 0.9, 4)
    trainer.train()
    logged = [h["step"] for h in trainer.state.log_history if "eval/AIME24/mean@2" in h]
    assert logged == [0, 2]
    with pytest.raises(ValueError, match="validation_n"):
        tiny_config(tmp_path, validation_n=0)


def test_the_server_context_covers_validation(tmp_path, tiny_config, capsys):
    from trl_justrl.cluster.plan import RecipeBatch
    from trl_justrl.cluster.serve import main as serve_main

    args = tiny_config(tmp_path, max_prompt_length=1024, max_completion_length=15360)
    assert args.vllm_context_needed == 16384
    args = tiny_config(tmp_path, max_prompt_length=1024, max_completion_length=15360, validation_benchmarks=["AIME24"])
    assert args.vllm_context_needed == 32768  # 1,024 + 31,744: the paper's validation cap
    paper = RecipeBatch.from_recipe(REPO / "launch/recipes/justrl_deepseek_1.5b.yaml")
    assert (paper.max_context, paper.server_context) == (16384, 32768)
    demo = RecipeBatch.from_recipe(REPO / "launch/recipes/demo_cpu.yaml")
    assert demo.server_context == demo.max_context == 1024 + 32
    assert serve_main(["--dry-run"]) == 0 and "--max-model-len 32768" in capsys.readouterr().out


class FakeLLM:
    """vllm.LLM's generate as TRL's colocated engine is called: token-id prompts, one SamplingParams each."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.calls: list[tuple[list, list]] = []
        self.awake: list[str] = []

    def generate(self, prompts, sampling_params, use_tqdm):
        from types import SimpleNamespace

        self.calls.append((prompts, sampling_params))
        outputs = []
        for prompt, params in zip(prompts, sampling_params, strict=True):
            a = int(self.tokenizer.decode(prompt["prompt_token_ids"]).rsplit("What is ", 1)[1].split(" + ")[0])
            ids = self.tokenizer.encode(f"$\\boxed{{{2 * a}}}$", add_special_tokens=False)
            outputs.append(SimpleNamespace(outputs=[SimpleNamespace(token_ids=ids) for _ in range(params["n"])]))
        return outputs

    def wake_up(self, tags):
        self.awake.append(f"wake {tags}")

    def sleep(self, level):
        self.awake.append(f"sleep {level}")


def test_colocated_validation_uses_the_trainers_engine(tmp_path, tiny_model_path, tiny_config, tokenizer,
                                                       monkeypatch):
    import sys
    from types import SimpleNamespace

    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(SamplingParams=lambda **kw: kw))  # no vLLM on CPU
    trainer = tiny_trainer(tmp_path, tiny_model_path, tiny_config)
    llm, synced = FakeLLM(tokenizer), []
    trainer.use_vllm, trainer.args.vllm_mode, trainer._last_loaded_step = True, "colocate", -1
    trainer.vllm_generation = SimpleNamespace(llm=llm, tensor_parallel_size=1, enable_sleep_mode=True,
                                              sync_weights=lambda: synced.append(True))
    settings = SamplingSettings(max_new_tokens=16, seed=1)
    callback = ValidationCallback(trainer, ["AIME24"], n=3, data_dir=make_benchmark(tmp_path / "data"),
                                  settings=settings)
    assert callback._mode() == "colocate"
    assert callback.validate() == {"eval/AIME24/mean@3": 100.0}
    assert synced == [True] and trainer._last_loaded_step == 0  # current weights first, once per step
    assert llm.awake == ["wake ['kv_cache']", "sleep 2"]  # woken for validation, back to sleep after
    (prompts, params), = llm.calls
    assert [p["seed"] for p in params] == [problem_seed(1, p.problem_id) for p in callback.problems["AIME24"]]
    assert all((p["n"], p["temperature"], p["top_p"], p["max_tokens"]) == (3, 0.7, 0.9, 16) for p in params)
    callback.validate()
    assert synced == [True]  # no new optimizer step: no second sync


class ScoresByStep:
    """A custom sampler whose every sample is right at the steps in `right_at` and wrong otherwise."""

    def __init__(self, trainer, right_at: set[int]):
        self.trainer, self.right_at = trainer, right_at

    def generate(self, problems, n, settings):
        from trl_justrl.evaluation.sampling import Sample

        right = self.trainer.state.global_step in self.right_at
        return [[Sample(p.problem_id, i, 0, f"$\\boxed{{{p.ground_truth if right else 'x'}}}$", 3, "stop")
                 for i in range(n)] for p in problems]


def test_the_best_validation_checkpoint_outlives_rotation(tmp_path, tiny_model_path, tiny_config, caplog):
    """Saves every step with save_total_limit 3: the newest two checkpoints and the best validated one are kept."""
    trainer = tiny_trainer(tmp_path, tiny_model_path, tiny_config, max_steps=5, eval_steps=1, save_strategy="steps",
                           save_steps=1, save_total_limit=3, save_every_rl_steps=None)
    trainer.add_callback(ValidationCallback(trainer, ["AIME24"], n=2, data_dir=make_benchmark(tmp_path / "data"),
                                            sampler=ScoresByStep(trainer, right_at={2}), on_start=False))
    with caplog.at_level(logging.INFO, logger="trl_justrl.reporting.budget"):
        trainer.train()
    out = Path(trainer.args.output_dir)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4", "checkpoint-5"]
    assert trainer.state.best_model_checkpoint == str(out / "checkpoint-2") and trainer.state.best_metric == 100.0
    assert "Disk: one checkpoint ~" in caplog.text and "at most 3 kept at once" in caplog.text


def test_the_planner_sizes_the_checkpoints(tmp_path):
    """From the model's config: a Qwen2 1.5B's 1.78B parameters at 14 bytes (bf16 weights, fp32 AdamW state)."""
    from transformers import Qwen2Config

    from trl_justrl.cluster.plan import make_plan

    model = tmp_path / "qwen"
    Qwen2Config(vocab_size=151936, hidden_size=1536, num_hidden_layers=28, intermediate_size=8960,
                num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=False).save_pretrained(model)
    recipe = tmp_path / "r.yaml"
    text = (REPO / "trl_justrl/recipes/justrl_deepseek_1.5b.yaml").read_text()
    recipe.write_text(text.replace("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", str(model)))
    disk = make_plan(5, 8, recipe=recipe).disk()
    assert disk["parameters"] == 1_777_030_656 and disk["checkpoint_bytes"] == 14 * 1_777_030_656
    assert (disk["saves"], disk["save_total_limit"], disk["kept"]) == (87, 3, 3)
