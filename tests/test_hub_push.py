"""The Hub push up to the wire: huggingface_hub pointed (HF_ENDPOINT) at a recording server on 127.0.0.1.

The recipes' push settings (`push_to_hub`, `hub_strategy: every_save`) push each saved model and the card; a push the
server fails does not end training, is reported, and a later save pushes again; no token reaches an uploaded file;
a Hub that stops answering fails a request within `hub_request_timeout_s`."""

from __future__ import annotations

import secrets
import subprocess
import time

import pytest
from recording_hub import RecordingHub
from test_preemption import REPO, env, recipe, train_command

SECRET = f"sentinel-{secrets.token_hex(16)}"  # a fresh value each run: nothing token-like is committed
REPO_ID = "tester/tiny-justrl"


def test_checkpoints_and_card_arrive_a_failed_push_is_reported_and_the_next_save_pushes(tmp_path, tiny_model_path):
    with RecordingHub() as hub:
        hub.failing = {"Training in progress, step 1"}  # every attempt of the first push answers 500
        config = recipe(tmp_path, tiny_model_path, max_steps=8, push_to_hub=True, hub_model_id=REPO_ID,
                        hub_strategy="every_save")
        result = subprocess.run(train_command(config), capture_output=True, text=True, timeout=600, cwd=REPO,
                                env=env() | {"HF_ENDPOINT": hub.url, "HF_TOKEN": SECRET, "HF_HUB_OFFLINE": "0",
                                             "HF_HUB_DISABLE_TELEMETRY": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(hub.failed) >= 2  # the attempt and huggingface_hub's retries (five in 2.5), all answered 500
    assert f"Pushing step 1 to the Hub ({REPO_ID}) failed: HfHubHTTPError" in result.stderr
    assert "Training goes on; the next save pushes again." in result.stderr
    messages = [commit["message"] for commit in hub.commits]
    later = [m for m in messages if m.startswith("Training in progress, step ")]
    assert later and all(int(m.rsplit(" ", 1)[1]) > 1 for m in later), messages  # a later save pushed again
    assert messages[-1] == "End of training" and messages.count("End of training") == 1, messages
    final = hub.commits[-1]
    assert final["repo"] == REPO_ID
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "trainer_state.json"} <= set(
        final["files"])
    assert not any(name.startswith(("_", "checkpoint-")) for commit in hub.commits for name in commit["files"])
    card = final["files"]["README.md"].decode()
    assert "## Training recipe" in card and f"Base model: `{tiny_model_path}`" in card and "| 0.28 |" in card
    assert "- Rewards: `test_length_parity`" in card and "8 optimizer updates" in card
    for commit in hub.commits:
        for name, data in commit["files"].items():
            assert SECRET.encode() not in data, name
    state = (tmp_path / "out" / "trainer_state.json").read_text()
    assert '"hub/push_failures": 1' in state


def test_a_hub_that_stops_answering_fails_a_request_within_the_limit(monkeypatch):
    """huggingface_hub's own client waits forever; bounded, a silent server fails the request in about the limit."""
    from huggingface_hub import HfApi, constants

    from trl_justrl.run_services.hub_push import bound_hub_requests

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the suite runs offline; this server is local
    with RecordingHub() as hub:
        hub.hang_s = 5.0
        bound_hub_requests(0.5)
        try:
            start = time.monotonic()
            with pytest.raises(Exception, match="(?i)timed? ?out"):
                HfApi(endpoint=hub.url, token=SECRET).create_repo(REPO_ID, exist_ok=True)
            assert time.monotonic() - start < 3
        finally:
            from huggingface_hub.utils import set_client_factory

            from trl_justrl.trl_internals import hub_client_factory

            set_client_factory(hub_client_factory())


def test_push_to_hub_with_the_hub_offline_is_refused_before_anything_loads(tmp_path, monkeypatch):
    from trl_justrl import JustRLConfig

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="push_to_hub is on but HF_HUB_OFFLINE is set"):
        JustRLConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, push_to_hub=True, hub_model_id=REPO_ID)
