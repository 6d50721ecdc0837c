"""Dataset registry, file types, formats and bad rows: rows -> internal examples.

Expected values follow the formats' documented semantics (LLaMA-Factory's data/README:
sharegpt roles and tags, openai messages, ranking chosen/rejected, kto_tag, pt text)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from launcher.data.datasets import DataError, resolve_dataset
from launcher.data.formats import to_text
from launcher.data.pipeline import load_examples, load_texts
from launcher.data.readers import Row
from launcher.recipe.load import RecipeError, load_recipe
from tests.conftest import imported_after

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data"
CFG = {"dataset_dir": str(DATA), "max_samples": None}
ALPACA_ROWS = [
    {"instruction": "Translate", "input": "你好", "output": "Hello"},
    {"instruction": "2 + 2?", "input": "", "output": "4"},
]
ALPACA_MESSAGES = [
    [{"role": "user", "content": "Translate\n你好"}, {"role": "assistant", "content": "Hello"}],
    [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}],
]


def _registry(folder: Path, entries: dict) -> dict:
    (folder / "dataset_info.json").write_text(json.dumps(entries))
    return {"dataset_dir": str(folder), "max_samples": None}


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# ---- formats ------------------------------------------------------------------------------------


def test_sharegpt_roles_system_function_call_observation_and_tools():
    first, second = load_examples(["demo_sharegpt"], CFG)
    assert first.messages == [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
        {"role": "assistant", "content": "Rome."},
    ]
    assert [m["role"] for m in second.messages] == ["user", "assistant", "tool", "assistant"]
    assert second.messages[1]["tool_calls"] == [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "北京"}}}
    ]
    assert second.tools[0]["name"] == "get_weather"  # the tools column is a JSON string in LLaMA-Factory's form


@pytest.mark.parametrize("registered", ["demo_sharegpt", "demo_openai"])
def test_a_conversations_file_given_as_a_bare_path_reads_as_conversations(tmp_path, registered):
    """Not registered in dataset_info.json, the file's first row says its format (it used to read as alpaca)."""
    rows = [json.loads(line) for line in (DATA / "demo_openai.jsonl").read_text().splitlines()]
    if registered == "demo_sharegpt":
        rows = json.loads((DATA / "demo_sharegpt.json").read_text())
    bare = _jsonl(tmp_path / "chats.jsonl", rows)
    expected = load_examples([registered], CFG)
    got = load_examples([str(bare)], CFG)
    assert [e.messages for e in got] == [e.messages for e in expected] and len(got) == len(rows)


def test_sharegpt_custom_tags_and_system_turn_over_system_column(tmp_path):
    rows = [
        {
            "dialog": [
                {"speaker": "sys", "text": "Be kind."},
                {"speaker": "Q", "text": "hi"},
                {"speaker": "A", "text": "hello"},
            ],
            "sys_col": "ignored: a system turn in the list wins",
        }
    ]
    cfg = _registry(
        tmp_path,
        {
            "d": {
                "file_name": "d.jsonl",
                "formatting": "sharegpt",
                "columns": {"messages": "dialog", "system": "sys_col"},
                "tags": {
                    "role_tag": "speaker",
                    "content_tag": "text",
                    "user_tag": "Q",
                    "assistant_tag": "A",
                    "system_tag": "sys",
                },
            }
        },
    )
    _jsonl(tmp_path / "d.jsonl", rows)
    assert load_examples(["d"], cfg)[0].messages == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]


def test_openai_messages_with_tool_calls_and_tool_role(tmp_path):
    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}
    rows = [
        {
            "messages": [
                {"role": "user", "content": "1+2?"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "content": "3"},
                {"role": "assistant", "content": "3"},
            ]
        }
    ]
    cfg = _registry(tmp_path, {"o": {"file_name": "o.jsonl", "formatting": "openai"}})
    _jsonl(tmp_path / "o.jsonl", rows)
    messages = load_examples(["o"], cfg)[0].messages
    assert messages[1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}],
    }
    assert messages[2] == {"role": "tool", "content": "3"}
    assert [m["content"] for m in load_examples(["demo_openai"], CFG)[0].messages] == [
        "You are a terse assistant.",
        "2 + 2?",
        "4",
    ]


def test_alpaca_system_history_and_tools_columns(tmp_path):
    row = {
        "instruction": "Translate",
        "input": "你好",
        "output": "Hello",
        "system": "Be brief.",
        "history": [["Hi", "Hello!"]],
        "tools": [{"name": "dict"}],
    }
    _jsonl(tmp_path / "a.jsonl", [row])
    example = load_examples([str(tmp_path / "a.jsonl")], CFG)[0]
    assert example.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Translate\n你好"},
        {"role": "assistant", "content": "Hello"},
    ]
    assert example.tools == [{"name": "dict"}]


def test_preference_pairs_in_alpaca_and_sharegpt_style(tmp_path):
    pairs = load_examples(["demo_pref"], CFG, kind="preference")
    assert pairs[1].messages[-1] == {"role": "user", "content": "Is the sky green?"}
    assert (pairs[1].chosen, pairs[1].rejected) == (
        {"role": "assistant", "content": "No, it is usually blue."},
        {"role": "assistant", "content": "Yes."},
    )
    cfg = _registry(
        tmp_path,
        {
            "p": {
                "file_name": "p.json",
                "ranking": True,
                "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"},
            }
        },
    )
    (tmp_path / "p.json").write_text(
        json.dumps([{"instruction": "Q", "input": "x", "chosen": "good", "rejected": "bad"}])
    )
    pair = load_examples(["p"], cfg, kind="preference")[0]
    assert pair.messages == [{"role": "user", "content": "Q\nx"}]
    assert (pair.chosen["content"], pair.rejected["content"]) == ("good", "bad")


def test_kind_mismatch_is_refused_with_the_fix():
    with pytest.raises(DataError, match="'demo_pref' is a preference dataset.*needs an SFT dataset"):
        load_examples(["demo_pref"], CFG, kind="sft")


def test_kto_tags_from_json_and_csv(tmp_path):
    assert [e.kto_tag for e in load_examples(["demo_kto"], CFG, kind="kto")][:2] == [True, False]
    (tmp_path / "k.csv").write_text("instruction,output,label\nQ,A,false\nQ,B,yes\n")
    cfg = _registry(tmp_path, {"k": {"file_name": "k.csv", "columns": {"kto_tag": "label"}}})
    with pytest.raises(DataError, match=r"k.csv row 1: column 'label' \(kto_tag\) must be true or false"):
        load_examples(["k"], cfg, kind="kto")
    assert load_examples(["k"], {**cfg, "on_bad_row": "skip"}, kind="kto")[0].kto_tag is False


def test_pretraining_text_column():
    assert (
        load_texts(["demo_pt"], CFG)[0] == "LoRA adds low-rank matrices to frozen weights."
    )  # LLaMA-Factory: prompt -> text
    spec = resolve_dataset(str(DATA / "demo_pt.jsonl"), DATA)  # a bare path reads the `text` column
    assert to_text(Row({"text": "doc"}, "here"), spec) == "doc"


# ---- file types ---------------------------------------------------------------------------------


def _write_alpaca(path: Path) -> None:
    if path.suffix == ".json":
        path.write_text(json.dumps(ALPACA_ROWS, ensure_ascii=False, indent=1), encoding="utf-8")
    elif path.suffix == ".jsonl":
        _jsonl(path, ALPACA_ROWS)
    else:
        import pandas as pd

        frame = pd.DataFrame(ALPACA_ROWS)
        frame.to_csv(path, index=False) if path.suffix == ".csv" else frame.to_parquet(path)


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".parquet"])
def test_every_file_type_reads_the_same_examples(tmp_path, suffix):
    _write_alpaca(tmp_path / f"rows{suffix}")
    assert [e.messages for e in load_examples([str(tmp_path / f"rows{suffix}")], CFG)] == ALPACA_MESSAGES


def test_json_lines_named_json_read_like_datasets_reads_them(tmp_path):
    _jsonl(tmp_path / "lines.json", ALPACA_ROWS)
    examples = load_examples([str(tmp_path / "lines.json")], CFG)
    assert [e.messages for e in examples] == ALPACA_MESSAGES and examples[1].where.endswith("lines.json:2 row 1")


def test_folder_of_mixed_files_and_max_samples(tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    for suffix in (".csv", ".json", ".jsonl", ".parquet"):
        _write_alpaca(folder / f"part{suffix}")
    cfg = _registry(tmp_path, {"set": {"file_name": "set"}})
    assert [e.messages for e in load_examples(["set"], cfg)] == ALPACA_MESSAGES * 4
    assert len(load_examples(["set"], {**cfg, "max_samples": 3})) == 3


def test_folder_file_named_without_a_leading_word_is_the_train_split(tmp_path):
    """A file name that starts with no split word ("-rows.jsonl") names no split: the folder is "train"."""
    folder = tmp_path / "set"
    folder.mkdir()
    _jsonl(folder / "-rows.jsonl", ALPACA_ROWS)
    cfg = _registry(tmp_path, {"set": {"file_name": "set"}})
    assert [e.messages for e in load_examples(["set"], cfg)] == ALPACA_MESSAGES


def test_parquet_keeps_nested_sharegpt_conversations(tmp_path):
    import pandas as pd

    rows = json.loads((DATA / "demo_sharegpt.json").read_text(encoding="utf-8"))
    pd.DataFrame(rows).to_parquet(tmp_path / "s.parquet")
    cfg = _registry(tmp_path, {"s": {"file_name": "s.parquet", "formatting": "sharegpt"}})
    assert [e.messages for e in load_examples(["s"], cfg)] == [
        e.messages for e in load_examples(["demo_sharegpt"], CFG)
    ]


def test_csv_with_its_own_columns_maps_through_columns():
    example = load_examples(["demo_law_csv"], CFG)[0]
    assert example.messages == [
        {"role": "user", "content": "劳动合同\n试用期可以不签劳动合同吗？"},
        {"role": "assistant", "content": "不可以。试用期包含在劳动合同期限内，用人单位应当订立书面劳动合同。"},
    ]
    assert example.where.endswith("demo_law.csv row 0")


def test_every_registered_demo_dataset_resolves():
    for name, entry in json.loads((DATA / "dataset_info.json").read_text(encoding="utf-8")).items():
        spec = resolve_dataset(name, DATA)
        assert spec.files == [DATA / entry["file_name"]]


# ---- registry errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"file_name": "d.json", "colums": {}}, "unknown key 'colums'. Fix: did you mean 'columns'"),
        ({"hf_hub_url": "x/y"}, "hf_hub_url .*reads local files only.*file_name"),
        ({"file_name": "d.json", "formatting": "sharegtp"}, "formatting 'sharegtp' is not one of"),
        (
            {"file_name": "d.json", "columns": {"respone": "out"}},
            "unknown columns key 'respone'. Fix: did you mean 'response'",
        ),
        ({"file_name": "d.json", "tags": {"role_tag": "r"}}, "tags apply to sharegpt/openai"),
        (
            {"file_name": "d.json", "ranking": True, "columns": {"kto_tag": "t"}},
            "either a preference set .* or a KTO set",
        ),
        ({"file_name": "d.md"}, r"file type '.md'; supported: .json, .jsonl, .csv, .parquet, .txt"),
        ({"file_name": "folder"}, "folder .* has no data files"),  # a README is not rows (hub copies have one)
        ({"file_name": "missing.json"}, "missing.json does not exist"),
    ],
)
def test_registry_mistakes_name_the_entry_and_the_fix(tmp_path, entry, message):
    (tmp_path / "d.json").write_text("[]")
    (tmp_path / "d.md").write_text("x")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.md").write_text("x")
    _registry(tmp_path, {"d": entry})
    with pytest.raises(DataError, match=message):
        resolve_dataset("d", tmp_path)


def test_plan_time_resolution_imports_nothing_heavy():
    code = "import launcher.plan; from launcher.data.datasets import resolve_dataset; resolve_dataset('demo_law_csv', 'data')"
    assert imported_after(code, ("torch", "transformers", "datasets", "pandas", "pyarrow")) == []


# ---- bad rows -----------------------------------------------------------------------------------

GOOD = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
BAD_LINES = {
    "malformed JSON": ('{"conversations": [', r"bad.jsonl:2 row 1: invalid JSON line"),
    "missing column": (json.dumps({"dialog": []}), r"bad.jsonl:2 row 1: missing or empty column 'conversations'"),
    "wrong role order": (
        json.dumps({"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]}),
        r"bad.jsonl:2 row 1: wrong role order: turn 1 is 'assistant'",
    ),
    "empty conversation": (
        json.dumps({"conversations": [{"from": "system", "value": "s"}]}),
        r"bad.jsonl:2 row 1: empty conversation",
    ),
    "ends with the user": (
        json.dumps({"conversations": [{"from": "human", "value": "q"}]}),
        r"bad.jsonl:2 row 1: the conversation must end with an assistant turn",
    ),
    "unknown role": (
        json.dumps({"conversations": [{"from": "bot", "value": "a"}]}),
        r"bad.jsonl:2 row 1 message 1: unknown role from='bot'",
    ),
    "bad function call": (
        json.dumps({"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "f(x)"}]}),
        r"bad.jsonl:2 row 1 message 2: a function call must be JSON",
    ),
}


def _bad_dataset(tmp_path: Path, bad_line: str) -> dict:
    (tmp_path / "bad.jsonl").write_text("\n".join([json.dumps(GOOD), bad_line, json.dumps(GOOD)]) + "\n")
    return _registry(tmp_path, {"bad": {"file_name": "bad.jsonl", "formatting": "sharegpt"}})


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_row_is_an_error_naming_file_and_line(tmp_path, case):
    bad_line, message = BAD_LINES[case]
    with pytest.raises(DataError, match=message):
        load_examples(["bad"], _bad_dataset(tmp_path, bad_line))


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_on_bad_row_skip_skips_counts_and_logs(tmp_path, caplog, case):
    cfg = {**_bad_dataset(tmp_path, BAD_LINES[case][0]), "on_bad_row": "skip"}
    with caplog.at_level(logging.WARNING, logger="launcher.data"):
        examples = load_examples(["bad"], cfg)
    assert [e.where.rsplit(" ", 1)[-1] for e in examples] == ["0", "2"]
    assert any("bad.jsonl:2 row 1" in record.getMessage() for record in caplog.records)


def test_skip_still_refuses_a_dataset_with_no_good_row(tmp_path):
    cfg = {**_registry(tmp_path, {"d": {"file_name": "d.jsonl", "formatting": "sharegpt"}}), "on_bad_row": "skip"}
    _jsonl(tmp_path / "d.jsonl", [{"messages": []}] * 3)
    with pytest.raises(DataError, match=r"every row is bad \(3 skipped\).*Fix: check its columns"):
        load_examples(["d"], cfg)


def test_malformed_json_array_names_the_line_even_when_skipping(tmp_path):
    (tmp_path / "d.json").write_text(
        '[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "a" "output": "b"}\n]'
    )
    with pytest.raises(DataError, match=r"d.json:3: invalid JSON"):
        load_examples([str(tmp_path / "d.json")], {**CFG, "on_bad_row": "skip"})


def test_on_bad_row_is_a_recipe_key():
    recipe = ROOT / "recipes" / "sft_tiny.yaml"
    assert load_recipe(recipe, ["data.on_bad_row=skip"])["data"]["on_bad_row"] == "skip"
    assert load_recipe(recipe)["data"]["on_bad_row"] == "error"
    with pytest.raises(RecipeError, match="data.on_bad_row"):
        load_recipe(recipe, ["data.on_bad_row=ignore"])
