"""Batch padding, with counters the throughput logger reads."""

from __future__ import annotations

import torch

from launcher.data.tokenize import IGNORE_INDEX


class PaddingCollator:
    """Pads input_ids/labels/attention_mask to the longest example; counts tokens it has served."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 8):
        self.pad_token_id = pad_token_id
        self.multiple = pad_to_multiple_of
        self.tokens = 0          # real (non-pad) tokens served so far on this rank
        self.trained_tokens = 0  # tokens with a label

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(e["input_ids"]) for e in examples)
        length = -(-longest // self.multiple) * self.multiple
        batch = {"input_ids": [], "labels": [], "attention_mask": []}
        for example in examples:
            pad = length - len(example["input_ids"])
            batch["input_ids"].append(list(example["input_ids"]) + [self.pad_token_id] * pad)
            batch["labels"].append(list(example["labels"]) + [IGNORE_INDEX] * pad)
            batch["attention_mask"].append([1] * len(example["input_ids"]) + [0] * pad)
            self.tokens += len(example["input_ids"])
            self.trained_tokens += sum(1 for label in example["labels"] if label != IGNORE_INDEX)
        return {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}
