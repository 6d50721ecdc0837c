"""Preference pairs (dpo, orpo) and KTO examples as token ids: prompt_ids + completion ids.

The prompt and each reply are rendered and tokenized exactly as SFT does (same template,
same masks: a reply is trained from the end of its generation prompt through its eos), so
a preference stage sees the chat format its SFT stage trained on. The rows have the
columns TRL's preference collators read (prompt_ids, chosen_ids, rejected_ids; KTO:
prompt_ids, completion_ids, label).

cutoff_len: a row longer than cutoff_len is cut as LLaMA-Factory cuts it (`fit_lengths`):
the prompt and the reply (a pair's longer one) each lose their end, in proportion to their
lengths unless one of them is under half of cutoff_len; rows cut so are counted ("truncated"),
not dropped. A row with an empty reply is dropped and counted.

pair_data and kto_data are the builders through the tokenized-data cache (cache.py), under
the kinds "pair" (dpo, orpo and rm share its entries) and "kto".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from launcher.data.bad_rows import BadRows
from launcher.data.cache import templated_data
from launcher.data.defaults import TEMPLATE, WAIT_S
from launcher.data.pipeline import load_examples
from launcher.data.tokenize import IGNORE_INDEX, encode_conversation

NO_CUTOFF = 1 << 30  # encode whole; the cutoff is applied to prompt + reply below


@dataclass
class PreferenceData:
    rows: list[dict]
    dropped: int  # no reply token to train
    skipped: int = 0  # bad rows skipped with data.on_bad_row: skip
    truncated: int = 0  # prompt + reply longer than cutoff_len, cut by fit_lengths


def fit_lengths(prompt: int, reply: int, cutoff: int) -> tuple[int, int]:
    """(prompt, reply) lengths kept of a row within `cutoff` tokens, LLaMA-Factory's rule (infer_seqlen): a reply
    under half the cutoff is kept whole; else a prompt under half is kept whole and the reply gets the rest;
    else the cutoff is shared in proportion to the two lengths. The prompt gets what the reply leaves."""
    if reply * 2 < cutoff:
        reply_room = cutoff
    elif prompt * 2 < cutoff:
        reply_room = cutoff - prompt
    else:
        reply_room = int(cutoff * reply / (prompt + reply))
    kept_reply = min(reply, reply_room)
    return min(prompt, max(cutoff - kept_reply, 0)), kept_reply


def split_reply(tokenizer, messages: list[dict], tools, template: str) -> tuple[list[int], list[int]]:
    """(prompt ids, reply ids) of a conversation whose last turn is the reply; the reply ids are its trained span."""
    encoded = encode_conversation(tokenizer, messages, NO_CUTOFF, mask_history=True, template=template, tools=tools)
    trained = [i for i, label in enumerate(encoded.labels) if label != IGNORE_INDEX]
    if not trained:  # an empty reply renders to nothing trainable
        return encoded.input_ids, []
    return encoded.input_ids[: trained[0]], encoded.input_ids[trained[0] : trained[-1] + 1]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


Row = tuple[dict | None, bool]  # (the row, or None when it has no reply token to train; whether it was cut)


def _collect(
    names: list[str], data_cfg: Mapping[str, Any], kind: str, row_of: Callable[[Any, int], Row]
) -> PreferenceData:
    """The rows row_of(example, cutoff_len) makes of the datasets' examples, with what was dropped, skipped and cut."""
    bad = BadRows.of(data_cfg)
    rows, dropped, truncated = [], 0, 0
    for example in load_examples(names, data_cfg, kind, bad):
        row, cut = row_of(example, data_cfg["cutoff_len"])
        if row is None:
            dropped += 1
            continue
        truncated += cut
        rows.append(row)
    return PreferenceData(rows, dropped, len(bad.skipped), truncated)


def build_pair_data(
    names: list[str], data_cfg: Mapping[str, Any], tokenizer, template: str = TEMPLATE
) -> PreferenceData:
    """{"prompt_ids", "chosen_ids", "rejected_ids"} per preference example."""

    def pair(example, cutoff: int) -> Row:
        assert example.chosen is not None and example.rejected is not None  # a preference row has both
        prompt_c, chosen = split_reply(tokenizer, example.messages + [example.chosen], example.tools, template)
        prompt_r, rejected = split_reply(tokenizer, example.messages + [example.rejected], example.tools, template)
        # the prompt renders the same before both replies; if a template made the two differ, the shared part is the
        # prompt and the rest belongs to each reply (as TRL does)
        shared = _common_prefix(prompt_c, prompt_r)
        chosen, rejected = prompt_c[shared:] + chosen, prompt_r[shared:] + rejected
        if not chosen or not rejected:
            return None, False
        longer = max(len(chosen), len(rejected))
        keep, reply = fit_lengths(shared, longer, cutoff)
        row = {"prompt_ids": prompt_c[:keep], "chosen_ids": chosen[:reply], "rejected_ids": rejected[:reply]}
        return row, keep < shared or reply < longer

    return _collect(names, data_cfg, "preference", pair)


def build_kto_data(
    names: list[str], data_cfg: Mapping[str, Any], tokenizer, template: str = TEMPLATE
) -> PreferenceData:
    """{"prompt_ids", "completion_ids", "label"} per KTO example (label = kto_tag: desirable)."""

    def labelled(example, cutoff: int) -> Row:
        prompt, completion = split_reply(tokenizer, example.messages, example.tools, template)
        if not completion:
            return None, False
        keep, reply = fit_lengths(len(prompt), len(completion), cutoff)
        row = {"prompt_ids": prompt[:keep], "completion_ids": completion[:reply], "label": example.kto_tag}
        return row, keep + reply < len(prompt) + len(completion)

    return _collect(names, data_cfg, "kto", labelled)


def pair_data(
    names: list[str], data_cfg: Mapping[str, Any], tokenizer, template: str = TEMPLATE, timeout_s: float = WAIT_S
) -> PreferenceData:
    """build_pair_data through the tokenized-data cache (data.cache, data.cache_dir; see cache.py)."""
    return templated_data(PreferenceData, "pair", build_pair_data, names, data_cfg, tokenizer, template, timeout_s)


def scored_pairs(
    names: list[str], data_cfg: Mapping[str, Any], tokenizer, template: str = TEMPLATE, timeout_s: float = WAIT_S
) -> PreferenceData:
    """{"chosen_ids", "rejected_ids"} for a reward model: the prompt followed by each reply, through the reply's
    eos (the last token, where its head reads the score). The pairs come through the cache, shared with dpo and orpo."""
    data = pair_data(names, data_cfg, tokenizer, template, timeout_s)
    data.rows = [
        {"chosen_ids": r["prompt_ids"] + r["chosen_ids"], "rejected_ids": r["prompt_ids"] + r["rejected_ids"]}
        for r in data.rows
    ]
    return data


def kto_data(
    names: list[str], data_cfg: Mapping[str, Any], tokenizer, template: str = TEMPLATE, timeout_s: float = WAIT_S
) -> PreferenceData:
    """build_kto_data through the tokenized-data cache (data.cache, data.cache_dir; see cache.py); the cache
    holds only id lists, so each label is stored as one token ([1] desirable, [0] not) and read back as TRL's bool."""
    return templated_data(
        PreferenceData,
        "kto",
        build_kto_data,
        names,
        data_cfg,
        tokenizer,
        template,
        timeout_s,
        store=lambda row: {**row, "label": [int(row["label"])]},
        load=lambda row: {**row, "label": bool(row["label"][0])},
    )
