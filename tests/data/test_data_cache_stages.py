"""The tokenized-data cache under the other stages' builders: pair (dpo, orpo, rm), kto and pt blocks.

Oracle: the uncached builder on the same settings. A second call must load the entry (log line,
manifest untouched, no new entry), every setting the builder reads must name a new entry, and
each kind must have entries of its own."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from launcher.data.blocks import block_data, build_blocks
from launcher.data.cache import MANIFEST, cache_key
from launcher.data.pairs import build_kto_data, build_pair_data, kto_data, pair_data
from launcher.data.pipeline import sft_data
from launcher.model.builtin import builtin_source_dir
from launcher.recipe.load import load_recipe

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data"


@dataclass(frozen=True)
class Kind:
    recipe: str
    dataset: str
    cutoff_len: int  # one that cuts rows (pair, kto) or leaves a tail (pt): the counts are not all 0
    cached: Callable  # the wrapper the stage calls
    fresh: Callable  # the uncached builder


KINDS = {
    "pair": Kind("dpo_tiny", "demo_pref", 36, pair_data, build_pair_data),
    "kto": Kind("kto_tiny", "demo_kto", 36, kto_data, build_kto_data),
    "pt": Kind("pt_tiny", "demo_pt", 64, block_data, build_blocks),
}


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(builtin_source_dir("builtin:tiny-qwen2"))


def data_cfg(tmp_path: Path, kind: Kind) -> dict:
    """The recipe's data settings over a JSONL copy of its dataset ending in one unparsable row (skipped)."""
    entry = json.loads((DATA / "dataset_info.json").read_text(encoding="utf-8"))[kind.dataset]
    text = (DATA / entry["file_name"]).read_text(encoding="utf-8")
    rows = json.loads(text) if entry["file_name"].endswith(".json") else [json.loads(x) for x in text.splitlines()]
    lines = [json.dumps(row, ensure_ascii=False) for row in rows] + ['{"broken"']
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "dataset_info.json").write_text(json.dumps({kind.dataset: {**entry, "file_name": "rows.jsonl"}}))
    cfg = load_recipe(ROOT / f"recipes/{kind.recipe}.yaml")["data"]
    return {
        **cfg,
        "dataset_dir": str(tmp_path),
        "on_bad_row": "skip",
        "cutoff_len": kind.cutoff_len,
        "cache_dir": str(tmp_path / "cache"),
    }


def entries(cfg: dict) -> list[Path]:
    return sorted(p for p in Path(cfg["cache_dir"]).iterdir() if p.is_dir())


def stamp(entry: Path) -> tuple:
    stat = (entry / MANIFEST).stat()
    return stat.st_ino, stat.st_mtime_ns


@pytest.mark.parametrize("name", KINDS)
def test_cached_equals_the_builder_and_the_second_call_loads_it(tokenizer, tmp_path, caplog, name):
    kind = KINDS[name]
    cfg = data_cfg(tmp_path, kind)
    caplog.set_level(logging.INFO, logger="launcher.data")
    first = kind.cached([kind.dataset], cfg, tokenizer)
    (entry,) = entries(cfg)
    assert entry.name.startswith(f"{name}-")
    assert any(r.message.startswith(f"data cache: built {entry}") for r in caplog.records)
    before = stamp(entry)
    caplog.clear()
    second = kind.cached([kind.dataset], cfg, tokenizer)
    assert [r.message for r in caplog.records] == [f"data cache: loaded {entry}"], "not built again"
    assert stamp(entry) == before and entries(cfg) == [entry]
    fresh = kind.fresh([kind.dataset], cfg, tokenizer)
    assert first == second == fresh  # rows column for column and every count
    if name == "kto":  # == holds for 1 == True too: the label must come back a bool, as TRL's KTO reads it
        assert {type(r["label"]) for r in second.rows} == {bool}
    assert fresh.skipped == 1
    assert (fresh.tail_tokens > 0 and fresh.documents > 0) if name == "pt" else fresh.truncated > 0


@pytest.mark.parametrize("name", KINDS)
def test_a_changed_cutoff_len_makes_a_new_entry(tokenizer, tmp_path, name):
    kind = KINDS[name]
    cfg = data_cfg(tmp_path, kind)
    kind.cached([kind.dataset], cfg, tokenizer)
    (old,) = entries(cfg)
    before = stamp(old)
    longer = {**cfg, "cutoff_len": kind.cutoff_len + 16}
    assert kind.cached([kind.dataset], longer, tokenizer) == kind.fresh([kind.dataset], longer, tokenizer)
    assert len(entries(cfg)) == 2 and stamp(old) == before
    assert kind.cached([kind.dataset], cfg, tokenizer) == kind.fresh([kind.dataset], cfg, tokenizer)


def test_kinds_never_share_an_entry(tokenizer, tmp_path):
    """The same datasets and settings under each kind name different entries, each read back by its own kind."""
    cfg = data_cfg(tmp_path, KINDS["pair"])
    keys = {
        kind: cache_key(kind, ["demo_pref"], cfg, tokenizer, {"template": "auto"})
        for kind in ("sft", "pair", "kto", "pt")
    }
    assert len(set(keys.values())) == len(keys), keys
    for name, kind in KINDS.items():  # one cache folder for every kind
        (tmp_path / name).mkdir()
        kind_cfg = {**data_cfg(tmp_path / name, kind), "cache_dir": cfg["cache_dir"]}
        assert kind.cached([kind.dataset], kind_cfg, tokenizer) == kind.fresh([kind.dataset], kind_cfg, tokenizer)
    sft_cfg = {**load_recipe(ROOT / "recipes/sft_tiny.yaml")["data"], "cache_dir": cfg["cache_dir"]}
    sft_data(sft_cfg["datasets"], sft_cfg, tokenizer)
    assert sorted(p.name.split("-")[0] for p in entries(cfg)) == ["kto", "pair", "pt", "sft"]


def test_rm_reads_the_pair_entry(tokenizer, tmp_path, caplog):
    """rm's scored pairs are the cached pairs joined: a dpo run's entry serves it, and the other way round."""
    from launcher.data.pairs import scored_pairs

    cfg = data_cfg(tmp_path, KINDS["pair"])
    pairs = pair_data(["demo_pref"], cfg, tokenizer)
    caplog.set_level(logging.INFO, logger="launcher.data")
    caplog.clear()
    scored = scored_pairs(["demo_pref"], cfg, tokenizer)
    (entry,) = entries(cfg)
    assert [r.message for r in caplog.records] == [f"data cache: loaded {entry}"]
    assert scored.rows == [
        {"chosen_ids": r["prompt_ids"] + r["chosen_ids"], "rejected_ids": r["prompt_ids"] + r["rejected_ids"]}
        for r in pairs.rows
    ]
    assert (scored.dropped, scored.skipped, scored.truncated) == (pairs.dropped, pairs.skipped, pairs.truncated)
