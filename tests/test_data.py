"""Training data: both layouts from parquet / jsonl / json / folders, the suffix, the length filter, bad rows."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import SHARED_BENCHMARKS

from trl_justrl.data import (
    DAPO_INSTRUCTION_PREFIX,
    DAPO_INSTRUCTION_SUFFIX,
    PROMPT_SUFFIX,
    DataError,
    PromptLengthFilter,
    load_training_data,
    synthetic_arithmetic,
)

SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."  # RECIPE.md, "Prompt"


def verl_rows():
    return [
        {
            "data_source": "math_dapo",
            "prompt": [{"role": "user", "content": DAPO_INSTRUCTION_PREFIX + "What is 2+3?" + DAPO_INSTRUCTION_SUFFIX}],
            "ability": "MATH",
            "reward_model": {"ground_truth": "5", "style": "rule-lighteval/MATH_v2"},
            "extra_info": {"index": "a"},
        },
        {
            "data_source": "math_dapo",
            "prompt": [{"role": "user", "content": "Find x if 2x = 14."}],
            "ability": "MATH",
            "reward_model": {"ground_truth": "7", "style": "rule-lighteval/MATH_v2"},
            "extra_info": {"index": "b"},
        },
    ]


def plain_rows():
    return [{"problem": "Compute 6 * 7.", "answer": "42"}, {"problem": "Compute 1 + 1.", "answer": 2}]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_verl_layout_from_parquet(tmp_path):
    path = tmp_path / "train.parquet"
    pd.DataFrame(verl_rows()).to_parquet(path)
    ds = load_training_data(str(path))
    assert ds.column_names == ["prompt", "ground_truth"]
    assert ds["ground_truth"] == ["5", "7"]
    # DAPO's "Answer:" wrapper is kept by default, as the released script ran; the suffix follows a blank line
    assert ds[0]["prompt"][0]["content"].startswith("Solve the following math problem")
    assert ds[0]["prompt"][0]["content"].endswith('after "Answer:".\n\n' + SUFFIX)
    stripped = load_training_data(str(path), strip_dapo=True)
    assert stripped[0]["prompt"] == [{"role": "user", "content": "What is 2+3?\n\n" + SUFFIX}]
    assert stripped[1]["prompt"][0]["content"] == "Find x if 2x = 14.\n\n" + SUFFIX


def test_plain_layout_from_jsonl_and_json(tmp_path):
    ds = load_training_data(str(write_jsonl(tmp_path / "train.jsonl", plain_rows())))
    assert ds["ground_truth"] == ["42", "2"]
    assert ds[0]["prompt"] == [{"role": "user", "content": "Compute 6 * 7.\n\n" + SUFFIX}]
    (tmp_path / "train.json").write_text(json.dumps(plain_rows()))
    assert load_training_data(str(tmp_path / "train.json"))["ground_truth"] == ["42", "2"]


def test_folder_of_files(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", plain_rows())
    write_jsonl(tmp_path / "b.jsonl", plain_rows()[:1])
    ds = load_training_data(str(tmp_path))
    assert len(ds) == 3


def test_suffix_is_never_doubled(tmp_path):
    rows = [{"problem": "Compute 2 + 2.\n\n" + SUFFIX, "answer": "4"}]
    ds = load_training_data(str(write_jsonl(tmp_path / "t.jsonl", rows)))
    assert ds[0]["prompt"][0]["content"].count(PROMPT_SUFFIX) == 1


@pytest.mark.parametrize(
    ("rows", "fragment"),
    [
        ([{"problem": "ok", "answer": "1"}, {"problem": "no answer", "answer": ""}], "line 2: field 'answer'"),
        ([{"problem": "ok", "answer": None}], "line 1: field 'answer' is missing or empty"),
        ([{"problem": "ok"}], "line 1: no answer"),
        ([{"problem": "", "answer": "1"}], "line 1: field 'problem' is empty"),
        ([{"prompt": 5, "answer": "1"}], "line 1: field 'prompt' must be text or a list of chat messages"),
        ([{"prompt": [{"role": "system", "content": "x"}], "answer": "1"}], "line 1: field 'prompt' has no user"),
        ([{"question": "x", "answer": "1"}], "line 1: no prompt"),
    ],
)
def test_bad_rows_name_file_row_and_field(tmp_path, rows, fragment):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as err:
        load_training_data(str(path))
    assert str(path) in str(err.value) and fragment in str(err.value)


def test_errors_name_the_file_line_counting_blank_lines_and_the_row_where_there_are_no_lines(tmp_path):
    """A JSON-lines error names the line a text editor shows (blank lines counted), a JSON array its element, both
    counted from 1, as the JSON errors do."""
    jsonl = tmp_path / "gaps.jsonl"
    jsonl.write_text('{"problem": "a", "answer": "1"}\n\n\n{"problem": "b", "answer": "2"}\n\n'
                     '{"problem": "c", "answer": ""}\n')
    with pytest.raises(DataError, match=r"gaps\.jsonl: line 6: field 'answer' is missing or empty"):
        load_training_data(str(jsonl))
    array = tmp_path / "array.json"
    array.write_text(json.dumps([{"problem": "a", "answer": "1"}, {"problem": "b"}], indent=2))
    with pytest.raises(DataError, match=r"array\.json: element 2 of the JSON array: field 'answer' is missing"):
        load_training_data(str(array))


def test_bad_verl_row_in_second_file_of_a_folder(tmp_path):
    pd.DataFrame(verl_rows()).to_parquet(tmp_path / "a.parquet")
    rows = verl_rows()
    rows[1]["reward_model"] = {"ground_truth": "", "style": "rule"}
    pd.DataFrame(rows).to_parquet(tmp_path / "b.parquet")
    with pytest.raises(DataError, match=r"b\.parquet: row 2 \(counted from 1\): field 'reward_model.ground_truth'"):
        load_training_data(str(tmp_path))


def test_missing_and_empty_sources(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_training_data(str(tmp_path / "nope.parquet"))
    with pytest.raises(DataError, match="no .parquet"):
        load_training_data(str(tmp_path))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="empty.jsonl: the file is empty"):
        load_training_data(str(tmp_path / "empty.jsonl"))
    with pytest.raises(DataError, match="unsupported file type"):
        (tmp_path / "x.csv").write_text("a\n1\n")
        load_training_data(str(tmp_path / "x.csv"))


def test_length_filter_drops_and_counts(tmp_path, tokenizer):
    rows = plain_rows() + [{"problem": "Add these numbers: " + " + ".join(["1"] * 400), "answer": "400"}]
    ds = load_training_data(str(write_jsonl(tmp_path / "t.jsonl", rows)))
    lengths = [
        len(tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=False))
        for p in ds["prompt"]
    ]
    limit = sorted(lengths)[1]  # keeps the two short prompts only

    def filter_long_prompts(dataset, limit):
        length_filter = PromptLengthFilter(tokenizer, limit)
        return length_filter.apply(dataset), length_filter.dropped

    kept, dropped = filter_long_prompts(ds, limit)
    assert dropped == 1 and len(kept) == 2 and "400" not in kept["ground_truth"]
    kept_all, none = filter_long_prompts(ds, max(lengths))
    assert none == 0 and len(kept_all) == 3  # a prompt exactly at the limit is kept
    with pytest.raises(DataError, match="nothing is left"):
        filter_long_prompts(ds, 5)


def test_synthetic_data_is_seeded_and_correct():
    a, b = synthetic_arithmetic(32, seed=1), synthetic_arithmetic(32, seed=1)
    assert a.to_list() == b.to_list()
    assert synthetic_arithmetic(32, seed=2).to_list() != a.to_list()
    ds = load_training_data("synthetic", synthetic_size=32, seed=1)
    for row in ds:
        question = row["prompt"][-1]["content"]
        x, y = question.removeprefix("What is ").split("?")[0].split(" + ")
        assert int(x) + int(y) == int(row["ground_truth"])
        assert question.endswith(SUFFIX) and row["prompt"][1]["role"] == "assistant"


def test_boxed_ground_truths_are_unwrapped(tmp_path):
    rows = [
        {"problem": "a", "answer": "\\boxed{204}"},
        {"problem": "b", "answer": "\\boxed{\\frac{1}{2}}"},
        {"problem": "c", "answer": "\\boxed{1} and \\boxed{2}"},  # not one whole box: kept as is
    ]
    ds = load_training_data(str(write_jsonl(tmp_path / "t.jsonl", rows)))
    assert ds["ground_truth"] == ["204", "\\frac{1}{2}", "\\boxed{1} and \\boxed{2}"]


def test_hub_ids_go_to_load_dataset(monkeypatch):
    import datasets

    import trl_justrl.data as data_module

    calls = []

    def fake_load_dataset(path, name=None, split=None, **kwargs):  # datasets.load_dataset's signature
        calls.append((path, split))
        assert name is None  # no dataset_config given
        return datasets.Dataset.from_list(verl_rows())

    monkeypatch.setattr(data_module, "load_dataset", fake_load_dataset)
    ds = load_training_data("BytedTsinghua-SIA/DAPO-Math-17k", split="train")
    assert calls == [("BytedTsinghua-SIA/DAPO-Math-17k", "train")]
    assert ds["ground_truth"] == ["5", "7"]


BENCHMARKS = SHARED_BENCHMARKS


@pytest.mark.skipif(not BENCHMARKS.is_dir(), reason="../shared/data/benchmarks is not present")
@pytest.mark.parametrize("name", sorted(p.name for p in BENCHMARKS.glob("*")) if BENCHMARKS.is_dir() else [])
def test_released_benchmark_files_load_in_either_layout(name):
    ds = load_training_data(str(BENCHMARKS / name / "test.parquet"))
    assert len(ds) >= 30
    for row in ds:
        assert row["prompt"][-1]["content"].endswith("\n\n" + SUFFIX)
        assert row["ground_truth"] and not row["ground_truth"].startswith("\\boxed{")


def test_the_training_user_turn_is_dapo_math_17k_as_shipped_plus_the_suffix(tmp_path, tokenizer):
    """RECIPE.md, "Prompt": the released script appends the suffix to the shipped text, wrapper and all."""
    shipped = (
        "Solve the following math problem step by step. The last line of your response should be of the form "
        "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
        "Let $x$ be a real number with $x^2 = 49$ and $x > 0$. Find $x$.\n\n"
        'Remember to put your answer on its own line after "Answer:".'
    )
    row = {"data_source": "math_dapo", "prompt": [{"role": "user", "content": shipped}], "ability": "MATH",
           "reward_model": {"ground_truth": "7", "style": "rule-lighteval/MATH_v2"},
           "extra_info": {"index": "9a9b6eb4-a1cb-49d1-8c1e-62eaf2f74079"}}
    path = tmp_path / "dapo-math-17k.parquet"
    pd.DataFrame([row]).to_parquet(path)
    (turn,) = load_training_data(str(path))["prompt"]
    expected = shipped + "\n\nPlease reason step by step, and put your final answer within \\boxed{}."
    assert turn == [{"role": "user", "content": expected}]
    rendered = tokenizer.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
    assert ("<|im_start|>user\n" + expected + "<|im_end|>\n<|im_start|>assistant\n") in rendered
