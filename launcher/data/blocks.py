"""Continued pre-training data: documents joined with EOS, cut into cutoff_len blocks.

Every block is exactly cutoff_len tokens, so no batch holds padding; the tail shorter than a
block is dropped (and counted), as transformers' run_clm example does, unless the whole
corpus is shorter than one block. Labels are the input ids: every token is trained.

block_data is build_blocks through the tokenized-data cache (cache.py, kind "pt"); an entry holds
the input ids only, the labels are copied from them on load.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from launcher.data.bad_rows import BadRows
from launcher.data.cache import cached_data
from launcher.data.defaults import WAIT_S
from launcher.data.pipeline import load_texts
from launcher.errors import DataError


@dataclass
class BlockData:
    blocks: list[dict]  # {"input_ids": [...], "labels": [...]}
    documents: int
    tail_tokens: int  # tokens after the last whole block, not trained
    skipped: int = 0  # bad rows skipped with data.on_bad_row: skip


def build_blocks(names: list[str], data_cfg: Mapping[str, Any], tokenizer) -> BlockData:
    """The named text datasets as cutoff_len-token blocks of EOS-separated documents."""
    if tokenizer.eos_token_id is None:
        raise DataError(
            "the tokenizer has no eos token to separate documents with. Fix: use a tokenizer with an eos_token"
        )
    bad = BadRows.of(data_cfg)
    texts = load_texts(names, data_cfg, bad)
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream += ids + [tokenizer.eos_token_id]
    size = data_cfg["cutoff_len"]
    whole = len(stream) // size * size if len(stream) >= size else len(stream)
    blocks = [stream[start : start + size] for start in range(0, whole, size)]
    return BlockData(
        [{"input_ids": b, "labels": list(b)} for b in blocks], len(texts), len(stream) - whole, len(bad.skipped)
    )


def block_data(names: list[str], data_cfg: Mapping[str, Any], tokenizer, timeout_s: float = WAIT_S) -> BlockData:
    """build_blocks through the tokenized-data cache (data.cache, data.cache_dir; see cache.py)."""
    return cached_data(
        BlockData,
        "pt",
        names,
        data_cfg,
        tokenizer,
        {},
        lambda: build_blocks(names, data_cfg, tokenizer),
        timeout_s,
        store=lambda block: {"input_ids": block["input_ids"]},  # labels equal them: not stored twice
        load=lambda row: {"input_ids": row["input_ids"], "labels": list(row["input_ids"])},
    )
