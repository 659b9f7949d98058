"""The embedded default model resolves to a plain, trainable checkpoint; other names pass through."""

from __future__ import annotations

import json

import pytest

from trl_justrl.models import EMBEDDED_MODELS, EmbeddedModel, is_embedded, resolve_model


def test_other_names_pass_through():
    assert resolve_model("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B") == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    assert resolve_model("/some/local/folder") == "/some/local/folder"
    assert is_embedded("SmolLM2-135M-Instruct") and not is_embedded("smollm2")


def test_embedded_model_is_a_plain_checkpoint(smollm2_path):
    config = json.loads((smollm2_path / "config.json").read_text())
    assert "quantization_config" not in config  # else Trainer refuses to train it
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30 and config["hidden_size"] == 576
    assert (smollm2_path / "model.safetensors").is_file()
    assert resolve_model("smollm2-135m-instruct") == str(smollm2_path)  # cached: no second conversion


def test_embedded_model_generates_sensible_text(smollm2_path, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2_path)
    assert not getattr(model, "is_quantized", False)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def test_missing_package_error_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("TRL_JUSTRL_CACHE", str(tmp_path))
    missing = EmbeddedModel(package="no_such_package_xyz", filename="x.gguf", pip_install="pip install nothing")
    monkeypatch.setitem(EMBEDDED_MODELS, "smollm2-135m-instruct", missing)
    with pytest.raises(FileNotFoundError, match="pip install nothing"):
        resolve_model("smollm2-135m-instruct")
