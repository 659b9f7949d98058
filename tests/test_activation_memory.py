"""activation_memory: the estimate against the tensors autograd really keeps, and `gradient_checkpointing: auto`."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

from trl_justrl.policy_update import activation_memory as am


def saved_bytes(config, tokens: int, dtype: torch.dtype, checkpointing: bool) -> int:
    """Bytes of the distinct storages autograd saves in one training forward (weights excluded)."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").to(dtype).train()
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def keep(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    ids = torch.randint(0, config.vocab_size, (1, tokens))
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        model.model(input_ids=ids, use_cache=False)
    return sum(storages.values())


SHAPES = [
    Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=256),
    Qwen2Config(hidden_size=96, intermediate_size=384, num_hidden_layers=3, num_attention_heads=6,
                num_key_value_heads=2, vocab_size=256),
    LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=4, vocab_size=256),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("config", SHAPES, ids=["qwen2-64", "qwen2-96", "llama-128"])
def test_estimate_matches_what_autograd_keeps(config, dtype):
    tokens, size = 192, torch.finfo(dtype).bits // 8
    estimate = am.estimate_memory(config, tokens, dtype_bytes=size)
    full = saved_bytes(config, tokens, dtype, checkpointing=False)
    assert 0.85 * estimate.activations_full <= full <= 1.05 * estimate.activations_full
    # with recomputation the forward keeps the layers' inputs; the backward adds one layer's full set at a time
    kept = saved_bytes(config, tokens, dtype, checkpointing=True)
    layer = tokens * am.layer_bytes_per_token(config, size)
    assert 0.8 * (estimate.activations_recompute - layer) <= kept <= 1.05 * (estimate.activations_recompute - layer)
    assert estimate.activations_recompute < estimate.activations_full


QWEN2_15B = Qwen2Config(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True)


def test_the_paper_geometry_against_the_peaks_measured_on_an_h200():
    # float32 weights (TRL's default), bf16 autocast: 1.54B parameters x 16 bytes of states
    packed = am.estimate_memory(QWEN2_15B, 32768, dtype_bytes=2, weight_bytes=4)
    row = am.estimate_memory(QWEN2_15B, 15760, dtype_bytes=2, weight_bytes=4)
    assert 1.5e9 < packed.model_states / 16 < 1.6e9
    # issue 24's H200 runs, with recomputation: 32.5 GiB (rows of up to 15,760 tokens), 32.3 GiB (packs of 32,768)
    gib = 2**30
    assert 0.85 * 32.5 < row.peak(True) / gib < 1.1 * 32.5 and 0.85 * 32.3 < packed.peak(True) / gib < 1.1 * 32.3
    # without it: a row fits an H200 (141 GB) but not an H100 (80 GB); a 32K pack fits neither
    h100, h200 = 80 * 10**9, 141 * 10**9
    assert am.choose_checkpointing(row, h100) is True and am.choose_checkpointing(row, h200) is False
    assert am.choose_checkpointing(packed, h200) is True


def test_precision_follows_how_trl_loads_the_weights():
    from types import SimpleNamespace

    run = SimpleNamespace(model_init_kwargs=None, bf16=True, fp16=False)
    assert am.precision_bytes(run, QWEN2_15B) == (2, 4)  # TRL loads float32 by default; autocast computes in bf16
    run.model_init_kwargs = {"dtype": "bfloat16"}
    assert am.precision_bytes(run, QWEN2_15B) == (2, 2)
    run.model_init_kwargs, run.bf16 = {"dtype": "auto"}, False
    assert am.precision_bytes(run, Qwen2Config(dtype="bfloat16")) == (2, 2)
    assert am.precision_bytes(run, Qwen2Config(dtype="float32")) == (4, 4)


def test_setting_parses_booleans_and_auto():
    assert am.checkpointing_setting("auto") == "auto" and am.checkpointing_setting("False") is False
    assert am.checkpointing_setting(True) is True and am.checkpointing_setting("1") is True
    with pytest.raises(ValueError, match="true, false or auto"):
        am.checkpointing_setting("sometimes")


def test_recipe_and_command_line_take_auto(tmp_path):
    from trl_justrl.recipe_reader import parse_args

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"gradient_checkpointing: auto\nuse_cpu: true\nbf16: false\noutput_dir: {tmp_path / 'out'}\n")
    _, config, _ = parse_args(["--config", str(recipe)])
    assert config.gradient_checkpointing == "auto"
    _, config, _ = parse_args(["--config", str(recipe), "--gradient_checkpointing", "false"])
    assert config.gradient_checkpointing is False and config.activation_checkpointing is False
    _, config, _ = parse_args(["--config", str(recipe), "--no_gradient_checkpointing"])
    assert config.gradient_checkpointing is False
    _, config, _ = parse_args(["--config", str(recipe), "--gradient_checkpointing"])
    assert config.gradient_checkpointing is True


@pytest.mark.parametrize("memory, expected", [(10**12, False), (10**6, True)])
def test_trainer_resolves_auto_before_the_model_is_prepared(tiny_model_path, tmp_path, monkeypatch, caplog, memory,
                                                            expected):
    from conftest import tiny_config

    from trl_justrl import JustRLTrainer
    from trl_justrl.data import load_training_data

    monkeypatch.setattr(am, "device_memory", lambda device: memory)
    args = tiny_config(tmp_path / "out", gradient_checkpointing="auto")
    assert args.gradient_checkpointing == "auto"
    with caplog.at_level(logging.INFO, logger="trl_justrl.policy_update.activation_memory"):
        trainer = JustRLTrainer(model=str(tiny_model_path), reward_funcs=["test_length_parity"], args=args,
                                train_dataset=load_training_data("synthetic", synthetic_size=16))
    assert trainer.args.gradient_checkpointing is expected and trainer.args.activation_checkpointing is expected
    trainer.train()  # transformers turns recomputation on here, from the resolved setting
    assert trainer.model.is_activation_checkpointing is expected
    assert f"gradient_checkpointing: auto -> {str(expected).lower()}" in caplog.text


def test_a_loaded_model_counts_its_own_dtype_and_colocated_vllm_takes_its_share(tiny_model_path, tmp_path,
                                                                                  monkeypatch):
    from conftest import tiny_config

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.bfloat16)
    parameters = sum(p.numel() for p in model.parameters())
    args = tiny_config(tmp_path / "out", gradient_checkpointing="auto")
    tokens = am.micro_batch_tokens(args)
    half = am.estimate_memory(model.config, tokens, 2, 2, parameters).peak(False)  # bf16 weights and activations
    full = am.estimate_memory(model.config, tokens, 4, 4, parameters).peak(False)  # float32
    assert full > half
    device = (half + full) / 2 / am.HEADROOM  # room for the first only
    monkeypatch.setattr(am, "device_memory", lambda device_: int(device))
    assert am.resolve_auto_checkpointing(args, model.config, parameters, torch.bfloat16) is False
    assert args.gradient_checkpointing is False
    # counted as float32 weights (TRL's default) the same model no longer fits
    args.gradient_checkpointing = "auto"
    assert am.resolve_auto_checkpointing(args, model.config, parameters) is True
    # vLLM on the same device keeps 30% of it
    args.gradient_checkpointing, args.use_vllm, args.vllm_mode = "auto", True, "colocate"
    args.vllm_gpu_memory_utilization = 0.3
    monkeypatch.setattr(am, "device_memory", lambda device_: int(half / am.HEADROOM * 1.2))
    assert am.resolve_auto_checkpointing(args, model.config, parameters, torch.bfloat16) is True
