"""Sequence packing: several tokenized examples per cutoff_len row.

greedy: samples are concatenated and see each other (cheap, but attention crosses sample
        boundaries: each sample's loss depends on what it was packed with).
neat:   position_ids restart at every sample and each token attends only within its own
        sample (block-diagonal causal mask; with flash-attention the restarting
        position_ids alone select its varlen path), so a packed row computes exactly what
        the samples would compute one by one.
In both, the first token of every sample after the first gets label -100: it would
otherwise be "predicted" from the previous sample's last token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from launcher.data.gc_pause import gc_paused
from launcher.data.tokenize import IGNORE_INDEX


@dataclass
class Packed:
    rows: list[dict]  # input_ids, labels, position_ids, and segment_ids (1, 2, ... per sample)
    efficiency: float  # real tokens / (rows x capacity)


def pack_lengths(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit-decreasing bin packing: groups of indices whose lengths sum to <= capacity."""
    with gc_paused():
        return _best_fit_decreasing(lengths, capacity)


def _best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Open bins are bucketed by free space, and a Python int is a bitmap of the free-space
    values that have a bin, so finding the tightest bin that fits is one shift and one
    lowest-set-bit, independent of the number of open bins. Samples of equal length are
    placed in bulk: a bin with f free tokens takes f // length of them in a row (after each
    one it is still the tightest fit), so the loop runs per (length, bin group), not per sample.
    """
    sizes = np.asarray(lengths, dtype=np.int64)
    if sizes.size and (sizes.max() > capacity or sizes.min() <= 0):
        raise ValueError(f"every length must be in 1..{capacity} (truncate to cutoff_len before packing)")
    order = np.argsort(-sizes, kind="stable")  # longest first, then by index
    bin_of = np.empty(sizes.size, dtype=np.int64)
    by_free: list[list[int]] = [[] for _ in range(capacity + 1)]
    has_free = 0  # bit f set <=> some open bin has exactly f free tokens
    opened = 0
    values, starts = np.unique(-sizes[order], return_index=True)
    for value, start, stop in zip((-values).tolist(), starts.tolist(), [*starts[1:].tolist(), sizes.size]):
        position = start
        while position < stop:
            fitting = has_free >> value
            if fitting:
                free = value + (fitting & -fitting).bit_length() - 1
                pool = by_free[free]
                per_bin = free // value
                full = min(len(pool), (stop - position) // per_bin)
                if full:
                    targets = pool[-full:][::-1]  # the newest bins first, as one pop at a time would take them
                    del pool[-full:]
                    taken = full * per_bin
                else:
                    targets, per_bin = [pool.pop()], stop - position  # the rest fits in the tightest bin
                    taken = per_bin
            else:  # no open bin fits: open new ones, capacity // value samples each
                per_bin = capacity // value
                full, rest = divmod(stop - position, per_bin)
                targets, taken = list(range(opened, opened + full)), full * per_bin
                opened += full
                if rest and not full:
                    targets, per_bin, taken, opened = [opened], rest, rest, opened + 1
                free = capacity
            bin_of[order[position : position + taken]] = np.repeat(targets, per_bin)
            position += taken
            if not by_free[free]:
                has_free &= ~(1 << free)
            left = free - per_bin * value
            by_free[left].extend(targets)
            has_free |= 1 << left
    counts = np.bincount(bin_of, minlength=opened).tolist()
    members = np.argsort(bin_of, kind="stable").tolist()  # by bin, then by index
    bounds = [0, *np.cumsum(counts).tolist()]
    return [members[a:b] for a, b in zip(bounds, bounds[1:])]


def pack_examples(examples: list[dict], capacity: int) -> Packed:
    """Concatenate examples into rows of at most `capacity` tokens (best-fit decreasing)."""
    groups = pack_lengths([len(e["input_ids"]) for e in examples], capacity)
    with gc_paused():
        rows = [_packed_row(examples, group) for group in groups]
    total = sum(len(e["input_ids"]) for e in examples)
    return Packed(rows, total / (len(rows) * capacity) if rows else 0.0)


def _packed_row(examples: list[dict], group: list[int]) -> dict:
    """One row: the group's samples back to back, each with its own positions and segment id."""
    row: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": [], "segment_ids": []}
    for segment, index in enumerate(group, start=1):
        ids, labels = examples[index]["input_ids"], list(examples[index]["labels"])
        if segment > 1:
            labels[0] = IGNORE_INDEX
        row["input_ids"] += ids
        row["labels"] += labels
        row["position_ids"] += range(len(ids))
        row["segment_ids"] += [segment] * len(ids)
    return row
