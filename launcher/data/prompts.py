"""Prompts for generation (stage ppo): each example's conversation up to its last reply, as token ids."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from launcher.data.bad_rows import BadRows
from launcher.data.cache import templated_data
from launcher.data.datasets import resolve_dataset
from launcher.data.defaults import WAIT_S
from launcher.data.kinds import PROMPT_KINDS
from launcher.data.pairs import split_reply
from launcher.data.pipeline import load_examples
from launcher.data.rows import require_kind


@dataclass
class PromptData:
    rows: list[dict]  # {"input_ids": the prompt, with the generation prompt}
    dropped: int  # prompts that fill data.cutoff_len, leaving no room to reply
    skipped: int = 0  # bad rows skipped with data.on_bad_row: skip


def build_prompt_data(names: list[str], data_cfg: Mapping[str, Any], tokenizer, template: str) -> PromptData:
    """Each example's conversation up to its last reply, with the generation prompt. SFT datasets give
    their last user turn's context; preference datasets their prompt. A prompt that fills
    data.cutoff_len leaves no room to reply: dropped and counted."""
    specs = {name: resolve_dataset(name, data_cfg["dataset_dir"]) for name in names}
    for name, spec in specs.items():
        require_kind(name, spec, PROMPT_KINDS)
    bad = BadRows.of(data_cfg)
    rows, dropped = [], 0
    for kind in PROMPT_KINDS:
        named = [n for n in names if specs[n].kind == kind]
        for example in load_examples(named, data_cfg, kind, bad) if named else []:
            messages = example.messages
            if kind != "sft":
                assert example.chosen is not None  # a preference row has its chosen reply
                messages = [*messages, example.chosen]
            prompt, _ = split_reply(tokenizer, messages, example.tools, template)
            if len(prompt) >= data_cfg["cutoff_len"]:
                dropped += 1
                continue
            rows.append({"input_ids": prompt})
    return PromptData(rows, dropped, len(bad.skipped))


def prompt_data(
    names: list[str], data_cfg: Mapping[str, Any], tokenizer, template: str, timeout_s: float = WAIT_S
) -> PromptData:
    """build_prompt_data through the tokenized-data cache (data.cache, data.cache_dir; see cache.py)."""
    return templated_data(PromptData, "prompt", build_prompt_data, names, data_cfg, tokenizer, template, timeout_s)
