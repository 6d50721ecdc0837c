"""`launch data RECIPE --preview N [--dump FILE]`: the processed rows a run of the recipe's stage would train on.

Each stage's rows come from the builder its trainer uses (the row format its spec's `rows` names,
launcher/registry.py), so the preview and the dump show exactly what a run reads; only the
tokenizer is loaded."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from itertools import groupby
from pathlib import Path
from typing import Any

from launcher.data.blocks import block_data
from launcher.data.packing import pack_examples
from launcher.data.pairs import PreferenceData, kto_data, pair_data, scored_pairs
from launcher.data.pipeline import sft_data
from launcher.data.prompts import PromptData, answer_data, prompt_data
from launcher.data.tokenize import IGNORE_INDEX
from launcher.errors import DataError
from launcher.registry import resolve, stage_spec

OPEN, CLOSE = "⟦", "⟧"  # around trained text; everything outside is masked (label -100)


def load_tokenizer(model_cfg: dict):
    """The recipe's tokenizer; a builtin model's committed tokenizer needs no weights built."""
    from transformers import AutoTokenizer

    from launcher.model.builtin import builtin_source_dir, is_builtin

    path = builtin_source_dir(model_cfg["path"]) if is_builtin(model_cfg["path"]) else model_cfg["path"]
    return AutoTokenizer.from_pretrained(path, trust_remote_code=model_cfg["trust_remote_code"])


def decode(tokenizer, ids: list[int]) -> str:
    """The ids as text, special tokens and spacing as the model sees them."""
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _runs(labels: list[int]) -> list[tuple[bool, int, int]]:
    """(trained, start, end) for each run of masked / trained positions."""
    out, position = [], 0
    for trained, group in groupby(label != IGNORE_INDEX for label in labels):
        length = len(list(group))
        out.append((trained, position, position + length))
        position += length
    return out


def _labels_line(labels: list[int]) -> str:
    """Labels with each masked run shown as -100×N."""
    parts = []
    for trained, start, end in _runs(labels):
        parts += [str(x) for x in labels[start:end]] if trained else [f"{IGNORE_INDEX}×{end - start}"]
    return "[" + ", ".join(parts) + "]"


def format_example(tokenizer, index: int, example: dict) -> str:
    ids, labels = example["input_ids"], example["labels"]
    text = "".join(
        (OPEN if trained else "") + decode(tokenizer, ids[start:end]) + (CLOSE if trained else "")
        for trained, start, end in _runs(labels)
    )
    trained = sum(label != IGNORE_INDEX for label in labels)
    return (
        f"--- example {index}: {len(ids)} tokens, {trained} trained ---\n"
        f"text (trained in {OPEN} {CLOSE}, the rest is masked):\n{text}\n"
        f"input_ids: {ids}\nlabels:    {_labels_line(labels)}\n"
    )


def format_row(noun: str, captions: dict[str, str], tokenizer, index: int, row: dict) -> str:
    """A non-sft row: each column of `captions` under its caption, token ids decoded; a KTO row's label in the header."""
    tag = f": {'desirable' if row['label'] else 'undesirable'}" if "label" in row else ""
    texts = "".join(
        f"{caption}:\n{row[column]}\n"  # a text column (grpo's answer), shown as it is
        if isinstance(row[column], str)
        else f"{caption} ({len(row[column])} tokens):\n{decode(tokenizer, row[column])}\n"
        for column, caption in captions.items()
    )
    return f"--- {noun} {index}{tag} ---\n{texts}"


def token_count(rows: list[dict]) -> int:
    """Tokens over every *_ids column, as the worker's data summary counts them (labels are not tokens)."""
    return sum(len(ids) for row in rows for column, ids in row.items() if column.endswith("_ids"))


@dataclass
class StageRows:
    rows: list[dict]  # as the stage's trainer reads them; what --dump writes
    counts: str  # the report's closing lines


def _sft(recipe: Mapping[str, Any], tokenizer) -> StageRows:
    """Examples through the tokenized-data cache, as the sft worker reads them; packing reported, not applied."""
    data_cfg = recipe["data"]
    data = sft_data(data_cfg["datasets"], data_cfg, tokenizer, recipe["model"]["template"])
    # no padding before collation: the attention mask is all ones
    rows = [{**e, "attention_mask": [1] * len(e["input_ids"])} for e in data.examples]
    tokens = token_count(data.examples)
    trained = sum(label != IGNORE_INDEX for e in data.examples for label in e["labels"])
    share = f"{100 * trained / tokens:.1f}%" if tokens else "-"
    counts = (
        f"examples: {len(data.examples)}   dropped (no trainable token within data.cutoff_len="
        f"{data_cfg['cutoff_len']}): {data.dropped}   bad rows skipped: {data.skipped}\n"
        f"tokens: {tokens:,}   trained tokens: {trained:,} ({share})"
    )
    if data_cfg["packing"] != "none" and data.examples:
        packed = pack_examples(data.examples, data_cfg["cutoff_len"])
        counts += (
            f"\npacking ({data_cfg['packing']}): {len(data.examples)} examples -> {len(packed.rows)} rows of "
            f"{data_cfg['cutoff_len']} tokens, efficiency {packed.efficiency:.2%} (real tokens / row capacity)"
        )
    return StageRows(rows, counts)


def _blocks(recipe: Mapping[str, Any], tokenizer) -> StageRows:
    """cutoff_len blocks of EOS-joined documents (launcher/data/blocks.py)."""
    data_cfg = recipe["data"]
    data = block_data(data_cfg["datasets"], data_cfg, tokenizer)
    return StageRows(
        data.blocks,
        (
            f"documents: {data.documents}   blocks: {len(data.blocks)}   tokens: {token_count(data.blocks):,}   "
            f"tail tokens dropped (after the last whole block of data.cutoff_len={data_cfg['cutoff_len']}): "
            f"{data.tail_tokens}   bad rows skipped: {data.skipped}"
        ),
    )


def _preference_counts(data: PreferenceData, data_cfg: Mapping[str, Any]) -> str:
    return (
        f"rows: {len(data.rows)}   truncated (longer than data.cutoff_len={data_cfg['cutoff_len']}): "
        f"{data.truncated}   dropped (empty reply): {data.dropped}   bad rows skipped: {data.skipped}   "
        f"tokens: {token_count(data.rows):,}"
    )


def _preference(build: Callable[..., PreferenceData], recipe: Mapping[str, Any], tokenizer) -> StageRows:
    """Pairs: build(names, data_cfg, tokenizer, template), the builder the stage's trainer calls."""
    data_cfg = recipe["data"]
    data = build(data_cfg["datasets"], data_cfg, tokenizer, recipe["model"]["template"])
    return StageRows(data.rows, _preference_counts(data, data_cfg))


def _kto(recipe: Mapping[str, Any], tokenizer) -> StageRows:
    """Unpaired replies (launcher/data/pairs.py kto_data), counted by label."""
    data_cfg = recipe["data"]
    data = kto_data(data_cfg["datasets"], data_cfg, tokenizer, recipe["model"]["template"])
    desirable = sum(row["label"] for row in data.rows)
    return StageRows(
        data.rows,
        f"{_preference_counts(data, data_cfg)}\ndesirable: {desirable}   undesirable: {len(data.rows) - desirable}",
    )


def _prompts(build: Callable[..., PromptData], recipe: Mapping[str, Any], tokenizer) -> StageRows:
    """The prompts replies are sampled for: build(names, data_cfg, tokenizer, template) (launcher/data/prompts.py)."""
    data_cfg = recipe["data"]
    data = build(data_cfg["datasets"], data_cfg, tokenizer, recipe["model"]["template"])
    return StageRows(
        data.rows,
        f"prompts: {len(data.rows)}   dropped (the prompt fills data.cutoff_len={data_cfg['cutoff_len']}): "
        f"{data.dropped}   bad rows skipped: {data.skipped}   tokens: {token_count(data.rows):,}",
    )


@dataclass(frozen=True)
class StageView:
    noun: str  # what one row is, in the report
    build: Callable[[Mapping[str, Any], object], StageRows]  # (recipe, tokenizer) -> the stage's rows and counts
    captions: dict[str, str] | None = None  # token-id column -> caption; None: sft's masked-text format

    def show(self, tokenizer, index: int, row: dict) -> str:
        if self.captions is None:
            return format_example(tokenizer, index, row)
        return format_row(self.noun, self.captions, tokenizer, index, row)


PAIR = {"prompt_ids": "prompt", "chosen_ids": "chosen", "rejected_ids": "rejected"}
# The row formats a StageSpec.rows names ("launcher.data.preview:<NAME>"), each with the builder its trainer calls.
SFT_ROWS = StageView("example", _sft)
BLOCK_ROWS = StageView("block", _blocks, {"input_ids": "text, every token trained"})
PAIR_ROWS = StageView("pair", partial(_preference, pair_data), PAIR)
# a reward model scores each whole sequence at its last token: its rows are prompt + reply, unsplit
SCORED_PAIR_ROWS = StageView(
    "pair",
    partial(_preference, scored_pairs),
    {"chosen_ids": "chosen, prompt + reply", "rejected_ids": "rejected, prompt + reply"},
)
KTO_ROWS = StageView("example", _kto, {"prompt_ids": "prompt", "completion_ids": "completion"})
PROMPT_ROWS = StageView("prompt", partial(_prompts, prompt_data), {"input_ids": "prompt"})
# grpo: the prompt and the reference answer its rewards compare completions with
ANSWER_ROWS = StageView("prompt", partial(_prompts, answer_data), {"input_ids": "prompt", "answer": "answer"})


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    """Every row as one JSON line, columns as the stage's trainer reads them."""
    with Path(path).open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def preview(recipe: Mapping[str, Any], count: int, dump_path: str | None) -> str:
    """The report `launch data` prints; writes the dump when asked."""
    view = resolve(stage_spec(recipe["stage"]).rows)
    tokenizer = load_tokenizer(recipe["model"])
    data = view.build(recipe, tokenizer)
    if not data.rows:  # the run would stop here too: a non-zero exit, not an empty report
        raise DataError(
            f"stage {recipe['stage']} gets no {view.noun}s from {recipe['data']['datasets']} "
            f"({data.counts.replace(chr(10), '; ')}). Fix: raise data.cutoff_len, or use datasets with "
            "rows the stage can train on"
        )
    shown = [view.show(tokenizer, i, row) for i, row in enumerate(data.rows[:count])]
    report = "\n".join([*shown, data.counts])
    if dump_path:
        write_jsonl(dump_path, data.rows)
        report += f"\nwrote {len(data.rows)} {view.noun}s to {dump_path}"
    return report
