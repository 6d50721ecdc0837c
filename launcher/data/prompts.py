"""Prompts for generation (stages ppo, grpo): each example's conversation up to its last reply, as token ids;
for grpo also that reply's text, the reference answer its rewards compare completions with."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from launcher.data.bad_rows import BadRows
from launcher.data.cache import templated_data, wait_s
from launcher.data.datasets import resolve_dataset
from launcher.data.defaults import WAIT_S
from launcher.data.kinds import PROMPT_KINDS
from launcher.data.pairs import split_reply
from launcher.data.pipeline import load_examples
from launcher.data.rows import require_kind
from launcher.data.splits import train_and_eval


@dataclass
class PromptData:
    rows: list[dict]  # {"input_ids": the prompt, with the generation prompt} (+ "answer": the reply's text)
    dropped: int  # prompts that fill data.cutoff_len, leaving no room to reply
    skipped: int = 0  # bad rows skipped with data.on_bad_row: skip


def build_prompt_data(
    names: list[str], data_cfg: Mapping[str, Any], tokenizer, template: str, with_answer: bool = False
) -> PromptData:
    """Each example's conversation up to its last reply, with the generation prompt. SFT datasets give
    their last user turn's context; preference datasets their prompt. A prompt that fills
    data.cutoff_len leaves no room to reply: dropped and counted. with_answer: each row also holds the
    reply it was cut from (an SFT row's last reply, e.g. alpaca's output column; a preference row's chosen)."""
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
            rows.append(
                {"input_ids": prompt, "answer": messages[-1]["content"]} if with_answer else {"input_ids": prompt}
            )
    return PromptData(rows, dropped, len(bad.skipped))


def prompt_data(
    names: list[str], data_cfg: Mapping[str, Any], tokenizer, template: str, timeout_s: float = WAIT_S
) -> PromptData:
    """build_prompt_data through the tokenized-data cache (data.cache, data.cache_dir; see cache.py)."""
    return templated_data(PromptData, "prompt", build_prompt_data, names, data_cfg, tokenizer, template, timeout_s)


def _stored(row: dict) -> dict:
    """The answer's UTF-8 bytes as a column of ids: a cache entry holds integer columns only."""
    return {"input_ids": row["input_ids"], "answer_bytes": list(row["answer"].encode("utf-8"))}


def _loaded(row: dict) -> dict:
    return {"input_ids": row["input_ids"], "answer": bytes(row["answer_bytes"]).decode("utf-8")}


def build_answer_data(names: list[str], data_cfg: dict, tokenizer, template: str) -> PromptData:
    """Prompts with their reference answers (stage grpo)."""
    return build_prompt_data(names, data_cfg, tokenizer, template, with_answer=True)


def answer_data(
    names: list[str], data_cfg: Mapping[str, Any], tokenizer, template: str, timeout_s: float = WAIT_S
) -> PromptData:
    """build_answer_data through the tokenized-data cache, the answer stored as its bytes."""
    return templated_data(
        PromptData,
        "prompt_answer",
        build_answer_data,
        names,
        data_cfg,
        tokenizer,
        template,
        timeout_s,
        store=_stored,
        load=_loaded,
    )


def rollout_prompts(recipe: Mapping[str, Any], tokenizer, build: Callable[..., PromptData]) -> tuple[Any, list]:
    """(prompts, their rows) of a stage that samples its own replies (ppo: prompt_data, grpo: answer_data). There are
    no evaluation rows: those stages' specs refuse data.eval_datasets and data.val_size."""
    data_cfg = recipe["data"]
    prompts, rows, _ = train_and_eval(
        recipe,
        lambda names: build(names, data_cfg, tokenizer, recipe["model"]["template"], wait_s(recipe)),
        lambda data: (
            f"no prompts left in {data_cfg['datasets']} ({data.dropped} dropped: the prompt alone fills "
            f"data.cutoff_len={data_cfg['cutoff_len']}). Fix: raise data.cutoff_len"
        ),
    )
    return prompts, rows


def rollout_summary(prompts: PromptData, rows: list) -> dict:
    """The data summary the worker prints for a stage that samples its own replies: no evaluation rows."""
    return {
        "examples": len(rows),
        "eval_examples": 0,
        "dropped": prompts.dropped,
        "skipped_bad_rows": prompts.skipped,
        "tokens": sum(len(r["input_ids"]) for r in rows),
    }
