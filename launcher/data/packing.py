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

from launcher.data.tokenize import IGNORE_INDEX


@dataclass
class Packed:
    rows: list[dict]     # input_ids, labels, position_ids, and segment_ids (1, 2, ... per sample)
    efficiency: float    # real tokens / (rows x capacity)


def pack_lengths(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit-decreasing bin packing: groups of indices whose lengths sum to <= capacity.

    Open bins are bucketed by free space, and a Python int is a bitmap of the free-space
    values that have a bin, so finding the tightest bin that fits is one shift and one
    lowest-set-bit, independent of the number of open bins.
    """
    if any(length > capacity or length <= 0 for length in lengths):
        raise ValueError(f"every length must be in 1..{capacity} (truncate to cutoff_len before packing)")
    by_free: list[list[int]] = [[] for _ in range(capacity + 1)]
    has_free = 0  # bit f set <=> some open bin has exactly f free tokens
    bins: list[list[int]] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        length = lengths[index]
        fitting = has_free >> length
        if fitting:
            free = length + (fitting & -fitting).bit_length() - 1
            target = by_free[free].pop()
            if not by_free[free]:
                has_free &= ~(1 << free)
        else:
            free, target = capacity, len(bins)
            bins.append([])
        bins[target].append(index)
        by_free[free - length].append(target)
        has_free |= 1 << (free - length)
    return [sorted(group) for group in bins]


def pack_examples(examples: list[dict], capacity: int) -> Packed:
    """Concatenate examples into rows of at most `capacity` tokens (best-fit decreasing)."""
    groups = pack_lengths([len(e["input_ids"]) for e in examples], capacity)
    rows = []
    for group in groups:
        row = {"input_ids": [], "labels": [], "position_ids": [], "segment_ids": []}
        for segment, index in enumerate(group, start=1):
            ids, labels = examples[index]["input_ids"], list(examples[index]["labels"])
            if segment > 1:
                labels[0] = IGNORE_INDEX
            row["input_ids"] += ids
            row["labels"] += labels
            row["position_ids"] += range(len(ids))
            row["segment_ids"] += [segment] * len(ids)
        rows.append(row)
    total = sum(len(e["input_ids"]) for e in examples)
    return Packed(rows, total / (len(rows) * capacity) if rows else 0.0)
