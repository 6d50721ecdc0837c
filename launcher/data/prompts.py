"""Prompts for generation (stage ppo): each example's conversation up to its last reply, as token ids."""

from __future__ import annotations

from launcher.data.pairs import split_reply
from launcher.data.pipeline import load_examples
from launcher.data.registry import resolve_dataset
from launcher.data.rows import PROMPT_KINDS, require_kind


def prompt_rows(names: list[str], data_cfg: dict, tokenizer, template: str) -> tuple[list[dict], int]:
    """{"input_ids"}: each example's conversation up to its last reply, with the generation prompt.
    SFT datasets give their last user turn's context; preference datasets their prompt. A prompt
    that fills data.cutoff_len leaves no room to reply: dropped and counted."""
    specs = {name: resolve_dataset(name, data_cfg["dataset_dir"]) for name in names}
    for name, spec in specs.items():
        require_kind(name, spec, PROMPT_KINDS)
    kinds = {name: spec.kind for name, spec in specs.items()}
    rows, dropped = [], 0
    for kind in PROMPT_KINDS:
        named = [n for n in names if kinds[n] == kind]
        for example in load_examples(named, data_cfg, kind) if named else []:
            messages = example.messages if kind == "sft" else example.messages + [example.chosen]
            prompt, _ = split_reply(tokenizer, messages, example.tools, template)
            if len(prompt) >= data_cfg["cutoff_len"]:
                dropped += 1
                continue
            rows.append({"input_ids": prompt})
    return rows, dropped
