"""The real trackers, offline: one tiny run with validation and a forced health alert reports to wandb
(WANDB_MODE=offline), trackio (local) and TensorBoard at once, and each is read back with that tool's own reader: the
project's metrics at the right steps, the alert as the tracker's alert where it has alerts, the recipe in the run's
config and no secret anywhere in what the trackers wrote."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO
from conftest import TRACKED_SECRET as SECRET
from conftest import TRACKED_WANDB_KEY as WANDB_KEY

ALERTS = {"JustRL health: entropy_collapse", "JustRL health: truncation_high"}


def _trained(values: dict[str, dict[int, float]], expected: dict[str, dict[int, float]]) -> None:
    """The tracker's values (key without transformers' `train/` prefix -> step -> value) hold every checked one."""
    for key, steps in expected.items():
        for step, value in steps.items():
            assert values.get(key, {}).get(step) == pytest.approx(value), (key, step, values.get(key))


def _no_secret(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert SECRET.encode() not in data and WANDB_KEY.encode() not in data, path


def _recipe_in(config: dict, model: str) -> None:
    assert config["recipe"] == {"model": model, "reward_funcs": ["test_length_parity"], "training_data": "synthetic"}
    assert config["epsilon_high"] == 0.28 and config["loss_type"] == "dapo" and config["run_name"] == "tracked"
    assert config.get("hub_token") in (None, "<HUB_TOKEN>")  # transformers' mask, never a value


# ---- wandb ---------------------------------------------------------------------------------------------------------

LOG_BLOCK = 32 * 1024  # the transaction log's framing: LevelDB's log format (32 KiB blocks, 7-byte record headers)


def wandb_records(path: Path) -> Iterator:
    """The records of an offline run's `.wandb` transaction log, decoded by wandb's own protobuf classes (wandb 0.31
    ships no Python reader for the file; its framing is LevelDB's log format after a 7-byte `:W&B` header)."""
    from wandb.proto import wandb_internal_pb2

    data, position, pending = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B", path
    while position + 7 <= len(data):
        if LOG_BLOCK - position % LOG_BLOCK < 7:  # a block's tail too short for a header is padding
            position += LOG_BLOCK - position % LOG_BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        chunk, position = data[position + 7:position + 7 + length], position + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk  # full / first, then middle / last
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def test_wandb_offline_run_holds_the_metrics_the_alerts_and_the_recipe(tracked_run):
    runs = list((tracked_run["tmp"] / "wandb" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    values: dict[str, dict[int, float]] = {}
    alerts, config = set(), {}
    for record in wandb_records(runs[0]):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = {_key(item): json.loads(item.value_json) for item in record.history.item}
            for key, value in row.items():
                if key.startswith("train/") and isinstance(value, (int, float)):
                    values.setdefault(key.removeprefix("train/"), {}).setdefault(int(row["train/global_step"]), value)
        elif kind == "alert":
            alerts.add(record.alert.title)
            assert record.alert.level == "WARN"
        elif kind == "config":
            config.update({_key(item): json.loads(item.value_json) for item in record.config.update})
    _trained(values, tracked_run["expected"])
    assert alerts == ALERTS
    _recipe_in(config, tracked_run["model"])
    _no_secret(tracked_run["tmp"] / "wandb")


# ---- trackio -------------------------------------------------------------------------------------------------------


def test_trackio_local_run_holds_the_metrics_the_alerts_and_the_recipe(tracked_run, monkeypatch):
    tmp = tracked_run["tmp"]
    monkeypatch.setenv("TRACKIO_DIR", str(tmp / "trackio"))
    import trackio
    from trackio import SQLiteStorage

    monkeypatch.setattr(SQLiteStorage, "get_project_db_path",
                        staticmethod(lambda project: tmp / "trackio" / f"{project}.db"))  # read before the import
    api = trackio.Api()
    (run,) = list(api.runs("huggingface"))
    values: dict[str, dict[int, float]] = {}
    for row in SQLiteStorage.get_logs("huggingface", run.name):
        for key, value in row.items():
            if key.startswith("train/") and isinstance(value, (int, float)):
                values.setdefault(key.removeprefix("train/"), {}).setdefault(int(row["step"]), value)
    _trained(values, tracked_run["expected"])
    alerts = api.alerts("huggingface")
    assert {alert["title"] for alert in alerts} == ALERTS and {alert["step"] for alert in alerts} == {1}
    _recipe_in(run.config, tracked_run["model"])
    _no_secret(tmp / "trackio")


# ---- TensorBoard ---------------------------------------------------------------------------------------------------


def test_tensorboard_events_hold_the_metrics_and_the_recipe(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (logdir,) = list((tracked_run["tmp"] / "out" / "runs").iterdir())
    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    values = {tag.removeprefix("train/"): {event.step: event.value for event in reversed(events.Scalars(tag))}
              for tag in events.Tags()["scalars"]}
    _trained(values, tracked_run["expected"])
    (args_text,) = [event for event in events.Tensors("args/text_summary")]
    config = json.loads(args_text.tensor_proto.string_val[0].decode())
    _recipe_in(config, tracked_run["model"])
    _no_secret(logdir)


def test_the_recipes_report_to_works_out_of_the_box():
    """Every tracker the shipped recipes name is installed by the dev extra (the suite's environment)."""
    import yaml

    from trl_justrl.config import missing_integrations

    named = set()
    for path in (REPO / "trl_justrl" / "recipes").glob("*.yaml"):
        report_to = yaml.safe_load(path.read_text()).get("report_to") or []
        named |= {report_to} if isinstance(report_to, str) else set(report_to)
    named.discard("none")
    assert named and not missing_integrations(sorted(named)), named
