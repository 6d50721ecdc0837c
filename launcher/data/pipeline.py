"""A recipe's datasets, end to end: registry -> files -> internal examples -> token ids and labels."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np

from launcher.data.bad_rows import BadRows
from launcher.data.cache import templated_data
from launcher.data.defaults import TEMPLATE, WAIT_S
from launcher.data.formats import Example, to_example, to_text
from launcher.data.rows import dataset_items
from launcher.data.tokenize import Encoded, encode_conversations


@dataclass
class SFTData:
    examples: list[dict]  # {"input_ids": [...], "labels": [...]}
    dropped: int  # examples left with no trainable token after cutoff
    skipped: int = 0  # bad rows skipped with data.on_bad_row: skip


def _converted(names: list[str], data_cfg: Mapping[str, Any], bad: BadRows, convert, kind: str | None) -> list:
    """convert(row, spec) over every row of the named datasets; bad rows go to the policy."""
    kinds = None if kind is None else (kind,)
    return [item for name in names for item in dataset_items(name, data_cfg, bad, convert, kinds)]


def load_examples(
    names: list[str], data_cfg: Mapping[str, Any], kind: str = "sft", bad: BadRows | None = None
) -> list[Example]:
    """Validated examples of one kind (sft | preference | kto) from the named datasets, max_samples per dataset."""
    bad = bad or BadRows.of(data_cfg)
    return _converted(names, data_cfg, bad, to_example, kind)


def load_texts(names: list[str], data_cfg: Mapping[str, Any], bad: BadRows | None = None) -> list[str]:
    """Pre-training documents (the text column) of the named datasets."""
    bad = bad or BadRows.of(data_cfg)
    return _converted(names, data_cfg, bad, to_text, kind=None)


def _encode_chunk(job: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A worker's share: (ids end to end, labels end to end, lengths) as arrays, cheap to send back."""
    conversations, cfg, template = job
    encoded = encode_conversations(
        _WORKER_TOKENIZER, conversations, cfg["cutoff_len"], cfg["train_on_prompt"], cfg["mask_history"], template
    )
    lengths = np.array([len(e.input_ids) for e in encoded], dtype=np.int64)
    ids = np.fromiter(chain.from_iterable(e.input_ids for e in encoded), dtype=np.int32, count=int(lengths.sum()))
    labels = np.fromiter(chain.from_iterable(e.labels for e in encoded), dtype=np.int32, count=int(lengths.sum()))
    return ids, labels, lengths


_WORKER_TOKENIZER = None  # set in the parent before forking workers: they inherit it instead of unpickling it


def _encode_parallel(
    tokenizer, conversations: list, cfg: Mapping[str, Any], template: str, workers: int
) -> list[Encoded]:
    """encode_conversations in `workers` forked processes, in order; each tokenizes with one thread."""
    global _WORKER_TOKENIZER
    size = -(-len(conversations) // (workers * 4))  # a few chunks per worker evens out long-tailed chunks
    jobs = [(conversations[i : i + size], cfg, template) for i in range(0, len(conversations), size)]
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the forked children run single-threaded, without warnings
    _WORKER_TOKENIZER = tokenizer
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_encode_chunk, jobs)
    finally:
        _WORKER_TOKENIZER = None
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous
    out = []
    for ids, labels, lengths in parts:
        ids, labels = ids.tolist(), labels.tolist()
        bounds = [0, *np.cumsum(lengths).tolist()]
        out += [Encoded(ids[a:b], labels[a:b]) for a, b in zip(bounds, bounds[1:])]
    return out


def encode_examples(
    examples: list[Example], data_cfg: Mapping[str, Any], tokenizer, template: str = TEMPLATE
) -> SFTData:
    """Token ids and labels of SFT examples (data.cutoff_len, train_on_prompt, mask_history, num_workers);
    those left with no trainable token are dropped and counted."""
    conversations = [(e.messages, e.tools) for e in examples]
    workers = min(data_cfg.get("num_workers", 1), max(1, len(conversations) // 64))  # tiny data: not worth a fork
    if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
        encoded = _encode_parallel(tokenizer, conversations, data_cfg, template, workers)
    else:
        encoded = encode_conversations(
            tokenizer,
            conversations,
            data_cfg["cutoff_len"],
            data_cfg["train_on_prompt"],
            data_cfg["mask_history"],
            template,
        )
    kept = [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded if e.trainable]
    return SFTData(kept, len(encoded) - len(kept))


def build_sft_data(names: list[str], data_cfg: Mapping[str, Any], tokenizer, template: str = TEMPLATE) -> SFTData:
    """Tokenized, masked examples of the named datasets; those with no trainable token are dropped and counted."""
    bad = BadRows.of(data_cfg)
    data = encode_examples(load_examples(names, data_cfg, "sft", bad), data_cfg, tokenizer, template)
    data.skipped = len(bad.skipped)
    return data


def sft_data(
    names: list[str], data_cfg: Mapping[str, Any], tokenizer, template: str = TEMPLATE, timeout_s: float = WAIT_S
) -> SFTData:
    """build_sft_data through the tokenized-data cache (data.cache, data.cache_dir; see cache.py)."""
    return templated_data(SFTData, "sft", build_sft_data, names, data_cfg, tokenizer, template, timeout_s)
