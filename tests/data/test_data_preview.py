"""`launch data RECIPE --preview N --dump FILE` for the stages other than sft (tests/test_data_templates.py has sft).

Oracle: the builder the stage's trainer calls (launcher/stages/*.py) on the same recipe, and the
tokenizer's decode. The report must be the first N of its rows as text and its counts, nothing
else; the dump must hold every one of its rows, column for column."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from launcher.cli import main
from launcher.data.blocks import build_blocks
from launcher.data.pairs import PreferenceData, build_kto_data, build_pair_data
from launcher.model.builtin import builtin_source_dir
from launcher.recipe.load import load_recipe
from launcher.recipe.schema import STAGES as SCHEMA_STAGES
from launcher.registry import STAGES

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data"
SHOWN = 2
CUTOFF = 36  # between the tiny datasets' shortest and longest prompts: some rows are cut (ppo: dropped), the rest kept
PAIR = {"prompt_ids": "prompt", "chosen_ids": "chosen", "rejected_ids": "rejected"}


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(builtin_source_dir("builtin:tiny-qwen2"))


def decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def tokens(rows: list[dict]) -> int:
    """Every token-id column, as the worker's data summary counts them."""
    return sum(len(ids) for row in rows for column, ids in row.items() if column.endswith("_ids"))


def with_bad_row(tmp_path: Path, name: str) -> list[str]:
    """Overrides reading the registered dataset `name` from a JSONL copy ending in one unparsable line, skipped."""
    entry = json.loads((DATA / "dataset_info.json").read_text(encoding="utf-8"))[name]
    source = DATA / entry["file_name"]
    text = source.read_text(encoding="utf-8")
    rows = json.loads(text) if source.suffix == ".json" else [json.loads(line) for line in text.splitlines()]
    lines = [json.dumps(row, ensure_ascii=False) for row in rows] + ['{"broken"']
    (tmp_path / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "dataset_info.json").write_text(json.dumps({name: {**entry, "file_name": f"{name}.jsonl"}}))
    return [f"data.dataset_dir={tmp_path}", "data.on_bad_row=skip"]


# ---- oracles: (recipe, tokenizer) -> (the stage's rows, the counts the report must end with) ----------------------


def pt_oracle(recipe: dict, tokenizer) -> tuple[list[dict], str]:
    cfg = recipe["data"]
    data = build_blocks(cfg["datasets"], cfg, tokenizer)
    assert data.skipped == 1 and data.tail_tokens > 0  # the counts under test are not all zero
    return data.blocks, (
        f"documents: {data.documents}   blocks: {len(data.blocks)}   tokens: {tokens(data.blocks):,}   "
        f"tail tokens dropped (after the last whole block of data.cutoff_len={cfg['cutoff_len']}): "
        f"{data.tail_tokens}   bad rows skipped: 1"
    )


def preference_counts(data: PreferenceData) -> str:
    assert data.skipped == 1 and data.truncated > 0  # the counts under test are not all zero
    return (
        f"rows: {len(data.rows)}   truncated (longer than data.cutoff_len={CUTOFF}): {data.truncated}   "
        f"dropped (empty reply): {data.dropped}   bad rows skipped: 1   tokens: {tokens(data.rows):,}"
    )


def build(builder: Callable, recipe: dict, tokenizer):
    cfg = recipe["data"]
    return builder(cfg["datasets"], cfg, tokenizer, recipe["model"]["template"])


def pair_oracle(recipe: dict, tokenizer) -> tuple[list[dict], str]:
    data = build(build_pair_data, recipe, tokenizer)
    return data.rows, preference_counts(data)


def rm_oracle(recipe: dict, tokenizer) -> tuple[list[dict], str]:
    from launcher.data.pairs import scored_pairs

    data = build(scored_pairs, recipe, tokenizer)
    return data.rows, preference_counts(data)


def kto_oracle(recipe: dict, tokenizer) -> tuple[list[dict], str]:
    data = build(build_kto_data, recipe, tokenizer)
    desirable = sum(row["label"] for row in data.rows)
    return data.rows, f"{preference_counts(data)}\ndesirable: {desirable}   undesirable: {len(data.rows) - desirable}"


def ppo_oracle(recipe: dict, tokenizer) -> tuple[list[dict], str]:
    from launcher.data.prompts import build_prompt_data

    data = build(build_prompt_data, recipe, tokenizer)
    assert data.dropped > 0 and data.skipped == 1  # the counts under test are not zero
    return data.rows, (
        f"prompts: {len(data.rows)}   dropped (the prompt fills data.cutoff_len={CUTOFF}): {data.dropped}   "
        f"bad rows skipped: 1   tokens: {tokens(data.rows):,}"
    )


def grpo_oracle(recipe: dict, tokenizer) -> tuple[list[dict], str]:
    """ppo's prompts, each with its row's answer column as written in the dataset file."""
    from launcher.data.prompts import build_prompt_data

    data = build(build_prompt_data, recipe, tokenizer)
    assert data.dropped > 0 and data.skipped == 1
    kept = [json.loads(line) for line in (DATA / "demo_grpo.jsonl").read_text().splitlines()]
    lengths = [len(row["input_ids"]) for row in data.rows]
    answers = [row["answer"] for row, length in zip(kept, build_all_lengths(recipe, tokenizer)) if length < 71]
    assert len(answers) == len(lengths)
    rows = [{"input_ids": row["input_ids"], "answer": answer} for row, answer in zip(data.rows, answers)]
    return rows, (
        f"prompts: {len(rows)}   dropped (the prompt fills data.cutoff_len=71): {data.dropped}   "
        f"bad rows skipped: 1   tokens: {tokens(rows):,}"
    )


def build_all_lengths(recipe: dict, tokenizer) -> list[int]:
    """Every prompt's length, none dropped."""
    from launcher.data.prompts import build_prompt_data

    cfg = {**recipe["data"], "cutoff_len": 10_000}
    return [
        len(row["input_ids"])
        for row in build_prompt_data(cfg["datasets"], cfg, tokenizer, recipe["model"]["template"]).rows
    ]


@dataclass(frozen=True)
class Case:
    dataset: str  # the tiny recipe's dataset, read with one bad row
    noun: str  # what the report calls a row
    captions: dict[str, str]  # token-id column -> the caption its decoded text is printed under
    oracle: Callable[[dict, object], tuple[list[dict], str]]
    cutoff: list[str]  # overrides that make the stage cut or drop some rows


SHORT = [f"data.cutoff_len={CUTOFF}"]
CASES = {
    "pt": Case("demo_pt", "block", {"input_ids": "text, every token trained"}, pt_oracle, []),
    "dpo": Case("demo_pref", "pair", PAIR, pair_oracle, SHORT),
    "orpo": Case("demo_pref", "pair", PAIR, pair_oracle, SHORT),
    "rm": Case(
        "demo_pref",
        "pair",
        {"chosen_ids": "chosen, prompt + reply", "rejected_ids": "rejected, prompt + reply"},
        rm_oracle,
        SHORT,
    ),
    "kto": Case("demo_kto", "example", {"prompt_ids": "prompt", "completion_ids": "completion"}, kto_oracle, SHORT),
    # every row read (ppo_tiny's max_samples would stop before the bad last one)
    "ppo": Case("demo_sft", "prompt", {"input_ids": "prompt"}, ppo_oracle, [*SHORT, "data.max_samples=null"]),
    # the prompts are 70-72 tokens long: cutoff 71 drops some
    "grpo": Case(
        "demo_grpo", "prompt", {"input_ids": "prompt", "answer": "answer"}, grpo_oracle, ["data.cutoff_len=71"]
    ),
}


def shown(tokenizer, case: Case, index: int, row: dict) -> str:
    """One row as the report must print it: a header (a KTO row's label in it), then each column decoded."""
    tag = f": {'desirable' if row['label'] else 'undesirable'}" if "label" in row else ""
    texts = "".join(
        f"{caption}:\n{row[column]}\n"  # grpo's answer: text, shown as it is
        if column == "answer"
        else f"{caption} ({len(row[column])} tokens):\n{decode(tokenizer, row[column])}\n"
        for column, caption in case.captions.items()
    )
    return f"--- {case.noun} {index}{tag} ---\n{texts}"


@pytest.mark.parametrize("stage", CASES)
def test_preview_shows_the_stage_builders_rows_and_dumps_them(stage, tmp_path, capsys, tokenizer):
    case, dump = CASES[stage], tmp_path / "dump.jsonl"
    recipe_path = ROOT / "recipes" / f"{stage}_tiny.yaml"
    overrides = [*with_bad_row(tmp_path, case.dataset), *case.cutoff]
    rows, counts = case.oracle(load_recipe(recipe_path, overrides), tokenizer)

    assert main(["data", str(recipe_path), *overrides, "--preview", str(SHOWN), "--dump", str(dump)]) == 0
    report = [shown(tokenizer, case, i, row) for i, row in enumerate(rows[:SHOWN])]
    assert capsys.readouterr().out == "\n".join([*report, counts, f"wrote {len(rows)} {case.noun}s to {dump}"]) + "\n"
    assert [json.loads(line) for line in dump.read_text().splitlines()] == rows


def test_kto_preview_labels_both_kinds_of_reply(capsys):
    # the first two demo_kto replies are one desirable and one undesirable: both labels must be printed
    assert main(["data", str(ROOT / "recipes" / "kto_tiny.yaml"), "--preview", "2"]) == 0
    out = capsys.readouterr().out
    assert "--- example 0: desirable ---" in out and "--- example 1: undesirable ---" in out


def test_every_stage_has_a_preview():
    assert set(STAGES) == set(SCHEMA_STAGES) == set(CASES) | {"sft"}


def test_a_dataset_of_the_wrong_kind_is_reported_with_its_fix(capsys):
    assert main(["data", str(ROOT / "recipes" / "dpo_tiny.yaml"), "data.datasets=[demo_sft]"]) == 2
    err = capsys.readouterr().err
    assert "dataset 'demo_sft' is an SFT dataset" in err and "this stage needs a preference dataset" in err
    assert "Fix:" in err


def test_ppo_refuses_a_dataset_it_cannot_take_prompts_from(capsys):
    # a KTO dataset has no prompt/reply split ppo understands: named, not silently left out
    assert main(["data", str(ROOT / "recipes" / "ppo_tiny.yaml"), "data.datasets=[demo_kto]"]) == 2
    err = capsys.readouterr().err
    assert "dataset 'demo_kto' is a KTO dataset" in err and "this stage needs an SFT dataset" in err and "Fix:" in err
