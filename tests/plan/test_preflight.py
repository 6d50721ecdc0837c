"""Refusals before any rank starts (issue 14, point 5) and rows that must not fail a dataset (point 11).

Each refusal goes through the real CLI: `launch plan` exits 2 with one message naming the key or
file, and a `launch train` of the same recipe exits 2 without creating output.dir/logs (no rank
ran). Oracles: the builtin tokenizer's chat template (apply_chat_template's assistant mask) for
the labels of a conversation with an empty assistant turn."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from launcher.data.bad_rows import BadRows
from launcher.data.datasets import DataError
from launcher.data.pipeline import build_sft_data, load_examples
from launcher.data.tokenize import IGNORE_INDEX
from launcher.model.builtin import builtin_source_dir
from tests.conftest import imported_after, run_launch

RECIPE = "recipes/sft_tiny.yaml"
ROWS = [{"instruction": "2 + 2?", "output": "4"}, {"instruction": "Capital of France?", "output": "Paris"}]


def _dataset(folder: Path, entry: dict, content: bytes) -> list[str]:
    """A one-dataset registry `d` in folder; the overrides that point the recipe at it."""
    (folder / entry["file_name"]).write_bytes(content)
    (folder / "dataset_info.json").write_text(json.dumps({"d": entry}))
    return [f"data.dataset_dir={folder}", "data.datasets=[d]"]


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def _refused(tmp_path: Path, overrides: list[str], *needles: str, recipe: str = RECIPE) -> None:
    """`launch plan` and `launch train` both exit 2 with the message, and train starts no rank."""
    plan = run_launch(["plan", recipe, *overrides], timeout=120)
    assert plan.returncode == 2, plan.stdout + plan.stderr
    assert "Traceback" not in plan.stderr
    for needle in needles:
        assert needle in plan.stderr, plan.stderr
    out = tmp_path / "run"
    train = run_launch(["train", recipe, *overrides, f"output.dir={out}"], timeout=120)
    assert train.returncode == 2, train.stdout + train.stderr
    assert all(needle in train.stderr for needle in needles), train.stderr
    assert not (out / "logs").exists() and not (out / "plan.json").exists()


def _planned(overrides: list[str], recipe: str = RECIPE) -> None:
    proc = run_launch(["plan", recipe, *overrides], timeout=120)
    assert proc.returncode == 0, proc.stderr


# ---- point 5: refused by the planner ------------------------------------------------------------


@pytest.mark.multiproc
def test_missing_local_model_path(tmp_path):
    _refused(tmp_path, [f"model.path={tmp_path / 'no-such-model'}"], "model.path = ", "no such directory", "Fix:")


@pytest.mark.multiproc
def test_local_model_path_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    _refused(tmp_path, [f"model.path={tmp_path / 'empty'}"], "no config.json there", "Fix:")


@pytest.mark.multiproc
def test_lora_target_the_builtin_model_lacks(tmp_path):
    _refused(
        tmp_path,
        ["method.target=[q_proj,qkv_proj]"],
        "method.target = ['q_proj', 'qkv_proj']",
        "['qkv_proj']",
        "Fix: use names from",
        "'v_proj'",
    )
    _planned(["method.target=[q_proj,v_proj]"])
    _planned(["method.target=all"])


@pytest.mark.multiproc
def test_lora_target_read_from_a_local_models_safetensors_header(tmp_path, warm):
    from launcher.model.builtin import materialize

    model = materialize("builtin:tiny-qwen2")  # a real model folder with model.safetensors
    _refused(tmp_path, [f"model.path={model}", "method.target=[self_attn.q_proj,mlp]"], "['mlp']")  # mlp: no linear
    _planned([f"model.path={model}", "method.target=[self_attn.q_proj,down_proj]"])


@pytest.mark.multiproc
def test_lora_additional_target_the_model_lacks(tmp_path):
    _refused(tmp_path, ["method.additional_target=[embed_token]"], "method.additional_target = ['embed_token']")
    _planned(["method.additional_target=[embed_tokens]"])


@pytest.mark.multiproc
def test_freeze_modules_the_model_lacks(tmp_path):
    base = "method={name: freeze, trainable_layers: 2, trainable_modules: [mlp], extra_modules: [%s]}"
    _refused(tmp_path, [base % "embed"], "method.extra_modules = ['embed']: no parameter matches")
    _planned([base % "embed_tokens"])


@pytest.mark.multiproc
def test_dataset_of_another_kind_than_the_stage_reads(tmp_path):
    _refused(
        tmp_path,
        ["data.datasets=[demo_pref]"],
        "data.datasets: dataset 'demo_pref' is a preference dataset",
        "this stage needs an SFT dataset",
    )
    _refused(tmp_path, ["data.eval_datasets=[demo_kto]"], "data.eval_datasets: dataset 'demo_kto' is a KTO dataset")


@pytest.mark.multiproc
def test_dataset_whose_every_row_is_bad(tmp_path):
    rows = [{"question": "2 + 2?", "output": "4"}] * 3  # no instruction column: every row bad
    overrides = _dataset(tmp_path, {"file_name": "d.jsonl"}, _jsonl(rows))
    _refused(
        tmp_path,
        [*overrides, "data.on_bad_row=skip"],
        "dataset 'd': every row is bad (3 skipped)",
        "d.jsonl:1 row 0: missing or empty column 'instruction'",
    )
    _refused(tmp_path, overrides, "d.jsonl:1 row 0: missing or empty column 'instruction'")  # error: the first bad row


@pytest.mark.multiproc
def test_empty_dataset_file(tmp_path):
    _refused(
        tmp_path,
        _dataset(tmp_path, {"file_name": "d.jsonl"}, b"\n\n"),
        "data.datasets = ['d']: no rows in",
        "d.jsonl",
        "Fix:",
    )
    (tmp_path / "g.jsonl").write_bytes(_jsonl(ROWS))  # beside a dataset with rows, an empty one trains as the run does
    info = json.loads((tmp_path / "dataset_info.json").read_text())
    (tmp_path / "dataset_info.json").write_text(json.dumps({**info, "g": {"file_name": "g.jsonl"}}))
    _planned([f"data.dataset_dir={tmp_path}", "data.datasets=[d,g]"])


@pytest.mark.multiproc
def test_launch_data_exits_2_when_the_stage_gets_no_rows():
    # the default system prompt alone is longer than 8 tokens: every example is dropped
    proc = run_launch(["data", RECIPE, "data.cutoff_len=8"], timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "stage sft gets no examples from ['demo_sft']" in proc.stderr and "Fix:" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.unit
def test_planning_a_csv_dataset_imports_nothing_heavy():
    code = (
        "from launcher.plan import build_plan; from launcher.recipe.load import load_recipe; "
        "build_plan(load_recipe('recipes/sft_tiny.yaml', ['data.datasets=[demo_law_csv]']))"
    )
    assert imported_after(code, ("torch", "transformers", "datasets", "pandas", "pyarrow", "numpy")) == []


# ---- point 11: rows that do not fail their file ---------------------------------------------------


@pytest.mark.multiproc
def test_one_non_utf8_row_is_skipped_or_refused_by_line(tmp_path):
    content = _jsonl(ROWS[:1]) + b'{"instruction": "caf\xe9", "output": "x"}\n' + _jsonl(ROWS[1:])
    overrides = _dataset(tmp_path, {"file_name": "d.jsonl"}, content)
    cfg = {"dataset_dir": str(tmp_path), "max_samples": None}
    bad = BadRows("skip")
    examples = load_examples(["d"], cfg, bad=bad)
    assert [e.messages[-1]["content"] for e in examples] == ["4", "Paris"]
    assert len(bad.skipped) == 1 and "d.jsonl:2: not UTF-8 text" in bad.skipped[0]
    with pytest.raises(DataError, match=r"d\.jsonl:2: not UTF-8 text \(invalid continuation byte"):
        load_examples(["d"], cfg)
    proc = run_launch(["data", RECIPE, *overrides, "data.on_bad_row=skip"], timeout=300)
    assert proc.returncode == 0 and "bad rows skipped: 1" in proc.stdout, proc.stderr
    proc = run_launch(["data", RECIPE, *overrides], timeout=300)
    assert proc.returncode == 2 and "d.jsonl:2: not UTF-8 text" in proc.stderr, proc.stderr


@pytest.mark.unit
@pytest.mark.parametrize(
    "name,content",
    [
        ("d.json", json.dumps(ROWS).encode()),
        ("d.jsonl", _jsonl(ROWS)),
        ("d.csv", b"instruction,output\n2 + 2?,4\nCapital of France?,Paris\n"),
    ],
)
def test_a_byte_order_mark_is_accepted(tmp_path, name, content):
    _dataset(tmp_path, {"file_name": name}, b"\xef\xbb\xbf" + content)
    examples = load_examples(["d"], {"dataset_dir": str(tmp_path), "max_samples": None})
    assert [e.messages for e in examples] == [
        [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}] for r in ROWS
    ]


def _conversation(*replies: str) -> dict:
    turns = []
    for index, reply in enumerate(replies):
        turns += [{"from": "human", "value": f"question {index}"}, {"from": "gpt", "value": reply}]
    return {"conversations": turns}


@pytest.mark.unit
@pytest.mark.parametrize("formatting", ["sharegpt", "openai"])
def test_an_empty_assistant_turn_mid_conversation_trains_nothing(tmp_path, formatting):
    rows = [_conversation("first answer", "", "last answer"), _conversation("a", "")]  # the 2nd ends empty: bad
    entry = {"file_name": "d.jsonl", "formatting": formatting}
    if formatting == "openai":
        rows = [
            {
                "messages": [
                    {"role": {"human": "user", "gpt": "assistant"}[t["from"]], "content": t["value"]}
                    for t in row["conversations"]
                ]
            }
            for row in rows
        ]
    _dataset(tmp_path, entry, _jsonl(rows))
    cfg = {
        "dataset_dir": str(tmp_path),
        "max_samples": None,
        "cutoff_len": 1024,
        "train_on_prompt": False,
        "mask_history": False,
        "on_bad_row": "skip",
    }
    bad = BadRows("skip")
    (example,) = load_examples(["d"], cfg, bad=bad)
    assert [m["content"] for m in example.messages if m["role"] == "assistant"] == ["first answer", "", "last answer"]
    assert len(bad.skipped) == 1 and "d.jsonl:2 row 1 message 4: empty assistant turn" in bad.skipped[0]

    tokenizer = AutoTokenizer.from_pretrained(builtin_source_dir("builtin:tiny-qwen2"))
    oracle = tokenizer.apply_chat_template(
        example.messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    mask = list(oracle["assistant_masks"])
    runs = [i for i in range(len(mask)) if mask[i] and (i == 0 or not mask[i - 1])]  # one trained run per reply
    empty_run = runs[1]
    while empty_run < len(mask) and mask[empty_run]:  # the template trains the empty reply's <|im_end|>: we do not
        mask[empty_run] = 0
        empty_run += 1
    for template in ("auto", "qwen2"):
        (encoded,) = build_sft_data(["d"], cfg, tokenizer, template).examples
        assert encoded["input_ids"] == oracle["input_ids"]
        assert [int(label != IGNORE_INDEX) for label in encoded["labels"]] == mask


@pytest.mark.multiproc
def test_the_worker_applies_the_same_lora_target_rule_to_a_loaded_model(warm):
    # a hub model is only seen by the worker: lora.apply refuses with the planner's message, not PEFT's traceback
    from transformers import AutoModelForCausalLM

    from launcher.errors import MethodError
    from launcher.methods.lora import apply
    from launcher.model.builtin import materialize
    from launcher.recipe.load import load_recipe

    recipe = load_recipe(RECIPE, ["method.target=[q_proj,qkv_proj]"])
    model = AutoModelForCausalLM.from_pretrained(materialize("builtin:tiny-qwen2"))
    with pytest.raises(
        MethodError,
        match=r"method.target = \['q_proj', 'qkv_proj'\]: the model has no linear or "
        r"embedding module \['qkv_proj'\]",
    ):
        apply(model, recipe["method"], recipe)


@pytest.mark.unit
def test_a_csv_row_with_more_cells_than_the_header_is_one_bad_row(tmp_path):
    _dataset(tmp_path, {"file_name": "d.csv"}, b"instruction,output\n2 + 2?,4\na,b,c\nCapital of France?,Paris\n")
    cfg = {"dataset_dir": str(tmp_path), "max_samples": None}
    bad = BadRows("skip")
    assert [e.messages[-1]["content"] for e in load_examples(["d"], cfg, bad=bad)] == ["4", "Paris"]
    assert len(bad.skipped) == 1
    with pytest.raises(DataError, match=r"d\.csv row 1 \(line 3\): 3 cells, the header has 2"):
        load_examples(["d"], cfg)
